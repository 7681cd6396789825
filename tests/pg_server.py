"""A real PostgreSQL server on 127.0.0.1 for tests and benchmarks, started from the Debian package's binaries.

    with postgres_server() as server:
        os.environ["RETRO_DATABASE_URL"] = server.url       # postgresql://retro@127.0.0.1:PORT/postgres

`initdb` into a new temporary folder, `pg_ctl start` on a free port listening on 127.0.0.1 only (the Unix socket
in the same folder), `pg_ctl stop -m fast` and the folder removed at the end. PostgreSQL refuses to run as root:
as root (CI) both run as the unprivileged `postgres` user through `runuser`, and the folder is theirs; as anyone
else they run as that user. Trust authentication is safe here only because nothing but 127.0.0.1 can connect.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "retro"


def bin_dir() -> Path | None:
    """The folder with initdb and pg_ctl (Debian: /usr/lib/postgresql/<major>/bin; newest major first), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
                        reverse=True)
    found = candidates[0] if candidates else shutil.which("initdb")
    return Path(found).parent if found else None


def missing_reason() -> str | None:
    """Why no server can be started here (None: it can)."""
    if bin_dir() is None:
        return ("PostgreSQL binaries not found (initdb, pg_ctl): apt-get install postgresql "
                "(see docs/postgres.md)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as (apt-get install postgresql)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str          # postgresql://retro@127.0.0.1:PORT/postgres
    port: int
    root: Path
    log: Path


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres_server(*, timeout: float = 60.0, durable: bool = False):
    """Start a fresh PostgreSQL server; yield a `Server`; always stop it and delete its folder.

    Tests run it with fsync and full-page writes off (a disposable server). `durable=True` (benchmarks) keeps
    PostgreSQL's crash safety and sets only synchronous_commit=off — the counterpart of the SQLite stores'
    WAL with synchronous=NORMAL (a power cut may lose the last commits, never corrupt the database)."""
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    bindir = bin_dir()
    root = Path(tempfile.mkdtemp(prefix="retro-pg-"))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    port = free_port()
    started = False
    try:
        subprocess.run(_as_server_user([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", SUPERUSER,
                                        "-E", "UTF8", "--locale=C.UTF-8", *([] if durable else ["--no-sync"])]),
                       check=True, capture_output=True, timeout=timeout)
        options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c synchronous_commit=off "
                   "-c max_connections=200" + ("" if durable else " -c fsync=off -c full_page_writes=off"))
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log),
                                        "-w", "-t", str(int(timeout)), "start"]),
                       check=True, capture_output=True, timeout=timeout + 10)
        started = True
        url = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
        _wait_ready(url, timeout)
        yield Server(url=url, port=port, root=root, log=log)
    except subprocess.CalledProcessError as exc:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr.decode(errors='replace')[-2000:]}\n{tail}") from exc
    finally:
        if started:
            subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(url: str, timeout: float) -> None:
    import psycopg
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def fresh_database(server_url: str, name: str) -> str:
    """Create an empty database `name` on the server; return its URL (each test gets its own)."""
    import psycopg
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"
