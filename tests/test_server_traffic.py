"""Traffic that decides releases is trusted traffic (issue 23): serving is not showing — only lists a trusted
front end confirmed count (online quality, release arms); clients confirm with an API key (audited, rate
limited); an answer without a key does not reveal the release arm; and slow or half-open clients cannot hold
the server's descriptors."""
import dataclasses
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import private_copy
from fastapi.testclient import TestClient

from core import cli
from core.monitoring import monitoring, release
from core.privacy import access
from core.server import clients, guard
from core.server.app import UNAUTHENTICATED_OMITS, create_app
from core.serving import deployments, remote, serving
from core.simulation import loop
from core.store import opsdb, servinglog
from core.training import pipeline, registry


@pytest.fixture(scope="module")
def base(cf_world, tmp_path_factory):
    """The CF world with a sound candidate (another configuration) registered beside production."""
    s = private_copy(cf_world, tmp_path_factory.mktemp("traffic-base"))
    good = registry.register(s, pipeline.train(s, seed=11, params={"factors": 64}).run_id)
    return s, good


@pytest.fixture
def canary(base, tmp_path):
    """A private copy with a canary of the candidate at 50 % running."""
    s, good = base
    s = private_copy(s, tmp_path / "w")
    release.start(s, good, "canary", actor="t", share=0.5, min_days=2, margin=0.1)
    return s


def canary_users(s) -> list[int]:
    active = deployments.active(s)
    with opsdb.session(s) as db:
        return [u for u in opsdb.user_ids(db) if deployments.arm_of(u, active) == "canary"]


def last_row(s) -> dict:
    with opsdb.session(s) as db:
        return servinglog.logged_lists(db, limit=1)[0]


# ------------------------------------------------------------------ the probe: answers are not impressions
def test_a_flood_of_requests_for_canary_users_moves_no_release_decision(base, tmp_path):
    """The hostile tester's probe: between the simulated days, thousands of unauthenticated /recommend requests
    for canary-arm users. Every answer is logged (at the next day's serving time), none is confirmed, so the
    arms' hit rates, reach and decisions are exactly those of the same days without the flood."""
    s0, good = base
    quiet, flooded = (private_copy(s0, tmp_path / name) for name in ("quiet", "flooded"))
    for s in (quiet, flooded):
        release.start(s, good, "canary", actor="t", share=0.5, min_days=2, margin=0.1)
    targets = canary_users(flooded)
    sent = 0
    for _ in range(3):
        with TestClient(create_app(flooded, poll_seconds=0.05)) as c:
            for uid in targets * 3:
                assert c.get(f"/recommend/{uid}").status_code == 200
                sent += 1
        serving.clear_caches()
        loop.run(quiet, 1)
        loop.run(flooded, 1)
    with opsdb.session(flooded) as db:
        unconfirmed = db.execute("SELECT count(*) FROM served_recommendations WHERE shown_by IS NULL").fetchone()[0]
    assert unconfirmed == sent > 1000
    runs = []
    for s in (quiet, flooded):
        decisions = release.decisions(s).drop(columns=["decision_id"]).to_dict("records")
        arms = [(r["day"], r["arms"]) for r in monitoring.release_days(s, int(decisions[0]["deployment_id"]))]
        runs.append((decisions, arms))
    assert runs[0] == runs[1]
    decisions, arms = runs[0]
    assert [d["decision"] for d in decisions][:1] == ["continue"] and len(arms) >= 2
    assert all(a["canary"]["users"] > 0 and a["production"]["users"] > 0 for _, a in arms)
    print(f"{sent} unconfirmed requests for {len(targets)} canary users: decisions "
          f"{[d['decision'] for d in decisions]} in both runs")


# ------------------------------------------------------------------ what an answer tells whom
def test_an_answer_without_a_key_does_not_reveal_the_arm_and_is_not_counted_until_confirmed(canary):
    s = canary
    uid = canary_users(s)[0]
    key = clients.add(s, "web-front")
    with TestClient(create_app(s, poll_seconds=0.05)) as c:
        anonymous = c.get(f"/recommend/{uid}")
        body = anonymous.json()
        assert anonymous.status_code == 200 and body["movie_ids"] and body["serve_id"] and body["served_at"]
        assert not set(UNAUTHENTICATED_OMITS) & set(body) and "x-model-version" not in anonymous.headers
        assert "canary" not in json.dumps(body) and anonymous.headers["x-production-version"]
        assert last_row(s)["shown_by"] is None and last_row(s)["arm"] == "canary"   # logged, not shown
        with opsdb.session(s) as db:
            assert servinglog.lists_served_at(db, body["served_at"]) == []

        full = c.get(f"/recommend/{uid}", headers={clients.HEADER: key})
        assert full.json()["arm"] == "canary" and full.headers["x-model-version"] == str(full.json()["model_version"])
        assert full.json()["movie_ids"] == body["movie_ids"]

        r = c.post("/impressions", json={"serve_ids": [body["serve_id"], full.json()["serve_id"], 10**9]},
                   headers={clients.HEADER: key})
        assert r.status_code == 200 and r.json() == {"client": "web-front", "confirmed": 2, "already": 0,
                                                     "unknown": [10**9]}
        again = c.post("/impressions", json={"serve_ids": [body["serve_id"]]}, headers={clients.HEADER: key})
        assert again.json()["confirmed"] == 0 and again.json()["already"] == 1
    with opsdb.session(s) as db:
        shown = servinglog.arm_lists_served_at(db, body["served_at"])
    assert [(u, arm) for u, arm, *_ in shown] == [(uid, "canary"), (uid, "canary")]
    assert last_row(s)["shown_by"] == "client:web-front"
    from core.governance import audit
    assert [r["shown_by"] for r in audit.audit(s, uid)] == ["client:web-front"] * 2    # the audit says who


def test_in_process_serving_is_the_trusted_front_end(canary):
    rec = serving.recommend(canary, canary_users(canary)[0], 5)
    assert last_row(canary)["serve_id"] == rec.serve_id and last_row(canary)["shown_by"] == servinglog.IN_PROCESS


# ------------------------------------------------------------------ keys: refused, audited, limited
def test_impressions_need_a_valid_key_and_every_refusal_is_audited(canary):
    s = canary
    key = clients.add(s, "web-front")
    wrong = "web-front." + "x" * 43
    with TestClient(create_app(s, poll_seconds=0.05)) as c:
        serve_id = c.get(f"/recommend/{canary_users(s)[0]}").json()["serve_id"]
        for headers, why in (({}, "no API key"), ({clients.HEADER: wrong}, "wrong API key")):
            before = len(access.audit_log(s))
            r = c.post("/impressions", json={"serve_ids": [serve_id]}, headers=headers)
            assert r.status_code == 401 and "X-API-Key" in r.json()["error"]
            assert r.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'
            row = access.audit_log(s, limit=1).iloc[0]
            assert len(access.audit_log(s)) == before + 1 or row["target"].startswith(why)
            time.sleep(1.05)                                    # past the audit's folding window
        row = access.audit_log(s, limit=1).iloc[0]
        assert (row["actor"], row["action"], row["outcome"]) == ("client:web-front", "impressions", "denied")
        assert row["target"].startswith("wrong API key")
        assert c.get(f"/recommend/{canary_users(s)[0]}", headers={clients.HEADER: wrong}).status_code == 401
        assert last_row(s)["shown_by"] is None                  # nothing was confirmed
        from core.governance import audit
        assert audit.audit(s, canary_users(s)[0])[0]["shown_by"] is None
        assert c.post("/impressions", json={"serve_ids": [serve_id]}, headers={clients.HEADER: key}).status_code == 200
        assert c.post("/impressions", json={"serve_ids": "all"}, headers={clients.HEADER: key}).status_code == 422
        assert c.post("/impressions", content=b"{", headers={clients.HEADER: key}).status_code == 422


def test_a_flood_of_wrong_keys_writes_a_few_audit_rows_that_count_it(canary):
    s = canary
    before = len(access.audit_log(s))
    with TestClient(create_app(s, poll_seconds=0.05)) as c:
        for i in range(200):
            assert c.post("/impressions", json={"serve_ids": [1]}, headers={clients.HEADER: f"guess{i}.x"}
                          ).status_code == 401
        time.sleep(1.05)
        assert c.post("/impressions", json={"serve_ids": [1]}).status_code == 401
    rows = access.audit_log(s).head(len(access.audit_log(s)) - before)
    assert 2 <= len(rows) <= 10
    folded = sum(int(t.split("; ")[1].split()[0]) for t in rows["target"] if "; " in t)
    assert folded + len(rows) == 201
    print(f"201 refused keys: {len(rows)} audit rows")


def test_impressions_are_rate_limited_per_client(canary):
    s = dataclasses.replace(canary, impressions_per_minute=5)
    a, b = clients.add(s, "a"), clients.add(s, "b")
    with TestClient(create_app(s, poll_seconds=0.05)) as c:
        ids = [c.get(f"/recommend/{u}").json()["serve_id"] for u in canary_users(s)[:6]]
        assert c.post("/impressions", json={"serve_ids": ids[:4]}, headers={clients.HEADER: a}).status_code == 200
        limited = c.post("/impressions", json={"serve_ids": ids[4:6]}, headers={clients.HEADER: a})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert "5 impressions a minute" in limited.json()["error"]
        assert c.post("/impressions", json={"serve_ids": ids[4:5]}, headers={clients.HEADER: b}).status_code == 200
        assert c.post("/impressions", json={"serve_ids": ids}, headers={clients.HEADER: b}).status_code == 422


def test_limiter_refills_at_its_rate():
    now = [0.0]
    limiter = clients.ImpressionLimiter(60, clock=lambda: now[0])
    limiter.take("a", 60)
    with pytest.raises(clients.RateLimited) as exc:
        limiter.take("a", 2)
    assert exc.value.retry_after == pytest.approx(2.0)
    now[0] = 2.0
    limiter.take("a", 2)


def test_the_clients_commands(canary, capsys):
    home = ["--home", str(canary.home)]
    assert cli.main([*home, "clients", "add", "web-front", "--json"]) == 0
    key = json.loads(capsys.readouterr().out)["key"]
    assert key.startswith("web-front.") and clients.authenticate(canary, key) == "web-front"
    assert key.split(".")[1] not in (canary.home / "secrets.toml").read_text()          # only its hash is kept
    assert cli.main([*home, "clients", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"clients": ["web-front"]}
    assert cli.main([*home, "clients", "revoke", "web-front"]) == 0
    assert clients.authenticate(canary, key) is None
    assert cli.main([*home, "clients", "revoke", "web-front"]) == 1
    assert "no client named 'web-front'" in capsys.readouterr().err
    assert cli.main([*home, "clients", "add"]) == 1
    audit = access.audit_log(canary)
    assert {"client add", "client revoke"} <= set(audit["action"])
    assert set(audit[audit["action"].str.startswith("client ")]["target"]) == {"client:web-front"}


# ------------------------------------------------------------------ slow and half-open clients
def test_max_connections_follows_the_open_file_limit(canary):
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert guard.max_connections(canary) == max(8, soft - guard.RESERVED_DESCRIPTORS)
    assert guard.max_connections(dataclasses.replace(canary, server_max_connections=50)) == 50


@pytest.mark.slow
def test_half_open_sockets_under_a_low_descriptor_limit_leave_other_clients_served(canary):
    """250 connections that send half a request line, against a server limited to 256 descriptors: a normal
    client is still answered, and the server closes the half-open sockets after its header timeout (and a
    request whose body stops coming after its body timeout)."""
    def limit_descriptors():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    env = os.environ | {"RETRO_SERVER_HEADER_TIMEOUT": "2", "RETRO_SERVER_BODY_TIMEOUT": "2"}
    key = clients.add(canary, "web-front")
    proc = subprocess.Popen([sys.executable, "-m", "core", "--home", str(canary.home), "serve", "--port", "0",
                             "--json"], cwd=Path(__file__).resolve().parents[1], env=env, preexec_fn=limit_descriptors,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sockets = []
    try:
        deadline = time.monotonic() + 60
        while (info := remote.server_status(canary)) is None or info["pid"] != proc.pid:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.1)
        url = info["url"]
        host, port = url.rsplit("/", 1)[1].split(":")
        uid = canary_users(canary)[0]
        with httpx.Client(timeout=5, trust_env=False) as c:
            assert c.get(f"{url}/recommend/{uid}").status_code == 200
        opened = time.monotonic()
        for _ in range(250):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"GET /recommend/1 HTTP/1.1\r\nHost: x\r\n")          # and never the rest
            sockets.append(sock)
        for _ in range(3):
            with httpx.Client(timeout=5, trust_env=False) as c:
                assert c.get(f"{url}/recommend/{uid}").status_code == 200
        slow_body = socket.create_connection((host, int(port)), timeout=5)     # a whole head, a tenth of its body
        slow_body.sendall(f"POST /impressions HTTP/1.1\r\nHost: x\r\n{clients.HEADER}: {key}\r\n"
                          "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"serve_ids".encode())
        sockets.append(slow_body)
        closed = 0
        for sock in sockets:
            sock.settimeout(max(0.1, opened + 6 - time.monotonic()))
            try:
                closed += sock.recv(1024) == b""
            except (TimeoutError, socket.timeout):
                pass
            except ConnectionResetError:
                closed += 1
        assert closed == 251
        assert proc.poll() is None
        with httpx.Client(timeout=5, trust_env=False) as c:
            assert c.get(f"{url}/health").status_code == 200
    finally:
        for sock in sockets:
            sock.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_explanations_beyond_the_waiting_bound_are_refused_before_any_token_check(canary, monkeypatch):
    from core.server import app as server_app
    monkeypatch.setattr(server_app, "EXPLAIN_WAITING", -1)       # as if the explanation thread had a full queue
    before = len(access.audit_log(canary))
    with TestClient(create_app(canary, poll_seconds=0.05)) as c:
        r = c.get("/explain/1/1", headers={"Authorization": "Bearer admin:wrong-token"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
    assert len(access.audit_log(canary)) == before                  # no token was checked, nothing to audit
