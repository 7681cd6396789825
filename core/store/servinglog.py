"""The serving log: every list shown to a user (served_recommendations), written by serving and read by
monitoring, governance, evaluation and privacy through these functions only."""
from __future__ import annotations


def lists_served_at(db, served_at: str) -> list[tuple]:
    """(user_id, path, movie_ids JSON, scores JSON) of every list served at exactly `served_at`.

    The simulated day serves everyone at its start, so this is one monitored day's lists (online quality).
    """
    return db.execute("SELECT user_id, path, movie_ids, scores FROM served_recommendations WHERE served_at = ?",
                      [served_at]).fetchall()


def model_lists_served_at(db, served_at: str) -> list[tuple]:
    """(movie_ids JSON,) of the lists the model (not a fallback) served at exactly `served_at` (model drift)."""
    return db.execute("SELECT movie_ids FROM served_recommendations WHERE served_at = ? AND path = 'model'",
                      [served_at]).fetchall()
