"""The ads' operational tables (issue 25, docs/ads.md): campaigns (`ad_campaigns`) and the sponsored slots shown
with their clicks (`ad_impressions`). Reads for the simulation, the ETL, privacy and the CLI; every write goes
through the validated write API (`writes.add_ad_campaigns`, `writes.record_ad_impressions`,
`writes.record_ad_clicks`)."""
from __future__ import annotations

import pandas as pd
import sqlite_utils

from core.store import database, opsdb

ENABLED_KEY = "ads_enabled"     # meta key: '1' ads shown in this world, '0' (or absent: an older world) not
CAMPAIGN_COLUMNS = ("campaign_id", "advertiser", "creative_kind", "movie_id", "product", "target_genres",
                    "target_age_bands", "bid", "daily_budget", "frequency_cap", "active", "created_at")
IMPRESSION_COLUMNS = ("impression_id", "served_id", "user_id", "campaign_id", "slot", "shown_at", "price", "p_click",
                      "policy", "model_version", "clicked", "clicked_at")


def _raw(conn):
    return getattr(conn, "conn", conn)


def has_tables(conn) -> bool:
    """Whether the store has the ads tables (a store an older version wrote, opened read-only, has not)."""
    return _raw(conn).execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = "
                              "'ad_impressions'").fetchone()[0] == 1


def enabled(db: sqlite_utils.Database) -> bool:
    """Whether this world shows ads (`meta.ads_enabled`; absent in a world made before ads: off)."""
    return opsdb.get_meta(db, ENABLED_KEY, "0") == "1"


def change_mark(db: sqlite_utils.Database) -> tuple:
    """(ads switch, campaigns, their newest id, newest impression id, newest late click): changes when ads are
    switched on or off, a campaign is added, an ad is shown or a late click is reported — a cache of anything about
    the ads keys on it (`insights.state_token`)."""
    switch = opsdb.get_meta(db, ENABLED_KEY, "0")
    if not has_tables(_raw(db)):
        return (switch, 0, None, None, None)
    late = "(SELECT max(click_seq) FROM ad_impressions)" if has_click_seq(db) else "NULL"
    return (switch, *db.execute(f"SELECT (SELECT count(*) FROM ad_campaigns), (SELECT max(campaign_id) FROM "
                                f"ad_campaigns), (SELECT max(impression_id) FROM ad_impressions), {late}").fetchone())


def set_enabled(db: sqlite_utils.Database, on: bool) -> None:
    opsdb.set_meta(db, ENABLED_KEY, 1 if on else 0)


def campaign_rows(db: sqlite_utils.Database, active_only: bool = False) -> list[tuple]:
    """`campaigns` as plain tuples (`CAMPAIGN_COLUMNS`), for a caller that only needs a few values per request."""
    where = " WHERE active = 1" if active_only else ""
    return [tuple(r) for r in db.execute(f"SELECT {', '.join(CAMPAIGN_COLUMNS)} FROM ad_campaigns{where} "
                                         "ORDER BY campaign_id").fetchall()]


def campaigns(db: sqlite_utils.Database, active_only: bool = False) -> pd.DataFrame:
    """Every campaign (`CAMPAIGN_COLUMNS`), by id; only the active ones with `active_only`."""
    return pd.DataFrame(campaign_rows(db, active_only), columns=list(CAMPAIGN_COLUMNS))


def campaign_total_rows(db: sqlite_utils.Database, start: str | None = None, end: str | None = None) -> list[tuple]:
    """`campaign_totals` as plain tuples (campaign_id, impressions, clicks, spend), by campaign."""
    where = [c for c, v in (("shown_at >= ?", start), ("shown_at < ?", end)) if v is not None]
    # Plain range conditions: the covering index (campaign_id, shown_at, clicked, price) answers it alone.
    return db.execute("SELECT campaign_id, count(*), coalesce(sum(clicked), 0), coalesce(sum(price), 0) "
                      f"FROM ad_impressions {'WHERE ' + ' AND '.join(where) if where else ''} "
                      "GROUP BY campaign_id ORDER BY campaign_id", [v for v in (start, end) if v is not None]).fetchall()


def campaign_totals(db: sqlite_utils.Database, start: str | None = None, end: str | None = None) -> pd.DataFrame:
    """campaign_id, impressions, clicks, spend of impressions shown in [start, end) (None: unbounded), one row per
    campaign that has any."""
    return pd.DataFrame(campaign_total_rows(db, start, end), columns=["campaign_id", "impressions", "clicks", "spend"])


def user_campaign_counts(db: sqlite_utils.Database, start: str, end: str) -> pd.DataFrame:
    """user_id, campaign_id, impressions shown in [start, end): what today's frequency caps have used."""
    rows = db.execute("SELECT user_id, campaign_id, count(*) FROM ad_impressions WHERE shown_at >= ? AND shown_at < ? "
                      "GROUP BY user_id, campaign_id", [start, end]).fetchall()
    return pd.DataFrame(rows, columns=["user_id", "campaign_id", "impressions"])


def caps_used(db: sqlite_utils.Database, start: str, end: str, user_ids) -> list[tuple[int, int, int]]:
    """(user_id, campaign_id, impressions) shown in [start, end) to these users: `user_campaign_counts` of a few
    users, read through the (user_id, shown_at) index instead of the whole day."""
    ids = sorted({int(u) for u in user_ids})
    out: list[tuple[int, int, int]] = []
    for at in range(0, len(ids), 500):
        chunk = ids[at:at + 500]
        out += db.execute(f"SELECT user_id, campaign_id, count(*) FROM ad_impressions WHERE user_id IN "
                          f"({','.join('?' * len(chunk))}) AND shown_at >= ? AND shown_at < ? "
                          "GROUP BY user_id, campaign_id", [*chunk, start, end]).fetchall()
    return out


def impressions_after(conn, impression_id: int) -> pd.DataFrame:
    """Impressions past the ETL watermark `impression_id`, in order (`IMPRESSION_COLUMNS` and the user's declared
    `age_band`, values as stored; the ETL checks them). An older store without the table gives no row. A simulated
    session writes its click with the impression; a click reported later (`writes.record_ad_clicks`) reaches the
    warehouse through `late_clicks` when its impression was loaded before."""
    raw = _raw(conn)
    if not has_tables(raw):
        return pd.DataFrame(columns=[*IMPRESSION_COLUMNS, "age_band"])
    cols = ", ".join(f"i.{c}" for c in IMPRESSION_COLUMNS)
    return database.read_sql_query(f"SELECT {cols}, u.age_band FROM ad_impressions i LEFT JOIN users u USING (user_id) "
                             "WHERE i.impression_id > ? ORDER BY i.impression_id", raw, params=(int(impression_id),))


def has_click_seq(conn) -> bool:
    """Whether the store has the late clicks' order column (ops migration m011)."""
    raw = _raw(conn)
    return any(c[1] == "click_seq" for c in raw.execute("PRAGMA table_info(ad_impressions)").fetchall())


def max_click_seq(conn) -> int:
    """The newest late click's order number (0: none yet, or a store without the column)."""
    if not has_tables(_raw(conn)) or not has_click_seq(conn):
        return 0
    return int(_raw(conn).execute("SELECT coalesce(max(click_seq), 0) FROM ad_impressions").fetchone()[0])


def late_clicks(conn, click_seq: int, impression_id: int) -> pd.DataFrame:
    """Clicks reported after their impression was stored (`click_seq` past the ETL's `ad_clicks` watermark) on
    impressions at or below the `ad_impressions` watermark — already in the warehouse without their click; newer
    impressions bring their click themselves. Columns as `impressions_after`, in click order."""
    raw = _raw(conn)
    if not has_tables(raw) or not has_click_seq(conn):
        return pd.DataFrame(columns=[*IMPRESSION_COLUMNS, "age_band"])
    cols = ", ".join(f"i.{c}" for c in IMPRESSION_COLUMNS)
    return database.read_sql_query(f"SELECT {cols}, u.age_band FROM ad_impressions i LEFT JOIN users u USING (user_id) "
                             "WHERE i.click_seq > ? AND i.impression_id <= ? AND i.clicked = 1 ORDER BY i.click_seq",
                             raw, params=(int(click_seq), int(impression_id)))


def user_impressions(db: sqlite_utils.Database, user_id: int, limit: int | None = None) -> list[dict]:
    """A user's impressions, newest first, with the campaign's advertiser and creative (export, explanations)."""
    tail = f" LIMIT {int(limit)}" if limit else ""
    return list(db.query(
        "SELECT i.impression_id, i.served_id, i.campaign_id, c.advertiser, c.creative_kind, c.movie_id, c.product, "
        "i.slot, i.shown_at, i.price, i.p_click, i.policy, i.model_version, i.clicked, i.clicked_at "
        "FROM ad_impressions i JOIN ad_campaigns c USING (campaign_id) WHERE i.user_id = ? "
        f"ORDER BY i.shown_at DESC, i.impression_id DESC{tail}", [int(user_id)]))


def export_user(db: sqlite_utils.Database, user_id: int) -> list[dict]:
    """Every impression of the user, oldest first (the right of access)."""
    return user_impressions(db, user_id)[::-1]


def impressions_before(db: sqlite_utils.Database, cutoff: str) -> tuple[int, int, str | None]:
    """(impressions shown before `cutoff`, all impressions, the oldest one's time): a retention purge's reach."""
    if not has_tables(db):
        return 0, 0, None
    n, total, oldest = db.execute("SELECT count(*) FILTER (WHERE shown_at < ?), count(*), min(shown_at) "
                                  "FROM ad_impressions", [cutoff]).fetchone()
    return int(n), int(total), oldest


def purge_before(db: sqlite_utils.Database, cutoff: str) -> int:
    """Delete impressions shown before `cutoff` (behavioural data, like events: one transaction, freed pages
    zeroed, WAL checkpointed); returns how many. Campaigns (no personal data) stay."""
    if not has_tables(db):
        return 0
    db.execute("PRAGMA secure_delete = ON")
    with db.atomic():
        n = db.conn.execute("DELETE FROM ad_impressions WHERE shown_at < ?", [cutoff]).rowcount
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return int(n)


def totals(db: sqlite_utils.Database) -> dict:
    """impressions, clicks, revenue (spend summed), first/last shown_at over every impression."""
    n, clicks, revenue, first, last = db.execute(
        "SELECT count(*), coalesce(sum(clicked), 0), coalesce(sum(price), 0), min(shown_at), max(shown_at) "
        "FROM ad_impressions").fetchone()
    return {"impressions": int(n), "clicks": int(clicks), "revenue": round(float(revenue), 4),
            "first_shown_at": first, "last_shown_at": last}
