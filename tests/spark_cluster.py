"""A real Spark standalone cluster on 127.0.0.1 for tests and benchmarks: one master and N workers, started from
the pyspark distribution's own launcher (`bin/spark-class org.apache.spark.deploy.master.Master` / `…Worker`;
pip's pyspark ships `spark-class` but not `sbin/start-master.sh`), on free ports, each in its own process group,
and always stopped at the end (SIGTERM, then SIGKILL) — only the processes this module started.

    with standalone_cluster(tmp_path, workers=2) as cluster:
        os.environ["RETRO_SPARK_MASTER"] = cluster.url         # spark://127.0.0.1:PORT

Every worker gets `cores` cores and `memory` of executor memory (defaults: 1 core, 1g — the CI machine has 2
cores), its own work folder under `root`, and the daemons a small heap (SPARK_DAEMON_MEMORY, 256m). The executors
run on the same machine as the driver, so a local lake path is one every executor reads; nothing else of the
driver's is shared with them (they get `core` through `addPyFile`, their own working folder and Python workers).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_home() -> Path:
    import pyspark
    return Path(pyspark.__file__).resolve().parent


@dataclass
class Cluster:
    url: str                       # spark://127.0.0.1:PORT, what RETRO_SPARK_MASTER takes
    ui: str                        # the master's web UI (JSON at /json/)
    workers: int
    processes: list = field(default_factory=list)
    logs: Path | None = None

    def status(self) -> dict:
        """The master's own view (alive workers, cores, memory, applications) from its JSON endpoint."""
        import json
        with urllib.request.urlopen(f"{self.ui}/json/", timeout=30) as r:      # a loaded machine answers late
            return json.loads(r.read())


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)          # the launcher's shell and its JVM share the group
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def standalone_cluster(root: Path, *, workers: int = 2, cores: int = 1, memory: str = "1g",
                       timeout: float = 90.0):
    """Start a master and `workers` workers; yield a `Cluster` once the master counts them all alive."""
    home = spark_home()
    spark_class = str(home / "bin" / "spark-class")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SPARK_HOME=str(home), SPARK_LOCAL_IP="127.0.0.1", SPARK_DAEMON_MEMORY="256m",
               SPARK_LOG_DIR=str(root), SPARK_PID_DIR=str(root), SPARK_NO_DAEMONIZE="1")
    # The daemons (and so the executors they start) see neither the project's folder nor the driver's PYTHONPATH:
    # executors import `core` only from the zip the driver ships (`core.warehouse.spark._core_zip`).
    env.pop("PYTHONPATH", None)
    port, ui_port = free_port(), free_port()
    url, ui = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}"
    cluster = Cluster(url=url, ui=ui, workers=workers, logs=root)
    try:
        cluster.processes.append(_start([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                         "--port", str(port), "--webui-port", str(ui_port)], env,
                                        root / "master.log"))
        _wait(lambda: _answers(ui), timeout, "the master did not answer", cluster)
        for i in range(workers):
            work = root / f"worker-{i}"
            work.mkdir(exist_ok=True)
            cluster.processes.append(_start(
                [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                 "--port", str(free_port()), "--webui-port", str(free_port()), "--cores", str(cores),
                 "--memory", memory, "--work-dir", str(work), url], env, root / f"worker-{i}.log"))
        _wait(lambda: _alive(cluster) >= workers, timeout, f"{workers} workers did not register", cluster)
        yield cluster
    finally:
        for proc in reversed(cluster.processes):
            _stop(proc)


def _answers(ui: str) -> bool:
    try:
        with urllib.request.urlopen(f"{ui}/json/", timeout=2):
            return True
    except OSError:
        return False


def _alive(cluster: Cluster) -> int:
    try:
        return sum(w.get("state") == "ALIVE" for w in cluster.status().get("workers", []))
    except OSError:
        return 0


def _wait(ready, timeout: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [p for p in cluster.processes if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-2000:]}"
                             for f in sorted(cluster.logs.glob("*.log")))
            raise RuntimeError(f"Spark standalone cluster: {what} within {timeout:.0f} s\n{logs}")
        time.sleep(0.5)
