"""The serving log: every list shown to a user (served_recommendations), written by serving and read by
monitoring, governance, evaluation and privacy through these functions only."""
from __future__ import annotations

import json

import pandas as pd
import sqlite_utils

from core.pseudonym import pseudonym_key, pseudonymize
from core.settings import Settings
from core.store import database, opsdb

_INSERT = ("INSERT INTO served_recommendations(user_id, served_at, path, model_version, data_version, movie_ids, "
           "scores, ranker_version, arm, policy, propensities, slate_propensities, shown_by) "
           "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)")
IN_PROCESS = "in-process"        # `shown_by` of a list the platform's own front end served (and so showed)
# A list counts as shown (online quality, release arms, reach) only when someone trusted confirmed it: the
# in-process front ends, a client with an API key, or a writer from before impressions existed ('logged').
# A model-server answer nobody confirmed (shown_by NULL) was computed and logged, not known to be seen.
SHOWN = "shown_by IS NOT NULL"
_INSERT_SHADOW = ("INSERT INTO shadow_recommendations(user_id, served_at, model_version, movie_ids, scores) "
                  "VALUES (?,?,?,?,?)")


def _scores(scores) -> str:
    return json.dumps([round(s, 6) for s in scores])


def _propensities(values) -> str | None:
    """Probabilities as a JSON list at full precision (a far-pool title's can be 1e-5: rounding would bias IPS)."""
    return None if values is None else json.dumps([float(v) for v in values])


def _row(entry: dict) -> tuple:
    """A list as stored: ids and scores as JSON lists, best first (scores rounded to 6 places); the logging
    policy and its propensities (see `core.serving.exploration`) when given."""
    return (entry["user_id"], entry["served_at"], entry["path"], entry["model_version"], entry["data_version"],
            json.dumps(entry["movie_ids"]), _scores(entry["scores"]), entry["ranker_version"],
            entry.get("arm", "production"), entry.get("policy"), _propensities(entry.get("propensities")),
            _propensities(entry.get("slate_propensities")), entry.get("shown_by", IN_PROCESS))


def _shadow_row(entry: dict) -> tuple:
    return (entry["user_id"], entry["served_at"], entry["model_version"], json.dumps(entry["movie_ids"]),
            _scores(entry["scores"]))


def _present(db, entries: list[dict]) -> set[int]:
    """The users of `entries` still in the database (an erasure may have removed one since it was served)."""
    ids = sorted({int(e["user_id"]) for e in entries})
    found: set[int] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        found |= {u for (u,) in db.execute(f"SELECT user_id FROM users WHERE user_id IN ({','.join('?' * len(chunk))})",
                                           chunk)}
    return found


def log_list(db: sqlite_utils.Database, entry: dict, shadow: dict | None = None) -> int | None:
    """Append one served list (keys: user_id, served_at, path, model_version, data_version, movie_ids, scores,
    ranker_version, arm) in its own transaction, with the shadow candidate's list for the same request when
    given (keys: user_id, served_at, model_version, movie_ids, scores); returns its serve_id, or None when the
    user was erased after the list was computed (nothing is logged: the caller answers "unknown user")."""
    ids = log_each(db, [entry], [shadow] if shadow is not None else [])
    return ids[0]


def log_lists(db: sqlite_utils.Database, entries: list[dict], shadows: list[dict] = ()) -> set[int]:
    """Append many served lists and shadow lists (same keys as `log_list`) in one transaction: one batch, one
    commit. Returns the users left out because an erasure removed them meanwhile."""
    ids = log_each(db, entries, shadows)
    return {int(e["user_id"]) for e, i in zip(entries, ids) if i is None}


def log_each(db: sqlite_utils.Database, entries: list[dict], shadows: list[dict] = ()) -> list[int | None]:
    """Append many served lists (keys of `log_list`) and shadow lists in one transaction, returning each list's
    serve_id in order (a batch of independent requests, each answered with its own id); None for a list whose
    user an erasure removed since it was computed (its row would break the foreign key and fail the batch)."""
    with opsdb.write_transaction(db):          # the write lock first: no erasure commits between check and insert
        present = _present(db, list(entries) + list(shadows))
        ids = [db.conn.execute(_INSERT, _row(e)).lastrowid if int(e["user_id"]) in present else None
               for e in entries]
        kept = [s for s in shadows if int(s["user_id"]) in present]
        if kept:
            db.conn.executemany(_INSERT_SHADOW, [_shadow_row(e) for e in kept])
    return ids


def confirm_shown(db: sqlite_utils.Database, serve_ids, shown_by: str) -> dict:
    """Record that the lists `serve_ids` were shown, confirmed by `shown_by` ('client:NAME' or IN_PROCESS), in one
    transaction. A list already confirmed keeps its first confirmation (a repeat changes nothing).

    Returns {"confirmed": lists newly confirmed, "already": lists confirmed before, "unknown": ids not in the log}."""
    ids = sorted({int(i) for i in serve_ids})
    found: dict[int, str | None] = {}
    with db.atomic():
        for start in range(0, len(ids), 500):          # SQLite's bound-parameter limit
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found |= dict(db.execute(f"SELECT serve_id, shown_by FROM served_recommendations "
                                     f"WHERE serve_id IN ({marks})", chunk).fetchall())
            db.execute(f"UPDATE served_recommendations SET shown_by = ? WHERE serve_id IN ({marks}) "
                       "AND shown_by IS NULL", [shown_by, *chunk])
    already = sum(1 for v in found.values() if v is not None)
    return {"confirmed": len(found) - already, "already": already, "unknown": [i for i in ids if i not in found]}


def lists_after(conn, serve_id: int) -> pd.DataFrame:
    """Shown lists past the ETL watermark `serve_id`, in logging order: serve_id, user_id, served_at, path,
    model_version, ranker_version, arm ('production' where NULL: lists from before releases were production's),
    movie_ids (JSON text, best first), policy, propensities and slate_propensities (JSON texts; NULL before
    exploration existed) — values as stored (the ETL checks them). Shadow lists (nobody saw them)
    live in another table and are never returned. `conn`: a plain sqlite3 connection or a sqlite-utils one;
    a column an unmigrated store lacks (read-only readers cannot migrate) reads as NULL."""
    raw = getattr(conn, "conn", conn)
    have = {col[1] for col in raw.execute("PRAGMA table_info(served_recommendations)").fetchall()}
    ranker = "ranker_version" if "ranker_version" in have else "NULL AS ranker_version"
    arm = "coalesce(arm, 'production') AS arm" if "arm" in have else "'production' AS arm"
    explore = ", ".join(c if c in have else f"NULL AS {c}" for c in ("policy", "propensities", "slate_propensities"))
    return database.read_sql_query(f"SELECT serve_id, user_id, served_at, path, model_version, {ranker}, {arm}, movie_ids, "
                             f"{explore} FROM served_recommendations WHERE serve_id > ? ORDER BY serve_id", raw,
                             params=(int(serve_id),))


def served_pairs(settings: Settings, start, end, key: bytes | None = None) -> pd.DataFrame:
    """(user_key, movie_id) of every title a *model* list showed in [start, end) (confirmed shown), pseudonymized.

    Evaluation leaves these out of a holdout: a title the model itself put on the screen says little about
    the model when it is watched."""
    s0, s1 = (pd.Timestamp(t).strftime("%Y-%m-%dT%H:%M:%S") for t in (start, end))
    with opsdb.session(settings) as db:
        rows = db.execute("SELECT user_id, movie_ids FROM served_recommendations WHERE path = 'model' "
                          f"AND served_at >= ? AND served_at < ? AND {SHOWN}", [s0, s1]).fetchall()
    if not rows:
        return pd.DataFrame(columns=["user_key", "movie_id"])
    frame = pd.DataFrame([(u, m) for u, ids in rows for m in json.loads(ids)], columns=["user_id", "movie_id"]).drop_duplicates()
    frame["user_key"] = pseudonymize(frame["user_id"], key or pseudonym_key(settings))
    return frame[["user_key", "movie_id"]]


def logged_lists(db: sqlite_utils.Database, user_id: int | None = None, since: str | None = None,
                 until: str | None = None, limit: int = 100) -> list[dict]:
    """Logged lists, newest first, filtered by user and time window [since, until); ids and scores decoded."""
    where, args = [], []
    if user_id is not None:
        where.append("user_id = ?"); args.append(int(user_id))  # noqa: E702
    if since:
        where.append("served_at >= ?"); args.append(since)  # noqa: E702
    if until:
        where.append("served_at < ?"); args.append(until)  # noqa: E702
    sql = "SELECT * FROM served_recommendations" + (" WHERE " + " AND ".join(where) if where else "") + \
          " ORDER BY served_at DESC, serve_id DESC LIMIT ?"
    rows = list(db.query(sql, args + [int(limit)]))
    for r in rows:
        r["movie_ids"], r["scores"] = json.loads(r["movie_ids"]), json.loads(r["scores"])
    return rows


# --- reads (governance: audit, explanations, diagnosis, model cards, dashboard status) ---

def lists_for_user(db, user_id: int, start: str | None = None, end: str | None = None, limit: int = 50) -> list[dict]:
    """The user's logged lists (optionally served in [start, end)), newest first, as raw rows:
    every column, `movie_ids` and `scores` still JSON text."""
    where, args = "user_id = ?", [int(user_id)]
    if start is not None:
        where += " AND served_at >= ? AND served_at < ?"
        args += [start, end]
    return list(db.query(f"SELECT * FROM served_recommendations WHERE {where} "
                         "ORDER BY served_at DESC, serve_id DESC LIMIT ?", args + [int(limit)]))


def recent_lists(db, user_id: int, limit: int = 500) -> list[tuple]:
    """(serve_id, served_at, path, model_version, ranker_version, data_version, movie_ids JSON) of the
    user's latest `limit` lists, newest first (where was a title shown to them)."""
    return db.execute("SELECT serve_id, served_at, path, model_version, ranker_version, data_version, movie_ids "
                      "FROM served_recommendations WHERE user_id = ? ORDER BY served_at DESC, serve_id DESC LIMIT ?",
                      [int(user_id), int(limit)]).fetchall()


def latest_model_list(db) -> tuple | None:
    """(serve_id, served_at, model_version) of the latest list a model personalised, None before any."""
    return db.execute("SELECT serve_id, served_at, model_version FROM served_recommendations "
                      "WHERE path = 'model' ORDER BY served_at DESC, serve_id DESC LIMIT 1").fetchone()


def latest_list(db, user_id: int) -> tuple | None:
    """(serve_id, served_at, path, model_version) of the user's latest list, None if never served."""
    return db.execute("SELECT serve_id, served_at, path, model_version FROM served_recommendations WHERE user_id = ? "
                      "ORDER BY served_at DESC, serve_id DESC LIMIT 1", [int(user_id)]).fetchone()


def paths_served(db, start: str, end: str, model_version: int) -> list[tuple]:
    """(path, user_id) of every list served in [start, end) that is a fallback or came from `model_version`
    (the lists a version is answerable for while it was in production)."""
    return db.execute(
        "SELECT path, user_id FROM served_recommendations WHERE served_at >= ? AND served_at < ? "
        "AND (path <> 'model' OR model_version = ?)", [start, end, model_version]).fetchall()


def totals(db) -> tuple[int, str | None]:
    """(lists served, time of the latest or None)."""
    return tuple(db.execute("SELECT count(*), max(served_at) FROM served_recommendations").fetchone())


def path_counts(db) -> dict[str, int]:
    """{serving path: lists served by it}."""
    return dict(db.execute("SELECT path, count(*) FROM served_recommendations GROUP BY path").fetchall())



def export_user(db: sqlite_utils.Database, user_id: int) -> list[dict]:
    """Every list served to a user, newest first, as stored (movie_ids and scores are JSON texts)."""
    return list(db.query("SELECT * FROM served_recommendations WHERE user_id = ? ORDER BY served_at DESC, "
                         "serve_id DESC", [user_id]))


def export_shadow(db: sqlite_utils.Database, user_id: int) -> list[dict]:
    """Every shadow list computed for a user (never shown), newest first, as stored."""
    return list(db.query("SELECT * FROM shadow_recommendations WHERE user_id = ? ORDER BY served_at DESC, "
                         "shadow_id DESC", [user_id]))


def lists_served_at(db, served_at: str) -> list[tuple]:
    """(user_id, path, movie_ids JSON, scores JSON) of every list served at exactly `served_at`.

    The simulated day serves everyone at its start, so this is one monitored day's lists (online quality).
    """
    return db.execute("SELECT user_id, path, movie_ids, scores FROM served_recommendations "
                      f"WHERE served_at = ? AND {SHOWN}",
                      [served_at]).fetchall()


def model_lists_served_at(db, served_at: str) -> list[tuple]:
    """(movie_ids JSON,) of the lists the model (not a fallback) served at exactly `served_at` (model drift)."""
    return db.execute("SELECT movie_ids FROM served_recommendations "
                      f"WHERE served_at = ? AND path = 'model' AND {SHOWN}",
                      [served_at]).fetchall()


# --- releases (issue 16): arms of a canary, the shadow log -----------------------------------------------------

def arm_lists_served_at(db, served_at: str) -> list[tuple]:
    """(user_id, arm, path, model_version, movie_ids JSON) of every list shown at exactly `served_at`; `arm` is
    'production' or 'canary' ('production' for lists logged before releases existed)."""
    return db.execute("SELECT user_id, coalesce(arm, 'production'), path, model_version, movie_ids "
                      f"FROM served_recommendations WHERE served_at = ? AND {SHOWN}", [served_at]).fetchall()


def shadow_lists_at(db, served_at: str) -> list[tuple]:
    """(user_id, model_version, movie_ids JSON) of every shadow list computed at exactly `served_at`."""
    return db.execute("SELECT user_id, model_version, movie_ids FROM shadow_recommendations WHERE served_at = ?",
                      [served_at]).fetchall()


def arm_reach(db, start: str, end: str | None, arm: str, model_version: int | None = None) -> tuple[int, int]:
    """(distinct users, lists) shown by `arm` in [start, end) (end None: up to now), optionally only the lists
    of one model version: how many people a canary's candidate reached."""
    where, args = f"served_at >= ? AND coalesce(arm, 'production') = ? AND {SHOWN}", [start, arm]
    if end is not None:
        where += " AND served_at < ?"
        args.append(end)
    if model_version is not None:
        where += " AND model_version = ?"
        args.append(int(model_version))
    users, lists = db.execute(f"SELECT count(DISTINCT user_id), count(*) FROM served_recommendations WHERE {where}",
                              args).fetchone()
    return int(users), int(lists)


def shadow_totals(db) -> tuple[int, str | None]:
    """(shadow lists logged, time of the latest or None)."""
    return tuple(db.execute("SELECT count(*), max(served_at) FROM shadow_recommendations").fetchone())


# --- exploration (issue 22): the logged lists counterfactual evaluation weighs -----------------------------------

def logged_between(db, start: str, end: str) -> pd.DataFrame:
    """Every list shown (confirmed) in [start, end) with its logging policy: serve_id, user_id, served_at, path,
    model_version, arm, policy, movie_ids, slate_propensities (JSON texts). Lists logged without propensities
    (before exploration existed) come back with NULL there; readers skip them."""
    raw = getattr(db, "conn", db)
    return database.read_sql_query(
        "SELECT serve_id, user_id, served_at, path, model_version, coalesce(arm, 'production') AS arm, "
        "coalesce(policy, 'deterministic') AS policy, movie_ids, slate_propensities FROM served_recommendations "
        f"WHERE served_at >= ? AND served_at < ? AND {SHOWN} ORDER BY serve_id", raw, params=(start, end))


def policy_lists_served_at(db, served_at: str) -> list[tuple]:
    """(user_id, policy, movie_ids JSON) of every list shown at exactly `served_at` ('deterministic' for lists
    logged before exploration existed): the price of exploring, measured online."""
    return db.execute("SELECT user_id, coalesce(policy, 'deterministic'), movie_ids FROM served_recommendations "
                      f"WHERE served_at = ? AND {SHOWN}", [served_at]).fetchall()


def serve_ids_at(db, served_at: str) -> dict[int, int]:
    """{user_id: the latest shown list's serve_id} of the lists logged at `served_at` (a simulated day's lists:
    the sponsored slot shown with each names its list)."""
    return dict(db.execute(f"SELECT user_id, max(serve_id) FROM served_recommendations WHERE served_at = ? "
                           f"AND {SHOWN} GROUP BY user_id", [served_at]).fetchall())
