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
    if settings is None or not settings.ops_db.exists():
        return utc_now()
    try:
        conn = sqlite3.connect(f"file:{settings.ops_db}?mode=ro", uri=True, timeout=30)
        try:
            value = opsdb.get_meta(conn, "clock")
        finally:
            conn.close()
    except sqlite3.Error:          # no meta table yet (an empty database being created)
        return utc_now()
    return value or utc_now()


def kind(settings: Settings | None = None) -> str:
    """Which clock `now(settings)` reads: 'simulated' (a world's `meta.clock`) or 'real' (UTC wall clock)."""
    if settings is None or not settings.ops_db.exists():
        return "real"
    try:
        conn = sqlite3.connect(f"file:{settings.ops_db}?mode=ro", uri=True, timeout=30)
        try:
            value = opsdb.get_meta(conn, "clock")
        finally:
            conn.close()
    except sqlite3.Error:
        return "real"
    return "simulated" if value else "real"
