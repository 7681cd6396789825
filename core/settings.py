"""The one place for paths and tunable defaults.

Nothing happens at import: `load_settings()` reads the environment when called,
so tests can point everything at a temporary folder with RETRO_HOME.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import NoDataFolder, NotADataFolder, ValidationError
from core.filemodes import private_dir

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOME = PROJECT_ROOT / "data"
HOME_ENV = "RETRO_HOME"
ENGINES = ("embedded", "spark")
DEMO_VIEW_CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class Settings:
    """Where the stores live and the defaults every stage shares."""

    home: Path
    seed: int = 42
    # Default demo world (issue 2), built by the first start; 30 days (not 60) so `make run` is ready within a
    # minute (issue 13, see README); the Overview's "Grow the world" adds days.
    demo_users: int = 3000
    demo_movies: int = 1500
    demo_days: int = 30
    # Promotion gate (issue 12): evaluable holdout users needed to decide; production older than the newest
    # data by more than this many days is stale; paired-bootstrap resamples of the per-user nDCG difference.
    gate_min_users: int = 200
    gate_staleness_days: int = 1
    gate_bootstrap_resamples: int = 1000
    # Drift: observations a day's window needs before a test judges it.
    drift_min_observations: int = 100
    # Exploration (issue 22): the share of served lists that explore (policy 'explore'; the rest are
    # 'deterministic'), and per slot of an exploring list the chance of a swap for a title drawn uniformly from
    # the NEXT `explore_pool` candidates (near) or from every other unseen title (far). Small by default: the
    # price is measured (online hit rate of exploring vs deterministic lists). The retraining policy's
    # `explore_share` field overrides the share at run time (`python -m core policy --explore-share`).
    explore_share: float = 0.05
    explore_near: float = 0.2
    explore_far: float = 0.1
    explore_pool: int = 20
    # The gate decides on the counterfactual estimate when the exploration log gives at least this effective
    # sample size (Kish, over the logged titles' weights), else on the holdout (and says so). 50: a weak candidate
    # replayed on 3 days of a 5 % log reaches ~100 on a 1,500-user world (benchmarks/bench_yardstick.py), and
    # below 50 the holdout — bent by production's own serving — decides for it.
    gate_min_ess: int = 50
    # Model server traffic: confirmed impressions a client may report per minute (POST /impressions; 429 beyond),
    # seconds a connection may take to send a request's head and then its body before it is closed (slow or
    # half-open clients), and the most connections held open at once (0: the open-file limit less 64 — a
    # connection is a descriptor, and the stores, the model and the thread pool need some of their own).
    impressions_per_minute: int = 6000
    server_header_timeout: float = 10.0
    server_body_timeout: float = 30.0
    server_max_connections: int = 0
    # Engine (issue 15): `embedded` (SQLite → DuckDB file, implicit) or `spark` (Parquet lake, Spark SQL, MLlib ALS);
    # the Spark master and the lake's location (a URI such as s3a://…; None: `lake/` in the data folder).
    engine: str = "embedded"
    spark_master: str = "local[*]"
    lake_uri: str | None = None
    # Roles: the role the command line acts with (`RETRO_CLI_ROLE`; a `[cli_roles]` entry in secrets.toml for
    # the OS user wins), and whether the dashboard opens one user's data to everyone in a purely simulated demo
    # world (`RETRO_DEMO_PERSONAL_VIEWS`: auto = yes when simulated, on, off; never for imported data).
    cli_role: str = "admin"
    demo_personal_views: str = "auto"
    # Ads (issue 25, docs/ads.md): the 1-based position of the one sponsored slot of each shown list (extra: the
    # organic list keeps its k titles); `RETRO_ADS_SLOT`, 1..101 (a list has at most 100 titles, bounds.LIMITS).
    ads_slot: int = 3
    # EASE (Steck 2019) holds dense items × items matrices while it fits: a catalogue that would need more than
    # this many MiB (`models.ease_memory_mb`) is refused before fitting (`RETRO_EASE_MAX_MEMORY_MB`).
    ease_max_memory_mb: int = 4096
    # Where the operational store and the ML metadata store live (issue 26, docs/postgres.md): None (the default)
    # keeps both as SQLite files in the data folder (`retro.db`, `mlops.db`); `postgresql://user@host:port/db`
    # puts them in that PostgreSQL database, in schemas `retro_ops` and `retro_mlops` (`RETRO_DATABASE_URL`).
    database_url: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def ops_db(self) -> Path:
        """Operational SQLite database of the streaming service."""
        return self.home / "retro.db"

    @property
    def mlops_db(self) -> Path:
        """ML metadata: experiment runs, model registry, pipeline jobs (no personal data)."""
        return self.home / "mlops.db"

    @property
    def warehouse(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def world_file(self) -> Path:
        """Latent state of the simulated humans (tastes, habits); not service data."""
        return self.home / "world.npz"

    @property
    def lake_dir(self) -> Path:
        """The Spark engine's Parquet lake when `lake_uri` is not set (issue 15)."""
        return self.home / "lake"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def store_paths(self) -> list[Path]:
        """Every file or folder the platform owns inside `home` (nothing else is ever deleted)."""
        db, wh = self.ops_db, self.warehouse
        ml = self.mlops_db
        return [db, Path(f"{db}-wal"), Path(f"{db}-shm"), wh, Path(f"{wh}.wal"), self.world_file, self.models_dir,
                self.lake_dir, ml, Path(f"{ml}-wal"), Path(f"{ml}-shm")]



# A data folder whose PostgreSQL stores were copied with it (`mlopsdb.clone_home`) names the copy's database here
# (owner-only: a URL may hold a password); it wins over RETRO_DATABASE_URL, which names the database of folders
# without it (docs/postgres.md).
DATABASE_URL_FILE = ".database-url"
# A data folder holds this file; the platform creates stores only in a folder that holds it (or that it may
# make one of), never in an unrelated folder someone pointed --home or RETRO_HOME at.
MARKER = ".retro-home"
# A folder from an older version (no marker yet) is recognised by the stores it holds; the marker is written then.
LEGACY_MARKERS = ("retro.db", "mlops.db", "secrets.toml", "warehouse.duckdb", "world.npz", ".first-start.json")
MARKERS = (MARKER, *LEGACY_MARKERS)
IGNORED = (".gitkeep",)       # an otherwise empty folder (the project's own data/) is still empty


def folder_state(path: Path) -> str:
    """'missing', 'data' (marker or an older version's stores), 'empty', or 'foreign' (other files only)."""
    if not path.exists():
        return "missing"
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder")
    names = {p.name for p in path.iterdir()}
    if MARKER in names or any(_ours(path / name) for name in names & set(LEGACY_MARKERS)):
        return "data"
    return "empty" if names <= set(IGNORED) else "foreign"


# How each store of an older version begins (so another program's mlops.db or secrets.toml is not taken for ours).
_SIGNATURES = {"retro.db": (0, b"SQLite format 3\0"), "mlops.db": (0, b"SQLite format 3\0"),
               "world.npz": (0, b"PK"), "warehouse.duckdb": (8, b"DUCK"), "secrets.toml": (None, b"["),
               ".first-start.json": (None, b'"state"')}


def _ours(file: Path) -> bool:
    """Whether `file` looks like the store of that name this platform writes."""
    offset, signature = _SIGNATURES[file.name]
    try:
        with open(file, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    if not head and file.name.endswith(".db"):   # sqlite3.connect creates the file empty until its first write
        return True
    if offset is None:      # text files: secrets.toml holds [pseudonymization]/[operators], the progress file a state
        return (b"[pseudonymization]" in head or b"[operators]" in head) if file.name == "secrets.toml" \
            else signature in head
    return head[offset:offset + len(signature)] == signature


def _mark(path: Path) -> None:
    marker = path / MARKER
    if marker.exists():
        return
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"Retro Movies data folder (python -m core): the platform writes its stores only into "
                     b"folders holding this file.\n")
    finally:
        os.close(fd)


def _make_home(path: Path, create: bool) -> None:
    """Make sure `path` is a data folder, marked and owner-only (0700), or refuse without writing anything.

    A missing folder is created (with `create`), an empty one becomes a data folder (with `create`), a folder of an
    older version (stores, no marker) gets the marker; a folder holding anything else is refused: no store is
    created in it and its mode is left alone. A shared sticky folder (like /tmp) is never chmod-ed."""
    state = folder_state(path)
    if state == "foreign":
        raise NotADataFolder(f"{path} is not a data folder (it holds other files and no {MARKER}); nothing was "
                             "written — give a new or empty folder, or an existing data folder")
    if state in ("missing", "empty") and not create:
        raise NoDataFolder(f"no data folder at {path}; run `python -m core init` or `import-movielens` first")
    if state == "missing":
        private_dir(path)
    elif not path.stat().st_mode & stat.S_ISVTX:
        private_dir(path)
    _mark(path)


# What each integer override may be (a seed NumPy and `implicit` accept, at least one resample, ...).
INT_RANGES = {"seed": (0, 2**32 - 1), "demo_users": (1, 10_000_000), "demo_movies": (10, 10_000_000),
              "demo_days": (0, 3650), "gate_min_users": (1, 10**9), "gate_staleness_days": (0, 36500),
              "gate_bootstrap_resamples": (10, 1_000_000), "drift_min_observations": (1, 10**9),
              "explore_pool": (1, 100_000), "gate_min_ess": (1, 10**9), "ads_slot": (1, 101),
              "ease_max_memory_mb": (1, 10**8)}


def load_settings(home: str | os.PathLike | None = None, *, create: bool = True) -> Settings:
    """Settings for `home`, else $RETRO_HOME, else the project's `data/` folder (created owner-only, 0700).

    With `create=False` a folder that does not exist (or is empty) raises NoDataFolder and nothing is created:
    reading commands must not leave an empty data folder behind (only `init`/`import-movielens` and the
    dashboard's first start create one). A folder that is not a data folder raises NotADataFolder either way
    (`folder_state`, the marker `.retro-home`)."""
    chosen = home or os.environ.get(HOME_ENV) or DEFAULT_HOME
    path = Path(chosen).expanduser().resolve()
    _make_home(path, create)
    overrides = {}
    for name in ("demo_users", "demo_movies", "demo_days", "seed", "gate_min_users", "gate_staleness_days",
                 "gate_bootstrap_resamples", "drift_min_observations", "explore_pool", "gate_min_ess",
                 "impressions_per_minute", "server_max_connections", "ads_slot", "ease_max_memory_mb"):
        raw = os.environ.get(f"RETRO_{name.upper()}")
        if raw:
            try:
                overrides[name] = int(raw)
            except ValueError:
                raise ValidationError(f"RETRO_{name.upper()} must be an integer, got {raw!r}") from None
            lo, hi = INT_RANGES.get(name, (None, None))
            if lo is not None and not lo <= overrides[name] <= hi:
                raise ValidationError(f"RETRO_{name.upper()} must be an integer in {lo}..{hi}, got {raw!r}")
    for name in ("explore_share", "explore_near", "explore_far"):
        raw = os.environ.get(f"RETRO_{name.upper()}")
        if raw:
            try:
                value = float(raw)
            except ValueError:
                raise ValidationError(f"RETRO_{name.upper()} must be a number in [0, 1], got {raw!r}") from None
            if not 0.0 <= value <= 1.0:
                raise ValidationError(f"RETRO_{name.upper()} must be a number in [0, 1], got {raw!r}")
            overrides[name] = value
    for name in ("server_header_timeout", "server_body_timeout"):
        raw = os.environ.get(f"RETRO_{name.upper()}")
        if raw:
            try:
                value = float(raw)
            except ValueError:
                value = -1.0
            if not 0.0 < value <= 3600.0:
                raise ValidationError(f"RETRO_{name.upper()} must be seconds in (0, 3600], got {raw!r}")
            overrides[name] = value
    if overrides.get("impressions_per_minute", 1) < 1:
        raise ValidationError("RETRO_IMPRESSIONS_PER_MINUTE must be at least 1")
    if overrides.get("server_max_connections", 0) < 0:
        raise ValidationError("RETRO_SERVER_MAX_CONNECTIONS must be 0 (automatic) or a positive number")
    if overrides.get("explore_near", Settings.explore_near) + overrides.get("explore_far", Settings.explore_far) > 1:
        raise ValidationError("RETRO_EXPLORE_NEAR + RETRO_EXPLORE_FAR must be at most 1 (a slot swaps at most once)")
    engine = os.environ.get("RETRO_ENGINE") or "embedded"
    if engine not in ENGINES:
        raise ValidationError(f"RETRO_ENGINE must be one of {', '.join(ENGINES)}, got {engine!r}")
    overrides["engine"] = engine
    overrides["spark_master"] = os.environ.get("RETRO_SPARK_MASTER") or "local[*]"
    overrides["lake_uri"] = os.environ.get("RETRO_LAKE_URI") or None
    url = (os.environ.get("RETRO_DATABASE_URL") or "").strip() or None
    pinned = path / DATABASE_URL_FILE        # a copied folder names its own copy of the database (clone_home)
    if pinned.is_file():
        url = pinned.read_text().strip() or None
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise ValidationError(f"RETRO_DATABASE_URL must be a postgresql:// URL (unset: SQLite files in the data "
                              f"folder), got {url.split('@')[-1]!r}")
    overrides["database_url"] = url
    overrides["cli_role"] = (os.environ.get("RETRO_CLI_ROLE") or "admin").strip()
    views = (os.environ.get("RETRO_DEMO_PERSONAL_VIEWS") or "auto").strip().lower()
    if views not in DEMO_VIEW_CHOICES:
        raise ValidationError(f"RETRO_DEMO_PERSONAL_VIEWS must be one of {', '.join(DEMO_VIEW_CHOICES)}, got {views!r}")
    overrides["demo_personal_views"] = views
    return Settings(home=path, **overrides)
