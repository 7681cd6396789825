"""Runs and registered models mirrored into MLflow (`python -m core mlflow export`), for the people who look at
experiments in MLflow's UI. Our own tracking and registry stay the source of truth (they hold more: gate reasons
with intervals, dependencies between families, erasure state); MLflow gets a copy, incrementally.

What goes where (experiment `retro-movies`; one MLflow run per tracked run, tagged `retro.run_id`):
- params: the run's parameters (non-scalars as JSON); metrics: its metrics and baselines (`ndcg@10` →
  `ndcg_at_10`: MLflow refuses '@'; `baseline.popularity.ndcg_at_10`), with `metrics.json` holding the originals;
- tags: `retro.data_version`, `retro.code_version`, `retro.seed`, `retro.engine`, `retro.model_kind`,
  `retro.family`, `retro.status`, `retro.version` (when registered), and the gate decision in brief
  (`retro.gate.promote`, `retro.gate.decided_by`, `retro.gate.delta` = "point [lo, hi]") — in full in `gate.json`;
- artifacts: `gate.json`, `model_card.md` and `model_card.json` (registered versions), `registry_history.json`.
Every registered version of every family becomes a version of the registered model `retro-<family>` (`retro-cf`,
`retro-ranker`, `retro-churn`, `retro-ads`) pointing at the bundle in the data folder (`source`), with tags
`retro.version`, `retro.stage`, `retro.depends_on`, `retro.history`; aliases `production` and `candidate` (the
newest candidate) follow the registry. The production recommender with its ranker is logged as a pyfunc model,
registered as `retro-recommender` (alias `production`): `mlflow.pyfunc.load_model("models:/retro-recommender@production")`
`.predict(pd.DataFrame({"user_id": [...]}))` gives the lists `recommend` shows (deterministic ones; it reads the
service's consent, seen titles and Top 50 from the data folder in its `model_config`, and copies of the bundle and
ranker from its own artifacts).

Incremental: each exported run carries `retro.digest`, a hash of everything exported for it (the run, its gate,
its version's history); a run whose digest is unchanged is not touched, versions and aliases are written only when
they differ, and the pyfunc model is logged again only when production's versions or artifact hashes change (an
erasure rewrites a bundle: the stale copy's run is deleted and, in a local artifact store, its files removed).

MLflow is an optional extra (`pip install -r requirements-mlflow.txt`: mlflow-skinny, SQLAlchemy, alembic);
nothing else imports this module. Default store: `sqlite:///<data folder>/mlflow.db`, artifacts in
`<data folder>/mlartifacts`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd

from core.errors import RetroError
from core.settings import Settings
from core.store.mlopsdb import loads
from core.training import registry, tracking

EXPERIMENT = "retro-movies"
RECOMMENDER = "retro-recommender"
INSTALL = "pip install -r requirements-mlflow.txt"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
HISTORY_TAG_LIMIT = 4500          # MLflow keeps model-version tag values up to 5,000 characters


class MlflowUnavailable(RetroError):
    """The MLflow export was asked for but mlflow (the optional extra) is not installed."""


def _mlflow():
    # Quiet by default: no progress bars on stderr, MLflow's INFO lines (database creation) and its advice about
    # pickled python models (ours is imported by reference from this module) kept out of the command's output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        import mlflow
        from mlflow import MlflowClient
    except ImportError:
        raise MlflowUnavailable(f"the MLflow export needs mlflow, which is not installed: run `{INSTALL}` "
                                "(nothing else in the project needs it)") from None
    logging.getLogger("mlflow").setLevel(logging.ERROR)          # after the import, which sets its own level
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return mlflow, MlflowClient


def check_available() -> None:
    """Raise `MlflowUnavailable` (with the install command) when mlflow is not installed."""
    _mlflow()


def default_uri(settings: Settings) -> str:
    """The store inside the data folder: `sqlite:///<home>/mlflow.db` (MLflow's recommended local backend)."""
    return f"sqlite:///{settings.home / DB_FILE}"


def artifact_root(settings: Settings, tracking_uri: str) -> str | None:
    """Where the experiment keeps artifacts: `<home>/mlartifacts` for a local database store; None (the
    server's own default) for an `http(s)://` tracking server."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    return (settings.home / ARTIFACTS_DIR).as_uri()


def metric_key(name: str) -> str:
    """An MLflow metric name for ours: '@' (refused by MLflow) becomes '_at_' (`ndcg@10` → `ndcg_at_10`)."""
    return name.replace("@", "_at_")


def _ms(text: str | None) -> int | None:
    if not text:
        return None
    ts = pd.Timestamp(text)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.timestamp() * 1000)


def _numbers(prefix: str, values: dict | None) -> dict[str, float]:
    out = {}
    for name, value in (values or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or pd.isna(value):
            continue
        out[f"{prefix}{metric_key(name)}"] = float(value)
    return out


def _param_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text[:6000]


def _gate_of(settings: Settings, run: dict, events: list[dict]) -> dict | None:
    """The gate's decisions about this run: the retrain job's (CF: `result.gate`; ranker: `result.ranker`) and
    every registry transition a gate decided."""
    found: dict = {}
    job_id = run.get("job_id")
    if job_id is not None:
        try:
            result = tracking.get_job(settings, int(job_id))["result"] or {}
        except RetroError:
            result = {}
        if result.get("run_id") == run["run_id"] and result.get("gate"):
            found["job"] = {"job_id": job_id, "promoted": result.get("promoted"), "gate": result["gate"]}
        ranker = result.get("ranker") or {}
        if ranker.get("run_id") == run["run_id"]:
            found["job"] = {"job_id": job_id, "promoted": ranker.get("promoted"), "reasons": ranker.get("reasons")}
    decided = [e for e in events if e.get("gate")]
    if decided:
        found["transitions"] = decided
    return found or None


def _gate_tags(gate: dict | None) -> dict[str, str]:
    if not gate:
        return {}
    decision = (gate.get("job") or {}).get("gate") or (gate.get("transitions") or [{}])[-1].get("gate") or {}
    tags = {}
    if "promote" in decision:
        tags["retro.gate.promote"] = str(bool(decision["promote"])).lower()
    elif "promoted" in (gate.get("job") or {}):
        tags["retro.gate.promote"] = str(bool(gate["job"]["promoted"])).lower()
    checks = decision.get("checks") or {}
    y = checks.get("yardstick") or {}
    interval = y if "point" in y else checks.get("holdout_quality") or checks.get("quality") or {}
    tags["retro.gate.decided_by"] = str(y.get("decided_by", "holdout" if checks else "ranker check"))
    if interval.get("point") is not None:
        lo, hi = interval.get("lo"), interval.get("hi")
        tags["retro.gate.delta"] = f"{interval['point']:.5f} [{lo:.5f}, {hi:.5f}]" if lo is not None and hi is not None \
            else f"{interval['point']:.5f}"
    reasons = decision.get("reasons") or (gate.get("job") or {}).get("reasons") or []
    if reasons:
        tags["retro.gate.reasons"] = "; ".join(str(r) for r in reasons)[:4900]
    return tags


def _events(history: pd.DataFrame, version: int | None) -> list[dict]:
    if version is None:
        return []
    out = []
    for e in history[history["version"] == version].to_dict("records"):
        out.append({"at": e["at"], "from_stage": e["from_stage"] if isinstance(e["from_stage"], str) else None,
                    "to_stage": e["to_stage"], "actor": e["actor"], "reason": e["reason"],
                    "gate": loads(e["gate"]) if isinstance(e["gate"], str) else None})
    return out


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:32]


def export(settings: Settings, tracking_uri: str | None = None, *, pyfunc: bool = True,
           progress=None) -> dict:
    """Mirror every run, every registered version and the production recommender into MLflow at `tracking_uri`
    (default `default_uri(settings)`); only what is new or changed is written. Returns what was written:
    {tracking_uri, experiment_id, runs: {created, updated, unchanged}, versions: {created, updated, unchanged},
    aliases: {model: {alias: version}}, recommender: {logged, version, cf_version, ranker_version} | None}."""
    _, MlflowClient = _mlflow()
    uri = tracking_uri or default_uri(settings)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    say = progress or (lambda *_: None)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        root = artifact_root(settings, uri)
        experiment_id = client.create_experiment(EXPERIMENT, artifact_location=root,
                                                 tags={"retro.home": str(settings.home)})
    else:
        experiment_id = experiment.experiment_id
    exported = {}
    for r in _all_runs(client, experiment_id):
        if "retro.run_id" in r.data.tags:
            exported[int(r.data.tags["retro.run_id"])] = r

    runs = tracking.list_runs(settings, limit=10**9)
    versions = registry.list_versions(settings)
    history = registry.history(settings)
    version_of_run = {int(v["run_id"]): v for v in versions.to_dict("records")}
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    mlflow_run_of: dict[int, str] = {}
    for run_id in sorted(int(r) for r in runs["run_id"]):
        run = tracking.get_run(settings, run_id)
        entry = version_of_run.get(run_id)
        events = _events(history, None if entry is None else int(entry["version"]))
        gate = _gate_of(settings, run, events)
        digest = _digest(run, gate, events, None if entry is None else entry["stage"])
        previous = exported.get(run_id)
        if previous is not None and previous.data.tags.get("retro.digest") == digest:
            counts["unchanged"] += 1
            mlflow_run_of[run_id] = previous.info.run_id
            continue
        say(len(mlflow_run_of) / max(1, len(runs)), f"run {run_id}")
        mlflow_run_of[run_id] = _write_run(settings, client, experiment_id, run, entry, events, gate, digest,
                                           previous)
        counts["created" if previous is None else "updated"] += 1

    version_counts, aliases = _write_versions(client, versions, history, mlflow_run_of)
    recommender = None
    if pyfunc:
        say(0.95, "the production recommender (pyfunc)")
        recommender = _write_recommender(settings, client, experiment_id, uri)
        if recommender is not None and recommender.get("version") is not None:
            aliases[RECOMMENDER] = {"production": recommender["version"]}
    say(1.0, "done")
    return {"tracking_uri": uri, "experiment_id": experiment_id, "runs": counts, "versions": version_counts,
            "aliases": aliases, "recommender": recommender}


def _all_runs(client, experiment_id: str) -> list:
    from mlflow.entities import ViewType
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _write_run(settings, client, experiment_id, run: dict, entry: dict | None, events: list, gate, digest: str,
               previous) -> str:
    from mlflow.entities import Metric, Param, RunTag
    params = run.get("params") or {}
    family = registry.family_of(run["model_kind"]) if run["model_kind"] in registry.MODEL_FAMILIES else ""
    tags = {"retro.run_id": str(run["run_id"]), "retro.model_kind": run["model_kind"], "retro.family": family,
            "retro.status": run["status"], "retro.data_version": str(run.get("data_version") or ""),
            "retro.code_version": str(run.get("code_version") or ""), "retro.seed": str(run.get("seed")),
            "retro.engine": str(params.get("engine", "embedded")), "retro.digest": digest}
    if run.get("artifact_hash"):
        tags["retro.artifact_hash"] = run["artifact_hash"]
    if entry is not None:
        tags |= {"retro.version": str(int(entry["version"])), "retro.stage": entry["stage"]}
    tags |= _gate_tags(gate)
    start = _ms(run.get("started_at"))
    if previous is None:
        created = client.create_run(experiment_id, start_time=start,
                                    tags={"retro.run_id": tags["retro.run_id"]},
                                    run_name=f"{run['model_kind']}-run-{run['run_id']}")
        mlflow_id = created.info.run_id
        have_params, have_metrics = {}, {}
    else:
        mlflow_id = previous.info.run_id
        have_params, have_metrics = previous.data.params, previous.data.metrics
    when = _ms(run.get("finished_at")) or start or 0
    # The service clock stands still during a run (start = finish); MLflow's duration shows the recorded stage
    # timings instead (real seconds), so the end time is the start plus their sum.
    seconds = sum(v for v in (run.get("timings") or {}).values() if isinstance(v, (int, float)))
    end = (start or when) + int(seconds * 1000) if run["status"] != "running" else None
    metrics = _numbers("", run.get("metrics")) | _numbers("duration.", run.get("timings"))
    for name, values in (run.get("baselines") or {}).items():
        metrics |= _numbers(f"baseline.{name}.", values)
    new_params = [Param(str(k)[:250], _param_value(v)) for k, v in params.items() if str(k)[:250] not in have_params]
    new_metrics = [Metric(k, v, when, 0) for k, v in metrics.items() if have_metrics.get(k) != v]
    tag_list = [RunTag(k, v) for k, v in tags.items()]
    for i in range(0, max(len(new_params), len(new_metrics), len(tag_list)), 100):
        client.log_batch(mlflow_id, metrics=new_metrics[i:i + 100], params=new_params[i:i + 100],
                         tags=tag_list[i:i + 100])
    client.log_dict(mlflow_id, {"metrics": run.get("metrics"), "baselines": run.get("baselines"),
                                "timings": run.get("timings")}, "metrics.json")
    if gate:
        client.log_dict(mlflow_id, gate, "gate.json")
    if entry is not None:
        client.log_dict(mlflow_id, events, "registry_history.json")
        _log_card(settings, client, mlflow_id, int(entry["version"]))
    status = {"finished": "FINISHED", "failed": "FAILED"}.get(run["status"], "RUNNING")
    if status == "RUNNING":
        client.update_run(mlflow_id, status="RUNNING")
    else:
        client.set_terminated(mlflow_id, status=status, end_time=max(end or when, when))
    return mlflow_id


def _log_card(settings, client, mlflow_id: str, version: int) -> None:
    from core.governance import modelcard
    try:
        card = modelcard.model_card(settings, version)
    except (RetroError, OSError, ValueError, KeyError) as exc:
        client.log_text(mlflow_id, f"No model card: {exc}\n", "model_card.md")
        return
    client.log_text(mlflow_id, json.dumps(card, indent=2, default=str), "model_card.json")
    if card.get("model", {}).get("family") == registry.CHURN:
        text = modelcard.churn_card_markdown(card)
    elif card.get("model", {}).get("family") == registry.ADS:
        from core.governance import ads_card
        text = ads_card.markdown(card)
    else:
        text = modelcard.model_card_markdown(card)
    client.log_text(mlflow_id, text, "model_card.md")


def _history_tag(events: list[dict]) -> str:
    lines = [f"{e['at']} {e['from_stage'] or 'registered'}→{e['to_stage']} by {e['actor']}: {e['reason']}"
             for e in events]
    text = "\n".join(lines)
    while len(text) > HISTORY_TAG_LIMIT and len(lines) > 1:
        lines = lines[1:]
        text = "… (older events in the run's registry_history.json)\n" + "\n".join(lines)
    return text[:HISTORY_TAG_LIMIT]


def _write_versions(client, versions: pd.DataFrame, history: pd.DataFrame, mlflow_run_of: dict) -> tuple[dict, dict]:
    from mlflow.exceptions import MlflowException
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    aliases: dict[str, dict] = {}
    for family in registry.FAMILIES:
        rows = versions[versions["family"] == family].sort_values("version").to_dict("records")
        if not rows:
            continue
        name = f"retro-{family}"
        try:
            model = client.get_registered_model(name)
        except MlflowException:
            model = client.create_registered_model(
                name, tags={"retro.family": family},
                description=f"Retro Movies '{family}' family, mirrored from the project's registry (the source of "
                            "truth). Aliases: production, candidate (the newest candidate).")
        existing = {mv.tags.get("retro.version"): mv
                    for mv in client.search_model_versions(f"name='{name}'", max_results=10000)}
        by_version = {}
        for row in rows:
            version = int(row["version"])
            events = _events(history, version)
            tags = {"retro.version": str(version), "retro.stage": row["stage"],
                    "retro.run_id": str(int(row["run_id"])), "retro.data_version": str(row["data_version"] or ""),
                    "retro.depends_on": "" if pd.isna(row["depends_on"]) else str(int(row["depends_on"])),
                    "retro.artifact_hash": str(row["artifact_hash"] or ""), "retro.history": _history_tag(events)}
            mv = existing.get(str(version))
            if mv is None:
                source = Path(row["artifact_path"]).as_uri() if row["artifact_path"] else "none"
                mv = client.create_model_version(name, source, run_id=mlflow_run_of.get(int(row["run_id"])),
                                                 tags=tags, description=f"registry version {version} "
                                                 f"({row['model_kind']}, data {row['data_version']})")
                counts["created"] += 1
            else:
                changed = {k: v for k, v in tags.items() if mv.tags.get(k) != v}
                for k, v in changed.items():
                    client.set_model_version_tag(name, mv.version, k, v)
                counts["updated" if changed else "unchanged"] += 1
            by_version[version] = mv.version
        wanted = {}
        production = [r for r in rows if r["stage"] == "production"]
        candidates = [r for r in rows if r["stage"] == "candidate"]
        if production:
            wanted["production"] = by_version[int(production[-1]["version"])]
        if candidates:
            wanted["candidate"] = by_version[int(candidates[-1]["version"])]
        current = dict(model.aliases or {})
        for alias in ("production", "candidate"):
            if alias in wanted and str(current.get(alias)) != str(wanted[alias]):
                client.set_registered_model_alias(name, alias, wanted[alias])
            elif alias not in wanted and alias in current:
                client.delete_registered_model_alias(name, alias)
        aliases[name] = {a: int(v) for a, v in wanted.items()}
    return counts, aliases


# ------------------------------------------------------------------ the production recommender as a pyfunc model
def _write_recommender(settings, client, experiment_id: str, uri: str) -> dict | None:
    """Log production's CF bundle and ranker as a pyfunc model when they changed since the last export."""
    from mlflow.exceptions import MlflowException
    cf = registry.production(settings)
    if cf is None:
        return None
    rk = registry.production(settings, family=registry.RANKER)
    if rk is not None and rk.get("depends_on") != cf["version"]:
        rk = None
    fingerprint = _digest(cf["version"], cf["artifact_hash"], None if rk is None else (rk["version"],
                                                                                     rk["artifact_hash"]))
    info = {"cf_version": int(cf["version"]), "ranker_version": None if rk is None else int(rk["version"])}
    try:
        model = client.get_registered_model(RECOMMENDER)
    except MlflowException:
        model = client.create_registered_model(
            RECOMMENDER, tags={"retro.kind": "pyfunc"},
            description="The production recommender (CF bundle + ranker) as an MLflow pyfunc model: predict("
                        "DataFrame with user_id[, k]) returns the lists `python -m core recommend --user ID` shows "
                        "(deterministic lists; consent, seen titles and Top 50 read from the data folder).")
    current = (model.aliases or {}).get("production")
    if current is not None:
        mv = client.get_model_version(RECOMMENDER, str(current))
        if mv.tags.get("retro.fingerprint") == fingerprint:
            return info | {"logged": False, "version": int(mv.version)}
    mlflow_id = _log_pyfunc(settings, client, experiment_id, uri, cf, rk, fingerprint)
    mv = client.create_model_version(RECOMMENDER, f"runs:/{mlflow_id}/model", run_id=mlflow_id,
                                     tags={"retro.fingerprint": fingerprint, "retro.cf_version": str(cf["version"]),
                                           "retro.ranker_version": "" if rk is None else str(rk["version"])})
    client.set_registered_model_alias(RECOMMENDER, "production", mv.version)
    _drop_stale_copies(client, experiment_id, keep=mlflow_id)
    return info | {"logged": True, "version": int(mv.version)}


def _log_pyfunc(settings, client, experiment_id, uri, cf: dict, rk: dict | None, fingerprint: str) -> str:
    """The pyfunc model saved to a temporary folder and uploaded as the run's `model` artifact (the client API
    only: no global tracking URI is set)."""
    import tempfile

    import mlflow
    artifacts = {"cf_bundle": str(cf["artifact_path"])}
    if rk is not None:
        artifacts["ranker"] = str(rk["artifact_path"])
    run = client.create_run(experiment_id, run_name=f"recommender-cf{cf['version']}"
                            + (f"-ranker{rk['version']}" if rk else ""),
                            tags={"retro.kind": "pyfunc", "retro.fingerprint": fingerprint,
                                  "retro.cf_version": str(cf["version"]),
                                  "retro.ranker_version": "" if rk is None else str(rk["version"])})
    with tempfile.TemporaryDirectory(prefix="retro-pyfunc-") as tmp:
        path = Path(tmp) / "model"
        with warnings.catch_warnings():          # its advice on pickled models: ours is imported by reference
            warnings.simplefilter("ignore", UserWarning)
            mlflow.pyfunc.save_model(str(path), python_model=RetroRecommender(), artifacts=artifacts,
                                     model_config={"home": str(settings.home)}, pip_requirements=_requirements())
        client.log_artifacts(run.info.run_id, str(path), "model")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _requirements() -> list[str]:
    root = Path(__file__).resolve().parents[2]
    lines = (root / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def _drop_stale_copies(client, experiment_id: str, keep: str) -> None:
    """Older pyfunc runs hold copies of bundles production no longer serves (or that an erasure rewrote):
    delete the runs and, in a local artifact store, their files."""
    for r in _all_runs(client, experiment_id):
        if r.data.tags.get("retro.kind") != "pyfunc" or r.info.run_id == keep:
            continue
        client.delete_run(r.info.run_id)
        parsed = urlparse(r.info.artifact_uri)
        if parsed.scheme == "file":
            shutil.rmtree(unquote(parsed.path), ignore_errors=True)


def _load_pyfunc_base():
    try:
        from mlflow.pyfunc import PythonModel
    except ImportError:          # the class below still imports (its module is imported only with mlflow)
        return object
    return PythonModel


# Typed `predict` (DataFrame in, DataFrame out): MLflow inspects the hints when the class is made (and warns
# without them); our input is a DataFrame with `user_id` and an optional `k`.
class RetroRecommender(_load_pyfunc_base()):
    """MLflow pyfunc: `predict(DataFrame with user_id[, k])` → DataFrame user_id, path, movie_ids, scores.

    The bundle and ranker come from the model's own artifacts; consent, seen titles, the Top 50 and the
    pseudonymization key from the data folder in `model_config["home"]` (override it at load time:
    `mlflow.pyfunc.load_model(uri, model_config={"home": DIR})`)."""

    def load_context(self, context):
        from core.settings import load_settings
        from core.training.artifacts import load_bundle
        from core.training.ranker import load_ranker
        self.settings = load_settings(context.model_config["home"], create=False)
        self.bundle = load_bundle(Path(context.artifacts["cf_bundle"]))
        ranker = context.artifacts.get("ranker")
        self.ranker = load_ranker(Path(ranker)) if ranker else None

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from core.constants import DEFAULT_K
        from core.serving import serving
        frame = pd.DataFrame(model_input)
        k = int(frame["k"].iloc[0]) if "k" in frame and len(frame) else DEFAULT_K
        lists = serving.deterministic_lists(self.settings, self.bundle, self.ranker, frame["user_id"].tolist(), k)
        return pd.DataFrame([{"user_id": u, "path": p, "movie_ids": m, "scores": s}
                             for u, (p, m, s) in lists.items()])
