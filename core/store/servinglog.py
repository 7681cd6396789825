"""The serving log: every list shown to a user (served_recommendations), written by serving and read by
monitoring, governance, evaluation and privacy through these functions only."""
from __future__ import annotations


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
