"""The model registry: versions, their stage, and an append-only history of every change.

A finished run is registered as a 'candidate' version; `promote` makes a
version 'production' and archives the one it replaces; `rollback` brings back
the version that served before the current one. Production is unique per
*family* — models that answer the same question and replace each other:
'cf' (collaborative filtering: 'als', 'bpr', 'ease', 'blend'), 'ranker' (a re-ranking model
that `depends_on` a cf version) and 'churn' (who is about to leave; `depends_on` the cf version serving when
it was trained, since one of its features is how users respond to the served lists) and 'ads' (click-through of a
sponsored slot; `depends_on` the cf version whose genre affinities it was trained with, the churn version in its
run's params). Every transition is a `registry_events` row
with actor, reason and, when a gate decided, its `GateDecision`, so "which
model served at time T" is answered from the history (`production_at`).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.store import mlopsdb
from core.errors import RetroError, ValidationError
from core.training.gate import GateDecision
from core.store.mlopsdb import dumps, timestamp
from core.settings import Settings
from core.training.tracking import UnknownRun, decode_json_fields, flatten_metrics, run_row

CF = "cf"
RANKER = "ranker"
CHURN = "churn"
ADS = "ads"
MODEL_FAMILIES: dict[str, str] = {"als": CF, "bpr": CF, "ease": CF, "blend": CF, "ranker": RANKER, "churn_gb": CHURN, "ads_gb": ADS}
FAMILIES = (CF, RANKER, CHURN, ADS)
STAGES = ("candidate", "production", "archived")
PIPELINE_ACTOR = "pipeline"
VERSION_JSON_FIELDS = ("metrics", "params")
VERSION_COLUMNS = ["version", "model_kind", "family", "stage", "created_at", "run_id", "data_version",
                   "depends_on", "artifact_path", "artifact_hash"]
EVENT_COLUMNS = ["event_id", "version", "model_kind", "family", "from_stage", "to_stage", "at", "actor",
                 "reason", "gate"]


class UnknownVersion(RetroError):
    """A model version that is not in the registry."""


class InvalidTransition(RetroError):
    """A stage change that makes no sense (promoting the production model, archiving it, ...)."""


class BelowBaselines(RetroError):
    """A CF version whose holdout nDCG@10 does not beat the popularity and Top 50 baselines (promotion needs force)."""


class NothingToRollBack(RetroError):
    """No earlier production version of the family to return to."""


def family_of(model_kind: str) -> str:
    """The family a model kind competes in for production ('als', 'bpr' → 'cf')."""
    try:
        return MODEL_FAMILIES[model_kind]
    except KeyError:
        known = ", ".join(f"{k!r}→{v!r}" for k, v in MODEL_FAMILIES.items())
        raise ValidationError(f"model kind {model_kind!r} has no family (known: {known}); "
                              "pass family= to register it or add it to registry.MODEL_FAMILIES") from None


# --- writes ------------------------------------------------------------------

def register(settings: Settings, run_id: int, at: str | None = None, depends_on: int | None = None,
             family: str | None = None) -> int:
    """Register a finished run as a new 'candidate' version and return the version number.

    Model kind, artifact, data version, metrics and params are copied from the
    run; the family comes from the model kind unless given.
    """
    when = timestamp(at, settings)
    with mlopsdb.write_session(settings) as db:
        run = run_row(db, run_id)
        if run is None:
            raise UnknownRun(f"no experiment run with id {run_id}; only recorded runs can be registered")
        if run["status"] != "finished":
            raise ValidationError(f"run {run_id} is {run['status']}; only a finished run can be registered")
        existing = db.execute("SELECT version FROM model_versions WHERE run_id = ?", [run_id]).fetchone()
        if existing:
            raise ValidationError(f"run {run_id} is already registered as version {existing[0]}")
        if depends_on is not None:
            _version_row(db, depends_on)
        with db.atomic():
            db["model_versions"].insert({
                "run_id": run_id, "model_kind": run["model_kind"],
                "family": family or family_of(run["model_kind"]), "created_at": when, "stage": "candidate",
                "artifact_path": run["artifact_path"], "artifact_hash": run["artifact_hash"],
                "data_version": run["data_version"], "metrics": run["metrics"], "params": run["params"],
                "depends_on": depends_on,
            })
            version = db.execute("SELECT last_insert_rowid()").fetchone()[0]
            _event(db, version, None, "candidate", when, PIPELINE_ACTOR, f"registered from run {run_id}", None)
    return version


def baseline_floor(run: dict) -> dict:
    """Whether a CF run's holdout nDCG@10 beats both baselines measured on the same holdout.

    {"passes", "ndcg@10", "popularity", "top50"}; a run without recorded baselines passes (nothing to compare).
    When the run's exploration log was big enough for the gate to decide on it (`baselines["counterfactual"]`,
    issue 22), that floor replaces the holdout's: {"passes", "decided_by": "counterfactual", values}.
    """
    metrics = mlopsdb.loads(run.get("metrics")) or {}
    baselines = mlopsdb.loads(run.get("baselines")) or {}
    score = metrics.get("ndcg@10")
    floor = {name: (baselines.get(name) or {}).get("ndcg@10") for name in ("popularity", "top50")}
    known = [v for v in floor.values() if isinstance(v, (int, float))]
    passes = score is None or not known or score > max(known)
    cf = baselines.get("counterfactual") or {}
    if cf.get("decides"):
        return {"passes": bool(cf.get("passes")), "ndcg@10": score, **floor, "decided_by": "counterfactual",
                "watches_per_list": cf.get("values")}
    return {"passes": bool(passes), "ndcg@10": score, **floor}


def promote(settings: Settings, version: int, actor: str, reason: str,
            gate: GateDecision | dict | None = None, at: str | None = None, force: bool = False) -> int | None:
    """Make `version` the production model of its family; return the version it replaced (or None).

    The replaced production version goes to 'archived'. Both transitions are
    recorded with `actor`, `reason` and the gate decision, in one transaction.
    A candidate or an archived version may be promoted (re-promoting an
    archived one is how a manual rollback to any older model works).
    Baselines are a floor on every promotion path: a CF version whose holdout nDCG@10 does not beat the
    popularity and Top 50 baselines raises `BelowBaselines` unless `force`, and a forced promotion is
    recorded as forced (with the numbers) in the registry event.
    """
    _require_text(actor, "actor", "who decides, e.g. 'pipeline' or an operator's name")
    _require_text(reason, "reason", "why, e.g. 'gate passed' or 'manual re-promotion after incident'")
    when = timestamp(at, settings)
    gate = gate.to_dict() if isinstance(gate, GateDecision) else gate
    with mlopsdb.session(settings) as db:
        row = _version_row(db, version)
        run = run_row(db, row["run_id"]) or {}
    if row["family"] == CF:
        floor = baseline_floor(run)
        if not floor["passes"]:
            numbers = (f"nDCG@10 {floor['ndcg@10']:.4f} vs popularity {floor['popularity']:.4f}, "
                       f"Top 50 {floor['top50']:.4f} on its holdout")
            if not force:
                raise BelowBaselines(f"v{version} does not beat its baselines ({numbers}); promote it with force "
                                     "(CLI: --force) only if you mean it — the promotion is recorded as forced")
            gate = {"promote": True, "forced": True, "reasons": [f"forced by {actor}: under its baselines ({numbers})"],
                    "checks": {"baselines": {"passed": False, **floor}}, "previous_gate": gate}
    gate_json = dumps(gate)
    with mlopsdb.write_session(settings) as db:
        row = _version_row(db, version)
        if row["stage"] == "production":
            raise InvalidTransition(f"version {version} is already the production model of family "
                                    f"{row['family']!r}; promote another version or roll back instead")
        current = _production_row(db, row["family"])
        with db.atomic():
            if current is not None:
                _move(db, current, "archived", when, actor, reason, gate_json)
            _move(db, row, "production", when, actor, reason, gate_json)
            mlopsdb.audit_in(db, f"v{version}")     # an operator's promotion commits with its audit row
    return None if current is None else current["version"]


def rollback(settings: Settings, actor: str, reason: str, at: str | None = None, family: str = CF) -> int:
    """Re-promote the version that was in production immediately before the current one; return it.

    The current production version goes to 'archived'. "Immediately before" is
    read from the event history, so a second rollback undoes the first; to go
    further back, `promote` the archived version you want.
    """
    _require_text(actor, "actor", "who decides, e.g. an operator's name")
    _require_text(reason, "reason", "why the production model is being rolled back")
    when = timestamp(at, settings)
    with mlopsdb.write_session(settings) as db:
        current = _production_row(db, family)
        if current is None:
            raise NothingToRollBack(f"family {family!r} has no production model, so there is nothing to roll back")
        entries = [r[0] for r in db.execute(
            """SELECT e.version FROM registry_events e JOIN model_versions v ON v.version = e.version
               WHERE v.family = ? AND e.to_stage = 'production' ORDER BY e.at, e.event_id""", [family])]
        earlier = [v for v in entries[:_last_index(entries, current["version"])] if v != current["version"]]
        if not earlier:
            raise NothingToRollBack(f"version {current['version']} is the first production model of family "
                                    f"{family!r}; there is no earlier version to roll back to")
        previous = _version_row(db, earlier[-1])
        with db.atomic():
            _move(db, current, "archived", when, actor, reason, None)
            _move(db, previous, "production", when, actor, reason, None)
            mlopsdb.audit_in(db, f"v{previous['version']}")
    return previous["version"]


def archive(settings: Settings, version: int, actor: str, reason: str, at: str | None = None) -> None:
    """Retire a candidate version. The production model cannot be archived directly:
    promote its replacement or roll back, so the family is never left without one."""
    _require_text(actor, "actor", "who decides")
    _require_text(reason, "reason", "why the version is retired")
    when = timestamp(at, settings)
    with mlopsdb.write_session(settings) as db:
        row = _version_row(db, version)
        if row["stage"] == "production":
            raise InvalidTransition(f"version {version} is in production; promote another version or roll back "
                                    "instead of archiving it")
        if row["stage"] == "archived":
            raise InvalidTransition(f"version {version} is already archived")
        with db.atomic():
            _move(db, row, "archived", when, actor, reason, None)


def require_cf(row: dict, purpose: str) -> dict:
    """`row` when it is a collaborative-filtering version; else a ValidationError that says `purpose` needs one
    and where the other family's own commands are (a churn or ranker version has no CF bundle to load)."""
    family = row.get("family") or family_of(row["model_kind"])
    if family == CF:
        return row
    v = row["version"]
    hint = {CHURN: f"; for a churn version use `python -m core churn evaluate --version {v}` or `model-card {v}`",
            ADS: f"; for an ads version use `model-card {v}`",
            RANKER: f"; a ranker is judged with its CF version v{row.get('depends_on')}"}.get(family, "")
    raise ValidationError(f"v{v} is a {family} model ({row['model_kind']}); {purpose} needs a collaborative-filtering "
                          f"version{hint}")


# --- reads -------------------------------------------------------------------

def get_version(settings: Settings, version: int) -> dict:
    """One version as a dict, metrics and params decoded."""
    with mlopsdb.session(settings) as db:
        return mlopsdb.resolve_artifact(settings, decode_json_fields(_version_row(db, version), VERSION_JSON_FIELDS))


def production(settings: Settings, model_kind: str | None = None, family: str = CF) -> dict | None:
    """The current production version (metrics/params decoded), or None.

    By default the production model of `family` ('cf': whichever of als/bpr
    serves); with `model_kind`, only if the production model is of that kind.
    """
    with mlopsdb.session(settings) as db:
        if model_kind is not None:
            rows = list(db.query("SELECT * FROM model_versions WHERE stage = 'production' AND model_kind = ?",
                                 [model_kind]))
            row = rows[0] if rows else None
        else:
            row = _production_row(db, family)
    return None if row is None else mlopsdb.resolve_artifact(settings, decode_json_fields(row, VERSION_JSON_FIELDS))


def list_versions(settings: Settings) -> pd.DataFrame:
    """Every version, newest first, one column per numeric metric (e.g. 'ndcg@10')."""
    with mlopsdb.session(settings) as db:
        rows = list(db.query("SELECT * FROM model_versions ORDER BY version DESC"))
    records = []
    for row in rows:
        record = mlopsdb.resolve_artifact(settings, {c: row[c] for c in VERSION_COLUMNS})
        flatten_metrics(record, mlopsdb.loads(row["metrics"]), VERSION_COLUMNS)
        records.append(record)
    if not records:
        return pd.DataFrame(columns=VERSION_COLUMNS)
    frame = pd.DataFrame.from_records(records)
    return frame[VERSION_COLUMNS + [c for c in frame.columns if c not in VERSION_COLUMNS]]


def history(settings: Settings, version: int | None = None) -> pd.DataFrame:
    """Registry events in time order (all, or one version's); `gate` stays JSON text."""
    where, args = ("WHERE e.version = ?", [version]) if version is not None else ("", [])
    with mlopsdb.session(settings) as db:
        if version is not None:
            _version_row(db, version)
        rows = list(db.query(
            f"""SELECT e.event_id, e.version, v.model_kind, v.family, e.from_stage, e.to_stage, e.at, e.actor,
                       e.reason, e.gate
                FROM registry_events e JOIN model_versions v ON v.version = e.version
                {where} ORDER BY e.at, e.event_id""", args))
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def _replay(settings: Settings, when: str, family: str):
    """(event time, the production version after that event) for every event of `family` up to `when`, in order."""
    serving = None
    with mlopsdb.session(settings) as db:
        rows = db.execute("""SELECT e.version, e.to_stage, e.at FROM registry_events e
                             JOIN model_versions v ON v.version = e.version
                             WHERE v.family = ? AND e.at <= ? ORDER BY e.at, e.event_id""", [family, when]).fetchall()
    for version, to_stage, event_at in rows:
        if to_stage == "production":
            serving = version
        elif version == serving:
            serving = None
        yield event_at, serving


def production_at(settings: Settings, at: str, family: str = CF) -> int | None:
    """The version that was in production for `family` at time `at` (inclusive), replayed from the events."""
    serving = None
    for _, serving in _replay(settings, timestamp(at, settings), family):
        pass
    return serving


def production_between(settings: Settings, start: str, end: str, family: str = CF) -> list[int]:
    """Every version of `family` in production at some moment of [start, end], in order of first service."""
    start, end = timestamp(start, settings), timestamp(end, settings)
    before, during = None, []
    for event_at, serving in _replay(settings, end, family):
        if event_at < start:
            before = serving
        else:
            during.append(serving)
    return [v for v in dict.fromkeys([before, *during]) if v is not None]


def promotions_after(settings: Settings, at: str, family: str = CF, after_event: int | None = None) -> list[dict]:
    """Events after `at` that put a version of `family` into production (promotions and rollbacks), oldest first.

    With `after_event` (a registry event id), events in the second `at` itself count when they came after that
    event: a simulated clock stands still between simulated days, so a model registered and a promotion made
    later the same day share one timestamp and only the event order tells which came first."""
    when = timestamp(at, settings)
    with mlopsdb.session(settings) as db:
        return list(db.query("""SELECT e.version, e.at, e.actor, e.reason FROM registry_events e
                                JOIN model_versions v ON v.version = e.version
                                WHERE v.family = ? AND e.to_stage = 'production'
                                  AND (e.at > ? OR (e.at = ? AND e.event_id > ?))
                                ORDER BY e.at, e.event_id""",
                             [family, when, when, -1 if after_event is None else int(after_event)]))


def production_during(settings: Settings, at: str, family: str = CF) -> list[int]:
    """Every version in production at some moment of the second `at`, in order.

    The service clock has one-second resolution and a simulated clock stands still between simulated
    days, so a promotion, the lists served after it and a rollback can share one timestamp: within
    that second they are ordered by the events alone. A list served at `at` agrees with the registry
    when its version is one of these.
    """
    when = timestamp(at, settings)
    before, during = None, []
    for event_at, serving in _replay(settings, when, family):
        if event_at == when:
            during.append(serving)
        else:
            before = serving                     # what served at the start of the second
    return [v for v in dict.fromkeys([before, *during]) if v is not None]


# --- internals ---------------------------------------------------------------

def _require_text(value, name: str, hint: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{name} must be a non-empty text: {hint}")


def _version_row(db, version: int) -> dict:
    return mlopsdb.row_or_raise(db, "model_versions", "version", version, UnknownVersion,
                                f"no model version {version} in the registry", "versions")


def _production_row(db, family: str) -> dict | None:
    rows = list(db.query("SELECT * FROM model_versions WHERE family = ? AND stage = 'production'", [family]))
    return rows[0] if rows else None


def _move(db, row: dict, to_stage: str, at: str, actor: str, reason: str, gate_json: str | None) -> None:
    db.execute("UPDATE model_versions SET stage = ? WHERE version = ?", [to_stage, row["version"]])
    _event(db, row["version"], row["stage"], to_stage, at, actor.strip(), reason.strip(), gate_json)


def _event(db, version: int, from_stage: str | None, to_stage: str, at: str, actor: str, reason: str,
           gate_json: str | None) -> None:
    db["registry_events"].insert({"version": version, "from_stage": from_stage, "to_stage": to_stage, "at": at,
                                  "actor": actor, "reason": reason, "gate": gate_json})


def _last_index(items: list, value) -> int:
    """Index of the last occurrence of `value` in `items` (len(items) when absent)."""
    for i in range(len(items) - 1, -1, -1):
        if items[i] == value:
            return i
    return len(items)


def promotions(settings: Settings, version: int) -> list[dict]:
    """The version's promotions to production in time order: {at, actor, reason, from_stage, gate (decoded)}."""
    with mlopsdb.session(settings) as db:
        return [{"at": at, "actor": actor, "reason": reason, "from_stage": from_stage, "gate": mlopsdb.loads(gate)}
                for at, actor, reason, from_stage, gate in db.execute(
                    "SELECT at, actor, reason, from_stage, gate FROM registry_events WHERE version = ? "
                    "AND to_stage = 'production' ORDER BY at, event_id", [version]).fetchall()]

# --- reads on a caller's connection ------------------------------------------

def production_on(db, settings: Settings, family: str = CF) -> dict | None:
    """The production version of `family` (metrics/params decoded), read on the caller's connection: serving
    keeps one per thread and asks on every request, so a promotion or rollback from any process is seen next."""
    row = _production_row(db, family)
    return None if row is None else mlopsdb.resolve_artifact(settings, decode_json_fields(row, VERSION_JSON_FIELDS))

def version_on(db, settings: Settings, version: int) -> dict:
    """One version (metrics/params decoded, artifact path resolved) read on the caller's connection;
    UnknownVersion when it does not exist."""
    return mlopsdb.resolve_artifact(settings, decode_json_fields(_version_row(db, version), VERSION_JSON_FIELDS))


def candidate_ranker_on(db, settings: Settings, cf_version: int) -> dict | None:
    """The newest candidate ranker trained on CF `cf_version` that beat CF alone on its holdout (a release's
    candidate serves with it, so a canary compares two-stage with two-stage), or None."""
    rows = list(db.query("SELECT * FROM model_versions WHERE family = ? AND depends_on = ? AND stage = 'candidate' "
                         "ORDER BY version DESC", [RANKER, int(cf_version)]))
    for row in rows:
        metrics = mlopsdb.loads(row["metrics"]) or {}
        if metrics.get("beats_cf", (metrics.get("ndcg@10") or 0) > (metrics.get("cf_only_ndcg@10") or 0)):
            return mlopsdb.resolve_artifact(settings, decode_json_fields(row, VERSION_JSON_FIELDS))
    return None


# --- artifacts rewritten in place (an erasure or a key rotation, core/privacy) -----------------------------------
def versions_of_artifact(settings: Settings, directory) -> list[tuple[int, str]]:
    """(version, stage) of every version whose artifact is `directory`."""
    target = Path(directory).resolve()
    with mlopsdb.session(settings) as db:
        rows = db.execute("SELECT version, stage, artifact_path FROM model_versions "
                          "WHERE artifact_path IS NOT NULL").fetchall()
    return [(int(v), stage) for v, stage, path in rows if mlopsdb.artifact_dir(settings, path).resolve() == target]


def artifact_dirs(settings: Settings) -> dict[int, Path]:
    """{version: artifact directory} of every version with an artifact."""
    with mlopsdb.session(settings) as db:
        return {int(v): mlopsdb.artifact_dir(settings, p) for v, p in db.execute(
            "SELECT version, artifact_path FROM model_versions WHERE artifact_path IS NOT NULL")}


def set_artifact_hashes(settings: Settings, hashes: dict) -> int:
    """Record new artifact hashes for the runs and model versions of each directory (one transaction).

    A version's `pending_hash` (announced before an erasure's file swap) is cleared: it is now the hash.
    Returns the runs and versions updated.
    """
    from core.training import tracking
    if not hashes:
        return 0
    targets = {Path(d).resolve(): h for d, h in hashes.items()}
    with mlopsdb.write_session(settings) as db:
        changed = tracking.set_artifact_hashes(db, settings, targets)
        for version, path in db.execute("SELECT version, artifact_path FROM model_versions "
                                        "WHERE artifact_path IS NOT NULL").fetchall():
            digest = targets.get(mlopsdb.artifact_dir(settings, path).resolve())
            if digest is not None:
                db.execute("UPDATE model_versions SET artifact_hash = ? WHERE version = ?", [digest, version])
                changed += 1
        for version, path in db.execute("SELECT version, artifact_path FROM model_versions "
                                        "WHERE pending_hash IS NOT NULL").fetchall():
            if mlopsdb.artifact_dir(settings, path).resolve() in targets:
                db.execute("UPDATE model_versions SET pending_hash = NULL WHERE version = ?", [version])
    return changed


def announce_pending_hash(db, settings: Settings, directory, digest: str) -> None:
    """Before an artifact's files are swapped: the hash `directory` will have, as `pending_hash` of its
    versions (serving accepts it too). On the caller's connection, inside its transaction."""
    target = Path(directory).resolve()
    for version, path in db.execute("SELECT version, artifact_path FROM model_versions "
                                    "WHERE artifact_path IS NOT NULL").fetchall():
        if mlopsdb.artifact_dir(settings, path).resolve() == target:
            db.execute("UPDATE model_versions SET pending_hash = ? WHERE version = ?", [digest, version])


def clear_pending_hash(db, settings: Settings, directory) -> None:
    """Drop the announced hash of `directory`'s versions (a swap that never completed). On the caller's connection."""
    target = Path(directory)
    for version, vpath in db.execute("SELECT version, artifact_path FROM model_versions "
                                     "WHERE pending_hash IS NOT NULL").fetchall():
        if mlopsdb.artifact_dir(settings, vpath).resolve() == target:
            db.execute("UPDATE model_versions SET pending_hash = NULL WHERE version = ?", [version])
