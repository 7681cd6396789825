"""Where does a bad recommendation come from? Checks in the four places it can start.

1. **data** — the ETL's validation gate (quarantined share of the latest data
   version), open data-quality / data-drift alerts, and for one user the rows of
   theirs the gate quarantined in the last 7 days;
2. **features** — the production bundle's training matrix: for one user, whether
   the model knows them (else cold start) and whether their row (number of
   interactions, mean confidence) lies within the 1st–99th percentile of all rows;
   for the system, empty rows / columns and non-finite or non-positive confidences;
3. **model** — non-finite factors, open online-quality alerts, and signs of
   under/overfitting (rules below);
4. **deployment** — a production model exists, its bundle loads and its bytes
   match the registry's hash, the serving log's latest model list came from the
   registry's production version, and the path of the user's latest list.

Under/overfitting rules (measured on the deployed bundle, `FIT_SAMPLE_USERS` users):
the model's *training* recall@10 — the share of a user's own training titles
(up to 10) that come back in their top 10 with seen titles *not* filtered — is
divided by the same number for the popularity ranking (`train_lift`); the run's
holdout hit rate@10 is divided by the popularity baseline's on the same split
(`holdout_lift`). In-sample hit rate@10 alone saturates near 1 for any
personalised model, so it is reported but only compared with the holdout.

- underfitting if `train_lift` < `UNDERFIT_LIFT` (1.1: the model reproduces its
  own training data no better than the most-popular list) or training hit rate@10
  < holdout hit rate@10;
- overfitting if `train_lift / holdout_lift` > `OVERFIT_GAP` (2.0: the advantage
  over popularity on training data is more than twice the advantage on new data).
  On the simulated worlds the default ALS sits at 1.2–1.6, an ALS with almost no
  regularization (factors 256, regularization 0.01, alpha 40) at 2.3–2.7.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from core.monitoring import monitoring
from core.store import clock, opsdb, servinglog
from core.training import registry, tracking
from core.warehouse import warehouse
from core.training.artifacts import Bundle, bundle_hash, load_bundle
from core.governance.audit import is_fallback, path_reason
from core.constants import DEFAULT_K, SEED
from core.errors import RetroError, ValidationError
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import Settings

PLACES = ("data", "features", "model", "deployment")
QUARANTINE_SHARE_MAX = monitoring.QUARANTINE_RATE_ALERT   # same threshold as the data-quality alert (2 %)
USER_QUARANTINE_DAYS = 7
FEATURE_PERCENTILES = (1.0, 99.0)
EMPTY_ROWS_MAX = 0.01       # users with no positive interaction: the model can only guess for them
EMPTY_COLUMNS_MAX = 0.50    # titles nobody interacted with cannot be recommended by CF
FIT_SAMPLE_USERS = 500
UNDERFIT_LIFT = 1.1
OVERFIT_GAP = 2.0
DATA_ALERT_KINDS = ("data-quality", "data-drift")


LEVELS = ("pass", "info", "fail")


def _check(place: str, name: str, ok: bool, detail: str, *, info: bool = False) -> dict:
    """One finding. `level` is 'fail' when not ok, 'info' for a fact worth knowing that is not a fault
    (e.g. nobody has been served since the last promotion), else 'pass'; `ok` is False only for 'fail'."""
    level = "fail" if not ok else "info" if info else "pass"
    return {"place": place, "name": name, "ok": bool(ok), "level": level, "detail": detail}


def _served_before_promotion(history: pd.DataFrame, prod: dict, served_at, version) -> bool:
    """True when a list from `version` was served while `version` was production, before the current production
    was promoted: nothing has been served since the promotion, which is not a fault."""
    if history.empty or version is None:
        return False
    to_prod = history[history["to_stage"] == "production"]
    promoted = to_prod[to_prod["version"] == prod["version"]]["at"]
    earlier = to_prod[(to_prod["version"] == version) & (to_prod["at"] <= str(served_at))]
    return len(promoted) > 0 and str(served_at) <= str(promoted.max()) and len(earlier) > 0


def diagnose(settings: Settings, user_id: int | None = None) -> dict:
    """Run every check (system-wide, plus the user's own with `user_id`).

    Returns {"scope": "user N" | "system", "checks": [{place, name, ok, level, detail}] (level 'pass', 'info'
    or 'fail'; ok is False only for 'fail'), "failed_places": places with a failed check (in PLACES order),
    "info_places": places with an 'info' finding but no failure,
    "production_version", "notes": checks that were skipped and why}.
    Raises UnknownUser for a user id not in the operational database.
    """
    user = None
    if user_id is not None:
        if isinstance(user_id, bool):
            raise ValidationError(f"user id must be an integer, got {user_id!r}")
        try:
            user = int(user_id)
        except (TypeError, ValueError):
            raise ValidationError(f"user id must be an integer, got {user_id!r}") from None
    with opsdb.session(settings) as db:
        now = clock.now(db=db)
        if user is not None:
            consent = bool(opsdb.require_user(db, user)["consent_personalization"])
        latest_model = servinglog.latest_model_list(db)
        latest_user = None if user is None else servinglog.latest_list(db, user)
    key = pseudonym_key(settings) if user is not None else None
    user_key = pseudonym(user, key) if user is not None else None
    notes: list[str] = []
    checks: list[dict] = []

    # ---------------------------------------------------------------- data
    checks.append(_validation_check(settings))
    checks.append(_alert_check(settings, "data", "open data alerts", lambda k: k in DATA_ALERT_KINDS))
    if user is not None:
        checks.append(_user_quarantine_check(settings, user, user_key, now))

    # ---------------------------------------------------------------- deployment (loads the bundle)
    prod = registry.production(settings)
    bundle, deploy = None, []
    if prod is None:
        deploy.append(_check("deployment", "production model", False,
                             "no model in production: every user gets the Top 50 (run a retrain)"))
        notes.append("features and model checks need a production model: skipped")
    else:
        deploy.append(_check("deployment", "production model", True,
                             f"v{prod['version']} ({prod['model_kind']}, data {prod['data_version']})"))
        try:
            bundle = load_bundle(prod["artifact_path"])
            deploy.append(_check("deployment", "bundle loads", True, f"{prod['artifact_path']} loads"))
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            deploy.append(_check("deployment", "bundle loads", False,
                                 f"the bundle at {prod['artifact_path']} does not load: {type(exc).__name__}: {exc}"))
        deploy.append(_hash_check(prod))
    history = registry.history(settings) if prod is not None else pd.DataFrame()
    if prod is not None:
        deploy.append(_served_version_check(prod, latest_model, history))
    if user is not None:
        deploy.append(_user_path_check(user, latest_user, prod, history))
    deploy += _ranker_checks(settings, prod, notes)

    # ---------------------------------------------------------------- features and model
    if bundle is not None:
        if user is not None:
            checks += _user_feature_checks(bundle, user, user_key, consent)
        checks += _matrix_checks(bundle)
        checks += _model_checks(settings, prod, bundle)
    elif prod is not None:
        notes.append("the production bundle does not load: features and model checks skipped")
    checks.append(_alert_check(settings, "model", "online quality alerts", lambda k: k not in DATA_ALERT_KINDS))
    checks += deploy
    failed = [p for p in PLACES if any(c["place"] == p and not c["ok"] for c in checks)]
    info = [p for p in PLACES if p not in failed and any(c["place"] == p and c["level"] == "info" for c in checks)]
    checks.sort(key=lambda c: PLACES.index(c["place"]))
    return {"scope": f"user {user}" if user is not None else "system", "checks": checks, "failed_places": failed,
            "info_places": info,
            "production_version": None if prod is None else int(prod["version"]), "notes": notes}


# ------------------------------------------------------------------ data
def _validation_check(settings: Settings) -> dict:
    with warehouse.session(settings) as con:
        latest = warehouse.latest_version(con)
    if latest is None:
        return _check("data", "validation report", False, "the warehouse has no data version: run the ETL")
    report = json.loads(latest["validation"] or "{}")
    quarantined = int(report.get("quarantined", latest.get("rows_quarantined") or 0))
    total = int(report.get("valid", latest.get("rows_loaded") or 0)) + quarantined
    share = quarantined / total if total else 0.0
    reasons = ", ".join(f"{r} {n}" for r, n in sorted((report.get("by_reason") or {}).items(), key=lambda kv: -kv[1]))
    detail = (f"dv{int(latest['version'])}: {quarantined:,} of {total:,} rows quarantined ({share:.1%}, "
              f"threshold {QUARANTINE_SHARE_MAX:.0%})" + (f"; reasons: {reasons}" if reasons else ""))
    volume = report.get("volume_alerts") or []
    if volume:
        detail += f"; {len(volume)} day(s) with unusual volume"
    return _check("data", "validation report", share <= QUARANTINE_SHARE_MAX, detail)


def _alert_check(settings: Settings, place: str, name: str, keep) -> dict:
    alerts = monitoring.open_alerts(settings)
    rows = [] if alerts.empty else [a for a in alerts.to_dict("records") if keep(a["kind"])]
    if not rows:
        return _check(place, name, True, "no open alert")
    listed = "; ".join(f"{a['kind']}:{a['metric']} ({a['severity']}, opened {a['opened_at']}, "
                       f"classified '{a['classification']}')" for a in rows)
    return _check(place, name, False, f"{len(rows)} open: {listed}")


def _user_quarantine_check(settings: Settings, user: int, user_key: str, now: str) -> dict:
    since = pd.Timestamp(now) - pd.Timedelta(days=USER_QUARANTINE_DAYS)
    with warehouse.session(settings) as con:
        rows = warehouse.user_quarantine_reasons(con, user_key, since)
    n = sum(c for _, c in rows)
    if not n:
        return _check("data", "user quarantined rows", True,
                      f"no row of user {user} quarantined in the last {USER_QUARANTINE_DAYS} days")
    reasons = ", ".join(f"{r} {c}" for r, c in rows)
    return _check("data", "user quarantined rows", False,
                  f"{n} row(s) of user {user} quarantined in the last {USER_QUARANTINE_DAYS} days ({reasons}): "
                  "their recent activity did not reach the training data")


# ------------------------------------------------------------------ features
def _user_feature_checks(bundle: Bundle, user: int, user_key: str, consent: bool) -> list[dict]:
    row = bundle.user_row.get(user_key)
    if row is None:
        why = ("cold start: served by the Top 50 fallback (the production model has no history for this user)"
               if consent else "no history in the model (the user withdrew consent to personalisation): "
                               "served by the Top 50 fallback")
        return [_check("features", "user known to the model", False, why)]
    factors = getattr(bundle.model, "user_factors_", None)
    if factors is not None and not factors[row].any():
        return [_check("features", "user known to the model", False,
                       "the user's factors were erased (privacy erasure): served by the Top 50 fallback "
                       "until the next retrain")]
    ui = bundle.matrix.user_items
    counts = np.diff(ui.indptr)
    sums = np.asarray(ui.sum(axis=1)).ravel()
    active = counts > 0
    means = np.divide(sums, counts, out=np.zeros_like(sums, dtype=float), where=active)
    lo_p, hi_p = FEATURE_PERCENTILES
    out = [_check("features", "user known to the model", True, f"row {row} of {ui.shape[0]:,} in the training matrix")]
    for name, value, values in (("user interactions in range", float(counts[row]), counts[active]),
                                ("user confidence in range", float(means[row]), means[active])):
        lo, hi = (float(np.percentile(values, p)) for p in (lo_p, hi_p)) if len(values) else (0.0, 0.0)
        ok = lo <= value <= hi
        what = "training interactions" if "interactions" in name else "mean confidence"
        out.append(_check("features", name, ok,
                          f"{what} {value:.3g} {'within' if ok else 'outside'} percentiles {lo_p:g}–{hi_p:g} "
                          f"of all users [{lo:.3g}, {hi:.3g}]" + ("" if ok else ": an unusual profile for the model")))
    return out


def _matrix_checks(bundle: Bundle) -> list[dict]:
    ui = bundle.matrix.user_items
    n_users, n_items = ui.shape
    empty_rows = int((np.diff(ui.indptr) == 0).sum())
    empty_cols = n_items - int(len(np.unique(ui.indices[ui.data != 0]))) if ui.nnz else n_items
    bad = int((~np.isfinite(ui.data) | (ui.data <= 0)).sum())
    rows_share = empty_rows / n_users if n_users else 1.0
    cols_share = empty_cols / n_items if n_items else 1.0
    return [
        _check("features", "empty rows", rows_share <= EMPTY_ROWS_MAX,
               f"{empty_rows:,} of {n_users:,} users without any interaction ({rows_share:.1%}, "
               f"threshold {EMPTY_ROWS_MAX:.0%})"),
        _check("features", "empty columns", cols_share <= EMPTY_COLUMNS_MAX,
               f"{empty_cols:,} of {n_items:,} titles nobody interacted with ({cols_share:.1%}, "
               f"threshold {EMPTY_COLUMNS_MAX:.0%}): CF cannot recommend them"),
        _check("features", "confidence values", bad == 0,
               f"{bad:,} of {ui.nnz:,} stored confidences are NaN, infinite or ≤ 0" if bad else
               f"all {ui.nnz:,} stored confidences are finite and positive"),
    ]


# ------------------------------------------------------------------ model
def own_items_recall(model, user_items, rows: np.ndarray, k: int = DEFAULT_K) -> tuple[float, float]:
    """(hit rate@k, recall@k) of users' *own* training items in their unfiltered top k; both in [0, 1].

    recall@k here = |top-k ∩ own items| / min(k, |own items|), so a perfect memoriser scores 1.
    """
    if not len(rows):
        return math.nan, math.nan
    ids, _ = model.recommend(rows, user_items, k, filter_seen=False)
    hits, recalls = [], []
    for i, r in enumerate(rows):
        own = set(user_items.indices[user_items.indptr[r]:user_items.indptr[r + 1]].tolist())
        if not own:
            continue
        found = len(own & set(ids[i][ids[i] >= 0].tolist()))
        hits.append(found > 0)
        recalls.append(found / min(k, len(own)))
    return (float(np.mean(hits)), float(np.mean(recalls))) if hits else (math.nan, math.nan)


def fit_diagnosis(train_hit: float, train_recall: float, pop_train_recall: float, holdout_hit: float | None,
                  pop_holdout_hit: float | None) -> dict:
    """The under/overfitting rules of the module docstring, as numbers and verdicts."""
    train_lift = train_recall / pop_train_recall if pop_train_recall else math.inf
    holdout_lift = (holdout_hit / pop_holdout_hit if holdout_hit is not None and pop_holdout_hit else None)
    gap = train_lift / holdout_lift if holdout_lift else None
    underfit = train_lift < UNDERFIT_LIFT or (holdout_hit is not None and train_hit < holdout_hit)
    overfit = gap is not None and gap > OVERFIT_GAP
    return {"train_hit_rate": train_hit, "train_recall": train_recall, "popularity_train_recall": pop_train_recall,
            "train_lift": train_lift, "holdout_hit_rate": holdout_hit, "popularity_holdout_hit_rate": pop_holdout_hit,
            "holdout_lift": holdout_lift, "gap": gap, "underfitting": bool(underfit), "overfitting": bool(overfit)}


def _model_checks(settings: Settings, prod: dict, bundle: Bundle) -> list[dict]:
    from core.training.models import PopularityRecommender
    out = []
    factors = {a: getattr(bundle.model, a, None) for a in ("user_factors_", "item_factors_")}
    factors = {a: f for a, f in factors.items() if f is not None}
    if factors:
        bad = {a: int((~np.isfinite(f)).sum()) for a, f in factors.items()}
        out.append(_check("model", "finite factors", not any(bad.values()),
                          "; ".join(f"{a} has {n:,} NaN/inf values" for a, n in bad.items() if n)
                          or f"every value of {', '.join(factors)} is finite"))
    ui = bundle.matrix.user_items
    active = np.flatnonzero(np.diff(ui.indptr) > 0)
    rows = np.sort(np.random.default_rng(SEED).choice(active, size=min(FIT_SAMPLE_USERS, len(active)), replace=False))
    try:
        train_hit, train_recall = own_items_recall(bundle.model, ui, rows)
        _, pop_recall = own_items_recall(PopularityRecommender().fit(ui), ui, rows)
    except (RetroError, ValueError) as exc:
        out.append(_check("model", "underfitting", False, f"the model could not recommend for its own users: {exc}"))
        return out
    run_metrics, baselines = prod.get("metrics") or {}, {}
    try:
        baselines = tracking.get_run(settings, prod["run_id"]).get("baselines") or {}
    except RetroError:
        pass
    fit = fit_diagnosis(train_hit, train_recall, pop_recall, run_metrics.get("hit_rate@10"),
                        (baselines.get("popularity") or {}).get("hit_rate@10"))
    numbers = (f"on {len(rows)} users: own training titles back in the unfiltered top 10 — hit rate "
               f"{train_hit:.3f}, recall {train_recall:.3f} (popularity {pop_recall:.3f}, lift {fit['train_lift']:.2f})")
    holdout = ("" if fit["holdout_hit_rate"] is None else
               f"; holdout hit rate@10 at training {fit['holdout_hit_rate']:.3f}"
               + ("" if fit["holdout_lift"] is None else
                  f" (popularity {fit['popularity_holdout_hit_rate']:.3f}, lift {fit['holdout_lift']:.2f})"))
    out.append(_check("model", "underfitting", not fit["underfitting"],
                      numbers + holdout + (f" — underfitting: training lift < {UNDERFIT_LIFT} or training hit rate "
                                           "< holdout hit rate" if fit["underfitting"] else "")))
    out.append(_check("model", "overfitting", not fit["overfitting"],
                      (f"gap (training lift / holdout lift) {fit['gap']:.2f}" if fit["gap"] is not None else
                       "no holdout baseline recorded: gap not computed") + f", threshold {OVERFIT_GAP}"
                      + (" — overfitting: the model's advantage on its training data does not carry over to new data"
                         if fit["overfitting"] else "")))
    return out


# ------------------------------------------------------------------ deployment
def _hash_check(prod: dict) -> dict:
    try:
        actual = bundle_hash(prod["artifact_path"])
    except OSError as exc:
        return _check("deployment", "artifact hash", False, f"cannot read the bundle files: {exc}")
    ok = actual == prod["artifact_hash"]
    return _check("deployment", "artifact hash", ok,
                  f"sha256 on disk {actual[:12]}… " + ("matches the registry" if ok else
                  f"≠ registry {str(prod['artifact_hash'])[:12]}…: the files changed after registration"))


def _served_version_check(prod: dict, latest_model, history: pd.DataFrame) -> dict:
    if latest_model is None:
        return _check("deployment", "served version", True, "no list has been served by a model yet")
    serve_id, served_at, version = latest_model
    if version != prod["version"] and _served_before_promotion(history, prod, served_at, version):
        return _check("deployment", "served version", True,
                      f"not served since v{prod['version']}: the latest model list (#{serve_id}, {served_at}) came "
                      f"from v{version}, production then; the next list comes from v{prod['version']}", info=True)
    ok = version == prod["version"]
    return _check("deployment", "served version", ok,
                  f"latest model list (#{serve_id}, {served_at}) came from v{version}; registry production is "
                  f"v{prod['version']}" + ("" if ok else ": serving and the registry disagree (a stale serving "
                                                         "process, or a promotion not yet picked up)"))


def _user_path_check(user: int, latest, prod: dict | None, history: pd.DataFrame) -> dict:
    if latest is None:
        return _check("deployment", "user serving path", True, f"no list has been served to user {user} yet")
    serve_id, served_at, path, version = latest
    if prod is not None and version != prod["version"] and _served_before_promotion(history, prod, served_at, version):
        return _check("deployment", "user serving path", True,
                      f"not served since v{prod['version']}: user {user}'s latest list (#{serve_id}, {served_at}) "
                      + (f"was personalised by v{version}, production then" if not is_fallback(path) else
                         f"was {path_reason(path)} (`{path}`) under v{version}")
                      + f"; the next list comes from v{prod['version']}", info=True)
    if is_fallback(path):
        return _check("deployment", "user serving path", False,
                      f"latest list (#{serve_id}, {served_at}): {path_reason(path)} (`{path}`)")
    stale = prod is not None and version != prod["version"]
    return _check("deployment", "user serving path", not stale,
                  f"latest list (#{serve_id}, {served_at}) personalised by v{version}"
                  + (f", but production is now v{prod['version']}" if stale else ""))


def _ranker_checks(settings: Settings, cf: dict | None, notes: list[str]) -> list[dict]:
    """Optional second stage: checked only when a ranker is in production."""
    ranker = registry.production(settings, family=registry.RANKER)
    if ranker is None:
        notes.append("no ranker in production: ranker checks skipped")
        return []
    out = [_check("deployment", "ranker depends on production", cf is not None and ranker["depends_on"] == cf["version"],
                  f"ranker v{ranker['version']} was trained on CF v{ranker['depends_on']}; CF production is "
                  + (f"v{cf['version']}" if cf else "none"))]
    try:
        from core.training.ranker import ranker_hash
    except ImportError:
        notes.append("core.training.ranker is not available: ranker artifact hash not checked")
        return out
    try:
        actual = ranker_hash(ranker["artifact_path"])
        ok = actual == ranker["artifact_hash"]
        detail = f"sha256 on disk {actual[:12]}… " + ("matches the registry" if ok else "≠ registry")
    except OSError as exc:
        ok, detail = False, f"cannot read the ranker files: {exc}"
    out.append(_check("deployment", "ranker artifact hash", ok, detail))
    return out


# ------------------------------------------------------------------ rendering
def diagnose_markdown(result: dict) -> str:
    """The result as Markdown: a verdict, then one section per place with ✓ / ✗ per check."""
    failed = result["failed_places"]
    info = [c["name"] for c in result["checks"] if c.get("level") == "info"]
    lines = [f"# Diagnosis ({result['scope']})", "",
             ("All checks pass." if not failed else
              "Problems found in: " + ", ".join(f"**{p}**" for p in failed) + ".")
             + (f" For information: {', '.join(info)}." if info else ""), ""]
    marks = {"pass": "✓", "info": "i", "fail": "✗"}   # plain glyphs: no emoji font needed
    for place in PLACES:
        rows = [c for c in result["checks"] if c["place"] == place]
        if not rows:
            continue
        lines += [f"## {place.capitalize()}", ""]
        for c in rows:
            lines.append(f"- {marks[c.get('level', 'pass' if c['ok'] else 'fail')]} **{c['name']}** — {c['detail']}")
        lines.append("")
    if result.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    return "\n".join(lines)
