"""Privacy guarantees, each proven by looking at the real stores: consent, export, erasure, retention,
key rotation and operator access."""
import contextlib
import json
import os
import re
import sqlite3

import duckdb
import numpy as np
import pytest

from conftest import private_copy, promote_ranker_by_hand
from core.privacy import access, consent, erasure, export, retention
from core.privacy import keys as key_rotation   # `keys` is a common local name
from core.warehouse import dataset, etl
from core.store import mlopsdb, opsdb, writes
from core.training import pipeline, registry
from core.serving import deployments, serving
from core.simulation import simulation
from core.training.artifacts import bundle_hash, load_bundle
from core.errors import RetroError, UnknownUser, ValidationError
from core.pseudonym import KEY_ENV, pseudonym, pseudonym_key, pseudonymize
from core.training.ranker import load_ranker, ranker_hash
from core.settings import load_settings


# slow: the module fixture retrains with the ranker; erasure rewrites every store and model. Both backends: every
# guarantee below is checked with the stores in SQLite files and in a real PostgreSQL (docs/postgres.md).
pytestmark = [pytest.mark.slow, pytest.mark.both_backends]

HEX20 = re.compile(r"[0-9a-f]{20}")


# ------------------------------------------------------------------ fixtures and probes
@pytest.fixture(scope="module")
def base(tmp_path_factory, backend, request):
    """A small world with a production CF model and a production ranker (seed 3), its stores on `backend`.
    Read-only."""
    with pytest.MonkeyPatch.context() as mp:
        if backend == "postgresql":
            import pg_server as pg
            mp.setenv("RETRO_DATABASE_URL", pg.fresh_database(request.getfixturevalue("pg_server").url,
                                                              f"privacy_base_{os.getpid()}"))
        else:
            mp.delenv("RETRO_DATABASE_URL", raising=False)
        s = load_settings(tmp_path_factory.mktemp("privacy-base"))
        simulation.init_world(s, seed=3, users=400, movies=200, days=12)
        pipeline.retrain(s)
        promote_ranker_by_hand(s)
        serving.clear_caches()
        yield s


@pytest.fixture
def world(base, tmp_path):
    """A private copy of `base` (artifact paths in the registry repointed to the copy)."""
    return private_copy(base, tmp_path)


def active_user(s, rank: int = 0) -> int:
    with opsdb.session(s) as db:
        return db.execute("SELECT user_id FROM events WHERE kind = 'watch' GROUP BY user_id "
                          "ORDER BY count(*) DESC, user_id LIMIT 1 OFFSET ?", [rank]).fetchone()[0]


def key_of(s, uid: int) -> str:
    return pseudonym(uid, pseudonym_key(s))


def unseen_movie(s, uid: int) -> int:
    with opsdb.session(s) as db:
        return db.execute("SELECT movie_id FROM movies WHERE movie_id NOT IN (SELECT movie_id FROM ratings "
                          "WHERE user_id = ?) ORDER BY movie_id LIMIT 1", [uid]).fetchone()[0]


def leave_traces(s, uid: int) -> None:
    """Give `uid` a row in every store: a served list and a shadow release's list, a consent change, rejected
    writes (→ quarantine), an export."""
    serving.recommend(s, uid)
    candidate = registry.register(s, pipeline.train(s, seed=5, params={"factors": 16}).run_id)
    release = deployments.start(s, candidate, "shadow", actor="alice", reason="shadow a candidate")
    assert serving.recommend(s, uid).path == "model"
    deployments.end(s, release["deployment_id"], "stopped", actor="alice", reason="seen enough")
    consent.set_consent(s, uid, tracking=True, actor="alice")
    with opsdb.session(s) as db:
        m = unseen_movie(s, uid)
        writes.record_events(db, [{"user_id": uid, "movie_id": m, "kind": "watch", "value": -5}], on_invalid="quarantine")
        # A batch with a missing user id: the column turns float, so the payload says "user_id": <id>.0
        writes.record_events(db, [{"user_id": uid, "movie_id": m, "kind": "click", "value": -1},
                                  {"user_id": None, "movie_id": m, "kind": "click"}], on_invalid="quarantine")
        writes.rate_many(db, [{"user_id": active_user(s, 5), "movie_id": m, "rating": 11}], on_invalid="quarantine")
    etl.run_etl(s)
    export.export_user(s, uid, actor="alice")


def user_keys(con, table: str) -> set[str]:
    return {k for (k,) in con.execute(f"SELECT DISTINCT user_key FROM {table} WHERE user_key IS NOT NULL").fetchall()}


def payload_names(payload: str, uid: int) -> bool:
    return re.search(rf'"user_id":\s*{uid}(\.0)?\s*[,}}]', payload) is not None


def store_hits(s, store, uid: int | None, user_key: str) -> list[str]:
    """Every place in a store (`opsdb` or `mlopsdb`; its SQLite file or its PostgreSQL schema) where `uid` sits in
    a user_id column or a JSON 'user_id', or `user_key` in any text.

    With `uid` None only the pseudonym is looked for."""
    hits = []
    session = store.session(s) if s.database_url is not None else \
        contextlib.closing(sqlite3.connect(s.ops_db if store is opsdb else s.mlops_db))
    with session as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for t in tables:
            for _, col, *_ in con.execute(f'PRAGMA table_info("{t}")').fetchall():
                if uid is not None and col == "user_id" and con.execute(
                        f'SELECT count(*) FROM "{t}" WHERE "{col}" = ?', [uid]).fetchone()[0]:
                    hits.append(f"{t}.{col} = {uid}")
                for (value,) in con.execute(f'SELECT "{col}" FROM "{t}" WHERE typeof("{col}") = \'text\''):
                    if user_key in value:
                        hits.append(f"{t}.{col} holds the pseudonym")
                    if uid is not None and payload_names(value, uid):
                        hits.append(f"{t}.{col} names user_id {uid}")
    return hits


def warehouse_hits(s, user_key: str) -> list[str]:
    con = duckdb.connect(str(s.warehouse), read_only=True)
    hits = []
    try:
        cols = con.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                           "WHERE table_schema = 'main'").fetchall()
        for t, c, kind in cols:
            if kind == "VARCHAR" and con.execute(f'SELECT count(*) FROM "{t}" WHERE contains("{c}", ?)',
                                                 [user_key]).fetchone()[0]:
                hits.append(f"{t}.{c}")
    finally:
        con.close()
    return hits


def model_hits(s, user_key: str) -> list[str]:
    """Every file under models/: arrays of .npz files, text of .json files, and raw bytes (UTF-8 and UTF-32)."""
    hits = []
    for f in sorted(s.models_dir.rglob("*")):
        if not f.is_file():
            continue
        raw = f.read_bytes()
        if user_key.encode() in raw or user_key.encode("utf-32-le") in raw:
            hits.append(f"{f.relative_to(s.home)} (bytes)")
        if f.suffix == ".npz":
            with np.load(f, allow_pickle=False) as arrays:
                for name in arrays.files:
                    a = arrays[name]
                    if a.dtype.kind in "US" and (a.astype(str) == user_key).any():
                        hits.append(f"{f.relative_to(s.home)}:{name}")
        if f.suffix == ".json" and user_key in f.read_text():
            hits.append(str(f.relative_to(s.home)))
    return hits


def everywhere(s, uid: int | None, user_key: str) -> list[str]:
    """Hits for the raw id and the pseudonym in the ops DB, mlops.db, the warehouse and every model file."""
    hits = store_hits(s, opsdb, uid, user_key) + store_hits(s, mlopsdb, uid, user_key)
    return hits + warehouse_hits(s, user_key) + model_hits(s, user_key)


def raw_file_hits(s, user_key: str) -> list[str]:
    """Raw bytes of every store file (deleted rows must not linger in free pages or a WAL)."""
    return [p.name for p in s.home.iterdir() if p.is_file() and user_key.encode() in p.read_bytes()]


def assert_registry_hashes_match(s) -> None:
    for version in registry.list_versions(s).to_dict("records"):
        path = version["artifact_path"]
        digest = ranker_hash(path) if version["family"] == "ranker" else bundle_hash(path)
        assert digest == version["artifact_hash"], f"v{version['version']} bytes differ from the registry"


# ------------------------------------------------------------------ consent
@pytest.mark.parametrize("tracking,personalization", [(True, True), (True, False), (False, True), (False, False)])
def test_each_consent_combination_acts_on_storage_and_serving(world, tracking, personalization):
    uid = active_user(world)
    result = consent.set_consent(world, uid, tracking=tracking, personalization=personalization, actor="alice")
    assert (result["tracking"], result["personalization"]) == (tracking, personalization)
    assert [e.split(",")[0].split(":")[0] for e in result["effects"]] == ["Storage", "Serving", "Training"]
    movie = unseen_movie(world, uid)
    with opsdb.session(world) as db:
        before = db.execute("SELECT count(*) FROM events WHERE user_id = ?", [uid]).fetchone()[0]
        stored = writes.record_events(db, [{"user_id": uid, "movie_id": movie, "kind": "click"},
                                           {"user_id": uid, "movie_id": movie, "kind": "watch", "value": 600}])
        writes.rate(db, uid, movie, 7)
        after = db.execute("SELECT count(*) FROM events WHERE user_id = ?", [uid]).fetchone()[0]
        rated = db.execute("SELECT rating FROM ratings WHERE user_id = ? AND movie_id = ?", [uid, movie]).fetchone()
        flags = db.execute("SELECT consent_tracking, consent_personalization FROM users WHERE user_id = ?",
                           [uid]).fetchone()
    # Storage: events only with tracking consent; ratings always (explicit input).
    assert after - before == (2 if tracking else 0)
    assert stored.skipped_no_consent == (0 if tracking else 2)
    assert rated == (7,) and flags == (int(tracking), int(personalization))
    # Serving: immediately.
    path = serving.recommend(world, uid, log=False).path
    assert path == ("model" if personalization else "top50:no-consent")
    assert consent.consent(world, uid)["history"][-1] == {"changed_at": result["changed_at"], "tracking": tracking,
                                                          "personalization": personalization, "ad_targeting": True,
                                                          "actor": "alice"}


def test_consent_validation_history_and_audit(world):
    uid = active_user(world)
    with pytest.raises(ValidationError, match="needs tracking="):
        consent.set_consent(world, uid, actor="alice")
    with pytest.raises(UnknownUser):
        consent.set_consent(world, 10 ** 9, personalization=False, actor="alice")
    with pytest.raises(ValidationError):
        consent.set_consent(world, uid, personalization="no", actor="alice")
    with pytest.raises(ValidationError):
        consent.set_consent(world, uid, personalization=False, actor=" ")
    consent.set_consent(world, uid, personalization=False, actor="alice", at="2026-01-12T10:00:00")
    consent.set_consent(world, uid, tracking=False, actor="bob", at="2026-01-12T11:00:00")
    c = consent.consent(world, uid)
    assert (c["tracking"], c["personalization"]) == (False, False)
    assert [(h["tracking"], h["personalization"], h["actor"]) for h in c["history"]] == [
        (True, False, "alice"), (False, False, "bob")]
    log = access.audit_log(world)
    assert list(log["action"]) == ["consent", "consent"] and set(log["target"]) == {key_of(world, uid)}
    assert str(uid) not in set(log["target"]) and set(log["outcome"]) == {"ok"}


def test_withdrawal_reaches_training_at_the_next_retrain(world):
    uid = active_user(world)
    user_key = key_of(world, uid)
    assert consent.pending_effects(world) == []
    consent.set_consent(world, uid, personalization=False, actor="alice")
    pending = consent.pending_effects(world)
    assert [p["user_id"] for p in pending] == [uid] and pending[0]["changed_at"] is not None
    assert "still in model" in pending[0]["effect"]
    # Still in the training data until the ETL syncs the flag...
    assert (dataset.interactions(world)["user_key"] == user_key).any()
    etl.run_etl(world)
    assert not (dataset.interactions(world)["user_key"] == user_key).any()
    # ...and out of the next model.
    result = pipeline.retrain(world, with_ranker=False)
    # Same data days, same configuration: no quality evidence, but production holds a withdrawn user → stale.
    assert result["promoted"], result["gate"]["reasons"]
    assert result["gate"]["checks"]["quality"]["staleness"]["withdrawn_consent"] == 1
    new = load_bundle(registry.get_version(world, result["version"])["artifact_path"])
    assert user_key not in set(new.matrix.user_keys) and len(new.matrix.user_keys) > 100
    assert consent.pending_effects(world) == []
    assert serving.recommend(world, uid, log=False).path == "top50:no-consent"


# ------------------------------------------------------------------ export
def test_export_holds_every_row_of_every_store(world):
    uid = active_user(world)
    leave_traces(world, uid)
    doc = export.export_user(world, uid, actor="alice")
    json.dumps(doc, allow_nan=False)   # one plain JSON document
    user_key = key_of(world, uid)
    with opsdb.session(world) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                  if any(c[1] == "user_id" for c in db.execute(f'PRAGMA table_info("{t}")'))]
        counts = {t: db.execute(f'SELECT count(*) FROM "{t}" WHERE user_id = ?', [uid]).fetchone()[0] for t in tables}
        rejected = sum(payload_names(p, uid) for (p,) in db.execute("SELECT payload FROM rejected_writes"))
    assert set(tables) == {"users", "ratings", "rating_history", "events", "served_recommendations", "consent_history",
                           "shadow_recommendations", "ad_impressions"}
    for table, n in counts.items():
        exported = 1 if table == "users" else len(doc[table])
        assert exported == n == doc["stores"][f"ops.{table}"], table
    assert min(counts.values()) >= 1 and rejected == 2 == len(doc["rejected_writes"])
    assert all(r["payload"]["user_id"] == uid for r in doc["rejected_writes"])
    with duckdb.connect(str(world.warehouse), read_only=True) as con:
        for table in ("fact_interaction", "quarantine", "dim_user"):
            n = con.execute(f"SELECT count(*) FROM {table} WHERE user_key = ?", [user_key]).fetchone()[0]
            assert n == doc["warehouse"][table]["count"] == len(doc["warehouse"][table]["rows"]) >= 1, table
    assert export.held_counts(world, uid) == doc["stores"]
    assert doc["warehouse"]["pseudonymized"] and doc["warehouse"]["user_key"] == user_key
    served = doc["served_recommendations"][0]
    assert served["items"][0]["title"] and served["path"] == "model"
    exp = doc["explanations"]
    assert exp["status"] == "ok" and [e["movie_id"] for e in exp["items"]] == [i["movie_id"] for i in served["items"]]
    assert doc["models"] and doc["models"][0]["learned_user_factors"]
    assert access.audit_log(world)["action"].iloc[0] == "export"
    with pytest.raises(UnknownUser):
        export.export_user(world, 10 ** 9, actor="alice")


def test_export_says_why_there_is_no_explanation(world):
    uid = active_user(world, 3)
    consent.set_consent(world, uid, personalization=False, actor="alice")
    serving.recommend(world, uid)   # a Top 50 list: nothing personalized to explain
    assert export.export_user(world, uid, actor="alice")["explanations"]["status"].startswith("no personalized list")


# ------------------------------------------------------------------ erasure
def test_forget_user_leaves_no_trace(world):
    uid, other = active_user(world), active_user(world, 1)
    user_key = key_of(world, uid)
    leave_traces(world, uid)
    assert len(everywhere(world, uid, user_key)) >= 8   # the probes do find the user before
    before = export.export_user(world, uid, actor="alice")["stores"]

    summary = erasure.forget_user(world, uid, actor="alice")

    assert everywhere(world, uid, user_key) == []
    assert raw_file_hits(world, user_key) == []
    with pytest.raises(UnknownUser):
        serving.recommend(world, uid)
    # Counts per store match what the export saw; nothing is held any more.
    assert {f"ops.{t}": n for t, n in summary["ops"].items()} == {k: v for k, v in before.items() if k[:4] == "ops."}
    assert {f"warehouse.{t}": summary["warehouse"][t] for t in ("fact_interaction", "quarantine", "dim_user",
                                                                "fact_served", "fact_ad_impression",
                                                                "fact_ad_click")} == {
        k: v for k, v in before.items() if k.startswith("warehouse.")}
    assert before["warehouse.fact_served"] >= 10          # the lists leave_traces served, loaded by its ETL
    assert set(export.held_counts(world, uid).values()) == {0}
    assert summary["models"]["bundles"] == 2 and summary["models"]["rankers"] == 1
    # The request: completed, counts only.
    requests = erasure.request_log(world)
    assert list(requests["state"]) == ["completed"]
    request = requests.iloc[0].to_dict()
    assert user_key not in json.dumps(request) and request["actor"] == "alice"
    stored = json.loads(request["summary"])
    leaves = [v for store in stored.values() for v in store.values()]
    assert all(isinstance(v, (int, bool)) for v in leaves)   # counts only: no id, no pseudonym, no path
    assert stored["ops"]["events"] == before["ops.events"]
    # Models still load, match the registry, and still serve everyone else (through the ranker).
    assert_registry_hashes_match(world)
    prod, rk = registry.production(world), registry.production(world, family="ranker")
    bundle = load_bundle(prod["artifact_path"])
    load_ranker(rk["artifact_path"], rk["artifact_hash"])
    assert "" in set(bundle.matrix.user_keys)
    rec = serving.recommend(world, other, log=False)
    assert rec.path == "model" and rec.ranker_version == rk["version"] and len(rec.movie_ids) == 10
    # The audit trail keeps who did what, without the pseudonym.
    log = access.audit_log(world)
    assert log["action"].iloc[0] == "erase" and log["outcome"].iloc[0] == "ok"
    assert (log["target"] == f"erased user (request #{summary['request_id']})").sum() == 3   # consent, 2 exports
    # The next ETL brings nothing of the user back.
    etl.run_etl(world)
    assert everywhere(world, uid, user_key) == []


def test_erased_factors_and_context_rows_are_zero(world):
    uid = active_user(world)
    prod = registry.production(world)
    row = load_bundle(prod["artifact_path"]).user_row[key_of(world, uid)]
    erasure.forget_user(world, uid, actor="alice")
    bundle = load_bundle(prod["artifact_path"])
    assert not bundle.model.user_factors_[row].any() and bundle.matrix.user_items[row].nnz == 0
    assert bundle.matrix.user_keys[row] == ""
    ctx = load_ranker(registry.production(world, family="ranker")["artifact_path"]).context
    assert not ctx.user_genres[row].any() and ctx.activity[row] == 0 and (ctx.user_genre_days[row] == 60.0).all()


def test_a_failed_erasure_is_recorded_and_can_be_retried(world, monkeypatch):
    uid = active_user(world)
    user_key = key_of(world, uid)
    with pytest.raises(UnknownUser):
        erasure.forget_user(world, 10 ** 9, actor="alice")
    assert erasure.request_log(world).empty

    def broken(settings, request_id, key):
        raise OSError("disk full")
    monkeypatch.setattr(erasure, "_erase_bundles", broken)
    with pytest.raises(OSError):
        erasure.forget_user(world, uid, actor="alice")
    failed = erasure.request_log(world).iloc[0]
    assert failed["state"] == "failed" and json.loads(failed["summary"])["error"] == "OSError"
    assert "disk full" not in failed["summary"] and access.audit_log(world)["outcome"].iloc[0] == "failed"
    assert model_hits(world, user_key)   # the models still hold the user

    monkeypatch.undo()
    # The user is gone from the ops DB, the models are not: a retry finishes the same request.
    retry = erasure.forget_user(world, uid, actor="alice")
    assert retry["models"]["bundles"] == 1 and retry["ops"]["users"] == 1
    assert retry["request_id"] == failed["request_id"]
    assert everywhere(world, uid, user_key) == []
    assert list(erasure.request_log(world)["state"]) == ["completed"]


# ------------------------------------------------------------------ retention
def test_retention_purges_old_events_in_both_stores(world):
    status = retention.retention_status(world, 5)
    assert status["ops_events_to_purge"] > 0 and status["warehouse_events_to_purge"] > 0
    assert status["oldest_ops_event"] < status["cutoff"]
    with duckdb.connect(str(world.warehouse), read_only=True) as con:
        ratings = con.execute("SELECT count(*) FROM fact_interaction WHERE kind = 'rating'").fetchone()[0]
    with opsdb.session(world) as db:
        ops_ratings = db.execute("SELECT count(*) FROM rating_history").fetchone()[0]

    result = retention.retention(world, 5, actor="alice")

    assert result["ops_events_deleted"] == status["ops_events_to_purge"]
    assert result["warehouse_events_deleted"] == status["warehouse_events_to_purge"]
    cutoff = result["cutoff"]
    with opsdb.session(world) as db:
        oldest, n = db.execute("SELECT min(occurred_at), count(*) FROM events").fetchone()
        assert db.execute("SELECT count(*) FROM rating_history").fetchone()[0] == ops_ratings
    assert oldest >= cutoff and n == status["ops_events"] - status["ops_events_to_purge"]
    with duckdb.connect(str(world.warehouse), read_only=True) as con:
        wh_oldest = con.execute("SELECT strftime(min(occurred_at), '%Y-%m-%dT%H:%M:%S') FROM fact_interaction "
                                "WHERE kind <> 'rating'").fetchone()[0]
        assert con.execute("SELECT count(*) FROM fact_interaction WHERE kind = 'rating'").fetchone()[0] == ratings
    assert wh_oldest >= cutoff
    again = retention.retention_status(world, 5)
    assert again["ops_events_to_purge"] == again["warehouse_events_to_purge"] == 0
    assert access.audit_log(world)["action"].iloc[0] == "retention"
    for bad in (0, -3, 1.5, True, "7"):
        with pytest.raises(ValidationError, match="positive integer"):
            retention.retention(world, bad, actor="alice")


# ------------------------------------------------------------------ key rotation
def test_rotate_key_rekeys_every_store(world, monkeypatch):
    uid = active_user(world)
    old_key = key_of(world, uid)
    leave_traces(world, uid)                                 # quarantine rows and audit targets too
    token = access.ensure_operator(world)
    with duckdb.connect(str(world.warehouse), read_only=True) as con:
        before = {t: user_keys(con, t) for t in ("dim_user", "fact_interaction", "quarantine")}
    monkeypatch.setenv(KEY_ENV, "managed-elsewhere")
    with pytest.raises(RetroError, match="managed outside"):
        key_rotation.rotate_key(world, actor="alice")
    monkeypatch.delenv(KEY_ENV)
    assert key_of(world, uid) == old_key

    result = key_rotation.rotate_key(world, actor="alice")

    new_key = key_of(world, uid)
    assert new_key != old_key and result["bundles_rekeyed"] == 2
    with duckdb.connect(str(world.warehouse), read_only=True) as con:
        for table, old in before.items():
            after = user_keys(con, table)
            assert len(after) == len(old) >= 1 and not after & old, table
        assert con.execute("SELECT count(*) FROM dim_user WHERE user_key = ?", [new_key]).fetchone()[0] == 1
    assert everywhere(world, None, old_key) == [] and raw_file_hits(world, old_key) == []
    assert_registry_hashes_match(world)
    assert serving.recommend(world, uid, log=False).path == "model"
    assert (access.audit_log(world)["target"] == new_key).sum() == 2
    assert os.stat(world.home / "secrets.toml").st_mode & 0o777 == 0o600
    assert access.check(world, "admin", token)             # the operators survived the rewrite


def test_an_interrupted_key_rotation_is_resumed(world, monkeypatch):
    uid = active_user(world)

    def crash(settings, hashes):
        raise OSError("power cut")
    monkeypatch.setattr(key_rotation, "_set_artifact_hashes", crash)
    with pytest.raises(OSError):
        key_rotation.rotate_key(world, actor="alice")     # the warehouse and bundles moved, the key did not
    parked = access.read_secrets(world)["pseudonymization"]["next_key"]
    monkeypatch.undo()

    key_rotation.rotate_key(world, actor="alice")
    section = access.read_secrets(world)["pseudonymization"]
    assert section["key"] == parked and "next_key" not in section
    with opsdb.session(world) as db:
        ids = [r[0] for r in db.execute("SELECT user_id FROM users")]
    with duckdb.connect(str(world.warehouse), read_only=True) as con:
        keys = {k for (k,) in con.execute("SELECT user_key FROM dim_user").fetchall()}
    assert keys == set(pseudonymize(ids, parked.encode()))
    assert_registry_hashes_match(world)
    assert serving.recommend(world, uid, log=False).path == "model"


# ------------------------------------------------------------------ operator access
def test_operators_are_created_once_checked_and_logged(settings):
    key = pseudonym_key(settings)
    token = access.ensure_operator(settings)
    assert isinstance(token, str) and len(token) >= 16
    assert access.ensure_operator(settings) is None
    text = (settings.home / "secrets.toml").read_text()
    assert token not in text and re.search(r'admin = "pbkdf2\$200000\$[0-9a-f]{32}\$[0-9a-f]{64}"', text)
    assert os.stat(settings.home / "secrets.toml").st_mode & 0o777 == 0o600
    assert pseudonym_key(settings) == key                   # the pseudonymization key is kept
    assert access.check(settings, "admin", token)
    assert not access.check(settings, "admin", token + "x") and not access.check(settings, "mallory", token)
    with pytest.raises(access.PermissionDenied, match="forget a user needs an operator login"):
        access.require(settings, "admin", "wrong-token", "forget a user")
    assert access.require(settings, "admin", token, "forget a user") == "admin"
    access.add_operator(settings, "bob", "a-long-enough-token")
    assert access.operators(settings) == ["admin", "bob"] and access.check(settings, "bob", "a-long-enough-token")
    with pytest.raises(ValidationError):
        access.add_operator(settings, "bad name!", "a-long-enough-token")
    with pytest.raises(ValidationError):
        access.add_operator(settings, "carol", "short")
    access.log_action(settings, "admin", "forget a user", "0" * 20, "ok")
    log = access.audit_log(settings)
    assert list(zip(log["actor"], log["outcome"])) == [("admin", "ok"), ("admin", "denied")]
    assert access.cli_actor().startswith("cli:")


def test_token_hash_format_and_verification():
    stored = access.hash_token("s3cret-token", salt=bytes(16), iterations=1000)
    assert stored.startswith("pbkdf2$1000$" + "00" * 16 + "$")
    assert access.verify_token("s3cret-token", stored) and not access.verify_token("s3cret-tokeN", stored)
    assert not access.verify_token("s3cret-token", "md5$1$00$00") and not access.verify_token("x", "garbage")


# ------------------------------------------------------------------ the warehouse and the inventory
def test_the_warehouse_holds_pseudonyms_only(base):
    with duckdb.connect(str(base.warehouse), read_only=True) as con:
        cols = con.execute("SELECT table_name, column_name FROM information_schema.columns "
                           "WHERE table_schema = 'main'").fetchall()
        assert not [c for c in cols if c[1] == "user_id"]
        keyed = sorted({t for t, c in cols if c == "user_key"})
        assert keyed == ["dim_user", "fact_ad_click", "fact_ad_impression", "fact_interaction", "fact_served",
                         "quarantine"]
        for table in keyed:
            assert all(HEX20.fullmatch(k) for k in user_keys(con, table)), table


def test_the_inventory_covers_every_table_with_personal_data(base):
    inventory = export.data_inventory()
    listed = {(r["store"].split(" ")[0], r["table"]) for r in inventory}
    with opsdb.session(base) as db:
        ops_tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                      if any(c[1] == "user_id" for c in db.execute(f'PRAGMA table_info("{t}")'))]
    with duckdb.connect(str(base.warehouse), read_only=True) as con:
        wh_tables = [t for (t,) in con.execute("SELECT DISTINCT table_name FROM information_schema.columns "
                                               "WHERE column_name = 'user_key'").fetchall()]
    assert {("ops", t) for t in ops_tables + ["rejected_writes"]} <= listed
    assert {("warehouse", t) for t in wh_tables} <= listed
    assert all(tuple(r) == export.INVENTORY_FIELDS for r in inventory)
    with mlopsdb.session(base) as db:   # the ML metadata store has no user id column at all
        for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            assert "user_id" not in [c[1] for c in db.execute(f'PRAGMA table_info("{t}")')], t
