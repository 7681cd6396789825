"""A click reported after its impression (issue 25.2): stored through the validated write API
(`writes.record_ad_clicks`) with its arrival order, and loaded by the next ETL run into fact_ad_click by its own
watermark (`ad_clicks`) although the impression reached the warehouse unclicked in an earlier run — on both
engines. Before, the ETL only loaded a click with its impression, so such a click never reached the warehouse."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from core import errors
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import load_settings
from core.simulation import simulation
from core.store import opsdb, writes
from core.warehouse import etl, warehouse


@pytest.fixture
def ad_home(tmp_path):
    """A small world with ads (seed 3, 150 users, 80 movies, 3 days), loaded once by the ETL."""
    settings = load_settings(tmp_path)
    simulation.init_world(settings, seed=3, users=150, movies=80, days=3)
    etl.run_etl(settings)
    return settings


def unclicked(settings, n: int) -> pd.DataFrame:
    """`n` impressions of the first day the warehouse holds unclicked, with their user and bid."""
    with opsdb.session(settings) as db:
        rows = pd.read_sql_query("SELECT i.impression_id, i.user_id, i.shown_at, c.bid FROM ad_impressions i JOIN "
                                 "ad_campaigns c USING (campaign_id) WHERE i.clicked = 0 ORDER BY impression_id",
                                 db.conn)
    return rows.head(n)


def click(row, seconds: int = 300, price: float | None = None) -> dict:
    at = (pd.Timestamp(row["shown_at"]) + pd.Timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    return {"impression_id": int(row["impression_id"]), "clicked_at": at,
            "price": round(min(0.1, float(row["bid"])), 4) if price is None else price}


def test_late_clicks_are_validated(ad_home):
    first, second = (r for _, r in unclicked(ad_home, 2).iterrows())
    with opsdb.session(ad_home) as db:
        clicked = db.execute("SELECT impression_id, shown_at FROM ad_impressions WHERE clicked = 1 LIMIT 1").fetchone()
        cases = {"unknown_impression": {"impression_id": 10 ** 9, "clicked_at": "2026-01-01T10:00:00", "price": 0.1},
                 "already_clicked": {"impression_id": clicked[0], "clicked_at": clicked[1], "price": 0.0},
                 "invalid_timestamp": click(first, seconds=-60),
                 "above_bid": click(first, price=float(first["bid"]) + 1),
                 "invalid_amount": click(first, price=-1.0)}
        for code, row in cases.items():
            with pytest.raises(errors.ValidationError) as info:
                writes.record_ad_clicks(db, [row])
            assert info.value.code == code, code
        with pytest.raises(errors.ValidationError) as info:             # the same impression twice in a batch
            writes.record_ad_clicks(db, [click(first), click(first, seconds=400)])
        assert info.value.code == "already_clicked"
        assert db.execute("SELECT count(*) FROM ad_impressions WHERE click_seq IS NOT NULL").fetchone()[0] == 0
        result = writes.record_ad_clicks(db, [cases["above_bid"], click(second)], on_invalid="quarantine")
        assert (result.accepted, result.rejected) == (1, 1)
        row = db.execute("SELECT clicked, clicked_at, price, click_seq FROM ad_impressions WHERE impression_id = ?",
                         [int(second["impression_id"])]).fetchone()
        assert row == (1, click(second)["clicked_at"], click(second)["price"], 1)
        reject = db.execute("SELECT target, code FROM rejected_writes ORDER BY reject_id DESC LIMIT 1").fetchone()
        assert reject == ("ad_impressions", "above_bid")


def test_a_click_reported_after_its_impressions_etl_reaches_the_warehouse_once(ad_home):
    late = unclicked(ad_home, 3)
    with warehouse.session(ad_home) as con:
        before = warehouse.ad_impressions(con).set_index("impression_id")
        clicks_before = con.execute("SELECT count(*) FROM fact_ad_click").fetchone()[0]
    assert (before.loc[late["impression_id"], "clicked"] == 0).all()          # loaded unclicked by the first run
    rows = [click(r) for _, r in late.iterrows()]
    with opsdb.session(ad_home) as db:
        assert writes.record_ad_clicks(db, rows).accepted == 3
    result = etl.run_etl(ad_home)
    assert result.status == "loaded" and result.rows_ads == 0
    report = result.report["ads"]
    assert report == {"impressions": 0, "rows": 0, "clicks": 3, "refused": 0, "late_clicks": 3}
    key = pseudonym_key(ad_home)
    with warehouse.session(ad_home) as con:
        facts = warehouse.ad_impressions(con).set_index("impression_id")
        new = con.execute("SELECT impression_id, user_key, clicked_at, price, data_version FROM fact_ad_click WHERE "
                          "data_version = ? ORDER BY impression_id", [result.data_version]).df()
        total = con.execute("SELECT count(*) FROM fact_ad_click").fetchone()[0]
        marks = warehouse.watermarks(con)
    assert total == clicks_before + 3 and new["impression_id"].tolist() == late["impression_id"].tolist()
    assert new["user_key"].tolist() == [pseudonym(int(u), key) for u in late["user_id"]]
    assert [str(t).replace(" ", "T") for t in new["clicked_at"]] == [r["clicked_at"] for r in rows]
    assert new["price"].tolist() == pytest.approx([r["price"] for r in rows])
    got = facts.loc[late["impression_id"]]
    assert got["clicked"].tolist() == [1, 1, 1] and got["price"].tolist() == pytest.approx([r["price"] for r in rows])
    assert marks["ad_clicks"] == 3
    assert etl.run_etl(ad_home).status == "no-new-data"                     # loaded once


def test_a_click_reported_before_the_first_etl_of_its_impression_comes_with_it(ad_home):
    with warehouse.session(ad_home) as con:
        mark = warehouse.watermarks(con)["ad_impressions"]
    simulation.simulate(ad_home, 1)
    with opsdb.session(ad_home) as db:
        row = pd.read_sql_query("SELECT i.impression_id, i.shown_at, c.bid FROM ad_impressions i JOIN ad_campaigns c "
                                "USING (campaign_id) WHERE i.clicked = 0 AND impression_id > ? ORDER BY impression_id "
                                "LIMIT 1", db.conn, params=(mark,)).iloc[0]
        writes.record_ad_clicks(db, [click(row)])
    result = etl.run_etl(ad_home)
    assert result.report["ads"]["late_clicks"] == 0
    with warehouse.session(ad_home) as con:
        n = con.execute("SELECT count(*) FROM fact_ad_click WHERE impression_id = ?",
                        [int(row["impression_id"])]).fetchone()[0]
        clicked = con.execute("SELECT clicked FROM fact_ad_impression WHERE impression_id = ?",
                              [int(row["impression_id"])]).fetchone()[0]
    assert n == 1 and clicked
    assert etl.run_etl(ad_home).status == "no-new-data"


@pytest.mark.spark
@pytest.mark.slow
def test_both_engines_load_late_clicks_alike(ad_home):
    from core.warehouse import lake, lake_etl
    from core.warehouse import spark as engine
    try:
        engine.check_available()
    except engine.EngineUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the Spark engine is not installed: {exc}")
        pytest.skip(f"Spark engine not installed: {exc}")
    spark = engine.get_session("local[2]")
    lake_etl.run_etl(ad_home, spark=spark)
    with opsdb.session(ad_home) as db:
        writes.record_ad_clicks(db, [click(r) for _, r in unclicked(ad_home, 3).iterrows()])
    embedded = etl.run_etl(ad_home)
    on_lake = lake_etl.run_etl(ad_home, spark=spark)
    assert embedded.report["ads"]["late_clicks"] == on_lake.report["ads"]["late_clicks"] == 3
    both = lambda sql: (warehouse.query(ad_home, sql), lake.query(ad_home, sql))  # noqa: E731
    a, b = both("SELECT * FROM fact_ad_click ORDER BY impression_id")
    pd.testing.assert_frame_equal(a, b, obj="fact_ad_click")
    a, b = both("SELECT version, content_hash, validation FROM data_versions ORDER BY version")
    pd.testing.assert_frame_equal(a, b)
    assert lake_etl.run_etl(ad_home, spark=spark).status == "no-new-data"
