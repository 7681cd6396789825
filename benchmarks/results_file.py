"""A benchmark's printed report, kept as benchmarks/results/<name>.md with what it was measured on (date, commit,
load average before and after, machine, wall time), so every figure the README quotes has a file behind it.

    if __name__ == "__main__":
        with results_file.recorded("world", "World build (`bench_world.py`)"):
            main()

The report is what the benchmark prints (it still prints it); the file is written only when the run ends without
an error, so a failed or interrupted run never replaces the last good figures. RETRO_BENCH_RESULTS=0 keeps the
file untouched (a trial run with small arguments)."""
from __future__ import annotations

import datetime
import io
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """'2 cores (CPU model), Python 3.11.7' — the machine a figure was measured on."""
    cpu = platform.processor() or "unknown CPU"
    info = Path("/proc/cpuinfo")
    if info.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def commit() -> str:
    """The short commit of the code measured, '+ changes' when the work tree differs from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty else "")


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def header(title: str, started: datetime.datetime, load_before: tuple, load_after: tuple, seconds: float,
           argv: list[str]) -> str:
    load = lambda v: " / ".join(f"{x:.2f}" for x in v)       # noqa: E731
    command = " ".join(["python", *argv]) if argv else "python"
    return (f"# {title}\n\nRun {started:%Y-%m-%d %H:%M} UTC, commit {commit()}, {machine()}: `{command}`; load average "
            f"(1/5/15 min) {load(load_before)} at the start, {load(load_after)} at the end; {seconds:.0f} s in "
            "all. Wall times move with the load.\n\n")


@contextmanager
def recorded(name: str, title: str, out: Path | None = None):
    """Print as usual and, on success, write the printed report to `out` (default results/<name>.md)."""
    buffer = io.StringIO()
    started, load_before, t0 = datetime.datetime.now(datetime.timezone.utc), os.getloadavg(), time.perf_counter()
    with redirect_stdout(_Tee(sys.stdout, buffer)):
        yield
    if os.environ.get("RETRO_BENCH_RESULTS", "1") == "0":
        return
    path = out or RESULTS / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = header(title, started, load_before, os.getloadavg(), time.perf_counter() - t0, sys.argv)
    path.write_text(text + buffer.getvalue().rstrip() + "\n")
    print(f"(written to {path.relative_to(RESULTS.parent.parent) if path.is_relative_to(RESULTS.parent.parent) else path})",
          file=sys.stderr)
