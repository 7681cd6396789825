"""Retention: behavioural events and ad impressions (with their clicks) older than N days before the service clock
leave both stores, the lists shown to users (the warehouse's fact_served) leave the warehouse, and the churn
scores derived from them go too (scores whose as_of is before the cutoff). When the Spark engine's Parquet lake
exists, the same rows leave it (its day partitions rewritten, `lake.purge_before`)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.constants import TS_FORMAT
from core.errors import ValidationError
from core.privacy import access, common
from core.serving import serving
from core.settings import Settings
from core.store import adslog, clock, locks, opsdb
from core.training import churn_pipeline
from core.warehouse import lake, warehouse


def _days(days) -> int:
    if isinstance(days, (bool, np.bool_)) or not isinstance(days, (int, np.integer)) or days < 1:
        raise ValidationError(f"retention days must be a positive integer, got {days!r}")
    return int(days)


def _cutoff(db, days: int) -> tuple[str, str]:
    now = clock.now(db=db)
    return now, (pd.Timestamp(now) - pd.Timedelta(days=days)).strftime(TS_FORMAT)


def retention_status(settings: Settings, days: int) -> dict:
    """What `retention(days)` would purge: behavioural events before clock − days, in both stores."""
    days = _days(days)
    with opsdb.session(settings) as db:
        now, cutoff = _cutoff(db, days)
        ops_n, ops_total, ops_oldest = opsdb.events_before(db, cutoff)
        ad_n, ad_total, ad_oldest = adslog.impressions_before(db, cutoff)
    wh_ad_n, wh_ad_total, wh_ad_oldest = warehouse.ads_before(settings, cutoff)
    wh_n, wh_total, wh_oldest = warehouse.events_before(settings, cutoff)
    churn_n, churn_total, churn_oldest = churn_pipeline.predictions_before(settings, cutoff)
    sv_n, sv_total, sv_oldest = warehouse.served_before(settings, cutoff)
    in_lake = lake.rows_before(settings, cutoff)
    return common.jsonable({"days": days, "clock": now, "cutoff": cutoff,
                            "ops_events_to_purge": int(ops_n), "ops_events": int(ops_total),
                            "oldest_ops_event": ops_oldest,
                            "warehouse_events_to_purge": int(wh_n), "warehouse_events": int(wh_total),
                            "oldest_warehouse_event": wh_oldest,
                            "warehouse_served_to_purge": int(sv_n), "warehouse_served": int(sv_total),
                            "oldest_warehouse_served": sv_oldest,
                            "churn_scores_to_purge": churn_n, "churn_scores": churn_total,
                            "oldest_churn_score": churn_oldest,
                            "ops_ad_impressions_to_purge": ad_n, "ops_ad_impressions": ad_total,
                            "oldest_ops_ad_impression": ad_oldest,
                            "warehouse_ad_impressions_to_purge": int(wh_ad_n),
                            "warehouse_ad_impressions": int(wh_ad_total), "oldest_warehouse_ad_impression": wh_ad_oldest,
                            "lake_events_to_purge": in_lake["fact_interaction"],
                            "lake_served_to_purge": in_lake["fact_served"],
                            "lake_ad_impressions_to_purge": in_lake["fact_ad_impression"],
                            "lake_ad_clicks_to_purge": in_lake["fact_ad_click"]})


@locks.exclusive("retention purge")
def retention(settings: Settings, days: int, *, actor: str, at: str | None = None) -> dict:
    """Delete behavioural events older than `days` days before the service clock.

    From the ops `events` table (`opsdb.purge_events`) and from the warehouse's
    `fact_interaction` (`warehouse.purge_events`: every kind but 'rating':
    ratings are the user's explicit input and stay), the warehouse's served
    lists (`fact_served`) of the same age, and the stored churn scores whose
    as_of is before the cutoff (`churn_pipeline.purge_predictions`: a score is
    derived from those events). Ad impressions with their clicks go from both stores too (`adslog.purge_before`,
    the warehouse's fact_ad_impression and fact_ad_click); campaigns hold no personal data and stay. Daily aggregates (counts only, no user key) and
    churn training sets (they go with their model version) are kept. The Spark engine's lake, when there is one,
    loses the same rows (`lake.purge_before`; without pyspark or Java nothing is purged and EngineUnavailable
    names what to install). Returns the counts.
    """
    days = _days(days)
    actor = common.actor(actor)
    with_lake = lake.exists(settings)
    if with_lake:                 # the lake is rewritten by Spark: say what is missing before anything is purged
        from core.warehouse import spark
        spark.check_available()
    with opsdb.session(settings) as db:
        when = common.when(db, at)
        now, cutoff = _cutoff(db, days)
        ops_n = opsdb.purge_events(db, cutoff)
        ads_n = adslog.purge_before(db, cutoff)
    wh = warehouse.purge_events(settings, cutoff)
    in_lake = lake.purge_before(settings, cutoff) if with_lake else {t: 0 for t in lake.RETAINED}
    churn_n = churn_pipeline.purge_predictions(settings, cutoff)
    access.log_action(settings, actor, "retention", f"events before {cutoff}", "ok", when)
    serving.clear_caches()
    return {"days": days, "clock": now, "cutoff": cutoff, "ops_events_deleted": int(ops_n),
            "warehouse_events_deleted": int(wh["fact_interaction"]),
            "warehouse_served_deleted": int(wh["fact_served"]), "churn_scores_deleted": int(churn_n),
            "ops_ad_impressions_deleted": int(ads_n), "warehouse_ad_impressions_deleted": int(wh["fact_ad_impression"]),
            "warehouse_ad_clicks_deleted": int(wh["fact_ad_click"]),
            "lake_events_deleted": int(in_lake["fact_interaction"]), "lake_served_deleted": int(in_lake["fact_served"]),
            "lake_ad_impressions_deleted": int(in_lake["fact_ad_impression"]),
            "lake_ad_clicks_deleted": int(in_lake["fact_ad_click"])}
