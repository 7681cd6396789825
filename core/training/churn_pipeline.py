"""The churn model's life cycle: train (time split → gate → registry), score and store, explain, staleness
of its dependency on the recommender, and the online check of stored scores against who really churned.

The stored scores (`churn_predictions`, ML metadata store) are owned here; user keys are the warehouse's
pseudonyms, so the privacy operations reach them through `export_user` / `erase_user` / `rekey`.
"""
from __future__ import annotations

import io
import json
import time
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json

from core.errors import RetroError, ValidationError
from core.filemodes import private_dir
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import Settings
from core.store import clock, locks, mlopsdb, opsdb
from core.store.mlopsdb import timestamp
from core.training import churn, gate, registry, tracking
from core.training.evaluation import current_data_version
from core.training.ranker import single_threaded_openmp
from core.warehouse import churn_data
from core.warehouse.churn_data import FEATURE_LABELS, FEATURES, HORIZON_DAYS, LOOKBACK_DAYS

Progress = Callable[[float, str], None]
PART_CODES = {"train": 0, "holdout": 2}   # training.npz `part` codes
ONLINE_WINDOW_DAYS = 30
TOP_REASONS = 3


def _noop(fraction: float, message: str) -> None:
    pass


# ------------------------------------------------------------------ training
def _frames(settings: Settings) -> tuple[dict, dict[str, pd.DataFrame]]:
    bounds = churn_data.data_bounds(settings)
    if bounds is None:
        raise churn.NotEnoughHistory("the warehouse holds no watch yet; run the ETL on a world first")
    plan = churn.snapshot_plan(*bounds)
    frame = churn_data.snapshots(settings, [t for dates in plan.values() for t in dates])
    parts = {name: frame[frame["as_of"].isin(dates)].reset_index(drop=True) for name, dates in plan.items()}
    return plan, parts


def dependencies(settings: Settings, start: pd.Timestamp, end: pd.Timestamp) -> dict:
    """Which recommender versions the training window [start, end) saw: those whose lists were shown (the
    warehouse's serving log, canaries included) and those in production (the registry's history)."""
    s, e = start.strftime("%Y-%m-%dT%H:%M:%S"), end.strftime("%Y-%m-%dT%H:%M:%S")
    now = {fam: registry.production(settings, family=fam) for fam in (registry.CF, registry.RANKER)}
    return {"window": [s, e], "served": churn_data.served_versions(settings, start, end),
            "production": {fam: registry.production_between(settings, s, e, fam)
                           for fam in (registry.CF, registry.RANKER)},
            "at_training": {fam: None if v is None else int(v["version"]) for fam, v in now.items()}}


@locks.exclusive("churn training")
def train(settings: Settings, *, seed: int | None = None, params: dict | None = None, at: str | None = None,
          progress: Progress = _noop, promote: bool = True, actor: str = registry.PIPELINE_ACTOR) -> dict:
    """Fit, judge against the recency rule (and production) on the holdout snapshot, register as family
    'churn', and promote when the gate passes (and `promote`)."""
    seed = settings.seed if seed is None else int(seed)
    params = dict(params or {})
    unknown = set(params) - set(churn.DEFAULT_PARAMS)
    if unknown:
        raise ValidationError(f"unknown churn parameter(s) {', '.join(sorted(unknown))}; known: "
                              f"{', '.join(churn.DEFAULT_PARAMS)}")
    at = at or clock.now(settings)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    progress(0.0, "churn: point-in-time features for the training and holdout snapshots")
    plan, parts = _frames(settings)
    timings["features"] = time.perf_counter() - t
    window = (plan["train"][0] - pd.Timedelta(days=LOOKBACK_DAYS), plan["holdout"][0])
    deps = dependencies(settings, *window)
    data_version = current_data_version(settings)
    run_params = churn.DEFAULT_PARAMS | params | {
        "features": list(FEATURES), "horizon_days": HORIZON_DAYS, "lookback_days": LOOKBACK_DAYS,
        "snapshots": {k: [str(d.date()) for d in v] for k, v in plan.items()}, "depends_on": deps}
    run_id = tracking.start_run(settings, churn.MODEL_KIND, run_params, seed, data_version, at=at)
    try:
        t = time.perf_counter()
        progress(0.3, f"churn: fitting and calibrating (out of fold) on {len(parts['train']):,} rows")
        model = churn.fit(parts["train"], seed, params)
        rule = churn.RecencyRule.fit(parts["train"])
        timings["fit"] = time.perf_counter() - t

        t = time.perf_counter()
        progress(0.6, f"churn: model vs the recency rule on the holdout of {len(parts['holdout']):,} users")
        hold = parts["holdout"]
        y = hold["label"].to_numpy(int)
        risk = model.risk(churn.matrix(hold))
        metrics = churn.scores(y, risk)
        baselines = {"recency": churn.scores(y, rule.risk(hold), rank_score=hold["days_since_last_watch"].to_numpy())}
        prod = registry.production(settings, family=churn.FAMILY)
        if prod is not None:
            try:
                prod_model = churn.load(mlopsdb.artifact_dir(settings, prod["artifact_path"]), prod["artifact_hash"])
                baselines["production"] = churn.scores(y, prod_model.risk(churn.matrix(hold))) | {
                    "version": int(prod["version"])}
            except (OSError, RetroError, ValueError, KeyError) as exc:
                baselines["production"] = {"error": f"could not score production v{prod['version']}: {exc}"}
        decision = gate.evaluate_churn_gate(metrics, baselines["recency"], baselines.get("production"),
                                            finite=bool(np.isfinite(risk).all()))
        timings["evaluate"] = time.perf_counter() - t

        t = time.perf_counter()
        path = private_dir(settings.models_dir) / f"churn-run-{run_id}"
        every = pd.concat([parts[p].assign(part=PART_CODES[p]) for p in PART_CODES], ignore_index=True)
        rows = {"user_key": every["user_key"].to_numpy(str), "as_of": every["as_of"].dt.strftime("%Y-%m-%d").to_numpy(str),
                "X": churn.matrix(every), "label": every["label"].to_numpy(float), "part": every["part"].to_numpy(np.int8),
                "risk": model.risk(churn.matrix(every))}
        meta = {"run_id": run_id, "model_kind": churn.MODEL_KIND, "seed": seed, "data_version": data_version,
                "params": churn.DEFAULT_PARAMS | params, "features": list(FEATURES), "snapshots": run_params["snapshots"],
                "calibration": {"slope": model.slope, "intercept": model.intercept}, "depends_on": deps,
                "code_version": tracking.code_version(), "trained_until": str(plan["holdout"][0])}
        digest = churn.save(path, model, meta, rows)
        timings["save"] = time.perf_counter() - t
        metrics = metrics | {"training_rows": int(len(parts["train"])), "gate_passed": bool(decision.promote)}
        tracking.finish_run(settings, run_id, metrics, baselines, timings, str(path), digest, at=at)
    except Exception as exc:
        tracking.fail_run(settings, run_id, f"{type(exc).__name__}: {exc}", at=at)
        raise
    version = registry.register(settings, run_id, at=at, depends_on=deps["at_training"][registry.CF],
                                family=churn.FAMILY)
    promoted = bool(promote and decision.promote)
    if promoted:
        registry.promote(settings, version, actor, "churn gate passed: beats the recency rule on the holdout",
                         gate=decision, at=at)
    progress(1.0, f"churn: v{version} " + ("promoted" if promoted else "kept as candidate"))
    return {"run_id": run_id, "version": version, "promoted": promoted, "gate": decision.to_dict(),
            "metrics": metrics, "baselines": baselines, "data_version": data_version, "depends_on": deps,
            "snapshots": run_params["snapshots"], "artifact_path": str(path)}


# ------------------------------------------------------------------ what to do when there is no churn model
def history_needed(settings: Settings) -> dict:
    """How much watch history the warehouse holds against what a churn model's time split needs:
    {"need": days, "have": days, "missing": days (0 when enough)}."""
    need = churn.MIN_HISTORY_DAYS + 2 * churn.HORIZON_DAYS
    span = churn_data.data_bounds(settings)
    have = 0 if span is None else int((span[1] - span[0]).days)
    return {"need": need, "have": have, "missing": max(need - have, 0)}


def next_step(settings: Settings) -> str:
    """The one action that gets a churn model into production from here, as a command and a click that work now:
    train when the warehouse holds enough history, else simulate exactly the missing days first."""
    h = history_needed(settings)
    if not h["missing"]:
        return ("train one with `python -m core churn train` (or press “Train churn model” on the Churn page); "
                f"the warehouse holds {h['have']} days, enough for the {h['need']} a churn model needs")
    return (f"a churn model needs {h['need']} days of watch data and the warehouse holds {h['have']}: "
            f"{h['missing']} days are missing. Simulate them with `python -m core simulate --days {h['missing']}` "
            f"(or run a {h['missing']}-day scenario on the Drift page), then `python -m core churn train`")


def no_model(settings: Settings) -> RetroError:
    return RetroError("no churn model in production; " + next_step(settings))


# ------------------------------------------------------------------ the production model
def production_model(settings: Settings) -> tuple[dict, churn.ChurnModel]:
    prod = registry.production(settings, family=churn.FAMILY)
    if prod is None:
        raise no_model(settings)
    return prod, load_version(settings, prod)


def load_version(settings: Settings, version: dict) -> churn.ChurnModel:
    if version["family"] != churn.FAMILY:
        raise ValidationError(f"v{version['version']} is a {version['family']} model, not a churn model")
    return churn.load(mlopsdb.artifact_dir(settings, version["artifact_path"]), version["artifact_hash"])


def status(settings: Settings, version: dict | None = None) -> dict:
    """The churn model in production (or the registry row `version` of another churn version), what it depends
    on, and whether the recommender changed since it was trained."""
    prod = version if version is not None else registry.production(settings, family=churn.FAMILY)
    if prod is None:
        return {"version": None, "stale": False, "reasons": ["no churn model in production"]}
    if prod["family"] != churn.FAMILY:
        raise ValidationError(f"v{prod['version']} is a {prod['family']} model, not a churn model")
    run = tracking.get_run(settings, int(prod["run_id"]))
    deps = (run.get("params") or {}).get("depends_on") or {}
    window_end = (deps.get("window") or [None, prod["created_at"]])[1]
    registered = int(registry.history(settings, int(prod["version"]))["event_id"].min())
    reasons = []
    for family in (registry.CF, registry.RANKER):
        now = registry.production(settings, family=family)
        seen = (set((deps.get("served") or {}).get(family, [])) | set((deps.get("production") or {}).get(family, []))
                | {v for v in [(deps.get("at_training") or {}).get(family)] if v is not None})
        # Promotions after this churn version was registered, the same simulated second included.
        changes = registry.promotions_after(settings, prod["created_at"], family, after_event=registered)
        if changes:
            last = changes[-1]
            reasons.append(f"{family} v{last['version']} went into production at {last['at']}, after churn "
                           f"v{prod['version']} was trained: its served-share feature may mean something else now")
        elif now is not None and seen and int(now["version"]) not in seen:
            reasons.append(f"{family} v{now['version']} serves now but was not serving in the training window "
                           f"(saw {', '.join(f'v{v}' for v in sorted(seen))})")
    return {"version": int(prod["version"]), "run_id": int(prod["run_id"]), "created_at": prod["created_at"],
            "data_version": prod["data_version"], "depends_on": deps, "window_end": window_end,
            "stale": bool(reasons), "reasons": reasons or ["the recommender has not changed since training"]}


# ------------------------------------------------------------------ scoring
def _user_key(settings: Settings, user_id: int) -> str:
    with opsdb.session(settings) as db:
        opsdb.require_user(db, int(user_id))
    return pseudonym(int(user_id), pseudonym_key(settings))


def current_as_of(settings: Settings) -> pd.Timestamp:
    bounds = churn_data.data_bounds(settings)
    if bounds is None:
        raise RetroError("the warehouse holds no watch yet; run the ETL first")
    return bounds[1]


def score(settings: Settings, *, user_id: int | None = None, as_of=None, store: bool = True,
          at: str | None = None, progress=None) -> dict:
    """Risk of every active user (or one) at `as_of` (default: the end of the warehouse's data) with the
    production churn model; stored in `churn_predictions` unless `store` is False. `progress(fraction,
    message)` hears the stage and the number of users (features, scoring n users, stored)."""
    prod, model = production_model(settings)
    return _score(settings, prod, model, user_id=user_id, as_of=as_of, store=store, at=at, progress=progress)


def _score(settings: Settings, prod: dict, model: churn.ChurnModel, *, user_id: int | None, as_of, store: bool,
           at: str | None, progress=None) -> dict:
    progress = progress or (lambda fraction, message: None)
    key = None if user_id is None else _user_key(settings, user_id)
    as_of = current_as_of(settings) if as_of is None else pd.Timestamp(as_of).normalize()
    progress(0.05, f"churn scoring: point-in-time features of the active users as of {as_of.date()}")
    frame = churn_data.snapshots(settings, [as_of], user_key=key)     # one user: only their facts are read
    progress(0.6, f"churn scoring: scoring {len(frame):,} active users with churn v{prod['version']}")
    with single_threaded_openmp():   # for a few thousand rows OpenMP's thread wake-ups cost more than the work
        risk = model.risk(churn.matrix(frame)) if len(frame) else np.zeros(0)
    frame = frame.assign(risk=risk)
    stored = store_predictions(settings, int(prod["version"]), frame, at=at) if store and len(frame) else 0
    progress(1.0, f"churn scoring: {len(frame):,} users scored, {stored:,} scores stored")
    result = {"version": int(prod["version"]), "as_of": str(as_of), "users": int(len(frame)), "stored": stored,
              "mean_risk": float(risk.mean()) if len(risk) else None,
              "risk_histogram": np.histogram(risk, bins=10, range=(0, 1))[0].tolist()}
    if key is not None:
        result |= {"user_id": int(user_id), "user_key": key, "active": bool(len(frame))}
        if len(frame):
            result |= {"risk": float(risk[0]), "features": _features(frame.iloc[0])}
        else:
            result["note"] = (f"user {user_id} has not watched anything in the {LOOKBACK_DAYS} days before "
                              f"{as_of.date()}: not an active user, so not scored (already lapsed)")
    return result


def _features(row: pd.Series) -> dict:
    return {f: (None if pd.isna(row[f]) else round(float(row[f]), 6)) for f in FEATURES}


def store_predictions(settings: Settings, version: int, frame: pd.DataFrame, at: str | None = None) -> int:
    """Append one batch of scores (replacing this version's earlier scores of the same users and as_of)."""
    when = timestamp(at, settings)
    as_of = frame["as_of"].dt.strftime("%Y-%m-%dT%H:%M:%S").to_numpy()
    feats = frame[list(FEATURES)].astype(object).where(frame[list(FEATURES)].notna(), None)
    rows = [(version, k, a, when, float(r), json.dumps(dict(zip(FEATURES, f))))
            for k, a, r, f in zip(frame["user_key"], as_of, frame["risk"], feats.itertuples(index=False, name=None))]
    with mlopsdb.write_session(settings) as db:
        with db.atomic():
            db.conn.executemany("DELETE FROM churn_predictions WHERE model_version = ? AND user_key = ? AND as_of = ?",
                                [(version, k, a) for k, a in zip(frame["user_key"], as_of)])
            db.conn.executemany("INSERT INTO churn_predictions(model_version, user_key, as_of, scored_at, risk, features) "
                                "VALUES (?,?,?,?,?,?)", rows)
    return len(rows)


def predictions(settings: Settings, *, as_of: str | None = None, since: str | None = None, until: str | None = None,
                user_key: str | None = None, model_version: int | None = None,
                with_features: bool = False) -> pd.DataFrame:
    """Stored scores (newest as_of first), filtered by as_of (exact, or the window [since, until]), user and
    model version."""
    where, args = [], []
    for clause, value in (("as_of = ?", as_of), ("as_of >= ?", since), ("as_of <= ?", until),
                          ("user_key = ?", user_key), ("model_version = ?", model_version)):
        if value is not None:
            where.append(clause)
            args.append(value)
    cols = "prediction_id, model_version, user_key, as_of, scored_at, risk" + (", features" if with_features else "")
    sql = f"SELECT {cols} FROM churn_predictions" + (" WHERE " + " AND ".join(where) if where else "") + \
          " ORDER BY as_of DESC, risk DESC"
    with mlopsdb.session(settings) as db:
        frame = pd.DataFrame(db.execute(sql, args).fetchall(), columns=[c.strip() for c in cols.split(",")])
    if with_features and len(frame):
        frame = pd.concat([frame, _parse_features(frame.pop("features"))], axis=1)
    return frame


def _parse_features(texts: pd.Series) -> pd.DataFrame:
    """The stored feature objects as float columns in `FEATURES` order (null or absent → NaN), parsed in one pass
    by Arrow's JSON reader: json.loads per row took ~6 s for the 200,000 scores of 65 days of 3,000 users."""
    schema = pa.schema([(f, pa.float64()) for f in FEATURES])
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    table = pa_json.read_json(io.BytesIO("\n".join(texts).encode()), parse_options=options)
    return table.to_pandas().reset_index(drop=True)


def latest_as_of(settings: Settings) -> str | None:
    with mlopsdb.session(settings) as db:
        row = db.execute("SELECT max(as_of) FROM churn_predictions").fetchone()
    return row[0] if row else None


def scored_days(settings: Settings) -> list[str]:
    with mlopsdb.session(settings) as db:
        return [r[0] for r in db.execute("SELECT DISTINCT as_of FROM churn_predictions ORDER BY 1").fetchall()]


# ------------------------------------------------------------------ explanations
def explain_user(settings: Settings, user_id: int, *, as_of=None, top: int = TOP_REASONS, store: bool = False) -> dict:
    """"Why is this user at risk?": the production model's risk and each feature's SHAP contribution to its
    calibrated log-odds (base + Σ contributions = logit(risk)), biggest effects first (`store`: keep the score)."""
    prod, model = production_model(settings)
    result = _score(settings, prod, model, user_id=user_id, as_of=as_of, store=store, at=None)
    if not result["active"]:
        return result
    x = np.array([[np.nan if result["features"][f] is None else result["features"][f] for f in FEATURES]])
    values, base, logit = model.contributions(x)
    items = _contributions(values[0], x[0])
    return result | {"base_logit": base, "logit": float(logit[0]), "contributions": items,
                     "reasons": [_reason(c) for c in items[:top]]}


def explain_frame(settings: Settings, frame: pd.DataFrame, top: int = TOP_REASONS) -> list[list[str]]:
    """The top reasons of each row of a scored frame (one SHAP pass for the whole frame)."""
    if not len(frame):
        return []
    _, model = production_model(settings)
    X = frame[list(FEATURES)].to_numpy(float)
    values, _, _ = model.contributions(X)
    return [[_reason(c) for c in _contributions(vals, row)[:top]] for vals, row in zip(values, X)]


def _contributions(values: np.ndarray, x: np.ndarray) -> list[dict]:
    """One row's SHAP values as {feature, label, value (None when unknown), contribution}, biggest effect first."""
    items = [{"feature": f, "label": FEATURE_LABELS[f], "value": None if np.isnan(v) else float(v),
              "contribution": float(c)} for f, v, c in zip(FEATURES, x, values)]
    return sorted(items, key=lambda d: -abs(d["contribution"]))


def _reason(c: dict) -> str:
    value = "unknown" if c["value"] is None else (f"{c['value']:.0f}" if float(c["value"]).is_integer()
                                                  else f"{c['value']:.2f}")
    way = "raises" if c["contribution"] > 0 else "lowers"
    return f"{c['label']} = {value} {way} the risk ({c['contribution']:+.2f} log-odds)"


# ------------------------------------------------------------------ evaluation and the online check
def evaluate(settings: Settings, version: int | None = None) -> dict:
    """A churn version (default: production) and the recency rule on the current holdout snapshot, plus the
    online check of stored scores."""
    row = registry.production(settings, family=churn.FAMILY) if version is None else registry.get_version(settings, int(version))
    if row is None:
        raise no_model(settings)
    model = load_version(settings, row)
    plan, parts = _frames(settings)
    hold = parts["holdout"]
    y = hold["label"].to_numpy(int)
    rule = churn.RecencyRule.fit(parts["train"])
    return {"version": int(row["version"]), "holdout_as_of": str(plan["holdout"][0].date()),
            "model": churn.scores(y, model.risk(churn.matrix(hold))),
            "baseline": churn.scores(y, rule.risk(hold), rank_score=hold["days_since_last_watch"].to_numpy()),
            "online": online_check(settings)}


def online_check(settings: Settings, days: int = ONLINE_WINDOW_DAYS) -> dict:
    """Stored scores of the last `days` days whose 14-day outcome is known now, against who churned: per scoring
    day the mean predicted risk and the observed churn rate, and ROC AUC / Brier over all of them."""
    bounds = churn_data.data_bounds(settings)
    if bounds is None:
        return {"days": [], "rows": 0}
    last = bounds[1] - pd.Timedelta(days=HORIZON_DAYS)
    first = last - pd.Timedelta(days=days)
    fmt = "%Y-%m-%dT%H:%M:%S"
    stored = predictions(settings, since=first.strftime(fmt), until=last.strftime(fmt))
    if stored.empty:
        return {"days": [], "rows": 0, "window": [str(first), str(last)],
                "note": "no stored score is old enough (14 days) to be checked yet"}
    stored["as_of"] = pd.to_datetime(stored["as_of"])
    truth = churn_data.snapshots(settings, stored["as_of"].unique())[["user_key", "as_of", "label"]]
    joined = stored.merge(truth, on=["user_key", "as_of"], how="inner").dropna(subset=["label"])
    per_day = (joined.groupby(["as_of", "model_version"])
               .agg(users=("risk", "size"), predicted=("risk", "mean"), observed=("label", "mean")).reset_index())
    per_day["as_of"] = per_day["as_of"].dt.strftime("%Y-%m-%d")
    summary = churn.scores(joined["label"].to_numpy(int), joined["risk"].to_numpy()) if len(joined) else {}
    return {"window": [str(first.date()), str(last.date())], "rows": int(len(joined)),
            "days": per_day.to_dict("records"), **{k: summary.get(k) for k in ("roc_auc", "pr_auc", "brier",
                                                                              "base_rate", "mean_predicted")}}


def reference(settings: Settings, version: dict | None = None) -> pd.DataFrame:
    """The holdout rows a churn version was judged on (features, risk): the drift reference."""
    row = version or registry.production(settings, family=churn.FAMILY)
    if row is None:
        return pd.DataFrame(columns=[*FEATURES, "risk"])
    rows = churn.read_rows(mlopsdb.artifact_dir(settings, row["artifact_path"]))
    if not rows:
        return pd.DataFrame(columns=[*FEATURES, "risk"])
    keep = rows["part"] == PART_CODES["holdout"]
    return pd.DataFrame(rows["X"][keep], columns=list(FEATURES)).assign(risk=rows["risk"][keep])


def calibration_table(settings: Settings, version: dict | None = None) -> pd.DataFrame:
    """predicted, observed per calibration bin of a version's holdout (model and recency rule)."""
    row = version or registry.production(settings, family=churn.FAMILY)
    if row is None:
        return pd.DataFrame(columns=["who", "predicted", "observed"])
    run = tracking.get_run(settings, int(row["run_id"]))
    parts = []
    for who, metrics in (("model", run.get("metrics") or {}), ("recency rule", (run.get("baselines") or {}).get("recency") or {})):
        curve = metrics.get("calibration") or {}
        parts.append(pd.DataFrame({"who": who, "predicted": curve.get("predicted", []), "observed": curve.get("observed", [])}))
    return pd.concat(parts, ignore_index=True)


def training_rows_summary(settings: Settings, version: dict) -> dict:
    """What a churn version's artifact keeps of its training data: rows and distinct users per part
    (train / calibration / holdout), keyed by pseudonym; {} when the rows file is gone."""
    rows = churn.read_rows(mlopsdb.artifact_dir(settings, version["artifact_path"]))
    if not rows:
        return {}
    out = {"rows": int(len(rows["user_key"])), "users": int(len(np.unique(rows["user_key"])))}
    for name, code in PART_CODES.items():
        keep = rows["part"] == code
        out[name] = {"rows": int(keep.sum()), "users": int(len(np.unique(rows["user_key"][keep])))}
    return out


# ------------------------------------------------------------------ privacy (owner operations)
def _artifact_dirs(settings: Settings) -> list:
    return sorted(p for p in settings.models_dir.glob("churn-run-*") if p.is_dir()) if settings.models_dir.exists() else []


def held_counts(settings: Settings, user_key: str) -> dict[str, int]:
    with mlopsdb.session(settings) as db:
        stored = db.execute("SELECT count(*) FROM churn_predictions WHERE user_key = ?", [user_key]).fetchone()[0]
    training = sum(int((churn.read_rows(d).get("user_key", np.zeros(0)) == user_key).sum()) for d in _artifact_dirs(settings))
    return {"churn_predictions": int(stored), "churn_training_rows": training}


def export_user(settings: Settings, user_key: str) -> dict[str, list[dict]]:
    """The user's stored churn scores and the rows of churn training sets that hold them."""
    stored = predictions(settings, user_key=user_key, with_features=True)
    training = []
    for d in _artifact_dirs(settings):
        rows = churn.read_rows(d)
        if not rows:
            continue
        for i in np.flatnonzero(rows["user_key"] == user_key):
            training.append({"artifact": d.name, "as_of": str(rows["as_of"][i]),
                             "part": [k for k, v in PART_CODES.items() if v == rows["part"][i]][0],
                             "label": None if np.isnan(rows["label"][i]) else float(rows["label"][i]),
                             "risk": float(rows["risk"][i]),
                             **{f: (None if np.isnan(v) else float(v)) for f, v in zip(FEATURES, rows["X"][i])}})
    return {"churn_predictions": stored.replace({np.nan: None}).to_dict("records"), "churn_training_rows": training}


def erase_user(settings: Settings, user_key: str) -> dict[str, int]:
    """Delete the user's stored scores and drop their rows from every churn training set (the fitted trees keep
    no rows; the next churn training leaves the user out because the warehouse no longer holds them).

    Idempotent (a resumed erasure finds nothing left to do). The scores go in one transaction with
    secure_delete on and the WAL checkpointed, so the pseudonym's bytes leave mlops.db; each training set is
    replaced whole (`churn.write_rows`). The artifact hash covers the model and its metadata, not the rows, so
    the registered model still loads and scores."""
    with mlopsdb.session(settings) as db:
        db.execute("PRAGMA secure_delete = ON")
        with db.atomic():
            stored = db.conn.execute("DELETE FROM churn_predictions WHERE user_key = ?", [user_key]).rowcount
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    training = 0
    for d in _artifact_dirs(settings):
        rows = churn.read_rows(d)
        if not rows:
            continue
        keep = rows["user_key"] != user_key
        if not keep.all():
            training += int((~keep).sum())
            churn.write_rows(d, {k: v[keep] for k, v in rows.items()})
    return {"churn_predictions": int(stored), "churn_training_rows": training}


def rekey(settings: Settings, new_for) -> dict[str, int]:
    """Re-key every pseudonym in stored scores and training sets through `new_for(keys) -> {old: new}` (the key
    rotation's mapping: keys that do not change are left out). Scores in one transaction (old bytes zeroed,
    WAL checkpointed); each training set rewritten whole. Re-runnable: keys already new map to nothing."""
    with mlopsdb.session(settings) as db:
        keys = [k for (k,) in db.execute("SELECT DISTINCT user_key FROM churn_predictions").fetchall()]
        table = new_for(keys) if keys else {}
        db.execute("PRAGMA secure_delete = ON")
        with db.atomic():
            rows = sum(db.conn.execute("UPDATE churn_predictions SET user_key = ? WHERE user_key = ?",
                                       [new, old]).rowcount for old, new in table.items())
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    files = training = 0
    for d in _artifact_dirs(settings):
        data = churn.read_rows(d)
        if not data or not len(data["user_key"]):
            continue
        olds, where = np.unique(data["user_key"], return_inverse=True)
        mapping = new_for(olds.tolist())
        if not mapping:
            continue
        news = np.array([mapping.get(k, k) for k in olds.tolist()], dtype=str)
        training += int(np.isin(data["user_key"], list(mapping)).sum())
        churn.write_rows(d, data | {"user_key": news[where]})
        files += 1
    return {"churn_predictions": int(rows), "churn_training_rows": training, "churn_training_files": files}


# ------------------------------------------------------------------ retention (owner operations)
def predictions_before(settings: Settings, cutoff: str) -> tuple[int, int, str | None]:
    """(stored scores whose as_of is before `cutoff`, all stored scores, the oldest as_of)."""
    with mlopsdb.session(settings) as db:
        old, total, oldest = db.execute("SELECT count(*) FILTER (WHERE as_of < ?), count(*), min(as_of) "
                                        "FROM churn_predictions", [cutoff]).fetchone()
    return int(old or 0), int(total or 0), oldest


def purge_predictions(settings: Settings, cutoff: str) -> int:
    """Delete stored scores whose as_of (the day their features describe) is before `cutoff`: a score is derived
    from behaviour, so it leaves with the behavioural events it was computed from. Training sets are kept (they
    leave with their model version). One transaction, old bytes zeroed; returns the rows deleted."""
    cutoff = timestamp(cutoff)
    with mlopsdb.session(settings) as db:
        db.execute("PRAGMA secure_delete = ON")
        with db.atomic():
            n = db.conn.execute("DELETE FROM churn_predictions WHERE as_of < ?", [cutoff]).rowcount
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return int(n)
