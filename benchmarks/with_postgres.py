"""Run a command with the operational and MLOps stores in a PostgreSQL server started for it (docs/postgres.md).

Usage: python benchmarks/with_postgres.py python benchmarks/bench_pipeline.py [its arguments]

Starts a fresh server from the Debian package (tests/pg_server.py: initdb into a temporary folder, 127.0.0.1 on a
free port), creates an empty database, runs the command with RETRO_DATABASE_URL naming it, then stops the server
and removes its folder. Prints the server's version and, at the end, the database's size on disk.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    import psycopg
    from pg_server import fresh_database, postgres_server
    with postgres_server(durable=True) as server:
        url = fresh_database(server.url, "bench")
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
        print(f"PostgreSQL {version} on 127.0.0.1:{server.port} (fsync on, synchronous_commit off)", flush=True)
        code = subprocess.call(argv, cwd=ROOT, env=os.environ | {"RETRO_DATABASE_URL": url})
        with psycopg.connect(url) as conn:
            size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]
        print(f"database size after the run: {size}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
