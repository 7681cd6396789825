"""Releases of a candidate beside production: shadow and canary (issue 16).

A *shadow* release scores every request with the candidate too and logs its list in the shadow log, but
users only ever see production's. A *canary* release shows the candidate's list to a share of users chosen
by a stable hash of the user id (the same user stays in the same arm for the whole release, and a larger
share only adds users). One release is active at a time (the database enforces it); it ends promoted,
rolled back or stopped, with who and why. The decisions and their numbers are the release policy's
(`core.monitoring.release`); this module owns the `deployments` table only.
"""
from __future__ import annotations

import hashlib
import json

import pandas as pd

from core.errors import RetroError, ValidationError
from core.settings import Settings
from core.store import mlopsdb
from core.store.mlopsdb import timestamp
from core.training import registry

MODES = ("shadow", "canary")
ENDINGS = ("promoted", "rolled-back", "stopped")
DEFAULT_SHARE = 0.1
COLUMNS = ["deployment_id", "version", "mode", "share", "production_version", "state", "policy", "started_at",
           "started_by", "reason", "updated_at", "ended_at", "ended_by", "end_reason"]


class ReleaseActive(RetroError):
    """Another release is already running; promote, roll back or stop it first."""


class NoActiveRelease(RetroError):
    """There is no active shadow or canary release to change."""


def _decode(row) -> dict | None:
    if row is None:
        return None
    out = dict(row) if isinstance(row, dict) else dict(zip(COLUMNS, row))
    out["policy"] = mlopsdb.loads(out.get("policy")) or {}
    return out


def check_share(share) -> float:
    """A canary share in (0, 1] (fraction of users in the candidate's arm)."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise ValidationError(f"a canary share must be a number in (0, 1], e.g. 0.1 for 10 % of users; got {share!r}")
    return float(share)


def start(settings: Settings, version: int, mode: str, *, actor: str, reason: str, share: float | None = None,
          policy: dict | None = None, at: str | None = None) -> dict:
    """Start a shadow or canary release of CF `version` (a candidate or archived version); returns it.

    `policy` holds the rules the release policy judges a canary by (stored with the release, see
    `core.monitoring.release.POLICY`)."""
    if mode not in MODES:
        raise ValidationError(f"unknown release mode {mode!r}; choose one of: {', '.join(MODES)}")
    for value, what in ((actor, "actor"), (reason, "reason")):
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(f"a release needs a non-empty {what}")
    share = check_share(DEFAULT_SHARE if share is None else share) if mode == "canary" else None
    when = timestamp(at, settings)
    with mlopsdb.write_session(settings) as db:
        row = check_releasable(registry.version_on(db, settings, int(version)))
        if row["stage"] == "production":
            raise ValidationError(f"v{version} is already in production; release a candidate instead")
        prod = registry.production_on(db, settings)
        if prod is None:
            raise ValidationError("nothing is in production yet: promote a first model instead of releasing one "
                                  "beside it")
        current = _active_row(db)
        if current is not None:
            raise ReleaseActive(f"release #{current['deployment_id']} ({current['mode']} of v{current['version']}) "
                                "is still active; promote, roll back or stop it first")
        cur = db.conn.execute(
            "INSERT INTO deployments(version, mode, share, production_version, state, policy, started_at, started_by, "
            "reason, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [int(version), mode, share, int(prod["version"]), "active", json.dumps(policy or {}), when, actor.strip(),
             reason.strip(), when])
        mlopsdb.audit_in(db)              # an operator's release commits with its audit row
        return _decode(_row(db, cur.lastrowid))


def check_releasable(row: dict) -> dict:
    """`row` when its version can be released beside production (a CF version); else ValidationError."""
    if row["family"] != registry.CF:
        raise ValidationError(f"v{row['version']} is a {row['family']} model; only collaborative-filtering versions "
                              "are released beside production (a ranker follows its CF model)")
    return row


def set_share(settings: Settings, deployment_id: int, share: float, *, at: str | None = None) -> dict:
    """Change an active canary's share (a ramp); users already in its arm stay in it."""
    share = check_share(share)
    when = timestamp(at, settings)
    with mlopsdb.write_session(settings) as db:
        row = _row(db, deployment_id)
        if row is None or row["state"] != "active" or row["mode"] != "canary":
            raise NoActiveRelease(f"release #{deployment_id} is not an active canary")
        db.execute("UPDATE deployments SET share = ?, updated_at = ? WHERE deployment_id = ?",
                   [share, when, int(deployment_id)])
        mlopsdb.audit_in(db, f"release #{deployment_id} (v{row['version']})")
        return _decode(_row(db, deployment_id))


def end(settings: Settings, deployment_id: int, state: str, *, actor: str, reason: str, at: str | None = None) -> dict:
    """End an active release as 'promoted', 'rolled-back' or 'stopped' (the registry change is the caller's)."""
    if state not in ENDINGS:
        raise ValidationError(f"a release ends as one of {', '.join(ENDINGS)}, not {state!r}")
    when = timestamp(at, settings)
    with mlopsdb.write_session(settings) as db:
        row = _row(db, deployment_id)
        if row is None or row["state"] != "active":
            raise NoActiveRelease(f"release #{deployment_id} is not active")
        db.execute("UPDATE deployments SET state = ?, ended_at = ?, ended_by = ?, end_reason = ?, updated_at = ? "
                   "WHERE deployment_id = ?", [state, when, actor, reason, when, int(deployment_id)])
        mlopsdb.audit_in(db, f"release #{deployment_id} (v{row['version']})")
        return _decode(_row(db, deployment_id))


# --- reads ---------------------------------------------------------------------------------------------------
def _row(db, deployment_id) -> dict | None:
    rows = list(db.query("SELECT * FROM deployments WHERE deployment_id = ?", [int(deployment_id)]))
    return rows[0] if rows else None


def _active_row(db) -> dict | None:
    rows = list(db.query("SELECT * FROM deployments WHERE state = 'active'"))
    return rows[0] if rows else None


def active_on(db) -> dict | None:
    """The active release read on the caller's connection (serving asks per request or per refresh)."""
    return _decode(_active_row(db))


def active(settings: Settings) -> dict | None:
    """The active release (policy decoded), or None."""
    with mlopsdb.session(settings) as db:
        return active_on(db)


def get(settings: Settings, deployment_id: int) -> dict:
    with mlopsdb.session(settings) as db:
        row = _row(db, deployment_id)
    if row is None:
        raise ValidationError(f"no release #{deployment_id}")
    return _decode(row)


def active_at(settings: Settings, at: str) -> dict | None:
    """The release that was active at time `at`: started at or before it and not ended by then."""
    with mlopsdb.session(settings) as db:
        rows = list(db.query("SELECT * FROM deployments WHERE started_at <= ? AND (ended_at IS NULL OR ended_at > ?) "
                             "ORDER BY deployment_id DESC LIMIT 1", [at, at]))
    return _decode(rows[0]) if rows else None


def history(settings: Settings) -> pd.DataFrame:
    """Every release, newest first (policy as JSON text)."""
    with mlopsdb.session(settings) as db:
        rows = db.execute("SELECT * FROM deployments ORDER BY deployment_id DESC").fetchall()
    return pd.DataFrame(rows, columns=COLUMNS)


# --- arms ----------------------------------------------------------------------------------------------------
def bucket(user_id: int, deployment_id: int) -> float:
    """A stable number in [0, 1) per (release, user): BLAKE2b of both ids. Salting with the release spreads
    successive canaries over different users; within a release a user always lands on the same number."""
    digest = hashlib.blake2b(f"{int(deployment_id)}:{int(user_id)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def arm_of(user_id: int, release: dict | None) -> str:
    """'canary' when an active canary's hash puts the user in its share, else 'production' (shadow releases
    show nobody the candidate). A larger share keeps every user of a smaller one: bucket < share."""
    if release is None or release["mode"] != "canary":
        return "production"
    return "canary" if bucket(user_id, release["deployment_id"]) < release["share"] else "production"
