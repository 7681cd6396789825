"""The ads model's life cycle: train (time split → model, baseline, production on one holdout → gate →
registry family 'ads'), its dependencies on the recommender and the churn model and their staleness, and the
SHAP reasons of each prediction.

Training rows come as frames of the shape `core.ads.features` documents — from the warehouse
(`core.ads.data.training_rows`) or, in tests and benchmarks, built in memory — with the campaigns frame.
"""
from __future__ import annotations

import hashlib
import time
from typing import Callable

import numpy as np
import pandas as pd

from core.ads import features, metrics
from core.ads import model as ads_model
from core.errors import RetroError, ValidationError
from core.filemodes import private_dir
from core.settings import Settings
from core.store import clock, locks, mlopsdb
from core.training import gate, registry, tracking
from core.training.ranker import single_threaded_openmp

Progress = Callable[[float, str], None]
TOP_REASONS = 3
DEPENDENCY_FAMILIES = (registry.CF, registry.CHURN)


def _noop(fraction: float, message: str) -> None:
    pass


def frame_version(rows: pd.DataFrame, campaigns: pd.DataFrame) -> str:
    """A data version for rows handed in as frames (not read from a warehouse version): 'frames:' + the first
    16 hex digits of a SHA-256 over the rows' and campaigns' content."""
    h = hashlib.sha256()
    for frame in (rows, campaigns):
        h.update(pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False).to_numpy().tobytes())
    return "frames:" + h.hexdigest()[:16]


def population(rows: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The impressions a model is trained and judged on: from the first one shown while a CF version served, when
    those span at least MIN_DAYS days (before it the affinities and everything made of them are unknown for
    everyone — a different population, whose days would train trees that never see the main signal); else all.
    Returns (rows, {"from", "rows_left_out"})."""
    if "cf_version" not in rows or rows["cf_version"].isna().all() or rows["cf_version"].notna().all():
        return rows, {"from": None, "rows_left_out": 0}
    first = pd.to_datetime(rows.loc[rows["cf_version"].notna(), "shown_at"]).min()
    kept = rows[pd.to_datetime(rows["shown_at"]) >= first]
    if pd.to_datetime(kept["shown_at"]).dt.normalize().nunique() < ads_model.MIN_DAYS:
        return rows, {"from": None, "rows_left_out": 0}
    return kept.reset_index(drop=True), {"from": str(first), "rows_left_out": int(len(rows) - len(kept))}


def split(rows: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, dict]:
    """What training and any later evaluation of the same log use: (the time split of the population, every
    impression in time order — the exposure history and the baseline's history —, the population note)."""
    history = rows.sort_values(["shown_at", "impression_id"], kind="stable").reset_index(drop=True)
    kept, note = population(history)
    return ads_model.time_split(kept), history, note


def dependencies(settings: Settings, rows: pd.DataFrame, fills: dict | None = None) -> dict:
    """What the features were made with: the CF and churn versions in production at training time (the registry)
    and those the rows name (`cf_version` / `churn_version` columns when the reader adds them), and whether the
    churn risk was the neutral value (no churn model, or users it did not score)."""
    now = {fam: registry.production(settings, family=fam) for fam in DEPENDENCY_FAMILIES}
    used = {}
    for fam in DEPENDENCY_FAMILIES:
        col = f"{fam}_version"
        used[fam] = sorted({int(v) for v in rows[col].dropna()}) if col in rows else []
    neutral = (fills or {}).get("churn_risk_neutral", 0)
    churn_note = None
    if now[registry.CHURN] is None and not used[registry.CHURN]:
        churn_note = (f"no churn model in production: churn_risk = {features.NEUTRAL_CHURN_RISK} (neutral) for every "
                      "row")
    elif neutral:
        churn_note = f"{neutral:,} rows had no churn score: churn_risk = {features.NEUTRAL_CHURN_RISK} (neutral)"
    shown = pd.to_datetime(rows["shown_at"]) if len(rows) else pd.Series(dtype="datetime64[ns]")
    return {"at_training": {fam: None if v is None else int(v["version"]) for fam, v in now.items()},
            "used": used, "window": [str(shown.min()), str(shown.max())] if len(rows) else [],
            "churn_neutral": {"value": features.NEUTRAL_CHURN_RISK, "rows": int(neutral), "note": churn_note}}


# ------------------------------------------------------------------ evaluation on one holdout
def judge(predict: Callable[[pd.DataFrame], np.ndarray], holdout: pd.DataFrame, campaigns: pd.DataFrame,
          history: pd.DataFrame) -> dict:
    """Metrics of one predictor on the holdout (`metrics.scores`) and the expected revenue of the selection it
    drives over the holdout's lists (every campaign whose targeting the user meets, `features.candidates`)."""
    y = holdout["clicked"].to_numpy(int)
    out = metrics.scores(y, predict(holdout))
    pairs = features.candidates(holdout, campaigns)
    p = predict(pairs) if len(pairs) else np.zeros(0)
    out["expected_revenue"] = metrics.expected_revenue(pairs["list_id"].to_numpy(), pairs["bid"].to_numpy(float), p)
    out["lists"] = int(holdout["impression_id"].nunique())
    return out


def _model_predictor(model: ads_model.AdsModel, campaigns: pd.DataFrame, history: pd.DataFrame):
    def predict(frame: pd.DataFrame) -> np.ndarray:
        with single_threaded_openmp():
            return model.p_click(model.matrix(frame, campaigns, history)[0])
    return predict


def _rate_predictor(rule: ads_model.CampaignRate):
    return lambda frame: rule.p_click(frame["campaign_id"].to_numpy())


# ------------------------------------------------------------------ training
@locks.exclusive("ads training")
def train(settings: Settings, rows: pd.DataFrame | None = None, campaigns: pd.DataFrame | None = None, *,
          seed: int | None = None, params: dict | None = None, data_version: str | None = None,
          at: str | None = None, progress: Progress = _noop, promote: bool = True,
          actor: str = registry.PIPELINE_ACTOR) -> dict:
    """Fit on the training days, calibrate on the calibration days, judge model, campaign click rates and
    production on the holdout days, register as family 'ads' (depends_on = the CF version in production) and
    promote when the gate passes (and `promote`). Without `rows`, reads them from the warehouse."""
    seed = settings.seed if seed is None else int(seed)
    params = dict(params or {})
    unknown = set(params) - set(ads_model.DEFAULT_PARAMS)
    if unknown:
        raise ValidationError(f"unknown ads parameter(s) {', '.join(sorted(unknown))}; known: "
                              f"{', '.join(ads_model.DEFAULT_PARAMS)}")
    at = at or clock.now(settings)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if rows is None:
        from core.ads import data
        progress(0.0, "ads: point-in-time training rows from the warehouse")
        rows, campaigns, data_version = data.training_rows(settings)
    elif campaigns is None:
        raise ValidationError("training rows given without their campaigns frame")
    parts, history, kept = split(rows)              # exposure counts see every impression, kept or not
    data_version = data_version or frame_version(history, campaigns)
    rows = pd.concat(list(parts.values()), ignore_index=True)
    campaign_ids = sorted(int(c) for c in rows["campaign_id"].unique())
    names = features.feature_names(campaign_ids)
    X, fills = features.build(rows, campaigns, campaign_ids, history)
    timings["features"] = time.perf_counter() - t
    deps = dependencies(settings, rows, fills)
    run_params = ads_model.DEFAULT_PARAMS | params | {
        "features": list(names), "campaigns": campaign_ids, "split": ads_model.split_dates(parts),
        "calibration": "platt", "exposure_days": features.EXPOSURE_DAYS, "population": kept, "depends_on": deps}
    run_id = tracking.start_run(settings, ads_model.MODEL_KIND, run_params, seed, data_version, at=at)
    try:
        t = time.perf_counter()
        part = np.repeat([ads_model.PART_CODES[p] for p in parts], [len(parts[p]) for p in parts])
        # time_split keeps the rows' (time) order, so the parts are consecutive blocks of X.
        y = rows["clicked"].to_numpy(int)
        tr, ca, ho = (part == ads_model.PART_CODES[p] for p in ("train", "calibration", "holdout"))
        progress(0.3, f"ads: fitting on {int(tr.sum()):,} impressions, calibrating on {int(ca.sum()):,}")
        # One OpenMP thread: on a shared 2-core machine the per-split thread team cost more than the work
        # (a whole training on 18,000 impressions: 18.4 s with the default team, 3.5 s with one, load average 5).
        with single_threaded_openmp():
            model = ads_model.fit(X[tr], y[tr], X[ca], y[ca], seed=seed, feature_names=names,
                                  campaign_ids=campaign_ids, params=params)
        start = pd.to_datetime(parts["holdout"]["shown_at"]).min()
        rule = ads_model.CampaignRate.fit(history[pd.to_datetime(history["shown_at"]) < start])   # all history before
        timings["fit"] = time.perf_counter() - t

        t = time.perf_counter()
        progress(0.6, f"ads: model vs the campaigns' click rates on {int(ho.sum()):,} holdout impressions")
        hold = parts["holdout"]
        with single_threaded_openmp():
            p_hold = model.p_click(X[ho])
        result = judge(_model_predictor(model, campaigns, history), hold, campaigns, history)
        baselines = {"campaign_rate": judge(_rate_predictor(rule), hold, campaigns, history)}
        prod = registry.production(settings, family=ads_model.FAMILY)
        if prod is not None:
            try:
                prod_model = load_version(settings, prod)
                baselines["production"] = judge(_model_predictor(prod_model, campaigns, history), hold, campaigns,
                                                history) | {"version": int(prod["version"])}
            except (OSError, RetroError, ValueError, KeyError) as exc:
                baselines["production"] = {"error": f"could not score production v{prod['version']}: {exc}",
                                           "version": int(prod["version"])}
        decision = gate.evaluate_ads_gate(result, baselines["campaign_rate"], baselines.get("production"),
                                          finite=bool(np.isfinite(p_hold).all()))
        timings["evaluate"] = time.perf_counter() - t

        t = time.perf_counter()
        path = private_dir(settings.models_dir) / f"ads-run-{run_id}"
        stored_rows = {"user_key": rows["user_key"].to_numpy(str), "impression_id": rows["impression_id"].to_numpy(np.int64),
                       "shown_at": pd.to_datetime(rows["shown_at"]).dt.strftime("%Y-%m-%dT%H:%M:%S").to_numpy(str),
                       "X": X, "label": y.astype(float), "part": part.astype(np.int8)}
        with single_threaded_openmp():
            stored_rows["p_click"] = model.p_click(X)
        meta = {"run_id": run_id, "model_kind": ads_model.MODEL_KIND, "seed": seed, "data_version": data_version,
                "params": ads_model.DEFAULT_PARAMS | params, "features": list(names), "campaigns": campaign_ids,
                "split": run_params["split"], "calibration": {"method": "platt", "slope": model.slope,
                                                              "intercept": model.intercept},
                "depends_on": deps, "code_version": tracking.code_version()}
        digest = ads_model.save(path, model, meta, stored_rows)
        timings["save"] = time.perf_counter() - t
        result = result | {"training_rows": int(tr.sum()), "calibration_rows": int(ca.sum()),
                           "gate_passed": bool(decision.promote)}
        tracking.finish_run(settings, run_id, result, baselines, timings, str(path), digest, at=at)
    except Exception as exc:
        tracking.fail_run(settings, run_id, f"{type(exc).__name__}: {exc}", at=at)
        raise
    version = registry.register(settings, run_id, at=at, depends_on=deps["at_training"][registry.CF],
                                family=ads_model.FAMILY)
    promoted = bool(promote and decision.promote)
    if promoted:
        registry.promote(settings, version, actor, "ads gate passed: beats the campaigns' click rates on the holdout",
                         gate=decision, at=at)
    progress(1.0, f"ads: v{version} " + ("promoted" if promoted else "kept as candidate"))
    return {"run_id": run_id, "version": version, "promoted": promoted, "gate": decision.to_dict(),
            "metrics": result, "baselines": baselines, "data_version": data_version, "depends_on": deps,
            "split": run_params["split"], "population": kept, "artifact_path": str(path)}


# ------------------------------------------------------------------ the production model
def load_version(settings: Settings, version: dict) -> ads_model.AdsModel:
    if version["family"] != ads_model.FAMILY:
        raise ValidationError(f"v{version['version']} is a {version['family']} model, not an ads model")
    return ads_model.load(mlopsdb.artifact_dir(settings, version["artifact_path"]), version["artifact_hash"])


def production_model(settings: Settings) -> tuple[dict, ads_model.AdsModel]:
    prod = registry.production(settings, family=ads_model.FAMILY)
    if prod is None:
        raise RetroError("no ads model in production; train one (`core.ads.pipeline.train`) once the world has "
                         "ad impressions with clicks on enough days")
    return prod, load_version(settings, prod)


def status(settings: Settings, version: dict | None = None) -> dict:
    """The ads model in production (or the registry row `version`), what it was trained with and whether it is
    possibly stale: a CF or churn version went into production after it was trained, or one serves now that it
    was not trained with (its genre affinities or churn risks come from another model now)."""
    prod = version if version is not None else registry.production(settings, family=ads_model.FAMILY)
    if prod is None:
        return {"version": None, "stale": False, "reasons": ["no ads model in production"]}
    if prod["family"] != ads_model.FAMILY:
        raise ValidationError(f"v{prod['version']} is a {prod['family']} model, not an ads model")
    run = tracking.get_run(settings, int(prod["run_id"]))
    deps = (run.get("params") or {}).get("depends_on") or {}
    registered = int(registry.history(settings, int(prod["version"]))["event_id"].min())
    reasons = []
    for family in DEPENDENCY_FAMILIES:
        now = registry.production(settings, family=family)
        seen = set((deps.get("used") or {}).get(family, [])) | {
            v for v in [(deps.get("at_training") or {}).get(family)] if v is not None}
        changes = registry.promotions_after(settings, prod["created_at"], family, after_event=registered)
        what = "genre affinities" if family == registry.CF else "churn risks"
        if changes:
            last = changes[-1]
            reasons.append(f"{family} v{last['version']} went into production at {last['at']}, after ads "
                           f"v{prod['version']} was trained: its {what} may mean something else now")
        elif now is not None and int(now["version"]) not in seen:
            trained = ", ".join(f"v{v}" for v in sorted(seen)) or "none"
            reasons.append(f"{family} v{now['version']} serves now but ads v{prod['version']} was trained with "
                           f"{trained} (its {what})")
    return {"version": int(prod["version"]), "run_id": int(prod["run_id"]), "created_at": prod["created_at"],
            "data_version": prod["data_version"], "depends_on": deps, "stale": bool(reasons),
            "reasons": reasons or ["the recommender and the churn model have not changed since training"]}


# ------------------------------------------------------------------ explanations
def contributions(model: ads_model.AdsModel, X: np.ndarray) -> tuple[list[list[dict]], float, np.ndarray]:
    """Each row's SHAP contributions to the calibrated log-odds as {feature, label, value, contribution},
    biggest effect first; the base value and each row's log-odds (base + Σ contributions = logit p_click)."""
    values, base, logit = model.contributions(X)
    rows = []
    for vals, x in zip(values, X):
        items = [{"feature": f, "label": features.label_of(f), "value": None if np.isnan(v) else float(v),
                  "contribution": float(c)} for f, v, c in zip(model.features, x, vals)]
        rows.append(sorted(items, key=lambda d: -abs(d["contribution"])))
    return rows, base, logit


# Why a feature can be missing for a user at the time of an ad, in the words of the answer the user reads: the
# affinities and everything made of them come from the recommender, which had not learnt this user's tastes then
# (no CF version served yet, or the user was not in it).
_TASTE_FEATURES = ("genre_interest", "genre_match", "creative_interest")
NOT_YET_LEARNT = "we had not yet learnt your tastes from what you watched"


def reason(c: dict) -> str:
    """One contribution in words, for the person who saw the ad: 'interest in Comedy (from the recommender) = 1.20
    raises the click chance (+0.41 log-odds)'; a value that was not known when the ad was chosen says so ('… : not
    known at that time (we had not yet learnt your tastes from what you watched) — this lowers the click chance
    (−0.12 log-odds)'), never '= unknown'."""
    change = ("raises" if c["contribution"] > 0 else "lowers" if c["contribution"] < 0 else "does not change") + \
        f" the click chance ({c['contribution']:+.2f} log-odds)"
    if c["value"] is None:
        taste = c["feature"].startswith("aff_") or c["feature"] in _TASTE_FEATURES
        why = f" ({NOT_YET_LEARNT})" if taste else ""
        return f"{c['label']}: not known at that time{why} — this {change}"
    value = f"{c['value']:.0f}" if float(c["value"]).is_integer() else f"{c['value']:.2f}"
    return f"{c['label']} = {value} {change}"


def explain(model: ads_model.AdsModel, rows: pd.DataFrame, campaigns: pd.DataFrame,
            history: pd.DataFrame | None = None, top: int = TOP_REASONS) -> list[dict]:
    """Per row (one impression or candidate): p_click, the base log-odds, every contribution and the `top`
    reasons in words (one SHAP pass for the whole frame)."""
    X, _ = model.matrix(rows, campaigns, history)
    items, base, logit = contributions(model, X)
    p = 1.0 / (1.0 + np.exp(-logit))
    return [{"p_click": float(pi), "base_logit": base, "logit": float(li), "contributions": c,
             "reasons": [reason(x) for x in c[:top]]} for pi, li, c in zip(p, logit, items)]


# ------------------------------------------------------------------ privacy (owner operations on the training rows)
def _artifact_dirs(settings: Settings) -> list:
    if not settings.models_dir.exists():
        return []
    return sorted(p for p in settings.models_dir.glob("ads-run-*") if p.is_dir())


def export_user(settings: Settings, user_key: str) -> list[dict]:
    """The user's rows in every ads model's training set: artifact, impression, shown_at, part, label, p_click and
    the features."""
    out = []
    for d in _artifact_dirs(settings):
        rows = ads_model.read_rows(d)
        if not rows:
            continue
        names = ads_model.read_meta(d).get("features", [])
        parts = {v: k for k, v in ads_model.PART_CODES.items()}
        for i in np.flatnonzero(rows["user_key"] == user_key):
            out.append({"artifact": d.name, "impression_id": int(rows["impression_id"][i]),
                        "shown_at": str(rows["shown_at"][i]), "part": parts[int(rows["part"][i])],
                        "label": float(rows["label"][i]), "p_click": float(rows["p_click"][i]),
                        **{f: (None if np.isnan(v) else float(v)) for f, v in zip(names, rows["X"][i])}})
    return out


def erase_user(settings: Settings, user_key: str) -> int:
    """Drop the user's rows from every ads training set (each file replaced whole); returns the rows dropped.
    Idempotent. The fitted trees keep no row, and the artifact hash covers the model, not the rows, so the
    registered version still loads."""
    dropped = 0
    for d in _artifact_dirs(settings):
        rows = ads_model.read_rows(d)
        if not rows:
            continue
        keep = rows["user_key"] != user_key
        if not keep.all():
            dropped += int((~keep).sum())
            ads_model.write_rows(d, {k: v[keep] for k, v in rows.items()})
    return dropped


def rekey(settings: Settings, new_for) -> dict[str, int]:
    """Re-key the pseudonyms of every ads training set through `new_for(keys) -> {old: new}` (the key rotation's
    mapping); re-runnable: keys already new map to nothing."""
    files = changed = 0
    for d in _artifact_dirs(settings):
        rows = ads_model.read_rows(d)
        if not rows or not len(rows["user_key"]):
            continue
        olds, where = np.unique(rows["user_key"], return_inverse=True)
        mapping = new_for(olds.tolist())
        if not mapping:
            continue
        news = np.array([mapping.get(k, k) for k in olds.tolist()], dtype=str)
        changed += int(np.isin(rows["user_key"], list(mapping)).sum())
        ads_model.write_rows(d, rows | {"user_key": news[where]})
        files += 1
    return {"ads_training_rows": changed, "ads_training_files": files}
