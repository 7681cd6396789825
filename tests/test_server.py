"""The model server (issue 16): endpoints, fallbacks, errors, operator-only explanations, metrics.

Fast tests drive the FastAPI app in-process (httpx's TestClient, lifespan included); the tests that need a
real server and a second process (hot swap, the closed loop over HTTP) are in test_hot_swap.py.
"""
import json

import pytest
from conftest import private_copy
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from core.privacy import access, consent
from core.pseudonym import pseudonym, pseudonym_key
from core.server import clients
from core.server.app import create_app
from core.serving import serving
from core.settings import load_settings
from core.store import opsdb, servinglog, writes
from core.training import registry


@pytest.fixture(scope="module")
def home(cf_world, tmp_path_factory):
    """A private copy of the CF world (requests write the serving log), with an operator."""
    s = private_copy(cf_world, tmp_path_factory.mktemp("server"))
    token = access.ensure_operator(s)
    return s, token


@pytest.fixture
def client(home):
    s, _ = home
    with TestClient(create_app(s, poll_seconds=0.05)) as c:
        yield c
    serving.clear_caches()


def model_user(s) -> int:
    bundle = serving.bundle_for(registry.production(s))
    key = pseudonym_key(s)
    return next(u for u in range(1, 300) if bundle.user_row.get(pseudonym(u, key)) is not None)


def test_recommend_answers_like_in_process_serving_and_logs_the_list(home, client):
    s, _ = home
    uid = model_user(s)
    expected = serving.recommend(s, uid, 5, log=False)
    key = clients.add(s, "test-front")        # a client sees the whole answer (without a key: test_server_traffic)
    r = client.get(f"/recommend/{uid}", params={"k": 5}, headers={clients.HEADER: key})
    body = r.json()
    assert r.status_code == 200 and body["path"] == "model" == expected.path
    assert body["movie_ids"] == expected.movie_ids and body["model_version"] == registry.production(s)["version"]
    assert body["production_version"] == body["model_version"] and body["arm"] == "production"
    assert r.headers["x-model-version"] == str(body["model_version"])
    with opsdb.session(s) as db:
        logged = servinglog.logged_lists(db, uid, limit=1)[0]
    assert logged["serve_id"] == body["serve_id"] and logged["movie_ids"] == body["movie_ids"]
    assert logged["arm"] == "production" and logged["served_at"] == body["served_at"]


def test_fallbacks_are_served_and_counted(home, client):
    s, _ = home
    with opsdb.session(s) as db:
        (new_user,) = writes.add_users(db, [{}])
    uid = model_user(s) + 1
    consent.set_consent(s, uid, personalization=False, actor="test")
    try:
        assert client.get(f"/recommend/{new_user}").json()["path"] == "top50:cold-start"
        assert client.get(f"/recommend/{uid}").json()["path"] == "top50:no-consent"
    finally:
        consent.set_consent(s, uid, personalization=True, actor="test")
    fallbacks = {lab["reason"]: v for lab, v in samples(client, "retro_fallbacks_total")}
    assert fallbacks == {"cold-start": 1.0, "no-consent": 1.0}


@pytest.mark.parametrize("url, status, words", [
    ("/recommend/abc", 422, "user id 'abc' is not an integer"),
    ("/recommend/0", 422, "out of range"),
    ("/recommend/99999999999999999999", 422, "out of range"),
    ("/recommend/1.5", 422, "not an integer"),
    ("/recommend/1?k=0", 422, "k must be in 1..100"),
    ("/recommend/1?k=ten", 422, "k 'ten' is not an integer"),
    ("/recommend/123456789", 404, "unknown user 123456789"),
    ("/recommend", 404, "no such endpoint"),
    ("/explain/1", 404, "no such endpoint"),
    ("/admin", 404, "no such endpoint"),
])
def test_mistakes_are_json_errors_with_the_right_status(client, url, status, words):
    r = client.get(url)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    assert r.json() == {"error": r.json()["error"], "status": status} and words in r.json()["error"]


def test_a_wrong_method_is_405_and_an_internal_failure_is_a_json_500_without_traceback(home, client, monkeypatch):
    assert client.post("/recommend/1").status_code == 405
    monkeypatch.setattr(serving, "recommend_batch", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("secret detail")))
    r = client.get(f"/recommend/{model_user(home[0])}")
    assert r.status_code == 500 and r.json()["error"].startswith("internal server error")
    assert "Traceback" not in r.text and "secret detail" not in r.text
    statuses = {(lab["path"], lab["status"]) for lab, _ in samples(client, "retro_http_requests_total")}
    assert ("/recommend/{user_id}", "500") in statuses


def test_explain_needs_an_operator_token_and_every_try_is_audited(home, client):
    s, token = home
    uid = model_user(s)
    movie = client.get(f"/recommend/{uid}").json()["movie_ids"][0]
    before = len(access.audit_log(s))
    assert client.get(f"/explain/{uid}/{movie}").status_code == 401
    r = client.get(f"/explain/{uid}/{movie}", headers={"Authorization": "Bearer admin:not-the-token"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    ok = client.get(f"/explain/{uid}/{movie}", headers={"Authorization": f"Bearer admin:{token}"})
    assert ok.status_code == 200 and ok.json()["movie_id"] == movie and ok.json()["because_you_watched"]
    missing = client.get(f"/explain/{uid}/999999", headers={"Authorization": f"Bearer admin:{token}"})
    assert missing.status_code == 404 and "unknown movie 999999" in missing.json()["error"]
    audit = access.audit_log(s).head(len(access.audit_log(s)) - before)
    rows = list(zip(audit["action"], audit["outcome"]))[::-1]
    assert rows == [("explain", "denied"), ("explain", "denied"), ("explain", "ok"), ("explain", "failed")]
    assert set(audit["target"][audit["outcome"] != "denied"]) == {pseudonym(uid, pseudonym_key(s))}
    assert str(uid) not in set(map(str, audit["target"]))          # never a raw id in the audit


def test_health_ready_version_and_metrics(home, client):
    s, _ = home
    prod = registry.production(s)
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["ready"] and ready["production_version"] == prod["version"] and ready["release"] is None
    version = client.get("/version").json()
    assert version["production_version"] == prod["version"] and version["data_version"] == prod["data_version"]
    client.get(f"/recommend/{model_user(s)}")
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    families = {f.name for f in text_string_to_metric_families(metrics.text)}
    assert {"retro_http_requests", "retro_http_request_duration_seconds", "retro_model_version",
            "retro_fallbacks", "retro_recent_request_latency_seconds", "retro_recent_requests_per_second"} <= families
    versions = {lab["role"]: v for lab, v in samples(client, "retro_model_version")}
    assert versions == {"production": prod["version"], "canary": 0, "shadow": 0}
    buckets = [v for lab, v in samples(client, "retro_http_request_duration_seconds_count")
               if lab["path"] == "/recommend/{user_id}"]
    assert buckets and buckets[0] >= 1


def test_not_ready_without_a_production_model(tmp_path):
    s = load_settings(tmp_path)
    opsdb.connect(s).conn.close()
    with TestClient(create_app(s)) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and "no model is in production" in r.json()["error"]
        assert c.get("/health").status_code == 200
        assert c.get("/recommend/1").status_code == 404          # no such user in an empty store


def samples(client, name: str) -> list[tuple[dict, float]]:
    out = []
    for family in text_string_to_metric_families(client.get("/metrics").text):
        out += [(s.labels, s.value) for s in family.samples if s.name == name]
    return out


def test_the_server_announces_itself_while_it_runs(home):
    s, _ = home
    from core.serving import remote
    with TestClient(create_app(s, announce={"host": "127.0.0.1", "port": 1})):
        info = remote.server_status(s)
        assert info["url"] == "http://127.0.0.1:1" and json.loads(remote.status_path(s).read_text())["pid"]
    assert remote.server_status(s) is None and not remote.status_path(s).exists()


@pytest.mark.parametrize("argv, message", [
    (["serve", "--port", "70000"], "--port must be in 0..65535, got 70000"),
    (["serve", "--port", "-1"], "--port must be in 0..65535, got -1"),
    (["serve", "--port", "http"], "--port 'http' is not an integer"),
])
def test_serve_refuses_a_bad_port_in_one_line(home, capsys, argv, message):
    from core import cli
    assert cli.main(["--home", str(home[0].home), *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_serve_on_a_port_in_use_is_one_clear_error(home, capsys):
    import socket

    from core import cli
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert cli.main(["--home", str(home[0].home), "serve", "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use; choose another --port"]


def test_a_batch_answers_each_request_as_recommend_would_and_logs_each(home):
    """Dynamic batching: requests answered together give each its own list (as `recommend` gives it), its own
    serve_id (a user asking twice is logged twice), and a bad request fails alone."""
    s, _ = home
    state = serving.load_state(s)
    uid = model_user(s)
    with opsdb.session(s) as db:
        others = [int(u) for u in opsdb.user_ids(db)[:6]]
    requests = [(uid, 10), (others[0], 5), (123456789, 10), (uid, 10), (others[1], 0), *[(u, 10) for u in others[2:]]]
    answers = serving.recommend_batch(s, requests, state=state)
    assert isinstance(answers[2], serving.UnknownUser) and "unknown user 123456789" in str(answers[2])
    assert isinstance(answers[4], serving.ValidationError) and "k must be an integer in 1..100" in str(answers[4])
    good = [(r, a) for r, a in zip(requests, answers) if not isinstance(a, Exception)]
    for (u, k), a in good:
        alone = serving.recommend(s, u, k, log=False, state=state)
        assert (a.user_id, a.path, a.movie_ids, a.model_version, a.arm) == (u, alone.path, alone.movie_ids,
                                                                              alone.model_version, alone.arm)
    ids = [a.serve_id for _, a in good]
    assert len(set(ids)) == len(ids) == len(requests) - 2
    with opsdb.session(s) as db:
        logged = {r["serve_id"]: r for r in servinglog.logged_lists(db, limit=50)}
    assert all(logged[a.serve_id]["movie_ids"] == a.movie_ids and logged[a.serve_id]["user_id"] == a.user_id
               for _, a in good)


def test_concurrent_http_requests_are_batched(home, client):
    import concurrent.futures
    s, _ = home
    with opsdb.session(s) as db:
        users = [int(u) for u in opsdb.user_ids(db)[:64]]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda u: client.get(f"/recommend/{u}").json(), users))
    assert [a["user_id"] for a in answers] == users and len({a["serve_id"] for a in answers}) == 64
    batched = {name: samples(client, name)[0][1] for name in ("retro_batches", "retro_batched_requests")}
    assert batched["retro_batched_requests"] >= 64 and batched["retro_batches"] <= batched["retro_batched_requests"]
