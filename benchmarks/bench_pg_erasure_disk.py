"""What an erasure leaves on PostgreSQL's disk (docs/postgres.md, section 4): the erased user's pseudonym and a
text marker of their raw id, searched for byte by byte in every file of the server's data folder (relation files
named by their table, WAL segments), before the erasure, after `privacy forget`, after VACUUM FULL, and after the WAL
is switched and checkpointed three times.

Usage: python benchmarks/bench_pg_erasure_disk.py   (starts its own server: tests/pg_server.py)
"""
import os, sys, tempfile, subprocess
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from pg_server import postgres_server, fresh_database
with postgres_server(durable=True) as server:
    url = fresh_database(server.url, "disk")
    os.environ["RETRO_DATABASE_URL"] = url
    os.environ["RETRO_GATE_MIN_USERS"] = "10"
    import psycopg
    from core.settings import load_settings
    from core.simulation import simulation
    from core.training import pipeline
    from core.serving import serving
    from core.privacy import erasure, export, consent
    from core.pseudonym import pseudonym, pseudonym_key
    from core.store import opsdb
    s = load_settings(tempfile.mkdtemp())
    simulation.init_world(s, seed=3, users=200, movies=120, days=6)
    pipeline.retrain(s)
    uid = 5
    key = pseudonym(uid, pseudonym_key(s)).encode()
    serving.recommend(s, uid)
    consent.set_consent(s, uid, tracking=True, actor="alice")
    export.export_user(s, uid, actor="alice")
    with opsdb.session(s) as db:   # a text trace of the raw id too: a rejected write names it
        from core.store import writes
        writes.record_events(db, [{"user_id": uid, "movie_id": 1, "kind": "watch", "value": -5, "event_id": "MARKER-ERASE-ME"}], on_invalid="quarantine")
    with psycopg.connect(url) as c:
        oid = c.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
        c.execute("CHECKPOINT")
    data = server.root / "data"
    def scan(label):
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("CHECKPOINT")
            names = {str(r[0]): f"{r[1]}.{r[2]}" for r in c.execute(
                "SELECT c.relfilenode, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relfilenode <> 0")}
        found = {}
        for needle in (key, b"MARKER-ERASE-ME"):
            hits = []
            for root, _, files in os.walk(data):
                for f in files:
                    p = os.path.join(root, f)
                    try:
                        if needle in open(p, "rb").read():
                            rel = os.path.relpath(p, data)
                            base = f.split("_")[0].split(".")[0]
                            hits.append(names.get(base, rel) if rel.startswith(f"base/{oid}/") else rel.split("/")[0] + "/…")
                    except OSError:
                        pass
            found[needle[:8].decode()] = sorted(set(hits))
        print(label, found, flush=True)
    scan("before erasure:")
    erasure.forget_user(s, uid, actor="alice")
    scan("after forget_user (rows deleted, tables VACUUMed):")
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SET search_path TO retro_ops, retro_mlops")
        c.execute("VACUUM FULL")
    scan("after VACUUM FULL of the database:")
    with psycopg.connect(url, autocommit=True) as c:
        for _ in range(3):
            c.execute("SELECT pg_switch_wal()"); c.execute("CHECKPOINT")
    scan("after 3 WAL switches + checkpoints:")
