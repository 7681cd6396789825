"""Model cards (Mitchell et al. 2019, "Model Cards for Model Reporting"), generated, never hand-written.

Everything on a card comes from the stores: the registry (version, stage,
lifecycle with the gate decisions), the experiment run (parameters, seed, code
version, holdout metrics next to the baselines), the bundle on disk (training
window) and the serving log (cold-start exposure). Three measurements are made
when the card is built, on at most `MAX_SAMPLE_USERS` users so a card stays fast:

- popularity bias: the mean popularity percentile of the titles the model
  recommends (popularity = users with a positive interaction in the bundle's
  training matrix; a popularity-neutral recommender would sit near the catalog's
  50th percentile) and the share of recommended titles among the 10 % most popular;
- quality by user activity tier: nDCG@10 and hit rate@10 on the current
  time-based holdout for light / medium / heavy users (terciles of training
  interactions);
- quality by favourite genre (the genre the user interacted with most in training).

`model_card` returns a JSON-ready dict (the export); `model_card_markdown` renders it.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import scipy.sparse as sp

from core.warehouse import dataset, warehouse
from core.training import evaluation, metrics, registry, tracking
from core.store import mlopsdb, opsdb, servinglog
from core.serving import serving
from core.training.artifacts import Bundle, load_bundle
from core.governance.audit import path_reason
from core.constants import DEFAULT_K, GENRE_INDEX, GENRES, SEED
from core.errors import RetroError
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import Settings

MAX_SAMPLE_USERS = 1000
TOP_SHARE = 0.10            # "the most popular titles" = the top 10 % of the catalog by popularity
TIERS = ("light", "medium", "heavy")
CARD_METRICS = ("precision@10", "recall@10", "ndcg@10", "map@10", "hit_rate@10", "coverage", "novelty")
SMALL_GROUP = 20            # groups with fewer evaluated users are flagged as noisy
INTENDED_USE = {
    registry.CF: ("Personalised top-10 movie lists for users of the streaming service who already have a viewing "
                  "or rating history (the model has a learned profile for them). Lists exclude titles the user "
                  "has already watched or rated."),
    registry.RANKER: ("Re-orders the top-50 candidates of the production collaborative-filtering model into the "
                      "final top-10 list, using interpretable features (CF score, genre affinity, popularity, ...)."),
    registry.CHURN: ("Ranks active users (at least one watch in the 28 days before the scoring date) by their "
                     "calibrated risk of leaving — no watch in the next 14 days — so the team can look at who is "
                     "about to go and why (per-user SHAP reasons), and watch the churn rate next to the "
                     "recommender's quality."),
}
OUT_OF_SCOPE = {
    registry.CF: ("Not for cold-start users (no history: they are served the Top 50 by weighted rating instead), "
                  "nor for users who withdrew consent to personalisation (also the Top 50). Not a rating "
                  "predictor: scores rank titles for one user and are not comparable between users."),
    registry.RANKER: "Only meaningful on top of the CF version it was trained with (`depends_on`).",
    registry.CHURN: ("Not for users who are not active (no watch in 28 days: already lapsed, not scored) nor for "
                     "users who withdrew consent to personalization (profiling: not scored). Not a decision about "
                     "a person: a score to look at with its reasons. One feature (the share of recommended titles "
                     "watched) depends on the recommender that served, so a recommender change can shift scores "
                     "(see dependencies)."),
}
CHURN_LABEL = ("churned = an active user at the snapshot instant t (≥ 1 watch in [t − 28 days, t)) has no watch in "
               "[t, t + 14 days); features use only warehouse facts before t (point in time)")
CHURN_METRICS = ("roc_auc", "pr_auc", "brier", "top_decile_lift", "base_rate", "mean_predicted", "rows", "churned")


def model_card(settings: Settings, version: int, *, sample_users: int = MAX_SAMPLE_USERS,
               holdout_days: int | None = None) -> dict:
    """The card of registry `version` as a JSON-ready dict.

    Keys: model, lifecycle, intended_use, out_of_scope, training_data, parameters,
    seed, code_version, trigger, metrics {model, popularity, top50}, limitations
    {cold_start, popularity_bias}, fairness {holdout, by_activity, by_genre,
    popularity_of_lists}, ranker, notes. Every share and quality number lies in [0, 1].
    Raises registry.UnknownVersion for a version that is not registered.
    """
    entry = registry.get_version(settings, version)
    run = tracking.get_run(settings, entry["run_id"])
    if entry["family"] == registry.CHURN:
        return churn_card(settings, entry, run)
    if entry["family"] == registry.ADS:
        from core.governance import ads_card
        return ads_card.card(settings, entry, run, _lifecycle(settings, version), _trigger(settings, run))
    notes: list[str] = []
    card = {
        "model": {k: entry[k] for k in ("version", "model_kind", "family", "stage", "created_at", "run_id",
                                        "depends_on", "artifact_path", "artifact_hash")},
        "lifecycle": _lifecycle(settings, version),
        "intended_use": INTENDED_USE.get(entry["family"], "No intended use recorded for this model family."),
        "out_of_scope": OUT_OF_SCOPE.get(entry["family"], ""),
        "training_data": {"data_version": entry["data_version"]},
        "parameters": {k: v for k, v in (run["params"] or {}).items()},
        "seed": run["seed"],
        "code_version": run["code_version"],
        "trigger": _trigger(settings, run),
        "metrics": _metric_table(run),
        "limitations": {},
        "fairness": {},
        "ranker": None,
        "notes": notes,
    }
    sizes = run["metrics"] or {}
    card["training_data"] |= {k: sizes.get(k) for k in ("train_pairs", "holdout_pairs", "users", "items")}
    if entry["family"] != registry.CF:
        notes.append(f"{entry['model_kind']} is not a collaborative-filtering model: the bundle analyses "
                     "(cold start, popularity bias, quality breakdowns) are made on CF versions only")
        return card
    try:
        bundle = load_bundle(entry["artifact_path"])
    except (OSError, RetroError, ValueError, KeyError) as exc:
        notes.append(f"the bundle at {entry['artifact_path']} could not be loaded ({exc}): "
                     "no measurement was made")
        return card
    card["training_data"] |= {k: bundle.meta.get(k) for k in ("trained_until", "holdout_cutoff", "weights")}
    rng = np.random.default_rng(SEED)
    popularity = np.asarray((bundle.matrix.user_items > 0).sum(axis=0)).ravel()
    card["limitations"] = {"cold_start": cold_start(settings, version, bundle, card["lifecycle"]),
                           "popularity_bias": popularity_bias(bundle, popularity, rng, sample_users)}
    try:
        card["fairness"] = quality_breakdown(settings, bundle, popularity, rng, sample_users,
                                             holdout_days or int(card["parameters"].get("holdout_days",
                                                                                         evaluation.HOLDOUT_DAYS)))
    except RetroError as exc:
        notes.append(f"no quality breakdown: {exc}")
    card["ranker"] = _ranker(settings, version, notes)
    return card


# ------------------------------------------------------------------ the churn model's card
def churn_card(settings: Settings, entry: dict, run: dict) -> dict:
    """The card of a churn version: use, label, features, time split, data, metrics against the recency rule
    (with calibration curves and top-decile lift), the gate, dependencies on the recommender and privacy.

    Keys: model, lifecycle, intended_use, out_of_scope, label, features, time_split, training_data, parameters,
    seed, code_version, trigger, metrics {model, recency, production}, calibration {model, recency}, gate,
    dependencies, privacy, notes."""
    from core.training import churn_pipeline
    from core.warehouse.churn_data import FEATURE_LABELS, FEATURES, HORIZON_DAYS, LOOKBACK_DAYS
    params = run["params"] or {}
    metrics, baselines = run["metrics"] or {}, run["baselines"] or {}
    lifecycle = _lifecycle(settings, entry["version"])
    notes: list[str] = []
    pick = lambda m: {k: m.get(k) for k in CHURN_METRICS} if m and "error" not in m else None  # noqa: E731
    rows = churn_pipeline.training_rows_summary(settings, entry)
    if not rows:
        notes.append("the artifact holds no training rows file: row counts come from the run only")
    stored = churn_pipeline.predictions(settings, model_version=int(entry["version"]))
    snapshots = params.get("snapshots") or {}
    production_then = baselines.get("production")
    card = {
        "model": {k: entry[k] for k in ("version", "model_kind", "family", "stage", "created_at", "run_id",
                                        "depends_on", "artifact_path", "artifact_hash")},
        "lifecycle": lifecycle,
        "intended_use": INTENDED_USE[registry.CHURN],
        "out_of_scope": OUT_OF_SCOPE[registry.CHURN],
        "label": {"definition": CHURN_LABEL, "horizon_days": params.get("horizon_days", HORIZON_DAYS),
                  "lookback_days": params.get("lookback_days", LOOKBACK_DAYS)},
        "features": [{"feature": f, "label": FEATURE_LABELS.get(f, f)} for f in params.get("features", FEATURES)],
        "time_split": {"snapshots": snapshots,
                       "note": "trees fit on the training snapshots, Platt scaling on their out-of-fold log-odds "
                               "(5 folds grouped by user), judged on the holdout snapshot, 14 days after the last "
                               "training snapshot, whose 14-day labels end where the warehouse's data ends"},
        "training_data": {"data_version": entry["data_version"], "training_rows": metrics.get("training_rows"),
                          "holdout_rows": metrics.get("rows"),
                          "rows_kept": rows},
        "parameters": {k: v for k, v in params.items() if k not in ("depends_on", "snapshots", "features")},
        "seed": run["seed"],
        "code_version": run["code_version"],
        "trigger": _trigger(settings, run),
        "metrics": {"model": pick(metrics), "recency": pick(baselines.get("recency")),
                    "production": pick(production_then) | {"version": production_then.get("version")}
                    if pick(production_then) else None},
        "calibration": {"model": metrics.get("calibration") or {},
                        "recency": (baselines.get("recency") or {}).get("calibration") or {}},
        "gate": _churn_gate(lifecycle, metrics, baselines),
        "dependencies": {"depends_on": entry["depends_on"],
                         "training_window": (params.get("depends_on") or {}).get("window"),
                         "served": (params.get("depends_on") or {}).get("served") or {},
                         "production": (params.get("depends_on") or {}).get("production") or {},
                         "status": churn_pipeline.status(settings, entry)},
        "privacy": {"keys": "user_key: the HMAC-SHA256 pseudonym of the user id (no raw id in the model, its "
                            "training rows or its stored scores)",
                    "training_rows": "the artifact keeps the rows it was fit and judged on (pseudonym, snapshot "
                                     "date, features, label, part, risk); `privacy forget` deletes a user's rows, "
                                     "`privacy export` lists them, a key rotation re-keys them; the fitted trees "
                                     "keep no row",
                    "stored_scores": int(len(stored)),
                    "scores": "stored scores (mlops.db churn_predictions) are erased and exported with the user, "
                              "re-keyed on key rotation and purged by retention (as_of before the cutoff)"},
        "notes": notes,
    }
    if production_then and "error" in production_then:
        notes.append(f"production at training time: {production_then['error']}")
    return card


def _churn_gate(lifecycle: list[dict], metrics: dict, baselines: dict) -> dict:
    """The gate's decision: the one a promotion recorded in the registry, else re-evaluated from the numbers the
    run recorded (same holdout, same rules: a candidate the gate kept back has no registry gate)."""
    from core.training import gate
    for e in reversed(lifecycle):
        if e["to_stage"] == "production" and e.get("gate"):
            return {"source": f"registry: promotion at {e['at']} by {e['actor']}", "promote": e["gate"].get("promote"),
                    "reasons": e["gate"].get("reasons", [])}
    production = baselines.get("production")
    production = production if production and "error" not in production else None
    risk_finite = all(isinstance(metrics.get(k), (int, float)) and np.isfinite(metrics[k])
                      for k in ("brier", "mean_predicted"))
    decision = gate.evaluate_churn_gate(metrics, baselines.get("recency") or {}, production, finite=risk_finite)
    return {"source": "re-evaluated from the run's recorded holdout numbers (no promotion recorded a gate)",
            "promote": decision.promote, "reasons": decision.reasons}


def _versions_by_family(versions: dict) -> str:
    """{'cf': [1, 3], 'ranker': []} → 'cf v1, v3; ranker none'."""
    return "; ".join(f"{k} " + (", ".join(f"v{v}" for v in vs) or "none") for k, vs in versions.items()) or "none"


def churn_card_markdown(card: dict) -> str:
    """The churn card as Markdown, one section per part of the card."""
    m, td, deps = card["model"], card["training_data"], card["dependencies"]
    lines = [f"# Model card: {m['model_kind']} v{m['version']} (churn)", "",
             f"Stage **{m['stage']}** · family `{m['family']}` · registered {m['created_at']} from run {m['run_id']}"
             + (f" · depends on CF v{m['depends_on']}" if m.get("depends_on") else ""), "",
             "## Intended use", "", card["intended_use"], "", "**Out of scope.** " + card["out_of_scope"], "",
             "## Label", "", card["label"]["definition"] + ".", "",
             "## Features", "", "| feature | meaning |", "|---|---|"]
    lines += [f"| `{f['feature']}` | {f['label']} |" for f in card["features"]]
    snaps = card["time_split"]["snapshots"]
    lines += ["", "## Time split", "",
              f"- Training snapshots: {', '.join(snaps.get('train', [])) or 'unknown'}",
              f"- Holdout snapshot: {', '.join(snaps.get('holdout', [])) or 'unknown'}",
              f"- {card['time_split']['note']}.", "",
              "## Training data", "",
              f"- Data version: {td.get('data_version') or 'unknown'}",
              f"- Rows: {_fmt(td.get('training_rows'))} training, {_fmt(td.get('holdout_rows'))} holdout"]
    kept = td.get("rows_kept") or {}
    if kept:
        lines.append(f"- Kept in the artifact now: {kept['rows']:,} rows of {kept['users']:,} users "
                     "(erasures remove rows)")
    lines += ["", "## Parameters and reproducibility", "", f"- Seed: {card['seed']}",
              f"- Code version: {card['code_version'] or 'unknown'}", f"- Trained by: {card['trigger']}"]
    for k, v in card["parameters"].items():
        lines.append(f"- `{k}`: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    table = card["metrics"]
    names = (("model", "model"), ("recency", "recency rule"), ("production", "production then"))
    cols = [(c, name) for c, name in names if table.get(c)]
    lines += ["", "## Metrics on the holdout snapshot, against the recency rule", "",
              "| metric | " + " | ".join(name for _, name in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name in CHURN_METRICS:
        lines.append(f"| {name} | " + " | ".join(_fmt(table[c].get(name)) for c, _ in cols) + " |")
    cal = card["calibration"]
    if cal["model"].get("predicted"):
        lines += ["", "### Calibration (quantile bins: mean predicted vs observed churn rate)", "",
                  "| bin | model predicted | model observed | recency predicted | recency observed |",
                  "|---:|---:|---:|---:|---:|"]
        rec = cal["recency"]
        for i, (p, o) in enumerate(zip(cal["model"]["predicted"], cal["model"]["observed"])):
            rp = rec.get("predicted", [])[i] if i < len(rec.get("predicted", [])) else None
            ro = rec.get("observed", [])[i] if i < len(rec.get("observed", [])) else None
            lines.append(f"| {i + 1} | {_fmt(p)} | {_fmt(o)} | {_fmt(rp)} | {_fmt(ro)} |")
    g = card["gate"]
    lines += ["", "## Gate", "", f"{'Passed' if g['promote'] else 'Not passed'} — {g['source']}:"]
    lines += [f"- {r}" for r in g["reasons"]]
    lines += ["", "## Lifecycle", ""]
    for e in card["lifecycle"]:
        lines.append(f"- {e['at']}: {e['from_stage'] or 'registered'} → {e['to_stage']} by {e['actor']} — "
                     f"{e['reason']}")
    status = deps["status"]
    window = deps.get("training_window") or ["?", "?"]
    lines += ["", "## Dependencies on the recommender", "",
              f"- Training window {window[0]} → {window[1]}",
              f"- Versions whose lists were served in the window: {_versions_by_family(deps['served'])}",
              f"- Versions in production during the window: {_versions_by_family(deps['production'])}",
              f"- Now: {'POSSIBLY STALE' if status['stale'] else 'current'} — " + "; ".join(status["reasons"])]
    pv = card["privacy"]
    lines += ["", "## Privacy", "", f"- Keys: {pv['keys']}.", f"- Training rows: {pv['training_rows']}.",
              f"- Stored scores by this version: {pv['stored_scores']:,}; {pv['scores']}."]
    if card["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in card["notes"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ registry and run
def _lifecycle(settings: Settings, version: int) -> list[dict]:
    events = registry.history(settings, version)
    out = []
    for e in events.to_dict("records"):
        gate = mlopsdb.loads(e["gate"]) if isinstance(e["gate"], str) else None
        out.append({"at": e["at"], "from_stage": e["from_stage"] if isinstance(e["from_stage"], str) else None,
                    "to_stage": e["to_stage"], "actor": e["actor"], "reason": e["reason"], "gate": gate})
    return out


def _trigger(settings: Settings, run: dict) -> str:
    if run.get("job_id") is None:
        return "unknown"
    try:
        return tracking.get_job(settings, run["job_id"])["trigger"]
    except RetroError:
        return "unknown"


def _metric_table(run: dict) -> dict:
    """Holdout metrics at training time next to the baselines scored on the same split."""
    pick = lambda m: {k: m.get(k) for k in CARD_METRICS + ("users_evaluated",)} if m else None  # noqa: E731
    baselines = run.get("baselines") or {}
    return {"model": pick(run.get("metrics") or {}), "popularity": pick(baselines.get("popularity")),
            "top50": pick(baselines.get("top50"))}


def _ranker(settings: Settings, version: int, notes: list[str]) -> dict | None:
    """The production ranker re-ranking this version's candidates, if the platform has one."""
    ranker = registry.production(settings, family=registry.RANKER)
    if ranker is None:
        notes.append("no ranker is in production: users see this model's own order")
        return None
    if ranker["depends_on"] != version:
        notes.append(f"the production ranker v{ranker['version']} re-ranks CF v{ranker['depends_on']}, not this version")
        return None
    return {"version": int(ranker["version"]), "metrics": ranker["metrics"], "created_at": ranker["created_at"]}


# ------------------------------------------------------------------ limitations
def production_intervals(lifecycle: list[dict]) -> list[tuple[str, str | None]]:
    """[start, end) periods the version was in production (end None: still is), from its events."""
    out, start = [], None
    for e in lifecycle:
        if e["to_stage"] == "production":
            start = e["at"]
        elif e["from_stage"] == "production" and start is not None:
            out.append((start, e["at"]))
            start = None
    if start is not None:
        out.append((start, None))
    return out


def cold_start(settings: Settings, version: int, bundle: Bundle, lifecycle: list[dict]) -> dict:
    """Who this model cannot serve: the users it has no history for, and the fallbacks actually served.

    `unknown_users_share`: share of the operational users the model has no row for
    (they get the Top 50). `lists` / `by_path`: lists served while this version was
    in production, by serving path; `fallback_share` and `cold_start_share` are shares
    of those lists (None when nothing was served).
    """
    key = pseudonym_key(settings)
    with opsdb.session(settings) as db:
        users = opsdb.user_ids(db)
        by_path: dict[str, int] = {}
        cold_users: set = set()
        served_users: set = set()
        for start, end in production_intervals(lifecycle):
            for path, user in servinglog.paths_served(db, start, end or "9999", version):
                by_path[path] = by_path.get(path, 0) + 1
                served_users.add(user)
                if path == "top50:cold-start":
                    cold_users.add(user)
    known = bundle.user_row
    unknown = sum(pseudonym(u, key) not in known for u in users)
    lists = sum(by_path.values())
    fallback = sum(n for p, n in by_path.items() if p.startswith("top50"))
    return {
        "users": len(users), "unknown_users": unknown, "unknown_users_share": unknown / len(users) if users else None,
        "lists": lists, "by_path": dict(sorted(by_path.items(), key=lambda kv: -kv[1])),
        "fallback_share": fallback / lists if lists else None,
        "cold_start_share": by_path.get("top50:cold-start", 0) / lists if lists else None,
        "cold_start_users_share": len(cold_users) / len(served_users) if served_users else None,
    }


def popularity_percentiles(popularity: np.ndarray) -> np.ndarray:
    """Percentile rank (0–100, ties share the mean rank) of each item's popularity in the catalog."""
    n = len(popularity)
    if n == 0:
        return np.array([])
    ranks = pd.Series(popularity).rank(method="average").to_numpy()
    return 100.0 * (ranks - 0.5) / n


def top_items(popularity: np.ndarray, share: float = TOP_SHARE) -> np.ndarray:
    """Boolean mask of the `share` most popular items (ties broken by column, as PopularityRecommender)."""
    n = len(popularity)
    order = np.lexsort((np.arange(n), -popularity))
    mask = np.zeros(n, dtype=bool)
    mask[order[: max(1, int(round(share * n)))]] = True
    return mask


def popularity_bias(bundle: Bundle, popularity: np.ndarray, rng: np.random.Generator,
                    sample_users: int = MAX_SAMPLE_USERS, k: int = DEFAULT_K) -> dict:
    """Mean popularity percentile of the model's top-k lists for a user sample, vs the catalog median (50).

    `mean_percentile` in [0, 100]: 50 is popularity-neutral, higher means the lists
    lean toward popular titles. `top_share` in [0, 1]: share of recommended titles
    among the 10 % most popular (a neutral recommender: about 0.10).
    """
    n_users = bundle.matrix.user_items.shape[0]
    if n_users == 0:
        return {"users": 0, "mean_percentile": None, "catalog_percentile": 50.0, "top_share": None}
    rows = np.sort(rng.choice(n_users, size=min(sample_users, n_users), replace=False))
    ids, _ = bundle.model.recommend(rows, bundle.matrix.user_items, k)
    items = ids[ids >= 0]
    pct = popularity_percentiles(popularity)
    top = top_items(popularity)
    catalog_median = float(np.median(popularity)) if len(popularity) else None
    return {
        "users": int(len(rows)), "items_recommended": int(len(items)),
        "mean_percentile": float(pct[items].mean()) if len(items) else None, "catalog_percentile": 50.0,
        "mean_popularity": float(popularity[items].mean()) if len(items) else None,
        "catalog_median_popularity": catalog_median,
        "top_share": float(top[items].mean()) if len(items) else None, "top_share_neutral": TOP_SHARE,
        "distinct_items": int(len(np.unique(items))),
    }


# ------------------------------------------------------------------ fairness-style breakdowns
def activity_tiers(counts: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Tier index per user (0 light, 1 medium, 2 heavy) by terciles of `counts` (> 0 only)."""
    active = counts[counts > 0]
    if not len(active):
        return np.zeros(len(counts), dtype=int), [0.0, 0.0]
    q1, q2 = (float(q) for q in np.quantile(active, [1 / 3, 2 / 3]))
    return np.where(counts <= q1, 0, np.where(counts <= q2, 1, 2)), [q1, q2]


def favourite_genres(user_items: sp.csr_matrix, genre_matrix: sp.csr_matrix) -> np.ndarray:
    """Index of each user's most frequent genre among their interactions (ties: first in GENRES; -1: none)."""
    counts = np.asarray(((user_items > 0).astype(np.float32) @ genre_matrix).todense())
    fav = counts.argmax(axis=1)
    return np.where(counts.max(axis=1) > 0, fav, -1)


def genre_matrix(settings: Settings, movie_ids: np.ndarray) -> sp.csr_matrix:
    """items × genres 0/1 matrix from the warehouse's dim_movie, rows aligned to `movie_ids`."""
    with warehouse.session(settings) as con:
        genres = warehouse.movie_genres(con)
    genres = genres.reindex(movie_ids).fillna("")
    rows, cols = [], []
    for j, text in enumerate(genres):
        for g in str(text).split("|"):
            if g in GENRE_INDEX:
                rows.append(j)
                cols.append(GENRE_INDEX[g])
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(movie_ids), len(GENRES)))


def quality_breakdown(settings: Settings, bundle: Bundle, popularity: np.ndarray, rng: np.random.Generator,
                      sample_users: int = MAX_SAMPLE_USERS, holdout_days: int = evaluation.HOLDOUT_DAYS,
                      k: int = DEFAULT_K) -> dict:
    """nDCG@k, hit rate@k and popular-title share of the bundle's lists on the current holdout, per group.

    Groups: activity tier (terciles of the user's training interactions) and favourite
    genre. Users the bundle does not know (cold start) are left out and counted.
    """
    # Only days after the bundle's training window (no leakage); NoDataAfterTraining (a RetroError) otherwise.
    split = dataset.time_split(settings, holdout_days,
                               served_pairs=lambda a, b: serving.served_pairs(settings, a, b),
                               start_after=bundle.meta.get("trained_until") or "2999-01-01")
    pool = np.array(sorted(split.holdout), dtype=np.int64)
    if not len(pool):
        raise RetroError("the current holdout window holds no new interaction to score the model on")
    users = np.sort(rng.choice(pool, size=min(sample_users, len(pool)), replace=False))
    lists, known = evaluation.holdout_lists(bundle, split, users, k)
    users, lists = users[known], lists[known]
    relevant = [split.holdout[int(u)] for u in users]
    counts = np.diff(split.train.user_items.indptr)
    tiers, thresholds = activity_tiers(counts)
    favourite = favourite_genres(split.train.user_items[users], genre_matrix(settings, split.train.movie_ids))
    # Popular titles measured in the split's training window (the data the lists are judged against).
    split_pop = np.asarray((split.train.user_items > 0).sum(axis=0)).ravel()
    top = top_items(split_pop)

    def group(mask: np.ndarray) -> dict:
        idx = np.flatnonzero(mask)
        if not len(idx):
            return {"users": 0, "ndcg@10": None, "hit_rate@10": None, "top_share": None}
        sub = lists[idx]
        items = sub[sub >= 0]
        rel = [relevant[i] for i in idx]
        return {"users": int(len(idx)), "ndcg@10": metrics.ndcg_at_k(sub, rel, k),
                "hit_rate@10": metrics.hit_rate_at_k(sub, rel, k),
                "top_share": float(top[items].mean()) if len(items) else None}

    user_tiers = tiers[users]
    by_activity = [{"tier": name, "interactions": _tier_range(i, thresholds, counts)} | group(user_tiers == i)
                   for i, name in enumerate(TIERS)]
    by_genre = []
    for g in sorted(set(favourite.tolist()), key=lambda g: -(favourite == g).sum()):
        by_genre.append({"genre": GENRES[g] if g >= 0 else "none"} | group(favourite == g))
    trained_until = pd.Timestamp(bundle.meta.get("trained_until", "1900-01-01"))
    return {
        "holdout": {"start": str(split.cutoff), "end": str(split.end), "users_in_holdout": int(len(pool)),
                    "users_sampled": int(len(known)), "users_scored": int(len(users)),
                    "unknown_users": int((~known).sum()), "overlaps_holdout": bool(trained_until >= split.cutoff)},
        "overall": group(np.ones(len(users), dtype=bool)),
        "by_activity": by_activity,
        "by_genre": by_genre,
        "popularity_of_lists": {"top_share_overall": group(np.ones(len(users), dtype=bool))["top_share"],
                                "top_share_neutral": TOP_SHARE,
                                "by_tier": {row["tier"]: row["top_share"] for row in by_activity}},
    }


def _tier_range(i: int, thresholds: list[float], counts: np.ndarray) -> str:
    q1, q2 = thresholds
    top = int(counts.max(initial=0))
    return [f"1–{q1:g}", f"{q1:g}–{q2:g}" if q2 > q1 else f"{q1:g}", f"> {q2:g} (max {top})"][i]


# ------------------------------------------------------------------ rendering
def _fmt(value, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if pct:
        return f"{value:.1%}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card_markdown(card: dict) -> str:
    """The card as a Markdown document with one section per part of the card."""
    if card["model"]["family"] == registry.CHURN:
        return churn_card_markdown(card)
    if card["model"]["family"] == registry.ADS:
        from core.governance import ads_card
        return ads_card.markdown(card)
    m = card["model"]
    td = card["training_data"]
    lines = [f"# Model card: {m['model_kind']} v{m['version']}", "",
             f"Stage **{m['stage']}** · family `{m['family']}` · registered {m['created_at']} from run {m['run_id']}"
             + (f" · depends on v{m['depends_on']}" if m.get("depends_on") else ""), "",
             "## Intended use", "", card["intended_use"], ""]
    if card["out_of_scope"]:
        lines += ["**Out of scope.** " + card["out_of_scope"], ""]
    lines += ["## Training data", "",
              f"- Data version: {td.get('data_version') or 'unknown'}",
              f"- Trained until: {td.get('trained_until') or 'unknown'} (the deployed bundle is refit on all data "
              "up to this time)",
              f"- Evaluation holdout from: {td.get('holdout_cutoff') or 'unknown'}",
              f"- Size: {_fmt(td.get('train_pairs'))} training pairs in the evaluation split, "
              f"{_fmt(td.get('holdout_pairs'))} holdout pairs; deployed on {_fmt(td.get('users'))} users × "
              f"{_fmt(td.get('items'))} titles", "",
              "## Parameters and reproducibility", "",
              f"- Seed: {card['seed']}", f"- Code version: {card['code_version'] or 'unknown'}",
              f"- Retrain triggered by: {card['trigger']}"]
    for k, v in card["parameters"].items():
        lines.append(f"- `{k}`: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    lines += ["", "## Metrics at promotion (holdout, with baselines on the same split)", ""]
    table = card["metrics"]
    cols = [c for c in ("model", "popularity", "top50") if table.get(c)]
    lines += ["| metric | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name in CARD_METRICS + ("users_evaluated",):
        lines.append(f"| {name} | " + " | ".join(_fmt(table[c].get(name)) for c in cols) + " |")
    lines += ["", "## Lifecycle", ""]
    for e in card["lifecycle"]:
        lines.append(f"- {e['at']}: {e['from_stage'] or 'registered'} → {e['to_stage']} by {e['actor']} — {e['reason']}")
        for reason in (e.get("gate") or {}).get("reasons", []):
            lines.append(f"  - gate: {reason}")
    lines += ["", "## Known limitations", ""]
    lim = card["limitations"]
    cs = lim.get("cold_start")
    if cs:
        lines.append(f"- **Cold start.** {_fmt(cs['unknown_users'])} of {_fmt(cs['users'])} users "
                     f"({_fmt(cs['unknown_users_share'], True)}) have no history in this model and get the Top 50.")
        if cs["lists"]:
            paths = ", ".join(f"{path_reason(p)} {n}" for p, n in cs["by_path"].items())
            lines.append(f"  While in production it served {cs['lists']} lists: {paths}; fallback share "
                         f"{_fmt(cs['fallback_share'], True)}, cold start {_fmt(cs['cold_start_share'], True)}.")
        else:
            lines.append("  No list was served while this version was in production.")
    pb = lim.get("popularity_bias")
    if pb and pb.get("mean_percentile") is not None:
        lines.append(f"- **Popularity bias.** Recommended titles sit on average at the "
                     f"{pb['mean_percentile']:.0f}th popularity percentile of the catalog (neutral: 50th); "
                     f"{_fmt(pb['top_share'], True)} of them are among the 10 % most popular titles (neutral: 10 %); "
                     f"{pb['distinct_items']} distinct titles for {pb['users']} sampled users.")
    if not lim:
        lines.append("- Not measured (see notes).")
    fair = card["fairness"]
    lines += ["", "## Quality across user groups", ""]
    if fair:
        h = fair["holdout"]
        lines += [f"Days after the training window, {h['start']} → {h['end']}: {h['users_scored']} users scored "
                  f"(sample of {h['users_sampled']}; {h['unknown_users']} unknown to the model left out).", "",
                  "### By activity tier", "", "| tier | training interactions | users | nDCG@10 | hit rate@10 | "
                  "popular-title share |", "|---|---|---:|---:|---:|---:|"]
        for row in fair["by_activity"]:
            lines.append(f"| {row['tier']} | {row['interactions']} | {row['users']} | {_fmt(row['ndcg@10'])} | "
                         f"{_fmt(row['hit_rate@10'])} | {_fmt(row['top_share'], True)} |")
        lines += ["", "### By favourite genre", "", "| genre | users | nDCG@10 | hit rate@10 | popular-title share |",
                  "|---|---:|---:|---:|---:|"]
        for row in fair["by_genre"]:
            flag = " (few users)" if row["users"] < SMALL_GROUP else ""
            lines.append(f"| {row['genre']}{flag} | {row['users']} | {_fmt(row['ndcg@10'])} | "
                         f"{_fmt(row['hit_rate@10'])} | {_fmt(row['top_share'], True)} |")
        pol = fair["popularity_of_lists"]
        lines += ["", "### Popularity of the lists", "",
                  f"{_fmt(pol['top_share_overall'], True)} of recommended titles are among the 10 % most popular "
                  "(neutral: 10 %)."]
    else:
        lines.append("Not measured (see notes).")
    lines += ["", "## Second stage", ""]
    r = card.get("ranker")
    lines.append(f"Ranker v{r['version']} re-orders this model's candidates." if r else
                 "No ranker re-orders this model's lists.")
    if card["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in card["notes"]]
    return "\n".join(lines) + "\n"
