"""The one answer to "what time is it for this service?".

A simulated world runs on its own clock (`meta.clock` in the operational
database, advanced day by day by the simulation); a service without one (an
imported data set, a fresh folder) runs on real UTC time. Registry events,
runs, jobs, the operator audit, serving and privacy all stamp with this, so a
promotion and the lists served after it can be ordered — a promotion stamped
with real time next to lists stamped with simulated time made `audit` report
"serving log and registry disagree" after every rollback.
"""
from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

from core.constants import TS_FORMAT
from core.store import opsdb
from core.settings import Settings


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime(TS_FORMAT)


def now(settings: Settings | None = None, *, db=None) -> str:
    """The simulated clock when a world runs in the data folder, else real UTC, as 'YYYY-MM-DDTHH:MM:SS'.

    Pass the data folder's `settings`, or `db` (an open operational-database connection) when the caller holds
    one — inside a write transaction that is the clock the transaction sees. Neither: real UTC.
    """
    if db is not None:
        return opsdb.get_meta(db, "clock") or utc_now()
    return _stored_clock(settings) or utc_now()


def kind(settings: Settings | None = None) -> str:
    """Which clock `now(settings)` reads: 'simulated' (a world's `meta.clock`) or 'real' (UTC wall clock)."""
    return "simulated" if _stored_clock(settings) else "real"


def _stored_clock(settings: Settings | None) -> str | None:
    """`meta.clock` of the data folder's operational store, read without migrating or locking it (None: no
    store, no meta table yet — an empty database being created —, or no world)."""
    if settings is None:
        return None
    if settings.database_url is not None:
        try:
            with opsdb.read_only(settings) as conn:
                return opsdb.get_meta(conn, "clock")
        except sqlite3.Error:          # the facade maps PostgreSQL's errors to sqlite3's
            return None
    if not settings.ops_db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{settings.ops_db}?mode=ro", uri=True, timeout=30)
        try:
            return opsdb.get_meta(conn, "clock")
        finally:
            conn.close()
    except sqlite3.Error:          # no meta table yet (an empty database being created)
        return None
