"""Ads data (issue 25.2, docs/ads.md): campaigns and impressions through the validated write API (refused or
quarantined with a code), `fact_ad_impression` / `fact_ad_click` loaded by the ETL on both engines and covered by
the data version's hash, and privacy — export, erasure (no byte of the user's ad rows left), retention and key
rotation — over the ads rows."""
from __future__ import annotations

import json
import os

import duckdb
import pandas as pd
import pytest

from core import errors
from core.ads import features
from core.constants import AD_TARGETING
from core.privacy import erasure, export, retention
from core.privacy import keys as key_rotation
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import load_settings
from core.simulation import simulation
from core.store import adslog, opsdb, writes
from core.warehouse import datahash, etl, warehouse

CAMPAIGNS = [
    {"campaign_id": 1, "advertiser": "Nebula Games", "creative_kind": "product", "product": "Starfall",
     "target_genres": "Drama", "target_age_bands": "", "bid": 1.0, "daily_budget": 5.0, "frequency_cap": 2},
    {"campaign_id": 2, "advertiser": "Comfort Sofas", "creative_kind": "product", "product": "Recliner",
     "target_genres": "", "target_age_bands": "", "bid": 0.5, "daily_budget": 2.0},
    {"campaign_id": 3, "advertiser": "Silver Screen", "creative_kind": "title", "movie_id": 2,
     "target_genres": ["Comedy"], "target_age_bands": ["18-24", "25-34"], "bid": 2.0, "daily_budget": 9.0},
]
SHOWN = "2026-01-09T10:00:00"


@pytest.fixture
def ads_db(small_db):
    """The conftest's two users and two movies, user 2 without ad-targeting consent, and three campaigns."""
    small_db.execute("UPDATE users SET consent_ad_targeting = 0 WHERE user_id = 2")
    assert writes.add_ad_campaigns(small_db, CAMPAIGNS) == [1, 2, 3]
    return small_db


def _impression(**kw) -> dict:
    return {"user_id": 1, "campaign_id": 1, "slot": 3, "shown_at": SHOWN, "policy": "campaign-rate",
            "p_click": 0.04, "clicked": 0} | kw


# ------------------------------------------------------------------ the write API
def test_campaigns_are_validated_as_a_batch(ads_db):
    camps = adslog.campaigns(ads_db)
    assert camps["target_genres"].tolist() == ["Drama", "", "Comedy"]
    assert camps["target_age_bands"].tolist() == ["", "", "18-24|25-34"]
    assert camps["frequency_cap"].tolist() == [2, 1, 1] and camps["active"].tolist() == [1, 1, 1]
    assert camps["movie_id"].isna().tolist() == [True, True, False]
    for bad, code in (({"target_genres": "Opera"}, "unknown_genre"), ({"target_age_bands": "12-17"}, "unknown_age_band"),
                      ({"bid": 0}, "invalid_amount"), ({"daily_budget": float("nan")}, "invalid_amount"),
                      ({"frequency_cap": 0}, "invalid_cap"), ({"creative_kind": "title"}, "unknown_movie"),
                      ({"advertiser": " "}, "invalid_advertiser"), ({"campaign_id": 1}, "already_exists")):
        with pytest.raises(errors.ValidationError) as caught:
            writes.add_ad_campaigns(ads_db, [CAMPAIGNS[0] | {"campaign_id": None} | bad])
        assert caught.value.code == code, bad
    assert len(adslog.campaigns(ads_db)) == 3                     # nothing of a refused batch was written


def test_no_campaign_targets_a_sensitive_attribute(ads_db):
    """Targeting is by genre interest and age band only: a campaign naming another criterion (a life event, user
    ids, a churn risk) is refused by name, not stored as if untargeted; and none of the ads model's features is a
    sensitive attribute docs/ads.md excludes (life events, free text, the user id)."""
    for criterion in ("target_life_events", "target_user_ids", "target_churn_risk"):
        for batch in ([CAMPAIGNS[0] | {"campaign_id": None, criterion: "x"}],
                      pd.DataFrame([CAMPAIGNS[0] | {"campaign_id": None, criterion: "x"}])):
            with pytest.raises(errors.ValidationError) as caught:
                writes.add_ad_campaigns(ads_db, batch)
            assert caught.value.code == "unknown_targeting" and criterion in str(caught.value)
    assert len(adslog.campaigns(ads_db)) == 3
    assert [c for c in features.CAMPAIGN_COLUMNS if c.startswith("target_")] == list(AD_TARGETING)
    names = features.feature_names([1, 2])
    assert not [n for n in names if any(w in n for w in ("user", "life", "event", "hazard", "text", "title"))], names


def test_impressions_are_validated_and_quarantined_with_a_code(ads_db):
    good = [_impression(), _impression(campaign_id=2, clicked=1, clicked_at="2026-01-09T10:00:20", price=0.3),
            _impression(user_id=2, campaign_id=2, policy="untargeted", p_click=None)]
    bad = {
        "unknown_campaign": _impression(campaign_id=9),
        "invalid_slot": _impression(slot=0),
        "above_bid": _impression(clicked=1, clicked_at="2026-01-09T10:00:20", price=1.5),
        "invalid_click": _impression(clicked=1),
        "invalid_amount": _impression(price=0.2),
        "invalid_probability": _impression(policy="untargeted"),
        "invalid_model_version": _impression(model_version=3),
        "future_timestamp": _impression(shown_at="2026-02-01T00:00:00"),
        "unknown_served_id": _impression(served_id=77),
        "no_ad_consent": _impression(user_id=2, campaign_id=2),
        "unknown_policy": _impression(policy="best-guess"),
        "unknown_user": _impression(user_id=99),
    }
    with pytest.raises(errors.ValidationError):
        writes.record_ad_impressions(ads_db, good + [bad["above_bid"]])
    assert adslog.totals(ads_db)["impressions"] == 0              # raise mode: nothing written
    result = writes.record_ad_impressions(ads_db, good + list(bad.values()), on_invalid="quarantine")
    assert (result.accepted, result.rejected) == (3, len(bad))
    codes = [c for (c,) in ads_db.execute("SELECT code FROM rejected_writes WHERE target = 'ad_impressions' "
                                          "ORDER BY reject_id")]
    assert codes == list(bad)
    assert adslog.totals(ads_db) | {"first_shown_at": None, "last_shown_at": None} == {
        "impressions": 3, "clicks": 1, "revenue": 0.3, "first_shown_at": None, "last_shown_at": None}
    # A logged list names its user: an impression must be shown with a list of the same user.
    from core.store import servinglog
    serve_id = servinglog.log_list(ads_db, {"user_id": 1, "served_at": SHOWN, "path": "model", "model_version": 1,
                                            "data_version": "1", "movie_ids": [1, 2], "scores": [0.5, 0.4],
                                            "ranker_version": None})
    ok = writes.record_ad_impressions(ads_db, [_impression(served_id=serve_id),
                                               _impression(user_id=2, served_id=serve_id, campaign_id=2,
                                                           policy="untargeted", p_click=None)],
                                      on_invalid="quarantine")
    assert (ok.accepted, ok.rejected, list(ok.reasons)) == (1, 1, ["served list 1 was shown to another user"])


# ------------------------------------------------------------------ the ETL
@pytest.fixture
def ad_home(tmp_path):
    """A small world with ads (seed 3, 150 users, 80 movies, 3 days), loaded once by the ETL."""
    settings = load_settings(tmp_path)
    simulation.init_world(settings, seed=3, users=150, movies=80, days=3)
    etl.run_etl(settings)
    return settings


def _ops_impressions(settings) -> pd.DataFrame:
    with opsdb.session(settings) as db:
        return pd.read_sql_query("SELECT * FROM ad_impressions ORDER BY impression_id", db.conn)


def test_the_etl_loads_every_impression_and_click_pseudonymized(ad_home):
    ops = _ops_impressions(ad_home)
    key = pseudonym_key(ad_home)
    with warehouse.session(ad_home) as con:
        facts = warehouse.ad_impressions(con)
        counts = warehouse.ad_counts(con)
        version = warehouse.latest_version(con)
        clicks = con.execute("SELECT * FROM fact_ad_click ORDER BY impression_id").df()
        cols = {c for (c,) in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name "
                                          "IN ('fact_ad_impression', 'fact_ad_click')").fetchall()}
    assert len(ops) > 100 and counts["impressions"] == len(ops) == len(facts)
    assert counts["clicks"] == int(ops["clicked"].sum()) == len(clicks) > 0
    assert counts["revenue"] == pytest.approx(ops["price"].sum())
    assert "user_id" not in cols and "user_key" in cols
    merged = facts.sort_values("impression_id").reset_index(drop=True)
    assert merged["user_key"].tolist() == [pseudonym(int(u), key) for u in ops["user_id"]]
    assert merged["campaign_id"].tolist() == ops["campaign_id"].tolist()
    assert merged["clicked"].tolist() == ops["clicked"].tolist()
    assert merged["price"].to_numpy() == pytest.approx(ops["price"].to_numpy())
    with opsdb.session(ad_home) as db:
        bands = dict(db.execute("SELECT user_id, age_band FROM users").fetchall())
    assert merged["age_band"].tolist() == ops["user_id"].map(bands).tolist()
    report = json.loads(version["validation"])["ads"]
    assert report == {"impressions": len(ops), "rows": len(ops), "clicks": len(clicks), "refused": 0, "late_clicks": 0}


def test_the_data_version_hash_covers_the_ad_rows(ad_home):
    with warehouse.session(ad_home) as con:
        version = warehouse.latest_version(con)
        facts = con.execute("SELECT * FROM fact_interaction").df()
        served = con.execute("SELECT * FROM fact_served").df()
        ads = {t: con.execute(f"SELECT * FROM {t}").df() for t in etl.AD_TABLES}
    assert version["content_hash"] == datahash.content_hash(facts, None, served, ads)
    assert version["content_hash"] != datahash.content_hash(facts, None, served)   # without the ads: another hash
    clicked = ads["fact_ad_impression"]["clicked"].to_numpy()
    flipped = {**ads, "fact_ad_impression": ads["fact_ad_impression"].assign(clicked=~clicked)}
    assert datahash.content_hash(facts, None, served, flipped) != version["content_hash"]
    cheaper = {**ads, "fact_ad_click": ads["fact_ad_click"].assign(price=ads["fact_ad_click"]["price"] / 2)}
    assert datahash.content_hash(facts, None, served, cheaper) != version["content_hash"]
    # A version without ad rows hashes exactly as before the ads existed (no section).
    assert datahash.combine(None, {}, None, None, {}) == datahash.combine(None, {})


def test_the_next_etl_loads_only_the_new_impressions(ad_home):
    assert etl.run_etl(ad_home).status == "no-new-data"
    before = len(_ops_impressions(ad_home))
    simulation.simulate(ad_home, 1)
    result = etl.run_etl(ad_home)
    ops = _ops_impressions(ad_home)
    assert result.status == "loaded" and result.rows_ads == len(ops) - before > 0
    with warehouse.session(ad_home) as con:
        per_version = con.execute("SELECT data_version, count(*) FROM fact_ad_impression GROUP BY 1 "
                                  "ORDER BY 1").fetchall()
        marks = warehouse.watermarks(con)
    assert per_version == [(1, before), (2, len(ops) - before)]
    assert marks["ad_impressions"] == int(ops["impression_id"].max())


def test_an_older_warehouse_reads_the_ad_facts_empty(tmp_path):
    """A warehouse file written before the ads had no ad tables: reads see them empty until the next ETL."""
    settings = load_settings(tmp_path)
    path = settings.warehouse
    con = duckdb.connect(str(path))
    con.execute(warehouse.SCHEMA.split("-- Ads (issue 25)")[0])
    con.close()
    with warehouse.session(settings) as con:
        assert warehouse.ad_counts(con)["impressions"] == 0 and warehouse.ad_impressions(con).empty


# ------------------------------------------------------------------ privacy
def _clicker(settings) -> int:
    """A user with at least one clicked ad and two impressions."""
    ops = _ops_impressions(settings)
    per_user = ops.groupby("user_id")["clicked"].agg(["sum", "size"])
    return int(per_user[(per_user["sum"] > 0) & (per_user["size"] >= 2)].index[0])


def test_the_export_holds_the_users_ads_in_both_stores(ad_home):
    uid = _clicker(ad_home)
    ops = _ops_impressions(ad_home).query("user_id == @uid")
    doc = export.export_user(ad_home, uid, actor="alice")
    assert [r["impression_id"] for r in doc["ad_impressions"]] == ops["impression_id"].tolist()
    assert {"advertiser", "campaign_id", "policy", "clicked", "price", "shown_at"} <= set(doc["ad_impressions"][0])
    assert doc["stores"]["ops.ad_impressions"] == len(ops)
    assert doc["warehouse"]["fact_ad_impression"]["count"] == len(ops) == doc["stores"]["warehouse.fact_ad_impression"]
    assert doc["warehouse"]["fact_ad_click"]["count"] == int(ops["clicked"].sum()) > 0
    assert "user_key" not in doc["warehouse"]["fact_ad_click"]["rows"][0]
    assert export.held_counts(ad_home, uid)["warehouse.fact_ad_click"] == int(ops["clicked"].sum())
    assert {"ad_impressions", "fact_ad_impression", "fact_ad_click"} <= {r["table"] for r in export.data_inventory()}


def test_erasure_leaves_no_byte_of_the_users_ad_rows(ad_home):
    uid = _clicker(ad_home)
    user_key = pseudonym(uid, pseudonym_key(ad_home))
    ops = _ops_impressions(ad_home)
    mine = ops[ops["user_id"] == uid]
    # Texts only the user's ad rows (and their own events) hold: the click times of their ads.
    needles = [t for t in mine["clicked_at"].dropna()
               if (ops["clicked_at"] == t).sum() == 1 and (ops["shown_at"] == t).sum() == 0]
    assert needles
    with opsdb.session(ad_home) as db:
        for t in needles:                      # nobody else has an event at that second either
            others = db.execute("SELECT count(*) FROM events WHERE occurred_at = ? AND user_id <> ?",
                                [t, uid]).fetchone()[0]
            assert others == 0, t

    summary = erasure.forget_user(ad_home, uid, actor="alice")

    assert summary["ops"]["ad_impressions"] == len(mine)
    assert summary["warehouse"]["fact_ad_impression"] == len(mine)
    assert summary["warehouse"]["fact_ad_click"] == int(mine["clicked"].sum())
    assert uid not in set(_ops_impressions(ad_home)["user_id"])
    with warehouse.session(ad_home) as con:
        assert con.execute("SELECT count(*) FROM fact_ad_impression WHERE user_key = ?", [user_key]).fetchone()[0] == 0
    for path in ad_home.home.iterdir():
        if path.is_file():
            raw = path.read_bytes()
            assert user_key.encode() not in raw, path.name
            if path.name.startswith("retro.db"):
                assert not [t for t in needles if t.encode() in raw], path.name
    etl.run_etl(ad_home)                       # the next ETL brings nothing back
    with warehouse.session(ad_home) as con:
        assert con.execute("SELECT count(*) FROM fact_ad_click WHERE user_key = ?", [user_key]).fetchone()[0] == 0


def test_retention_purges_old_ads_in_both_stores(ad_home):
    status = retention.retention_status(ad_home, 1)
    assert status["ops_ad_impressions_to_purge"] > 0
    assert status["warehouse_ad_impressions_to_purge"] == status["ops_ad_impressions_to_purge"]
    result = retention.retention(ad_home, 1, actor="alice")
    assert result["ops_ad_impressions_deleted"] == status["ops_ad_impressions_to_purge"]
    assert result["warehouse_ad_impressions_deleted"] == status["warehouse_ad_impressions_to_purge"]
    assert result["warehouse_ad_clicks_deleted"] > 0
    cutoff = result["cutoff"]
    assert _ops_impressions(ad_home)["shown_at"].min() >= cutoff
    with warehouse.session(ad_home) as con:
        oldest = con.execute("SELECT strftime(min(shown_at), '%Y-%m-%dT%H:%M:%S') FROM fact_ad_impression").fetchone()[0]
        left_clicks = con.execute("SELECT count(*) FROM fact_ad_click WHERE clicked_at < ?",
                                  [pd.Timestamp(cutoff).to_pydatetime()]).fetchone()[0]
    assert oldest >= cutoff and left_clicks == 0
    assert retention.retention_status(ad_home, 1)["ops_ad_impressions_to_purge"] == 0


def test_key_rotation_rekeys_the_ad_facts(ad_home):
    with warehouse.session(ad_home) as con:
        before = {t: set(con.execute(f"SELECT DISTINCT user_key FROM {t}").df()["user_key"]) for t in etl.AD_TABLES}
    result = key_rotation.rotate_key(ad_home, actor="alice")
    assert result["warehouse_rows_rekeyed"]["fact_ad_impression"] == len(_ops_impressions(ad_home))
    key = pseudonym_key(ad_home)
    ops = _ops_impressions(ad_home)
    with warehouse.session(ad_home) as con:
        after = {t: set(con.execute(f"SELECT DISTINCT user_key FROM {t}").df()["user_key"]) for t in etl.AD_TABLES}
    for table in etl.AD_TABLES:
        assert len(after[table]) == len(before[table]) > 0 and not after[table] & before[table], table
    assert after["fact_ad_impression"] == {pseudonym(int(u), key) for u in ops["user_id"].unique()}


# ------------------------------------------------------------------ the Spark engine
@pytest.mark.spark
@pytest.mark.slow
def test_both_engines_load_the_same_ad_facts_and_hash(ad_home):
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
    simulation.simulate(ad_home, 1)
    etl.run_etl(ad_home)
    lake_etl.run_etl(ad_home, spark=spark)
    both = lambda sql: (warehouse.query(ad_home, sql), lake.query(ad_home, sql))  # noqa: E731
    for table, key in (("fact_ad_impression", "impression_id"), ("fact_ad_click", "impression_id")):
        embedded, lake_rows = both(f"SELECT * FROM {table} ORDER BY {key}")
        assert len(embedded) > 0
        pd.testing.assert_frame_equal(embedded, lake_rows, obj=table)
    embedded, lake_rows = both("SELECT version, content_hash, validation FROM data_versions ORDER BY version")
    pd.testing.assert_frame_equal(embedded, lake_rows)
    days = sorted(p.name for p in (ad_home.lake_dir / "fact_ad_impression").iterdir())
    assert days == ["day=2026-01-01", "day=2026-01-02", "day=2026-01-03", "day=2026-01-04"]
    uid = _clicker(ad_home)
    user_key = pseudonym(uid, pseudonym_key(ad_home))
    counts = lake.erase_user(ad_home, user_key, spark=spark)
    assert counts["fact_ad_impression"] > 0 and counts["fact_ad_click"] > 0
    assert lake.held_counts(ad_home, user_key) == {t: 0 for t in lake.USER_TABLES}
    for path in (ad_home.lake_dir / "fact_ad_impression").rglob("*"):
        if path.is_file():
            assert user_key.encode() not in path.read_bytes(), path
