"""Serving: `recommend(user_id, k)` from the production model, with explicit fallbacks.

Paths: 'model' (the production CF model), or a Top 50 fallback that says why:
'top50:no-model' (nothing in production), 'top50:cold-start' (the model has
never seen this user), 'top50:no-consent' (personalization withdrawn).
Every served list is logged in `served_recommendations` (the audit trail).
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import numpy as np
import sqlite_utils

from core.store import clock, opsdb, servinglog
from core.training import registry
from core.training.artifacts import Bundle, load_bundle
from core.constants import DEFAULT_K
from core.errors import UnknownUser, ValidationError
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import Settings
from core.training.top50 import top50

_local = threading.local()
_bundles: dict[tuple[str, str], Bundle] = {}
_top50_cache: dict[tuple, list] = {}
_lock = threading.Lock()


@dataclass
class Recommendation:
    user_id: int
    path: str
    movie_ids: list[int]
    scores: list[float]
    model_version: int | None = None
    data_version: str | None = None
    ranker_version: int | None = None
    reason: str = ""
    served_at: str | None = None
    serve_id: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _thread_connection(kind: str, path, opener) -> sqlite_utils.Database:
    """One connection per thread, store kind and file (opening one per request costs milliseconds;
    SQLite connections must not cross Streamlit's threads)."""
    cache = getattr(_local, kind, None)
    if cache is None:
        cache = {}
        setattr(_local, kind, cache)
    if str(path) not in cache:
        cache[str(path)] = opener()
    return cache[str(path)]


def _db(settings: Settings) -> sqlite_utils.Database:
    return _thread_connection("dbs", settings.ops_db, lambda: opsdb.connect(settings))


def _production(settings: Settings, family: str = "cf") -> dict | None:
    """The production version of a family (a promotion or rollback from any process is seen by the next request)."""
    from core.store import mlopsdb
    db = _thread_connection("mlops", settings.mlops_db, lambda: mlopsdb.open_mlops(settings))
    return registry.production_on(db, settings, family)


def bundle_for(version: dict) -> Bundle:
    """The loaded bundle of a registry version (cached by path and hash: a promotion swaps it)."""
    key = (version["artifact_path"], version["artifact_hash"])
    with _lock:
        if key not in _bundles:
            _bundles.clear()
            _bundles[key] = load_bundle(version["artifact_path"])
        return _bundles[key]


_rankers: dict = {}


def ranker_for(cf_version: int, settings: Settings):
    """The production ranker when it was trained on the serving CF version (else None: CF order)."""
    rk = _production(settings, "ranker")
    if rk is None or rk["depends_on"] != cf_version:
        return None, None
    key = (rk["artifact_path"], rk["artifact_hash"], rk.get("pending_hash"))
    with _lock:
        if key not in _rankers:
            from core.training.ranker import load_ranker
            _rankers.clear()
            # An erasure announces the hash its file swap will produce before it swaps (`pending_hash`).
            accepted = tuple(h for h in (rk["artifact_hash"], rk.get("pending_hash")) if h)
            _rankers[key] = load_ranker(rk["artifact_path"], accepted)
        return _rankers[key], int(rk["version"])


def _ranked(bundle: Bundle, settings: Settings, cf_version: int, rows: np.ndarray, seen: list[set], k: int):
    """CF candidates (seen titles removed) re-ordered by the ranker when one serves: (movie ids, scores, ranker)."""
    from core.training.ranker import CANDIDATES
    ranker, ranker_version = ranker_for(cf_version, settings)
    want = CANDIDATES if ranker is not None else k
    extra = max((len(s) for s in seen), default=0)
    n = min(want + extra, bundle.matrix.user_items.shape[1])
    ids, scores = bundle.model.recommend(rows, bundle.matrix.user_items, n)
    movie_ids = np.where(ids >= 0, bundle.matrix.movie_ids[np.clip(ids, 0, None)], -1)
    keep_ids = np.full((len(rows), want), -1, dtype=np.int64)
    keep_scores = np.zeros((len(rows), want))
    for i, s in enumerate(seen):
        ok = [(c, sc) for c, m, sc in zip(ids[i], movie_ids[i], scores[i]) if m >= 0 and m not in s][:want]
        keep_ids[i, :len(ok)] = [c for c, _ in ok]
        keep_scores[i, :len(ok)] = [sc for _, sc in ok]
    if ranker is not None:
        keep_ids, keep_scores = ranker.rerank(rows, keep_ids, keep_scores, k)
    keep_ids, keep_scores = keep_ids[:, :k], keep_scores[:, :k]
    out = []
    for i in range(len(rows)):
        valid = keep_ids[i] >= 0
        out.append(([int(m) for m in bundle.matrix.movie_ids[keep_ids[i][valid]]], [float(x) for x in keep_scores[i][valid]]))
    return out, ranker_version


def clear_caches() -> None:
    """Forget loaded models and this thread's cached connections (after a promotion, an erasure, a rebuild)."""
    with _lock:
        _bundles.clear()
        _top50_cache.clear()
        _rankers.clear()
    for name in ("dbs", "mlops"):
        for db in getattr(_local, name, {}).values():
            try:
                db.conn.close()
            except Exception:  # noqa: BLE001 - already closed
                pass
        setattr(_local, name, {})


def _top50_list(db: sqlite_utils.Database) -> list[tuple[int, float]]:
    key = (str(db.conn), opsdb.ratings_marker(db))
    if key not in _top50_cache:
        _top50_cache.clear()
        t = top50(db).table
        _top50_cache[key] = list(zip(t["movie_id"].astype(int), t["weighted_rating"].astype(float)))
    return _top50_cache[key]


def seen_movies(db: sqlite_utils.Database, user_id: int) -> set[int]:
    """Movies the user watched or rated (never recommended again)."""
    return {m for _, m in opsdb.seen_pairs(db, [user_id])}


def recommend(settings: Settings, user_id: int, k: int = DEFAULT_K, *, log: bool = True, at: str | None = None) -> Recommendation:
    """Top-k movies for one user; says which path it took and logs the list."""
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= 100:
        raise ValidationError(f"k must be an integer in 1..100, got {k!r}")
    db = _db(settings)
    opsdb.require_user(db, user_id)
    consent = opsdb.personalization_consent(db, [int(user_id)]).get(int(user_id), 0)   # 0: erased meanwhile
    seen = seen_movies(db, int(user_id))
    prod = _production(settings)
    rec = None
    bundle = None if prod is None else bundle_for(prod)
    row = None if bundle is None else bundle.user_row.get(pseudonym(int(user_id), pseudonym_key(settings)))
    reason = fallback_reason(bool(consent), bundle, row)
    if reason is None:
        ((movies, scores),), ranker_version = _ranked(bundle, settings, int(prod["version"]), np.array([row]), [seen], k)
        rec = Recommendation(int(user_id), "model", movies, scores, int(prod["version"]), prod["data_version"],
                             ranker_version=ranker_version,
                             reason="personalized by the production model"
                                    + (f", re-ranked by ranker v{ranker_version}" if ranker_version else ""))
    if rec is None:
        pairs = [(m, s) for m, s in _top50_list(db) if m not in seen][:k]
        rec = Recommendation(int(user_id), reason[0], [m for m, _ in pairs], [s for _, s in pairs], reason=reason[1])
    if log:
        rec.served_at = at or clock.now(db=db)
        rec.serve_id = servinglog.log_list(db, _log_entry(rec, rec.served_at))
    return rec


def fallback_reason(consent: bool, bundle: Bundle | None, row: int | None) -> tuple[str, str] | None:
    """The one decision of both serving paths: None when the production model serves the user, else the
    Top 50 fallback's (path, reason) — no consent, no model, cold start, or factors erased."""
    if not consent:
        return "top50:no-consent", "the user withdrew consent to personalization"
    if bundle is None:
        return "top50:no-model", "no model is in production yet"
    if row is None:
        return "top50:cold-start", "the production model has no history for this user (cold start)"
    if hasattr(bundle.model, "user_factors_") and not bundle.model.user_factors_[row].any():
        return "top50:cold-start", "the user's factors were erased; the next retrain excludes their data"
    return None


def recommend_many(settings: Settings, user_ids, k: int = DEFAULT_K, *, log: bool = True, at: str | None = None) -> dict[int, Recommendation]:
    """Batch serving for many users at once (one model call), same paths and logging as `recommend`."""
    user_ids = [int(u) for u in user_ids]
    db = _db(settings)
    consent = opsdb.personalization_consent(db, user_ids)
    unknown = [u for u in user_ids if u not in consent]
    if unknown:
        raise UnknownUser(f"unknown user(s) {unknown[:5]}{' …' if len(unknown) > 5 else ''}")
    seen: dict[int, set] = {}
    for u, m in opsdb.seen_pairs(db, user_ids):
        seen.setdefault(u, set()).add(m)
    prod = _production(settings)
    out: dict[int, Recommendation] = {}
    bundle = None if prod is None else bundle_for(prod)
    key = pseudonym_key(settings)
    rows = {u: None if bundle is None else bundle.user_row.get(pseudonym(u, key)) for u in user_ids}
    reasons = {u: fallback_reason(bool(consent[u]), bundle, rows[u]) for u in user_ids}
    todo = [u for u in user_ids if reasons[u] is None]
    if todo:
        lists, ranker_version = _ranked(bundle, settings, int(prod["version"]), np.array([rows[u] for u in todo]),
                                        [seen.get(u, set()) for u in todo], k)
        for u, (movies, scores) in zip(todo, lists):
            out[u] = Recommendation(u, "model", movies, scores, int(prod["version"]), prod["data_version"],
                                    ranker_version=ranker_version, reason="personalized by the production model"
                                    + (f", re-ranked by ranker v{ranker_version}" if ranker_version else ""))
    top = _top50_list(db)
    for u in user_ids:
        if u in out:
            continue
        path, why = reasons[u]
        s = seen.get(u, set())
        pairs = [(m, sc) for m, sc in top if m not in s][:k]
        out[u] = Recommendation(u, path, [m for m, _ in pairs], [sc for _, sc in pairs], reason=why)
    if log:
        when = at or clock.now(db=db)
        servinglog.log_lists(db, [_log_entry(r, when) for r in out.values()])
        for r in out.values():
            r.served_at = when
    return out


def _log_entry(rec: Recommendation, served_at: str) -> dict:
    """The serving log's record of a list (see `servinglog.log_list`)."""
    return {"user_id": rec.user_id, "served_at": served_at, "path": rec.path, "model_version": rec.model_version,
            "data_version": rec.data_version, "movie_ids": rec.movie_ids, "scores": rec.scores,
            "ranker_version": rec.ranker_version}


def served_pairs(settings: Settings, start, end, key: bytes | None = None):
    """(user_key, movie_id) of every title a *model* list showed in [start, end), pseudonymized."""
    return servinglog.served_pairs(settings, start, end, key)


def served_log(settings: Settings, user_id: int | None = None, since: str | None = None, until: str | None = None,
               limit: int = 100) -> list[dict]:
    """Logged lists, newest first, filtered by user and time window."""
    with opsdb.session(settings) as db:
        return servinglog.logged_lists(db, user_id, since, until, limit)


def ops_connection(settings: Settings) -> sqlite_utils.Database:
    """The calling thread's operational-database connection, kept open across requests (opening one costs
    milliseconds); for readers that answer per request, like explanations. Do not close it."""
    return _db(settings)
