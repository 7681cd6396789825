"""Serving: `recommend(user_id, k)` from the production model, with explicit fallbacks.

Paths: 'model' (the production CF model), or a Top 50 fallback that says why:
'top50:no-model' (nothing in production), 'top50:cold-start' (the model has
never seen this user), 'top50:no-consent' (personalization withdrawn).
Every served list is logged in `served_recommendations` (the audit trail).

What serves is one `ServingState` read at once: the production bundle and ranker
and, during a release (`core.serving.deployments`), the candidate's bundle. A
canary shows the candidate's list to the users its hash puts in its arm, re-ranked by
the candidate's own ranker when one was trained for it (`pipeline.train_ranker(cf_version=…)`,
which a release start does when production serves a ranker), else in CF order; a
shadow computes the candidate's list beside production's and logs it in the shadow
log, unseen. In-process calls read the state per request (a promotion
or rollback from any process is seen by the next request); the HTTP server
(`core.server`) holds one state and swaps it whole when the registry changes.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import sqlite_utils

from core.serving import deployments, exploration
from core.store import clock, opsdb, servinglog
from core.training import registry
from core.training.artifacts import Bundle, load_bundle
from core import bounds
from core.constants import DEFAULT_K
from core.errors import RetroError, UnknownUser, ValidationError
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import Settings
from core.training.top50 import top50

_local = threading.local()
_bundles: OrderedDict[tuple[str, str], Bundle] = OrderedDict()
_top50_cache: dict[tuple, list] = {}
_lock = threading.Lock()
MAX_LOADED = 4            # bundles kept in memory: production, a release's candidate, and the ones they replace
MAX_K = bounds.MAX_K


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
    arm: str = "production"                  # 'canary' when a canary release showed its candidate's list
    production_version: int | None = None    # what was in production when the list was served
    policy: str = exploration.DETERMINISTIC  # 'explore' when the list was drawn by the exploring policy
    propensities: list[float] | None = None  # P(title at its position) under the logging policy, list order
    slate_propensities: list[float] | None = None   # P(title anywhere in the list) under the logging policy

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ServingState:
    """What serves, read together and loaded: production's bundle and ranker, the active release and its
    candidate's bundle. Immutable, so a server swaps a whole state at once and no request mixes two."""
    production: dict | None = None
    bundle: Bundle | None = None
    ranker: object | None = None
    ranker_version: int | None = None
    release: dict | None = None
    candidate: dict | None = None
    candidate_bundle: Bundle | None = None
    candidate_ranker: object | None = None
    candidate_ranker_version: int | None = None
    fingerprint: tuple = field(default=(), compare=False)
    key: bytes | None = field(default=None, repr=False)    # the pseudonymization key the bundles are keyed by
    explore_share: float | None = None       # the policy table's exploration share (None: the setting)

    @property
    def version(self) -> int | None:
        return None if self.production is None else int(self.production["version"])

    def describe(self) -> dict:
        """JSON-ready summary: versions, data version, release (what /version and /ready report)."""
        release = None
        if self.release is not None:
            release = {k: self.release[k] for k in ("deployment_id", "mode", "share", "version", "started_at")}
            release["ranker_version"] = self.candidate_ranker_version
        return {"production_version": self.version,
                "model_kind": None if self.production is None else self.production["model_kind"],
                "data_version": None if self.production is None else self.production["data_version"],
                "ranker_version": self.ranker_version, "release": release, "explore_share": self.explore_share}


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


def _mlops(settings: Settings) -> sqlite_utils.Database:
    from core.store import mlopsdb
    return _thread_connection("mlops", settings.mlops_db, lambda: mlopsdb.open_mlops(settings))


def _production(settings: Settings, family: str = "cf") -> dict | None:
    """The production version of a family (a promotion or rollback from any process is seen by the next request)."""
    return registry.production_on(_mlops(settings), settings, family)


def read_serving_rows(settings: Settings) -> tuple:
    """(production CF row, production ranker row, active release, its candidate's row, the candidate's ranker
    row, the exploration share), read in one snapshot of the registry so a promotion between two reads cannot
    pair rows of different moments."""
    db = _mlops(settings)
    db.conn.execute("BEGIN")
    try:
        prod = registry.production_on(db, settings)
        rk = registry.production_on(db, settings, registry.RANKER)
        release = deployments.active_on(db)
        candidate = cand_rk = None
        if release is not None:
            candidate = registry.version_on(db, settings, int(release["version"]))
            cand_rk = registry.candidate_ranker_on(db, settings, int(release["version"]))
        share = exploration.share_on(db, settings)
    finally:
        db.conn.execute("COMMIT")
    return prod, rk, release, candidate, cand_rk, share


def fingerprint_of(prod, rk, release, candidate, cand_rk=None, share=None) -> tuple:
    """What makes a serving state different: versions, artifact hashes (an erasure rewrites them), the rankers
    and their CF versions, the release and its share, the exploration share."""
    def art(row):
        return None if row is None else (row["version"], row["artifact_path"], row["artifact_hash"],
                                         row.get("pending_hash"), row.get("depends_on"))
    rel = None if release is None else (release["deployment_id"], release["mode"], release["share"],
                                        release["updated_at"])
    return art(prod), art(rk), rel, art(candidate), art(cand_rk), share


def load_state(settings: Settings, rows=None) -> ServingState:
    """The serving state now (bundles from the cache, loaded on first use). `rows`: what
    `read_serving_rows` returned, when the caller already read it."""
    rows = rows if rows is not None else read_serving_rows(settings)
    prod, rk, release, candidate, cand_rk = rows[:5]
    share = rows[5] if len(rows) > 5 else None
    bundle = None if prod is None else bundle_for(prod)
    ranker, ranker_version = (None, None) if prod is None else _ranker_for_row(rk, int(prod["version"]))
    cand_bundle = None if candidate is None else bundle_for(candidate)
    cand_ranker, cand_ranker_version = (None, None) if candidate is None else _ranker_for_row(
        cand_rk, int(candidate["version"]))
    # The key is read once per state (reading secrets.toml was 8 % of a request); a key rotation rewrites every
    # bundle, so their new hashes bring a new state and the new key with it.
    return ServingState(prod, bundle, ranker, ranker_version, release, candidate, cand_bundle, cand_ranker,
                        cand_ranker_version, fingerprint_of(prod, rk, release, candidate, cand_rk, share),
                        pseudonym_key(settings), share)


def bundle_for(version: dict) -> Bundle:
    """The loaded bundle of a registry version (cached by path and hash: a promotion or an erasure swaps it;
    the last MAX_LOADED stay loaded, so production and a release's candidate never evict each other)."""
    registry.require_cf(version, "serving")
    key = (version["artifact_path"], version["artifact_hash"])
    with _lock:
        if key in _bundles:
            _bundles.move_to_end(key)
            return _bundles[key]
    loaded = load_bundle(version["artifact_path"])       # outside the lock: a load never blocks serving
    with _lock:
        _bundles[key] = loaded
        while len(_bundles) > MAX_LOADED:
            _bundles.popitem(last=False)
        return loaded


_rankers: OrderedDict = OrderedDict()


def _ranker_for_row(rk: dict | None, cf_version: int):
    """(loaded ranker, version) when `rk` was trained on `cf_version`, else (None, None): CF order. The last
    MAX_LOADED rankers stay loaded (production's and a release candidate's)."""
    if rk is None or rk["depends_on"] != cf_version:
        return None, None
    key = (rk["artifact_path"], rk["artifact_hash"], rk.get("pending_hash"))
    with _lock:
        if key not in _rankers:
            from core.training.ranker import load_ranker
            # An erasure announces the hash its file swap will produce before it swaps (`pending_hash`).
            accepted = tuple(h for h in (rk["artifact_hash"], rk.get("pending_hash")) if h)
            _rankers[key] = load_ranker(rk["artifact_path"], accepted)
            while len(_rankers) > MAX_LOADED:
                _rankers.popitem(last=False)
        _rankers.move_to_end(key)
        return _rankers[key], int(rk["version"])


def ranker_for(cf_version: int, settings: Settings):
    """The production ranker when it was trained on the serving CF version (else None: CF order)."""
    return _ranker_for_row(_production(settings, registry.RANKER), cf_version)


def _ranked(bundle: Bundle, ranker, rows: np.ndarray, seen: list[set], k: int) -> list[tuple[list, list]]:
    """CF candidates (seen titles removed), re-ordered by `ranker` when given: (movie ids, scores) per row."""
    from core.training.ranker import CANDIDATES
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
    return out


def version_lists(settings: Settings, version: dict, user_ids, k: int, seen: dict, *,
                  with_ranker: bool = True) -> dict[int, list[int]]:
    """The deterministic lists a registered CF version would serve these users (its ranker re-ranking them when
    one was trained on it: production's, else the newest candidate ranker that beat CF alone), with `seen`
    ({user: titles}) filtered out and the Top 50 for users it cannot personalize; nothing logged, no exploration.
    What the simulated world's truth values a version by (`core.simulation.truth`)."""
    bundle = bundle_for(version)
    ranker = None
    if with_ranker:
        db = _mlops(settings)
        row = registry.production_on(db, settings, registry.RANKER)
        if row is None or row["depends_on"] != int(version["version"]):
            row = registry.candidate_ranker_on(db, settings, int(version["version"]))
        ranker, _ = _ranker_for_row(row, int(version["version"]))
    key = pseudonym_key(settings)
    users = [int(u) for u in user_ids]
    rows = {u: bundle.user_row.get(pseudonym(u, key)) for u in users}
    known = [u for u in users if rows[u] is not None and fallback_reason(True, bundle, rows[u]) is None]
    out = {}
    if known:
        lists = _ranked(bundle, ranker, np.array([rows[u] for u in known]), [seen.get(u, set()) for u in known], k)
        out = {u: movies for u, (movies, _) in zip(known, lists)}
    top = _top50_list(_db(settings))
    for u in users:
        if u not in out:
            out[u] = [m for m, _ in top if m not in seen.get(u, set())][:k]
    return out


def _consent_and_seen(db, users: list[int]) -> tuple[dict, dict[int, set]]:
    """Each user's personalization consent and the titles they have seen; UnknownUser for ids the service does not
    know (checked before anything is served)."""
    consent = opsdb.personalization_consent(db, users)
    unknown = [u for u in users if u not in consent]
    if unknown:
        raise UnknownUser(f"unknown user(s) {unknown[:5]}{' …' if len(unknown) > 5 else ''}")
    seen: dict[int, set] = {}
    for u, m in opsdb.seen_pairs(db, users):
        seen.setdefault(u, set()).add(m)
    return consent, seen


def deterministic_lists(settings: Settings, bundle: Bundle | None, ranker, user_ids,
                        k: int = DEFAULT_K) -> dict[int, tuple[str, list[int], list[float]]]:
    """(path, movie ids, scores) per user: what `recommend` shows a production-arm user as a deterministic list
    (no exploration) when `bundle` and `ranker` are production's — the model's list with seen titles removed,
    re-ranked by `ranker` when given, or the Top 50 fallback (path 'top50:…') for no consent, no model or a cold
    start. Nothing is logged. The MLflow pyfunc model (`core.governance.mlflow_export`) serves through it from
    its own copies of the bundle and ranker. Raises UnknownUser for ids the service does not know."""
    _check_k(k)
    users = [int(u) for u in user_ids]
    db = _db(settings)
    consent, seen = _consent_and_seen(db, users)
    key = pseudonym_key(settings)
    rows = {u: None if bundle is None else bundle.user_row.get(pseudonym(u, key)) for u in users}
    reasons = {u: fallback_reason(bool(consent[u]), bundle, rows[u]) for u in users}
    todo = [u for u in users if reasons[u] is None]
    out = {}
    if todo:
        lists = _ranked(bundle, ranker, np.array([rows[u] for u in todo]), [seen.get(u, set()) for u in todo], k)
        out = {u: ("model", movies, scores) for u, (movies, scores) in zip(todo, lists)}
    top = _top50_list(db) if len(out) < len(users) else []
    for u in users:
        if u not in out:
            pairs = [(m, sc) for m, sc in top if m not in seen.get(u, set())][:k]
            out[u] = (reasons[u][0], [m for m, _ in pairs], [sc for _, sc in pairs])
    return {u: out[u] for u in users}


def clear_caches() -> None:
    """Forget loaded models and this thread's cached connections (after a promotion, an erasure, a rebuild)."""
    with _lock:
        _bundles.clear()
        _top50_cache.clear()
        _rankers.clear()
        _catalog_cache.clear()
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


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise ValidationError(f"k must be an integer in 1..{MAX_K}, got {k!r}")


def recommend(settings: Settings, user_id: int, k: int = DEFAULT_K, *, log: bool = True, at: str | None = None,
              state: ServingState | None = None) -> Recommendation:
    """Top-k movies for one user; says which path (and release arm) it took and logs the list.

    `state`: the serving state to answer from (a server passes the one it holds); default: read now."""
    _check_k(k)
    db = _db(settings)
    opsdb.require_user(db, user_id)
    uid = int(user_id)
    consent = opsdb.personalization_consent(db, [uid]).get(uid, 0)    # 0: erased meanwhile
    state = load_state(settings) if state is None else state
    when = at or clock.now(db=db)
    recs, shadows = _serve(settings, state, [uid], {uid: consent}, {uid: seen_movies(db, uid)}, k, db, when)
    rec = recs[uid]
    if log:
        rec.served_at = when
        shadow = shadows[0] | {"served_at": rec.served_at} if shadows else None
        rec.serve_id = servinglog.log_list(db, _log_entry(rec, rec.served_at), shadow)
        if rec.serve_id is None:           # erased while the list was computed
            raise UnknownUser(f"unknown user {uid}")
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


class _FarPool:
    """The far pool of one list (every catalogue title not seen, not in the list, not in the near pool), sized
    without being built: only an exploring list that swaps a far slot ever materializes it."""

    def __init__(self, catalog: np.ndarray, exclude: set, size: int):
        self.catalog, self.exclude, self.size, self._ids = catalog, exclude, max(int(size), 0), None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i):
        if self._ids is None:
            self._ids = self.catalog[~np.isin(self.catalog, np.fromiter(self.exclude, dtype=np.int64))]
        return self._ids[i]


_catalog_cache: dict = {}


def _catalog(db) -> np.ndarray:
    """Every movie id (cached until the catalogue changes): the exploration's far pool."""
    key = (str(db.conn), opsdb.catalog_marker(db))
    if key not in _catalog_cache:
        _catalog_cache.clear()
        _catalog_cache[key] = opsdb.catalog_ids(db)[1]
    return _catalog_cache[key]


def _shown(config: exploration.ExplorationConfig, user_id: int, at: str | None, movies: list, scores: list, k: int,
           seen: set, catalog: np.ndarray) -> exploration.LoggedList:
    """The list to show from the top k + pool candidates `movies` (best first): the deterministic top k, or an
    exploring variant, with the logging policy's propensities."""
    base, near = movies[:k], movies[k:k + config.pool]
    far = _FarPool(catalog, set(seen) | set(base) | set(near), len(catalog) - len(seen) - len(base) - len(near))
    return exploration.explore(base, scores[:k], near, far, config, exploration.list_rng(config.seed, user_id, at),
                               near_scores=scores[k:k + config.pool])


def _serve(settings: Settings, state: ServingState, user_ids: list[int], consent: dict, seen: dict, k: int,
           db, at: str | None = None) -> tuple[dict[int, Recommendation], list[dict]]:
    """Lists for known users from one state: each user's arm, its model or a fallback; plus the shadow
    candidate's lists (not shown) during a shadow release. Every shown list goes through the logging policy
    (`core.serving.exploration`): a share of them explore, and all carry their propensities; `at` (the
    serving time) seeds each list's coin."""
    key = state.key if state.key is not None else pseudonym_key(settings)
    keys = {u: pseudonym(u, key) for u in user_ids}
    prod_v = state.version
    release = state.release
    config = exploration.config_for(settings, state.explore_share)
    pool = config.pool if config.share > 0 else 0
    catalog = _catalog(db) if config.share > 0 else np.zeros(0, dtype=np.int64)
    arms = {u: deployments.arm_of(u, release) for u in user_ids}
    out: dict[int, Recommendation] = {}
    groups = (("production", state.bundle, state.production, state.ranker, state.ranker_version),
              ("canary", state.candidate_bundle, state.candidate, state.candidate_ranker,
               state.candidate_ranker_version))

    def logged(u: int, movies: list, scores: list) -> dict:
        shown = _shown(config, u, at, movies, scores, k, seen.get(u, set()), catalog)
        return {"movie_ids": shown.movie_ids, "scores": shown.scores, "policy": shown.policy,
                "propensities": shown.propensities, "slate_propensities": shown.slate_propensities}

    for arm, bundle, version, ranker, ranker_version in groups:
        members = [u for u in user_ids if arms[u] == arm]
        if not members:
            continue
        rows = {u: None if bundle is None else bundle.user_row.get(keys[u]) for u in members}
        reasons = {u: fallback_reason(bool(consent[u]), bundle, rows[u]) for u in members}
        todo = [u for u in members if reasons[u] is None]
        if todo:
            lists = _ranked(bundle, ranker, np.array([rows[u] for u in todo]), [seen.get(u, set()) for u in todo],
                            k + pool)
            if arm == "canary":
                why = f"personalized by v{version['version']}, the canary of release #{release['deployment_id']}" + (
                    f", re-ranked by its ranker v{ranker_version}" if ranker_version else "")
            else:
                why = "personalized by the production model" + (
                    f", re-ranked by ranker v{ranker_version}" if ranker_version else "")
            for u, (movies, scores) in zip(todo, lists):
                out[u] = Recommendation(u, "model", model_version=int(version["version"]),
                                        data_version=version["data_version"], ranker_version=ranker_version,
                                        reason=why, arm=arm, production_version=prod_v, **logged(u, movies, scores))
        fallback = [u for u in members if reasons[u] is not None]
        if fallback:
            top = _top50_list(db)
            for u in fallback:
                path, why = reasons[u]
                s = seen.get(u, set())
                pairs = [(m, sc) for m, sc in top if m not in s][:k + pool]
                out[u] = Recommendation(u, path, reason=why, arm=arm, production_version=prod_v,
                                        **logged(u, [m for m, _ in pairs], [sc for _, sc in pairs]))
    shadows = []
    if release is not None and release["mode"] == "shadow" and state.candidate_bundle is not None:
        bundle = state.candidate_bundle
        rows = {u: bundle.user_row.get(keys[u]) for u in user_ids}
        todo = [u for u in user_ids if fallback_reason(bool(consent[u]), bundle, rows[u]) is None]
        if todo:
            lists = _ranked(bundle, state.candidate_ranker, np.array([rows[u] for u in todo]),
                            [seen.get(u, set()) for u in todo], k)
            shadows = [{"user_id": u, "model_version": int(state.candidate["version"]), "movie_ids": m, "scores": sc}
                       for u, (m, sc) in zip(todo, lists)]
    return out, shadows


def recommend_many(settings: Settings, user_ids, k: int = DEFAULT_K, *, log: bool = True, at: str | None = None,
                   state: ServingState | None = None) -> dict[int, Recommendation]:
    """Batch serving for many users at once (one model call per arm), same paths and logging as `recommend`."""
    _check_k(k)
    user_ids = [int(u) for u in user_ids]
    db = _db(settings)
    consent, seen = _consent_and_seen(db, user_ids)
    state = load_state(settings) if state is None else state
    when = at or clock.now(db=db)
    out, shadows = _serve(settings, state, user_ids, consent, seen, k, db, when)
    out = {u: out[u] for u in user_ids}
    if log:
        erased = servinglog.log_lists(db, [_log_entry(r, when) for r in out.values()],
                                      [s | {"served_at": when} for s in shadows])
        out = {u: r for u, r in out.items() if u not in erased}     # erased while their lists were computed
        for r in out.values():
            r.served_at = when
    return out


def recommend_batch(settings: Settings, requests: list[tuple[int, int]], *, state: ServingState,
                    at: str | None = None, shown_by: str | None = None) -> list[Recommendation | RetroError]:
    """Independent requests (user_id, k) answered together from one state: one model call per arm and k,
    every list logged on its own row in one transaction. out[i] answers requests[i]: its Recommendation (with
    its own serve_id, also when a user asked twice), or the error that request alone raised (unknown user,
    bad k) — one bad request never fails the others. The HTTP server batches what arrives while the model is
    busy (dynamic batching): 8 users cost 6 ms together, 15 ms one by one. The lists are logged unconfirmed
    (`shown_by` None: a server cannot know what its caller showed) unless `shown_by` says who showed them."""
    out: list = [None] * len(requests)
    db = _db(settings)
    valid: list[int] = []
    for i, (user_id, k) in enumerate(requests):
        try:
            _check_k(k)
            valid.append(i)
        except RetroError as exc:
            out[i] = exc
    consent = opsdb.personalization_consent(db, sorted({int(requests[i][0]) for i in valid}))
    for i in [i for i in valid if int(requests[i][0]) not in consent]:
        try:
            opsdb.require_user(db, requests[i][0])       # the same error `recommend` gives
            out[i] = UnknownUser(f"unknown user {requests[i][0]}")
        except RetroError as exc:
            out[i] = exc
    known = [i for i in valid if out[i] is None]
    seen: dict[int, set] = {}
    for u, m in opsdb.seen_pairs(db, sorted({int(requests[i][0]) for i in known})):
        seen.setdefault(u, set()).add(m)
    shadows: list[dict] = []
    when = at or clock.now(db=db)
    for k in sorted({requests[i][1] for i in known}):
        users = sorted({int(requests[i][0]) for i in known if requests[i][1] == k})
        recs, arm_shadows = _serve(settings, state, users, consent, seen, k, db, when)
        shadows += arm_shadows
        for i in known:
            if requests[i][1] == k:
                out[i] = replace(recs[int(requests[i][0])])
    done = [i for i in known]
    ids = servinglog.log_each(db, [_log_entry(out[i], when, shown_by) for i in done],
                              [s | {"served_at": when} for s in shadows])
    for i, serve_id in zip(done, ids):
        if serve_id is None:               # erased while the batch was computed: this request alone says so
            out[i] = UnknownUser(f"unknown user {requests[i][0]}")
        else:
            out[i].served_at, out[i].serve_id = when, serve_id
    return out


def _log_entry(rec: Recommendation, served_at: str, shown_by: str | None = servinglog.IN_PROCESS) -> dict:
    """The serving log's record of a list (see `servinglog.log_list`). `shown_by`: IN_PROCESS when the caller is
    the platform's own front end (it shows what it asked for), None for a model-server answer that counts as
    shown only once a client confirms it (`servinglog.confirm_shown`)."""
    return {"user_id": rec.user_id, "served_at": served_at, "path": rec.path, "model_version": rec.model_version,
            "data_version": rec.data_version, "movie_ids": rec.movie_ids, "scores": rec.scores,
            "ranker_version": rec.ranker_version, "arm": rec.arm, "policy": rec.policy,
            "propensities": rec.propensities, "slate_propensities": rec.slate_propensities, "shown_by": shown_by}


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


def mlops_connection(settings: Settings) -> sqlite_utils.Database:
    """The calling thread's ML-metadata connection (registry reads per request), kept open. Do not close it."""
    return _mlops(settings)
