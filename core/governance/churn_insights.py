"""Read models of the churn views: the latest stored scores with the user ids an operator acts on, why no churn
model serves yet, and how the four model families depend on each other.

Stored scores carry warehouse pseudonyms. The ids are recovered on the operational side, as serving does: the
users still in the operational database are pseudonymized with the data folder's key and matched; an erased user
has no id (and no stored score) any more, so nobody is re-identified who left the service.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.pseudonym import pseudonym_key, pseudonymize
from core.settings import Settings
from core.store import mlopsdb, opsdb
from core.ads import pipeline as ads_pipeline
from core.training import churn, churn_pipeline, pipeline, registry, tracking
from core.warehouse import churn_data

TOP_USERS = 20
SHOWN_FEATURES = ("days_since_last_watch", "watches_7d", "watches_28d", "active_days_28d", "tenure_days")


def user_ids(settings: Settings, user_keys) -> dict[str, int]:
    """{pseudonym: user id} for the pseudonyms of users still in the operational database (others are absent)."""
    wanted = set(user_keys)
    if not wanted:
        return {}
    with opsdb.session(settings) as db:
        ids = opsdb.user_ids(db)
    keys = pseudonymize(ids, pseudonym_key(settings))
    return {k: int(i) for k, i in zip(keys, ids) if k in wanted}


def latest_scores(settings: Settings, top: int = TOP_USERS) -> dict:
    """The production churn model's newest stored scores.

    Returns {"version", "as_of", "scored_at", "previous_as_of", "risk": array of every scored user's risk,
    "top": DataFrame[user_id, risk, change, <SHOWN_FEATURES>, reasons (list of str)] of the `top` riskiest
    users still in the operational database, "unknown_users": scored pseudonyms with no user any more,
    "note": why there is nothing to show, or None}. `change` is the risk minus the same user's risk on the
    previous scored day (NaN when not scored then). Reasons: the top SHAP contributions (`explain_frame`)."""
    prod = registry.production(settings, family=churn.FAMILY)
    empty = {"version": None if prod is None else int(prod["version"]), "as_of": None, "scored_at": None,
             "previous_as_of": None, "risk": np.zeros(0), "top": pd.DataFrame(), "unknown_users": 0}
    if prod is None:
        return empty | {"note": "no churn model in production"}
    version = int(prod["version"])
    days = churn_pipeline.scored_days(settings)
    stored = churn_pipeline.predictions(settings, as_of=days[-1], with_features=True) if days else pd.DataFrame()
    mine = stored[stored["model_version"] == version] if len(stored) else stored
    if mine.empty:
        other = (f"; the newest stored scores ({days[-1][:10]}) are v{int(stored['model_version'].iloc[0])}'s"
                 if len(stored) else "")
        return empty | {"note": f"churn v{version} has not scored anyone yet{other} — press “Score now”"}
    mine = mine.reset_index(drop=True)
    earlier = [d for d in days if d < days[-1]]
    before = pd.Series(dtype=float)
    if earlier:
        prev = churn_pipeline.predictions(settings, as_of=earlier[-1])
        before = prev[prev["model_version"] == version].set_index("user_key")["risk"]
    ids = user_ids(settings, mine["user_key"])
    known = mine[mine["user_key"].isin(ids.keys())].sort_values("risk", ascending=False, kind="stable")
    head = known.head(max(0, int(top))).reset_index(drop=True)
    table = pd.DataFrame({"user_id": head["user_key"].map(ids).astype("int64"), "risk": head["risk"],
                          "change": head["risk"] - head["user_key"].map(before)})
    for f in SHOWN_FEATURES:
        table[f] = head[f]
    table["reasons"] = churn_pipeline.explain_frame(settings, head) if len(head) else []
    return {"version": version, "as_of": days[-1], "scored_at": str(mine["scored_at"].max()),
            "previous_as_of": earlier[-1] if earlier and len(before) else None,
            "risk": mine["risk"].to_numpy(float), "top": table,
            "unknown_users": int(len(mine) - len(known)), "note": None}


def readiness(settings: Settings) -> dict:
    """Why no churn model serves, for a page to say: {"days": days of watch data in the warehouse (0 without),
    "needed": days the time split needs, "missing": max(needed − days, 0), "unloaded": whole days the
    operational database (a simulated world's clock) holds beyond the warehouse — the ETL loads them, so the
    world needs to grow only by max(missing − unloaded, 0) days — "enough_history": bool, "message": the
    NotEnoughHistory text or None, "candidate": the newest churn version not in production (dict with its run's
    metrics and the recency rule's) or None}."""
    bounds = churn_data.data_bounds(settings)
    needed = churn.MIN_HISTORY_DAYS + 2 * churn.HORIZON_DAYS
    unloaded = 0
    if opsdb.exists(settings):
        with opsdb.session(settings) as db:
            clock = opsdb.get_meta(db, "clock")
        if clock:
            loaded_until = bounds[1] if bounds is not None else None
            clock = pd.Timestamp(clock).normalize()
            unloaded = int((clock - loaded_until).days) if loaded_until is not None else 0
    days, message = 0, None
    if bounds is None:
        message = "the warehouse holds no watch yet; run the ETL on a world first"
    else:
        days = int((bounds[1] - bounds[0]).days)
        try:
            churn.snapshot_plan(*bounds)
        except churn.NotEnoughHistory as exc:
            message = str(exc)
    candidate = None
    versions = registry.list_versions(settings) if mlopsdb.exists(settings) else pd.DataFrame()
    if len(versions):
        mine = versions[(versions["family"] == churn.FAMILY) & (versions["stage"] != "production")]
        if len(mine):
            row = mine.iloc[0]
            run = tracking.get_run(settings, int(row["run_id"]))
            candidate = {"version": int(row["version"]), "stage": row["stage"], "created_at": row["created_at"],
                         "run_id": int(row["run_id"]), "metrics": run.get("metrics") or {},
                         "recency": (run.get("baselines") or {}).get("recency") or {}}
    return {"days": days, "needed": needed, "missing": 0 if message is None else max(needed - days, 1),
            "unloaded": max(unloaded, 0), "enough_history": message is None, "message": message,
            "candidate": candidate}


def dependencies(settings: Settings) -> dict:
    """The four model families, their production versions and staleness (for the dependency graph).

    {"cf": {"version", "model_kind"} or None-version,
     "ranker": {"version", "depends_on", "stale", "reason"}, "churn": churn_pipeline.status(...),
     "ads": ads_pipeline.status(...)}:
    a ranker is stale when it re-ranks another CF version than the one serving (`pipeline.ranker_status`);
    a churn model when the recommender changed after it was trained (`churn_pipeline.status`); an ads model when
    the CF or churn version it was trained with is no longer the one in production (`ads_pipeline.status`)."""
    cf = registry.production(settings)
    rk = pipeline.ranker_status(settings)
    ranker = rk["ranker"]
    reason = None
    if ranker is not None and rk["stale"]:
        reason = (f"re-ranks the candidates of cf v{ranker['depends_on']}, but cf v{rk['cf_version']} serves: "
                  "retrain the ranker (a CF retrain does)")
    return {"cf": {"version": None if cf is None else int(cf["version"]),
                   "model_kind": None if cf is None else cf["model_kind"]},
            "ranker": {"version": None if ranker is None else int(ranker["version"]),
                       "depends_on": None if ranker is None or ranker["depends_on"] is None else int(ranker["depends_on"]),
                       "stale": bool(rk["stale"]), "reason": reason},
            "churn": churn_pipeline.status(settings), "ads": ads_pipeline.status(settings)}

