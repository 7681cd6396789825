"""The serving log: every list shown to a user (served_recommendations), written by serving and read by
monitoring, governance, evaluation and privacy through these functions only."""
from __future__ import annotations

import sqlite_utils


def export_user(db: sqlite_utils.Database, user_id: int) -> list[dict]:
    """Every list served to a user, newest first, as stored (movie_ids and scores are JSON texts)."""
    return list(db.query("SELECT * FROM served_recommendations WHERE user_id = ? ORDER BY served_at DESC, "
                         "serve_id DESC", [user_id]))
