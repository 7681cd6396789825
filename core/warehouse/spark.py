"""The Spark engine's one SparkSession per process (issue 15), and the errors that name what is missing.

pyspark is imported here, lazily, and only by the Spark engine's modules (`lake`, `lake_etl`,
`lake_dataset`, `training.spark_als`): the embedded default (`make run`) needs neither Java nor
pyspark. The master is `Settings.spark_master` ($RETRO_SPARK_MASTER, default `local[*]`,
read by `load_settings`), so the same code runs on a laptop or against a cluster
(`spark://host:7077`, `yarn`, `k8s://…`).

Session settings that every engine module relies on:
- `spark.sql.session.timeZone=UTC`: the warehouse's timestamps are naive UTC; Spark
  converts TIMESTAMP_NTZ ↔ TIMESTAMP through the session zone, so it must be UTC.
- `spark.sql.ansi.enabled=false`: a cast that cannot be done gives NULL, as in the
  embedded ETL (`pd.to_numeric(..., errors="coerce")`), never an exception mid-job.
- Quiet: no console progress bar, no UI server, log level WARN; bound to 127.0.0.1 unless
  $RETRO_SPARK_DRIVER_HOST names the address a cluster's executors reach the driver at.
- Other Spark settings of a deployment (executor memory and cores, YARN queue, Kubernetes image, S3 credentials
  provider) go where Spark reads them: `$SPARK_CONF_DIR/spark-defaults.conf` (pyspark starts the JVM through
  spark-submit, which reads it); the builder sets only what the engine's correctness depends on.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import warnings
import zipfile
from pathlib import Path

from core.errors import RetroError
from core.settings import PROJECT_ROOT

DEFAULT_MASTER = "local[*]"
INSTALL_PYSPARK = "pip install -r requirements-spark.txt"
INSTALL_JAVA = "apt-get install default-jre-headless"

_lock = threading.Lock()
_session = None


class EngineUnavailable(RetroError):
    """The Spark engine was asked for but a piece it needs (pyspark, Java) is not installed."""


def session_for(settings):
    """The process's SparkSession, started (on first use) against `settings.spark_master`."""
    return get_session(settings.spark_master)


def java_command() -> str | None:
    """The `java` the JVM would be started with ($JAVA_HOME/bin/java, else the one on PATH), or None."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = os.path.join(home, "bin", "java")
        return candidate if os.access(candidate, os.X_OK) else None
    return shutil.which("java")


def check_available() -> None:
    """Raise `EngineUnavailable` naming the missing piece (pyspark, then Java) and the command that installs it."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise EngineUnavailable(
            f"the Spark engine needs pyspark, which is not installed: run `{INSTALL_PYSPARK}` "
            "(the embedded engine, the default, needs neither pyspark nor Java)") from None
    if java_command() is None:
        where = f"$JAVA_HOME ({os.environ['JAVA_HOME']}) has no bin/java" if os.environ.get("JAVA_HOME") \
            else "no `java` on PATH"
        raise EngineUnavailable(
            f"the Spark engine needs a Java runtime (17 or newer), and {where}: run `{INSTALL_JAVA}` "
            "(Debian/Ubuntu) or set JAVA_HOME")


def available() -> bool:
    """True when pyspark and Java are both present (the session may still fail to start)."""
    try:
        check_available()
    except EngineUnavailable:
        return False
    return True


def get_session(master_url: str | None = None, *, app_name: str = "retro-movies"):
    """The process's SparkSession, created on first use (≈10 s on this machine; JVM ≈2 GB).

    `master_url` (default `local[*]`) applies only when the session is created; later calls return the same
    session whatever they pass (one SparkContext per process is Spark's own rule).
    Raises `EngineUnavailable` when pyspark or Java is missing or the JVM does not start.
    """
    global _session
    with _lock:
        if _session is not None and not _stopped(_session):
            return _session
        check_available()
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", _python())
        _python_path_for_workers()
        # PySpark 4.3 warns about pandas >= 3 (PySpark's own conversions; nothing a caller can act on).
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        warnings.filterwarnings("ignore", message="The copy keyword is deprecated", module=r"pyspark\.")
        from pyspark.sql import SparkSession
        try:
            builder = (SparkSession.builder.master(master_url or DEFAULT_MASTER).appName(app_name)
                       .config("spark.ui.showConsoleProgress", "false")
                       .config("spark.ui.enabled", "false")
                       # Executors connect back to the driver at this address: 127.0.0.1 on one machine (local
                       # mode, the test cluster); on a cluster of machines $RETRO_SPARK_DRIVER_HOST names an
                       # address they can reach (the driver then also listens on all interfaces).
                       .config("spark.driver.bindAddress", "127.0.0.1" if _driver_host() == "127.0.0.1" else "0.0.0.0")
                       .config("spark.driver.host", _driver_host())
                       .config("spark.sql.session.timeZone", "UTC")
                       .config("spark.sql.ansi.enabled", "false")
                       .config("spark.sql.shuffle.partitions", str(_shuffle_partitions(master_url or DEFAULT_MASTER)))
                       .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                       .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
                       # No _SUCCESS marker files in the lake (the lake commits through its own pointer).
                       .config("spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
                       .config("spark.driver.memory", os.environ.get("RETRO_SPARK_DRIVER_MEMORY", "2g")))
            session = builder.getOrCreate()
        except Exception as exc:  # noqa: BLE001 - the JVM failed to start: say so in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineUnavailable(f"Spark did not start ({first}); check that `java -version` reports 17 or "
                                    f"newer, or run `{INSTALL_JAVA}`") from None
        session.sparkContext.setLogLevel("WARN")
        if not (master_url or DEFAULT_MASTER).startswith("local"):
            session.sparkContext.addPyFile(_core_zip())   # executors elsewhere import core.* from this zip
        _session = session
        return session


def stop_session() -> None:
    """Stop the process's session (tests and benchmarks that measure a cold start)."""
    global _session
    with _lock:
        if _session is not None:
            _session.stop()
            _session = None


def jvm_pid(session=None) -> int | None:
    """The process id of the session's JVM (local mode: driver and executors), for memory measurements."""
    session = session or _session
    try:
        return int(session.sparkContext._gateway.proc.pid)
    except (AttributeError, TypeError, ValueError):
        return None


def _stopped(session) -> bool:
    try:
        return session.sparkContext._jsc is None
    except AttributeError:
        return True


def _python() -> str:
    return sys.executable


def _python_path_for_workers() -> None:
    """Python workers (started by the JVM) import `core` for the functions they run (e.g. the content hash):
    the project root goes on their PYTHONPATH (local mode; a cluster gets `_core_zip`)."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(PROJECT_ROOT) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT)] + parts)


def _core_zip() -> str:
    """The `core` package as a zip for `addPyFile` (a cluster's executors do not see this folder)."""
    target = Path(tempfile.mkdtemp(prefix="retro-core-")) / "core.zip"
    with zipfile.ZipFile(target, "w") as z:
        for path in (PROJECT_ROOT / "core").rglob("*.py"):
            z.write(path, path.relative_to(PROJECT_ROOT).as_posix())
    return str(target)


def _driver_host() -> str:
    """$RETRO_SPARK_DRIVER_HOST: the driver's address as executors on other machines reach it (default 127.0.0.1)."""
    return os.environ.get("RETRO_SPARK_DRIVER_HOST") or "127.0.0.1"


def _shuffle_partitions(url: str) -> int:
    """Spark's default of 200 shuffle partitions is sized for clusters; in local mode two per core is enough."""
    if not url.startswith("local"):
        return int(os.environ.get("RETRO_SPARK_SHUFFLE_PARTITIONS", "200"))
    inside = url[url.find("[") + 1:url.find("]")] if "[" in url else "1"
    first = inside.split(",")[0]
    cores = (os.cpu_count() or 2) if first == "*" else int(first) if first.isdigit() else 2
    return max(2, 2 * cores)
