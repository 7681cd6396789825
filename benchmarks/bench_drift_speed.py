"""Drift computation speed: our tests against Evidently 0.7.23's DataDriftPreset, side by side in one run.

Usage: python benchmarks/bench_drift_speed.py [--rows 1000000] [--reps 3] [--evidently-venv DIR]
                                              [--out benchmarks/results/drift_speed.md] [--no-evidently]

The data: ``--rows`` reference + ``--rows`` current rows of the 8 features daily monitoring watches
(`core.monitoring.monitoring.FEATURES`, each with its tests): 2 numeric (watch_fraction: fractions in [0, 1];
user_activity: signals per active user, integers) and 6 categorical (genre_mix: 18 genres; rating: "1".."10";
popularity_concentration: 10 deciles; new_titles: new / catalog; event_mix: 5 kinds; title_share: 1,500 titles),
the current window shifted a little (one genre, ratings, watch time, one title's surge). Generated once (seed 42)
into a temporary folder as numpy arrays; each side reads them into a pandas DataFrame of strings and floats with
its own pandas *before* its clock starts.

The two sides, each in its own fresh process, from the DataFrames to every score:
- **ours**: `drift.run_tests` per feature with monitoring's tests (16 results, each with its chance level);
- **Evidently**: ``Report([DataDriftPreset()]).run(Dataset(current), Dataset(reference))`` with the numeric and
  categorical columns declared (`DataDefinition`), in a virtual environment of its own (evidently==0.7.23 needs
  pandas < 3): created with ``pip install`` under ``~/.cache/evidently-0.7.23`` on the first run.
Before its clock starts each process runs its side once on a 20,000-row slice of other data (seed 7), so lazy
imports and first-call set-up are not timed, and no cache holds an answer for the timed data. The sides alternate
(ours, Evidently, ours, …) ``--reps`` times. Wall time is ``time.perf_counter``, CPU time ``time.process_time``
(every thread of the process). Ratios are Evidently ÷ ours, per pair, then min and median over the pairs. The
load average (1/5/15 min) is read before and after: other work on a 2-core machine inflates wall time more than
CPU time, so the CPU ratio is the fairer one under load.

Writes ``--out`` (Markdown: figures, date, commit, load average, machine).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "drift_speed.md"
EVIDENTLY = "evidently==0.7.23"
DEFAULT_VENV = Path.home() / ".cache" / "evidently-0.7.23"
WARMUP_ROWS = 20_000

NUMERIC = ("watch_fraction", "user_activity")
# feature -> its tests, as core.monitoring.monitoring.FEATURES (checked in main())
TESTS = {
    "genre_mix": ("psi", "chi_square"),
    "rating": ("psi", "jensen_shannon"),
    "watch_fraction": ("psi", "ks"),
    "user_activity": ("psi", "ks"),
    "popularity_concentration": ("psi",),
    "new_titles": ("psi",),
    "event_mix": ("psi", "jensen_shannon"),
    "title_share": ("max_share_gain",),
}
GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


# ------------------------------------------------------------------ data (numpy only: both environments run it)
def _labels(rng, categories: list[str], p: np.ndarray, n: int) -> tuple[np.ndarray, list[str]]:
    return rng.choice(len(categories), size=n, p=p / p.sum()).astype(np.int32), categories


def make_data(rows: int, seed: int, folder: Path) -> None:
    """Write reference and current windows of ``rows`` rows each: ``{window}_{feature}.npy`` (floats, or int
    codes into ``categories.json``'s labels)."""
    rng = np.random.default_rng(seed)
    cats = {"genre_mix": GENRES, "rating": [str(r) for r in range(1, 11)],
            "popularity_concentration": [f"decile {d}" for d in range(1, 11)], "new_titles": ["new", "catalog"],
            "event_mix": ["watch", "rate", "click", "search", "abandon"],
            "title_share": [f"Title {i} (#{i})" for i in range(1, 1501)]}
    genre_p = rng.dirichlet(np.full(len(GENRES), 2.0))
    rating_p = np.array([1, 1, 2, 3, 5, 8, 10, 9, 6, 4], dtype=float)
    decile_p = np.linspace(3.0, 0.3, 10)
    title_p = 1.0 / np.arange(1, 1501) ** 0.8
    for name, shift in (("reference", 0.0), ("current", 1.0)):
        g = genre_p.copy()
        g[-1] *= 1 + 0.5 * shift
        t = title_p.copy()
        t[700] *= 1 + 40 * shift           # one title's surge
        arrays = {
            "genre_mix": _labels(rng, GENRES, g, rows)[0],
            "rating": _labels(rng, cats["rating"], rating_p + shift * np.linspace(1, -1, 10), rows)[0],
            "watch_fraction": rng.beta(2.0, 1.2 + 0.2 * shift, rows),
            "user_activity": (rng.poisson(3.0 + 0.3 * shift, rows) + 1).astype(float),
            "popularity_concentration": _labels(rng, cats["popularity_concentration"], decile_p, rows)[0],
            "new_titles": _labels(rng, cats["new_titles"], np.array([0.05 + 0.02 * shift, 0.95]), rows)[0],
            "event_mix": _labels(rng, cats["event_mix"], np.array([50, 20, 15, 10, 5.0]), rows)[0],
            "title_share": _labels(rng, cats["title_share"], t, rows)[0],
        }
        for feature, arr in arrays.items():
            np.save(folder / f"{name}_{feature}.npy", arr)
    (folder / "categories.json").write_text(json.dumps(cats))


def read_frames(folder: Path):
    """(reference, current) pandas DataFrames: float columns and string columns, in this process's pandas."""
    import pandas as pd
    cats = json.loads((folder / "categories.json").read_text())
    frames = []
    for name in ("reference", "current"):
        cols = {}
        for feature in TESTS:
            arr = np.load(folder / f"{name}_{feature}.npy")
            cols[feature] = arr if feature in NUMERIC else np.asarray(cats[feature], dtype=object)[arr]
        frames.append(pd.DataFrame(cols))
    return frames[0], frames[1]


# ------------------------------------------------------------------ the two sides
def run_ours(reference, current) -> dict:
    from core.monitoring import drift
    out = {}
    for feature, tests in TESTS.items():
        kind = "numeric" if feature in NUMERIC else "categorical"
        for r in drift.run_tests(tests, reference[feature], current[feature], kind=kind):
            out[f"{feature}:{r.test}"] = [r.score, r.null_q99]
    return out


def run_evidently(reference, current) -> dict:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    definition = DataDefinition(numerical_columns=list(NUMERIC),
                                categorical_columns=[c for c in TESTS if c not in NUMERIC])
    ref = Dataset.from_pandas(reference, data_definition=definition)
    cur = Dataset.from_pandas(current, data_definition=definition)
    snapshot = Report([DataDriftPreset()]).run(cur, ref)
    out = {}
    for m in snapshot.dict()["metrics"]:
        out[str(m.get("metric_id", m.get("metric_name", "?")))] = m.get("value")
    return out


def worker(side: str, folder: Path, warmup_folder: Path) -> None:
    """One timed run of one side in this process; prints one JSON line."""
    fn = run_ours if side == "ours" else run_evidently
    fn(*read_frames(warmup_folder))
    reference, current = read_frames(folder)
    wall, cpu = time.perf_counter(), time.process_time()
    values = fn(reference, current)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"side": side, "wall": wall, "cpu": cpu, "values": values}, default=str))


# ------------------------------------------------------------------ the driver
def ensure_evidently(venv: Path) -> Path:
    """The Python of a virtual environment holding evidently==0.7.23 (created with pip on the first run)."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import evidently, pandas; print(evidently.__version__, pandas.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.startswith("0.7.23 "):
        return python
    print(f"creating {venv} with {EVIDENTLY} (pandas < 3) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", EVIDENTLY, "pandas<3"], check=True)
    return python


def run_side(python: Path, side: str, folder: Path, warmup: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) if side == "ours" else "")
    proc = subprocess.run([str(python), __file__, "--worker", side, str(folder), str(warmup)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"the {side} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_text(avg: tuple) -> str:
    return " / ".join(f"{x:.2f}" for x in avg)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, numpy {np.__version__}"


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "core/monitoring/drift.py"],
                               capture_output=True, text=True, cwd=ROOT).stdout.strip()
        return sha + (" (core/monitoring/drift.py modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions(python: Path) -> str:
    code = "import pandas, numpy, scipy; print(pandas.__version__, numpy.__version__, scipy.__version__)"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows per window (reference and current)")
    p.add_argument("--reps", type=int, default=3, help="alternations of the two sides (at least 3 for the record)")
    p.add_argument("--evidently-venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-evidently", action="store_true", help="time our side only (no ratio; nothing written)")
    p.add_argument("--worker", nargs=3, metavar=("SIDE", "DATA", "WARMUP"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), Path(args.worker[2]))
        return 0
    sys.path.insert(0, str(ROOT))
    from core.monitoring.monitoring import FEATURES
    assert {f: t for f, (_, t) in FEATURES.items()} == TESTS, "monitoring's features changed: update TESTS"
    evidently_python = None if args.no_evidently else ensure_evidently(args.evidently_venv)
    load_before, started = os.getloadavg(), time.time()
    with tempfile.TemporaryDirectory(prefix="drift-speed-") as tmp:
        data, warm = Path(tmp) / "data", Path(tmp) / "warmup"
        data.mkdir(), warm.mkdir()
        make_data(args.rows, 42, data)
        make_data(WARMUP_ROWS, 7, warm)
        runs = []
        for i in range(args.reps):
            ours = run_side(Path(sys.executable), "ours", data, warm)
            theirs = None if evidently_python is None else run_side(evidently_python, "evidently", data, warm)
            runs.append((ours, theirs))
            line = f"rep {i + 1}: ours wall {ours['wall']:.3f} s, CPU {ours['cpu']:.3f} s"
            if theirs:
                line += (f"; Evidently wall {theirs['wall']:.3f} s, CPU {theirs['cpu']:.3f} s; ratio wall "
                         f"{theirs['wall'] / ours['wall']:.1f}×, CPU {theirs['cpu'] / ours['cpu']:.1f}×")
            print(line + f" [load {load_text(os.getloadavg())}]", flush=True)
    load_after, total = os.getloadavg(), time.time() - started
    if evidently_python is None:
        return 0
    text = report(args, runs, load_before, load_after, total, evidently_python)
    args.out.write_text(text)
    print(text)
    return 0


def report(args, runs, load_before, load_after, total, evidently_python: Path) -> str:
    wall = [t["wall"] / o["wall"] for o, t in runs]
    cpu = [t["cpu"] / o["cpu"] for o, t in runs]
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Drift computation: ours vs Evidently's DataDriftPreset (`benchmarks/bench_drift_speed.py`)", "",
        f"Run {now}, commit {commit()}, {machine()}; load average (1/5/15 min) {load_text(load_before)} at the "
        f"start, {load_text(load_after)} at the end; {total:.0f} s in all.", "",
        f"Data: {args.rows:,} reference + {args.rows:,} current rows × 8 features (2 numeric, 6 categorical of "
        "2–1,500 labels: the features daily monitoring watches). Ours: `drift.run_tests` with monitoring's tests "
        "per feature (16 scores, each with its chance level); Evidently "
        f"{EVIDENTLY}: `Report([DataDriftPreset()])` on `Dataset`s with the columns declared. Each run in a fresh "
        "process after a warm-up on other data, the two sides alternating; time from the DataFrames to every "
        "score. Ratio = Evidently ÷ ours, per pair.", "",
        f"Versions (pandas, numpy, scipy): ours {versions(Path(sys.executable))}; Evidently's environment "
        f"{versions(evidently_python)}.", "",
        "| rep | ours wall (s) | ours CPU (s) | Evidently wall (s) | Evidently CPU (s) | ratio wall | ratio CPU |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, ((o, t), w, c) in enumerate(zip(runs, wall, cpu), 1):
        lines.append(f"| {i} | {o['wall']:.3f} | {o['cpu']:.3f} | {t['wall']:.3f} | {t['cpu']:.3f} | {w:.1f}× | "
                     f"{c:.1f}× |")
    lines += ["", f"**Ratio of wall time: min {min(wall):.1f}×, median {statistics.median(wall):.1f}×. "
                  f"Ratio of CPU time: min {min(cpu):.1f}×, median {statistics.median(cpu):.1f}×.**", ""]
    methods = sorted({m.group(1) for key in runs[-1][1]["values"]
                      for m in [re.search(r"method=([^,]+),", key)] if m})
    lines += [f"What each side computes: Evidently one drift score per column ({'; '.join(methods)}) and a "
              "share of drifted columns; ours 16 scores (PSI and KS on the numeric features; PSI, chi-square, "
              "Jensen–Shannon and the largest share gain on the categorical ones) with their chance levels "
              "(2,000 resampled pairs per count-based score), on one thread. Under load the wall time of a ~1 s run "
              "moves with the machine's other work far more than that of a ~1 min run: the CPU ratio is the fairer "
              "figure.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
