"""The right of access: everything held about one user, gathered from each store's own `export_user`,
the rows held per store, and the inventory of where personal data lives."""
from __future__ import annotations

import json

from core.errors import RetroError
from core.privacy import access, common
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import Settings
from core.store import adslog, opsdb, servinglog
from core.ads import model as ads_model, pipeline as ads_pipeline
from core.training import artifacts, churn, churn_pipeline, registry
from core.warehouse import lake, warehouse

# The churn model's data about a user (`churn_pipeline`), as 'store.table' keys of the export's `stores`.
CHURN_STORES = {"churn_predictions": "mlops.churn_predictions", "churn_training_rows": "models.churn_training_rows"}
OPS_SECTIONS = ("users", "consent_history", "ratings", "rating_history", "events", "served_recommendations",
                "shadow_recommendations", "ad_impressions", "rejected_writes")   # the export's `stores` keys, in order: 'ops.<table>'


def export_user(settings: Settings, user_id: int, *, actor: str | None = None, at: str | None = None) -> dict:
    """Everything held about one user, as one JSON-serializable document (the right of access).

    Sections: profile, consent_history, ratings, rating_history, events,
    served_recommendations (with titles), shadow_recommendations (lists a shadow release computed and
    nobody was shown, with titles), ad_impressions (every sponsored slot shown, with the advertiser, the
    creative, how it was chosen and whether it was clicked), explanations (of the latest personalized
    list, when a model is in production), rejected_writes (payloads naming the
    user), warehouse (rows under the user's pseudonym), models (bundles that hold
    a row for the user), churn (the churn scores stored about the user and their rows in the churn
    model's training sets) and `stores`, a count per 'store.table' (as `held_counts`).
    """
    uid = common.user_id(user_id)
    actor = common.actor(actor) if actor is not None else access.cli_actor()
    key = pseudonym_key(settings)
    user_key = pseudonym(uid, key)
    with opsdb.session(settings) as db:
        when = common.when(db, at)
        opsdb.require_user(db, uid)
        ops = opsdb.export_user(db, uid)
        titles = opsdb.movie_titles(db)
        served = servinglog.export_user(db, uid)
        shadow = servinglog.export_shadow(db, uid)
        ads = adslog.export_user(db, uid)
    for row in ads:
        if row["movie_id"] is not None:
            row["title"] = titles.get(row["movie_id"])
    for row in ops["ratings"] + ops["rating_history"] + ops["events"]:
        row["title"] = titles.get(row["movie_id"])
    for row in served + shadow:
        ids, scores = json.loads(row.pop("movie_ids")), json.loads(row.pop("scores"))
        # How each title came to be shown (exploration): its probability under the logging policy, when logged.
        props = [json.loads(row.pop(k) or "null") for k in ("propensities", "slate_propensities")] \
            if "propensities" in row else [None, None]
        row["items"] = [{"position": i + 1, "movie_id": m, "title": titles.get(m), "score": s}
                        | ({"propensity": props[0][i], "slate_propensity": props[1][i]} if props[0] else {})
                        for i, (m, s) in enumerate(zip(ids, scores))]
    for row in ops["rejected_writes"]:
        try:
            row["payload"] = json.loads(row["payload"])
        except ValueError:
            pass

    document = {
        "user_id": uid, "exported_at": when, "profile": ops["users"][0], "consent_history": ops["consent_history"],
        "ratings": ops["ratings"], "rating_history": ops["rating_history"], "events": ops["events"],
        "served_recommendations": served, "shadow_recommendations": shadow, "ad_impressions": ads,
        "explanations": _explanations(settings, uid, served),
        "rejected_writes": ops["rejected_writes"], "warehouse": _warehouse_export(settings, user_key),
        "models": _models_export(settings, user_key),
        "churn": churn_pipeline.export_user(settings, user_key),
        "ads_model": {"ads_training_rows": ads_pipeline.export_user(settings, user_key)},
    }
    if lake.exists(settings):              # the Spark engine's Parquet lake (issue 15): same tables, same keys
        document["lake"] = _warehouse_export(settings, user_key, lake.export_user)
    ops_lists = ops | {"served_recommendations": served, "shadow_recommendations": shadow, "ad_impressions": ads}
    document["stores"] = ({f"ops.{t}": len(ops_lists[t]) for t in OPS_SECTIONS}
                          | {f"warehouse.{t}": document["warehouse"][t]["count"] for t in warehouse.USER_TABLES}
                          | {f"lake.{t}": document["lake"][t]["count"] for t in lake.USER_TABLES if "lake" in document}
                          | {"models.bundles": len(document["models"])}
                          | {CHURN_STORES[t]: len(rows) for t, rows in document["churn"].items()}
                          | {"models.ads_training_rows": len(document["ads_model"]["ads_training_rows"])})
    access.log_action(settings, actor, "export", user_key, "ok", when)
    return common.jsonable(document)


def _explanations(settings: Settings, uid: int, served: list[dict]) -> dict:
    from core.governance.explain import explain_many
    if registry.production(settings) is None:
        return {"status": "no model is in production: nothing personalized to explain", "items": []}
    latest = next((r for r in served if r["path"] == "model"), None)
    if latest is None:
        return {"status": "no personalized list was served to this user", "items": []}
    movie_ids = [i["movie_id"] for i in latest["items"]]
    try:
        return {"status": "ok", "serve_id": latest["serve_id"], "items": explain_many(settings, uid, movie_ids)}
    except RetroError as exc:
        return {"status": "error", "serve_id": latest["serve_id"], "error": str(exc), "items": []}


def _warehouse_export(settings: Settings, user_key: str, rows_of=warehouse.export_user) -> dict:
    note = ("the warehouse holds no raw user id: these rows are keyed by user_key, the user's pseudonym "
            "(HMAC-SHA256 of the id; the key is kept outside the warehouse)")
    out: dict = {"pseudonymized": True, "user_key": user_key, "note": note}
    for table, rows in rows_of(settings, user_key).items():
        out[table] = {"count": len(rows), "rows": rows}
    return out


def _models_export(settings: Settings, user_key: str) -> list[dict]:
    return [info | {"versions": [{"version": v, "stage": s} for v, s in registry.versions_of_artifact(settings, d)]}
            for d, info in artifacts.export_user(settings, user_key)]


def held_counts(settings: Settings, user_id: int) -> dict[str, int]:
    """Rows held about a user per 'store.table' (ops by raw id; warehouse, model bundles, churn scores and churn
    training rows by pseudonym).

    A cheap read for the operator page (no audit row, unlike `export_user`);
    the keys are those of the export's `stores`.
    """
    uid = common.user_id(user_id)
    user_key = pseudonym(uid, pseudonym_key(settings))
    with opsdb.session(settings) as db:
        counts = {f"ops.{t}": n for t, n in opsdb.held_counts(db, uid).items()}
    counts |= {f"warehouse.{t}": n for t, n in warehouse.held_counts(settings, user_key).items()}
    if lake.exists(settings):
        counts |= {f"lake.{t}": n for t, n in lake.held_counts(settings, user_key).items()}
    counts["models.bundles"] = artifacts.bundles_holding(settings, user_key)
    counts |= {CHURN_STORES[t]: n for t, n in churn_pipeline.held_counts(settings, user_key).items()}
    counts["models.ads_training_rows"] = len(ads_pipeline.export_user(settings, user_key))
    return {k: int(v) for k, v in counts.items()}


INVENTORY_FIELDS = ("store", "table", "fields", "identifier", "protection", "on_erasure")


def data_inventory() -> list[dict]:
    """Per store and table: which personal fields exist, how they are protected, what an erasure does."""
    ops, wh, ml = "ops (retro.db)", "warehouse (warehouse.duckdb)", "mlops (mlops.db)"
    lk = "lake (lake/ or RETRO_LAKE_URI; the Spark engine)"
    raw, pseudo = "raw user id", "HMAC-SHA256 pseudonym (20 hex digits); the key is kept outside the warehouse"
    ops_only, cascade = "operational store only", "deleted (foreign-key cascade from users)"
    rows = [
        (ops, "users", "user_id, created_at, consent flags", raw,
         ops_only + "; consent enforced on write (events) and serve", "deleted"),
        (ops, "ratings", "user_id, movie, rating, time", raw, ops_only, cascade),
        (ops, "rating_history", "user_id, movie, rating, time", raw, ops_only, cascade),
        (ops, "events", "user_id, movie, behaviour, time", raw,
         ops_only + "; not stored without tracking consent; retention purge", cascade),
        (ops, "served_recommendations", "user_id, lists shown (the served log)", raw, ops_only, cascade),
        (ops, "shadow_recommendations", "user_id, lists a shadow release computed (never shown)", raw, ops_only,
         cascade),
        (ops, "ad_impressions", "user_id, sponsored slots shown (campaign, time, how chosen, click, price)", raw,
         ops_only + "; only untargeted ads without ad-targeting consent; retention purge", cascade),
        (ops, "consent_history", "user_id, consent changes, actor", raw, ops_only, cascade),
        (ops, "rejected_writes", "payload JSON with a user_id", raw, ops_only, "rows whose payload names the user deleted"),
        (wh, "dim_user", "user_key, created_at, personalization flag", pseudo, "no raw id in the warehouse", "deleted"),
        (wh, "fact_interaction", "user_key, movie, signal, time", pseudo, "no raw id; retention purge of events",
         "deleted"),
        (wh, "fact_served", "user_key, titles of each list shown (position, path, model, ranker, arm), time", pseudo,
         "no raw id; retention purge of served lists", "deleted"),
        (wh, "fact_ad_impression", "user_key, sponsored slots shown (campaign, time, how chosen, age band, click)",
         pseudo, "no raw id; retention purge of ads", "deleted"),
        (wh, "fact_ad_click", "user_key, ad clicks (campaign, time, price)", pseudo, "no raw id; retention purge of ads",
         "deleted"),
        (wh, "quarantine", "user_key, the refused row", pseudo, "no raw id", "deleted"),
        (wh, "daily_aggregates", "none (counts per day and kind)", "aggregate", "no user key", "kept"),
        *[(lk, table, what, pseudo, "no raw id; Parquet in day partitions, owner-only folder (at RETRO_LAKE_URI: the "
           "object store's access control); retention purge rewrites the partitions older than the cutoff; re-keyed "
           "on key rotation", "the day partitions holding the user rewritten without their rows")
          for table, what in (("fact_interaction", "user_key, movie, signal, time"),
                              ("fact_served", "user_key, titles of each list shown, time"),
                              ("fact_ad_impression", "user_key, sponsored slots shown, click"),
                              ("fact_ad_click", "user_key, ad clicks, price"))],
        (lk, "quarantine", "user_key, the refused row", pseudo, "no raw id; re-keyed on key rotation",
         "the files holding the user rewritten"),
        (lk, "dim_user", "user_key, created_at, personalization flag", pseudo, "no raw id; re-keyed on key rotation",
         "a new snapshot without the user; older snapshots deleted"),
        ("models/run-*", ", ".join(artifacts.PERSONAL_FILES), "user_key per row, learned factors, training row",
         pseudo, "bundle hash recorded in the registry", "key blanked, factors and row zeroed, hash updated"),
        ("models/ranker-run-*", ", ".join(artifacts.RANKER_PERSONAL_FILES), "genre profile, recency, activity per bundle row",
         "aligned to the CF bundle's rows", "hash recorded in the registry", "rows reset, hash updated"),
        ("models/churn-run-*", churn.TRAINING_ROWS, "churn training rows: user_key, snapshot date, features, label, "
         "risk", pseudo, "not covered by the model hash (the trees keep no row); re-keyed on key rotation",
         "the user's rows deleted (the model still loads and scores)"),
        ("models/ads-run-*", ads_model.TRAINING_ROWS, "ads training rows: user_key, impression, time, features, "
         "click, p_click", pseudo, "not covered by the model hash (the trees keep no row); re-keyed on key rotation",
         "the user's rows deleted (the model still loads and scores)"),
        (ml, "churn_predictions", "user_key, as_of, risk, the feature values scored", pseudo,
         "no raw id; retention purges scores whose as_of is before the cutoff; re-keyed on key rotation", "deleted"),
        (ml, "all other tables", "none: models, metrics, jobs; erasure requests hold counts only (a pending one: the "
         "id, then the pseudonym, until it completes)", "no personal data",
         "operator_audit targets are pseudonyms, never raw ids", "the user's audit targets redacted"),
        ("mlflow.db, mlartifacts/ (optional: `mlflow export`)", "runs, metrics, registry mirror; the pyfunc "
         "recommender's copy of the production bundle and ranker", "user_key per bundle row, factors (the copy)",
         pseudo, "the data folder's default store (another --tracking-uri is the operator's to protect)",
         "the next export replaces the copy (a new bundle hash) and deletes the old one from a local store"),
        ("secrets.toml", "[pseudonymization] key, [operators] token hashes", "the pseudonym key; PBKDF2 hashes",
         "secret", "git-ignored data folder, file mode 0600 (or the key in $RETRO_PSEUDONYM_KEY)",
         "kept; rotate_key replaces the key"),
        ("world.npz", "latent tastes of the simulated humans", "simulation ground truth, not service data", raw,
         "git-ignored data folder", "not touched (simulation only)"),
    ]
    return [dict(zip(INVENTORY_FIELDS, r)) for r in rows]
