"""First start: an empty data folder gets an operator, the demo world and a first production model.

`make run` starts `python -m core first-start` in the terminal and the dashboard at
the same time. The build writes its progress to RETRO_HOME/.first-start.json
(`state` running/done/error, `fraction` 0..1, `message`, `pid`, `started_at`,
stage times), so the terminal's progress line and every browser session show the
same build. Only one builder runs: it holds the store lock for the whole build
(ETL and retraining take the same lock), and a second caller follows the running
build's status file instead of building again. The operator token is created and
announced first, before the world is built.
"""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from typing import Callable

from core.store import locks, mlopsdb, opsdb
from core.training import registry
from core.simulation import simulation
from core.filemodes import FILE_MODE
from core.settings import Settings

STATUS_FILE = ".first-start.json"
Announce = Callable[[str], None]


def ops_store_exists(settings: Settings) -> bool:
    """Whether the operational store has been created (its file, or its PostgreSQL schema): the dashboard's
    cheap first look, which may not name a store module."""
    return opsdb.exists(settings)


def needs_demo_world(settings: Settings) -> bool:
    """True when the folder holds neither a simulated world nor imported data, or when a first start that
    was building the world died before finishing it (a half-built world is rebuilt, not trained on)."""
    if not simulation.has_world(settings) and not opsdb.holds_data(settings):
        return True
    status = read_status(settings)
    return bool(status and not status.get("world_done", True) and not _alive(status))


def needs_first_model(settings: Settings) -> bool:
    """No model in production and no first start has finished here. A first retrain the gate refused (e.g. a holdout
    too small to judge) is not retried on every page visit: the Overview says so and an operator retrains."""
    if mlopsdb.exists(settings) and registry.production(settings) is not None:
        return False
    status = read_status(settings)
    return not (status and status.get("state") == "done")


def needs_build(settings: Settings) -> bool:
    return needs_demo_world(settings) or needs_first_model(settings)


# ------------------------------------------------------------------ status file
def status_path(settings: Settings):
    return settings.home / STATUS_FILE


def read_status(settings: Settings) -> dict | None:
    """The last first start's status, or None when there is none (or it cannot be read)."""
    try:
        return json.loads(status_path(settings).read_text())
    except (OSError, ValueError):
        return None


def _write_status(settings: Settings, status: dict) -> None:
    """Atomically (temporary file renamed over the old one), owner-only, so a reader never sees half a file."""
    path = status_path(settings)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as fh:
        json.dump(status, fh)
    os.replace(tmp, path)


def _alive(status: dict) -> bool:
    pid = status.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # exists, owned by someone else
        return True
    return True


def build_running(settings: Settings) -> dict | None:
    """The status of a first start that is building right now (its process alive), else None."""
    status = read_status(settings)
    if status and status.get("state") == "running" and _alive(status):
        return status
    return None


def follow(settings: Settings, progress: simulation.Progress = simulation._noop, poll: float = 0.25) -> dict | None:
    """Show a running build's progress until it ends; returns its final status."""
    while (status := build_running(settings)) is not None:
        progress(float(status.get("fraction", 0.0)), str(status.get("message", "")))
        time.sleep(poll)
    return read_status(settings)


# ------------------------------------------------------------------ the build
def token_message(settings: Settings, token: str) -> str:
    return (f"\n  Retro Movies operator login for {settings.home}: name 'admin', token {token}\n"
            f"  (stored hashed in {settings.home / 'secrets.toml'}; add operators with `python -m core operators add NAME --role ROLE`)\n")


def _announce_operator(settings: Settings, announce: Announce | None) -> str | None:
    from core.privacy.access import ensure_operator
    token = ensure_operator(settings)
    if token and announce is not None:
        announce(token)
    return token


def ensure_operator(settings: Settings, announce: Announce | None = None, lock_timeout: float = 1.0) -> str | None:
    """Create operator 'admin' if there is none and announce its token; cheap when one exists (every page run).

    The store lock keeps a concurrent first start from creating a second token; if a long job holds it, the
    operator is created on a later call."""
    from core.privacy.access import operators
    if operators(settings):
        return None
    try:
        with locks.store_lock(settings, "first start", timeout=lock_timeout):
            return _announce_operator(settings, announce)
    except locks.StoreBusy:
        return None


def ensure_demo_world(settings: Settings, progress: simulation.Progress = simulation._noop,
                      needed: bool | None = None) -> bool:
    """Build the default demo world if the folder is empty (or `needed`); returns whether it built one."""
    if not (needs_demo_world(settings) if needed is None else needed):
        return False
    simulation.init_world(settings, seed=settings.seed, users=settings.demo_users, movies=settings.demo_movies,
                          days=settings.demo_days, force=True, progress=progress)
    return True


def grow_world(settings: Settings, days: int, progress: simulation.Progress = simulation._noop,
               etl: bool = True) -> dict:
    """Simulate `days` more days of the world (open loop, as the first start did; new users sign up on the way),
    then (`etl`) run the ETL so the warehouse — what the Churn page, the Data page and the next retrain read —
    holds them at once. Progress: "simulating day d (i/n)" for 90 % of the bar, then the ETL's stage.

    The first start builds a small world so the dashboard is ready quickly; this makes it richer. The new
    days reach the recommender with the next retrain. Returns simulate's summary, the store counts under
    "stats" and, with `etl`, {"status", "data_version", "rows_loaded", "rows_quarantined"} under "etl"."""
    from core import bounds
    days = bounds.check_int(days, "days", 1, 365)
    share = 0.9 if etl else 1.0
    summary = simulation.simulate(settings, days, progress=lambda f, m: progress(share * f, m))
    if etl:
        from core.warehouse import etl as warehouse_etl
        progress(share, f"ETL: loading the {days} new days into the warehouse")
        loaded = warehouse_etl.run(settings)
        summary["etl"] = {"status": loaded.status, "data_version": loaded.data_version,
                          "rows_loaded": loaded.rows_loaded, "rows_quarantined": loaded.rows_quarantined}
        progress(1.0, f"ETL: {loaded.status}, {loaded.rows_loaded:,} rows loaded")
    with opsdb.session(settings) as db:
        summary["stats"] = opsdb.counts(db)
    return summary


def ensure_ready(settings: Settings, progress: simulation.Progress = simulation._noop,
                 world: bool | None = None) -> dict:
    """World (if the folder is empty, or `world`) then a first retrain without its ranker (if nothing is in
    production); "pending" names what `follow_up` still has to do — the ranker and the first churn model — so the
    first start can draw the Overview with CF alone and let them follow."""
    from core.training.pipeline import retrain
    built = ensure_demo_world(settings, lambda f, m: progress(0.8 * f, m), needed=world)
    trained = None
    pending: list[str] = []
    if needs_first_model(settings):
        trained = retrain(settings, trigger="first-start", with_ranker=False,
                          progress=lambda f, m: progress(0.8 + 0.2 * f, m))
        pending = list(FOLLOW_UPS)
    progress(1.0, "ready")
    return {"built_world": built, "first_retrain": trained, "first_churn": None, "pending": pending}


FOLLOW_UPS = ("ranker", "churn")   # trained after the first start's "ready" (`follow_up`), in this order


def follow_up(settings: Settings, progress: simulation.Progress = simulation._noop) -> dict:
    """The ranker and the first churn model, trained after the first start said "ready": the Overview is drawn
    with CF alone meanwhile (the ranker re-ranks; nothing else waits for them), and every page says what is still
    training (`following`). The status file's "following" shrinks as each finishes; its "seconds" gain "ranker"
    and "churn", "follow_up" its totals. A ranker that cannot be trained (too little data) leaves CF serving alone,
    as the retrain pipeline does; the result says why."""
    status = read_status(settings) or {}
    status.setdefault("seconds", {})
    t0, cpu0 = time.perf_counter(), time.process_time()
    status.update(following=list(FOLLOW_UPS), follow_up={"pid": os.getpid(), "state": "running"})
    _write_status(settings, status)
    try:
        out = _train_follow_ups(settings, status, progress)
    except BaseException as exc:     # the status must not keep saying "training in the background"
        status.update(following=[], follow_up={"pid": os.getpid(), "state": "error", "error": f"{type(exc).__name__}: "
                                                                                             f"{exc}"})
        _write_status(settings, status)
        raise
    status["follow_up"] = {"pid": os.getpid(), "state": "done", "seconds": round(time.perf_counter() - t0, 2),
                           "cpu": round(time.process_time() - cpu0, 2)}
    status["message"] = "ready"
    _write_status(settings, status)
    progress(1.0, "ready; the ranker and the churn model trained")
    return out


def _train_follow_ups(settings: Settings, status: dict, progress: simulation.Progress) -> dict:
    from core.errors import RetroError
    from core.training.pipeline import ranker_status, train_ranker
    out: dict = {}
    for name in FOLLOW_UPS:
        status["message"] = f"{name}: training in the background"
        _write_status(settings, status)
        started = time.perf_counter()
        if name == "ranker":
            if registry.production(settings) is None or ranker_status(settings)["active"]:
                out["first_ranker"] = None            # no CF model to re-rank, or a ranker serves already
            else:
                try:
                    out["first_ranker"] = train_ranker(settings, progress=lambda f, m: progress(1.0, f"ready; {m}"))
                except RetroError as exc:
                    out["first_ranker"] = {"error": str(exc)}
        else:
            out["first_churn"] = first_churn_model(settings, lambda f, m: progress(1.0, f"ready; {m}"))
        status["seconds"][name] = round(time.perf_counter() - started, 2)
        status["following"] = [f for f in status["following"] if f != name]
        _write_status(settings, status)
    return out


def following(settings: Settings) -> list[str]:
    """What the first start is still training in the background ("ranker", "churn"), while its process lives."""
    status = read_status(settings) or {}
    names = status.get("following") or []
    return list(names) if names and _alive(status.get("follow_up") or {}) else []


def first_churn_model(settings: Settings, progress: simulation.Progress = simulation._noop) -> dict:
    """The first churn model and today's scores, so the Churn page has something to show on a fresh machine;
    a world too short for its time split gets none (the page says how many days it needs)."""
    from core.training import churn, churn_pipeline
    from core.training.registry import production
    if production(settings, family=churn.FAMILY) is not None:
        return {"skipped": "a churn model is already in production"}
    try:
        result = churn_pipeline.train(settings, progress=progress)
    except churn.NotEnoughHistory as exc:
        return {"skipped": str(exc)}
    if result["promoted"]:
        churn_pipeline.score(settings)
    return {"version": result["version"], "promoted": result["promoted"], "roc_auc": result["metrics"]["roc_auc"]}


def first_start(settings: Settings, progress: simulation.Progress = simulation._noop,
                announce: Announce | None = None, lock_poll: float = 1.0) -> dict:
    """Operator token (announced at once), then the demo world and first model, with progress in the status file.

    Returns {"built": bool, "followed": bool, "token_created": bool, "status": the final status or None}.
    A build that another process or session is running is followed (its progress passed to `progress`),
    never started twice; a folder that needs nothing only gets its operator (if it has none).
    The status says "done" once CF serves — a dashboard following the build draws the Overview then — and the
    ranker and churn model follow (`follow_up`) before this returns, outside the store lock (their trainings take
    it themselves), with `progress` going on.
    """
    while True:
        if not needs_build(settings):
            token = ensure_operator(settings, announce, lock_poll)
            return {"built": False, "followed": False, "token_created": bool(token), "status": read_status(settings)}
        if build_running(settings):
            return {"built": False, "followed": True, "token_created": False, "status": follow(settings, progress)}
        entered = False
        try:
            with locks.store_lock(settings, "first start", timeout=lock_poll):
                entered = True
                result = _build(settings, progress, announce)
            break
        except locks.StoreBusy:
            if entered:
                raise
            progress(0.0, "waiting for another job in the data folder to finish")
    if result.get("pending"):
        result.update(follow_up(settings, progress))
        result["status"] = read_status(settings)
    return result


def _build(settings: Settings, progress: simulation.Progress, announce: Announce | None) -> dict:
    """Holding the store lock: operator first, then world and model, the status file kept current."""
    token = _announce_operator(settings, announce)
    if not needs_build(settings):    # someone finished it while we waited for the lock
        return {"built": False, "followed": False, "token_created": bool(token), "status": read_status(settings)}
    t0, cpu0 = time.perf_counter(), time.process_time()
    status = {"state": "running", "pid": os.getpid(), "fraction": 0.0, "message": "starting",
              "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "world_done": False,
              "world": {"users": settings.demo_users, "movies": settings.demo_movies, "days": settings.demo_days},
              "seconds": {}, "error": None}
    world_needed = needs_demo_world(settings)
    stage = {"name": "world" if world_needed else "etl", "t": t0}
    status["world_done"] = not world_needed
    _write_status(settings, status)

    def update(fraction: float, message: str) -> None:
        etl = message.startswith("ETL")
        name = ("world" if not status["world_done"] and not etl else "etl" if etl
                else "ranker" if "ranker" in message else "churn" if message.startswith("churn")
                else "train" if fraction < 1.0 else stage["name"])
        now = time.perf_counter()
        if name != stage["name"]:    # a stage may come back ("done: …" after the ranker): its seconds add up
            status["seconds"][stage["name"]] = round(status["seconds"].get(stage["name"], 0.0) + now - stage["t"], 2)
            stage.update(name=name, t=now)
        if name != "world" or message == "world ready":
            status["world_done"] = True
        status.update(fraction=round(min(max(float(fraction), 0.0), 1.0), 4), message=message)
        _write_status(settings, status)
        progress(fraction, message)

    try:
        result = ensure_ready(settings, progress=update, world=world_needed)
    except BaseException as exc:      # KeyboardInterrupt too: the status must not stay 'running'
        status.update(state="error", error=f"{type(exc).__name__}: {exc}", message=f"first start failed: {exc}")
        _write_status(settings, status)
        raise
    now = time.perf_counter()
    status["seconds"][stage["name"]] = round(status["seconds"].get(stage["name"], 0.0) + now - stage["t"], 2)
    status["seconds"]["total"] = round(now - t0, 2)
    status["seconds"]["cpu"] = round(time.process_time() - cpu0, 2)   # every thread of this process
    status.update(state="done", fraction=1.0, message="ready", world_done=True,
                  finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if result.get("pending"):     # every page says so until `follow_up` has trained them
        status.update(following=list(result["pending"]), follow_up={"pid": os.getpid(), "state": "waiting"},
                      message="ready; the " + " and ".join(result["pending"]) + " follow in the background")
    _write_status(settings, status)
    return {"built": True, "followed": False, "token_created": bool(token), "status": status,
            "built_world": result["built_world"], "first_retrain": result["first_retrain"],
            "first_churn": result["first_churn"], "pending": result.get("pending", [])}
