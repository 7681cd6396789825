"""PostgreSQL as an option for the operational and MLOps stores (docs/postgres.md): the test server itself."""
import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg not installed: pip install -r requirements-postgres.txt")


def test_the_fixture_starts_a_real_server_on_loopback(pg_server, pg_url):
    with psycopg.connect(pg_url) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        listen = conn.execute("SHOW listen_addresses").fetchone()[0]
        user = conn.execute("SELECT current_user").fetchone()[0]
        conn.execute("CREATE TABLE t (x BIGINT)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
        assert conn.execute("SELECT sum(x) FROM t").fetchone()[0] == 3
    assert int(version.split(".")[0]) >= 13
    assert listen == "127.0.0.1"
    assert user == "retro"
    assert pg_server.url.startswith("postgresql://retro@127.0.0.1:")
