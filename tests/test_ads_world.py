"""Ads in the simulated world (issue 25.1, docs/ads.md): the selection by hand (eligibility, bid × p_click, second
price, pacing, budgets, frequency caps, consent), the latent clicks and fatigue, the sponsored slot of a simulated
day, and worlds and databases made before ads (they load, with ads off until switched on)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core import errors
from core.ads import auction
from core.ads import world as ads_world
from core.constants import AGE_BANDS, GENRES
from core.settings import load_settings
from core.simulation import ads_day, simulation
from core.simulation import world as world_mod
from core.store import adslog, opsdb, writes


# ------------------------------------------------------------------ the auction, by hand
def test_second_price_ranks_by_bid_times_p_click_and_charges_what_keeps_the_winner_first():
    bids = np.array([2.0, 1.0, 0.5])
    p = np.array([[0.10, 0.30, 0.20],     # scores 0.20, 0.30, 0.10: campaign 1 wins, pays 0.20 / 0.30
                  [0.10, 0.30, 0.20],     # campaign 1 not eligible: 0 wins (0.20), pays 0.10 / 0.10 = 1.0
                  [0.10, 0.30, 0.20],     # only campaign 2: the reserve (0.05, below its bid 0.5)
                  [0.10, 0.30, 0.20]])    # nothing eligible
    ok = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=bool)
    winner, price = auction.second_price(ok, bids, p)
    assert winner.tolist() == [1, 0, 2, -1]
    assert price == pytest.approx([0.2 / 0.3, 1.0, 0.05, 0.0])


def test_second_price_ties_go_to_the_first_campaign_and_never_cost_more_than_the_bid():
    winner, price = auction.second_price(np.ones((1, 2), bool), np.array([1.0, 2.0]), np.array([0.2, 0.1]))
    assert winner.tolist() == [0] and price == pytest.approx([1.0])          # equal scores 0.2: pays its bid
    winner, price = auction.second_price(np.ones((1, 1), bool), np.array([0.03]), np.array([0.5]))
    assert winner.tolist() == [0] and price == pytest.approx([0.03])         # reserve above the bid: the bid


def test_pacing_throttles_in_proportion_to_the_spend_ahead_of_the_day():
    spent, budget = np.array([6.0, 4.0, 10.0, 0.0]), np.array([10.0, 10.0, 10.0, 10.0])
    # half the day gone: 60 % spent → (0.6 − 0.5) / (1 − 0.5) = 0.2; 40 % → 0; all spent → 1; nothing → 0
    assert auction.pacing_throttle(spent, budget, 0.5) == pytest.approx([0.2, 0.0, 1.0, 0.0])
    # a quarter gone, 6 of 10 spent: (0.6 − 0.25) / 0.75
    assert auction.pacing_throttle(spent[:1], budget[:1], 0.25) == pytest.approx([0.35 / 0.75])
    assert auction.pacing_throttle(spent, budget, 1.0).tolist() == [0.0, 0.0, 1.0, 0.0]   # never ahead of a whole day


def test_charges_stop_at_the_budget_in_time_order():
    campaign = np.array([0, 0, 1, 0, -1])
    price = np.array([0.6, 0.6, 0.5, 0.6, 0.0])
    clicked = np.array([True, True, True, True, False])
    charged = auction.charged(campaign, price, clicked, np.array([1.0, 5.0]))
    assert charged == pytest.approx([0.6, 0.4, 0.5, 0.0, 0.0])


def test_campaign_rate_is_shrunk_towards_the_prior():
    rates = auction.campaign_rates(np.array([0, 50, 950]), np.array([0, 5, 19]))
    assert rates == pytest.approx([0.03, (5 + 1.5) / 100, (19 + 1.5) / 1000])


def test_eligibility_needs_budget_cap_targeting_and_consent():
    genres = auction.split_codes(["Horror", "", "", "Comedy|Drama"], GENRES)
    bands = auction.split_codes(["", "18-24", "", ""], AGE_BANDS)
    share = np.zeros((3, len(GENRES)))
    share[0, GENRES.index("Horror")], share[0, GENRES.index("Drama")] = 5, 1     # a horror fan, 25-34
    share[1, GENRES.index("Comedy")] = 2                                          # a comedy fan, 18-24
    favourites = auction.favourite_genres(share)                                   # user 2 watched nothing
    user_bands = auction.band_index(["25-34", "18-24", None])
    met = auction.targeting_met(favourites, user_bands, genres, bands)
    assert met.tolist() == [[True, False, True, True], [False, True, True, True], [False, False, True, False]]
    untargeted = ~genres.any(axis=1) & ~bands.any(axis=1)
    assert untargeted.tolist() == [False, False, True, False]
    cap_left = np.array([[True, True, True, False], [True, True, True, True], [True, True, True, True]])
    ok = auction.eligible(np.array([True, True, True, True]), np.array([True, True, True, True]), cap_left, met,
                          np.array([True, True, False]), untargeted)
    # user 0: cap reached on campaign 3; user 2 has no ad-targeting consent: untargeted campaign 2 only
    assert ok.tolist() == [[True, False, True, False], [False, True, True, True], [False, False, True, False]]
    ok = auction.eligible(np.array([True, True, False, True]), np.array([False, True, True, True]), cap_left, met,
                          np.array([True, True, True]), untargeted, throttled=np.eye(3, 4, 1, dtype=bool))
    assert ok.tolist() == [[False, False, False, False], [False, True, False, True], [False, False, False, False]]


def test_random_pick_chooses_among_eligible_only():
    ok = np.array([[0, 1, 1], [0, 0, 0]], dtype=bool)
    u = np.array([[0.99, 0.2, 0.7], [0.5, 0.5, 0.5]])
    assert auction.pick_random(ok, u).tolist() == [2, -1]


# ------------------------------------------------------------------ the humans' side
def test_clicks_rise_with_interest_and_irrelevant_ads_tire_more():
    taste = np.full((1, len(GENRES)), 1 / len(GENRES))
    taste_fan = np.zeros((1, len(GENRES)))
    taste_fan[0, GENRES.index("Horror")] = 1.0
    appeal = np.zeros((2, len(GENRES)))
    appeal[0, GENRES.index("Horror")] = 1.0                                      # campaign 1 appeals to nothing
    assert ads_world.interest(taste, appeal)[0] == pytest.approx([np.log(1.05), 0.0])
    assert ads_world.interest(taste_fan, appeal)[0] == pytest.approx([np.log(18.05), 0.0])   # a fan: 18 × uniform
    p = ads_world.click_probability(np.array([-3.0, 0.0, 2.0]), np.array([0.0, 0.0, 1.0]))
    assert p == pytest.approx(1 / (1 + np.exp(-np.array([-3.6 - 2.7, -3.6, -3.6 + 1.8 + 0.5]))))
    tired = ads_world.fatigue(np.array([-3.0, 0.0, 3.0]))
    assert tired == pytest.approx(0.02 + 0.08 / (1 + np.exp(np.array([-6.0, 0.0, 6.0]))))
    assert tired[0] > tired[1] > tired[2] > 0


def test_campaigns_are_seeded_and_valid():
    movies = pd.DataFrame({"movie_id": range(1, 41), "genres": ["Drama|Comedy", "Horror"] * 20,
                           "rating": np.linspace(1, 9, 40)})
    a = ads_world.new_campaigns(3, movies, 3000, "2026-01-01T00:00:00")
    b = ads_world.new_campaigns(3, movies, 3000, "2026-01-01T00:00:00")
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == len(ads_world.PRODUCTS) + len(ads_world.STUDIOS)
    assert ((a["bid"] >= 0.3) & (a["bid"] <= 2.0)).all() and (a["daily_budget"] > 0).all()
    titles = a[a["creative_kind"] == "title"]
    assert titles["movie_id"].isin(movies["movie_id"]).all() and titles["product"].isna().all()
    assert (a["target_genres"].eq("") & a["target_age_bands"].eq("")).any()        # some run everywhere


# ------------------------------------------------------------------ a simulated day with ads
@pytest.fixture(scope="module")
def ad_world(tmp_path_factory):
    """A small world shown ads for 4 days (seed 5, 250 users, 120 movies)."""
    settings = load_settings(tmp_path_factory.mktemp("ad_world"))
    summary = simulation.init_world(settings, seed=5, users=250, movies=120, days=4)
    with opsdb.session(settings) as db:
        frame = pd.read_sql_query("SELECT * FROM ad_impressions", db.conn)
        camps = adslog.campaigns(db)
        users = pd.read_sql_query("SELECT user_id, age_band, consent_ad_targeting FROM users", db.conn)
    return settings, summary, frame, camps, users


def test_a_new_world_shows_one_sponsored_slot_per_session(ad_world):
    settings, summary, frame, camps, users = ad_world
    with opsdb.session(settings) as db:
        assert adslog.enabled(db)
        sessions = db.execute("SELECT count(*) FROM events WHERE kind = 'scroll'").fetchone()[0]
    assert summary["ad_impressions"] == len(frame) > 0.9 * sessions        # one per session (when one is eligible)
    assert summary["ad_clicks"] == frame["clicked"].sum() > 0
    assert summary["ad_revenue"] == pytest.approx(frame["price"].sum(), abs=1e-3)
    assert (frame["slot"] == settings.ads_slot).all() and frame["served_id"].isna().all()   # open loop: no list logged
    assert not frame.groupby(["user_id", frame["shown_at"].str[:10]]).size().gt(1).any()
    assert set(users["age_band"]) <= set(AGE_BANDS) and users["consent_ad_targeting"].isin([0, 1]).all()
    assert 0 < (users["consent_ad_targeting"] == 0).mean() < 0.25


def test_budgets_and_frequency_caps_hold_every_day(ad_world):
    _, _, frame, camps, _ = ad_world
    day = frame["shown_at"].str[:10]
    spend = frame.groupby(["campaign_id", day])["price"].sum().rename("spend").reset_index()
    spend = spend.merge(camps[["campaign_id", "daily_budget"]], on="campaign_id")
    assert (spend["spend"] <= spend["daily_budget"] + 1e-6).all()
    caps = frame.groupby(["user_id", "campaign_id", day]).size().rename("n").reset_index()
    caps = caps.merge(camps[["campaign_id", "frequency_cap"]], on="campaign_id")
    assert (caps["n"] <= caps["frequency_cap"]).all()
    clicks = frame[frame["clicked"] == 1]
    bid = clicks["campaign_id"].map(camps.set_index("campaign_id")["bid"])
    assert (clicks["price"] <= bid + 1e-9).all() and (frame.loc[frame["clicked"] == 0, "price"] == 0).all()


def test_the_campaign_rate_logged_is_each_campaigns_click_rate_before_the_day(ad_world):
    _, _, frame, _, _ = ad_world
    day = frame["shown_at"].str[:10]
    last = frame[(day == day.max()) & (frame["policy"] == "campaign-rate")]
    before = frame[day < day.max()].groupby("campaign_id").agg(n=("clicked", "size"), c=("clicked", "sum"))
    expected = last["campaign_id"].map(lambda c: auction.campaign_rates(
        [before["n"].get(c, 0)], [before["c"].get(c, 0)])[0])
    assert last["p_click"].to_numpy() == pytest.approx(expected.round(6).to_numpy())


def test_without_ad_targeting_consent_only_untargeted_ads(ad_world):
    _, _, frame, camps, users = ad_world
    refused = set(users.loc[users["consent_ad_targeting"] == 0, "user_id"])
    theirs = frame[frame["user_id"].isin(refused)]
    assert len(theirs) > 0 and (theirs["policy"] == "untargeted").all() and theirs["p_click"].isna().all()
    plain = camps.loc[(camps["target_genres"] == "") & (camps["target_age_bands"] == ""), "campaign_id"]
    assert theirs["campaign_id"].isin(plain).all()
    assert (frame.loc[~frame["user_id"].isin(refused), "policy"] == "campaign-rate").all()


def test_the_write_api_refuses_a_targeted_ad_without_consent(ad_world, tmp_path):
    settings, _, frame, camps, users = ad_world
    refused = int(users.loc[users["consent_ad_targeting"] == 0, "user_id"].iloc[0])
    targeted = int(camps.loc[camps["target_genres"] != "", "campaign_id"].iloc[0])
    row = {"user_id": refused, "campaign_id": targeted, "slot": 3, "shown_at": "2026-01-02T10:00:00",
           "policy": "campaign-rate", "p_click": 0.03, "clicked": 0}
    home = tmp_path / "copy"
    import shutil
    shutil.copytree(settings.home, home)
    with opsdb.session(load_settings(home)) as db:
        with pytest.raises(errors.ValidationError, match="not consented to ad targeting") as caught:
            writes.record_ad_impressions(db, [row])
        assert caught.value.code == "no_ad_consent"
        result = writes.record_ad_impressions(db, [row, row | {"policy": "untargeted", "p_click": None}],
                                              on_invalid="quarantine")
        assert (result.accepted, result.rejected) == (0, 2)       # untargeted, but the campaign targets genres
        stored = db.execute("SELECT code FROM rejected_writes WHERE target = 'ad_impressions'").fetchall()
        assert [c for (c,) in stored][-2:] == ["no_ad_consent", "no_ad_consent"]


def test_ads_off_shows_nothing_and_leaves_the_organic_day_unchanged(tmp_path):
    """The same world simulated a day with ads on and with ads off: the same organic events and ratings (ads draw
    from their own stream; a click on a promoted title may add a watch of its own, 'dDDDDD-adNNNNNN'); the churn
    hazards differ (fatigue), and ads off writes no impression."""
    homes = {}
    for on in (True, False):
        settings = load_settings(tmp_path / ("on" if on else "off"))
        simulation.init_world(settings, seed=9, users=150, movies=80, days=1)
        if not on:
            ads_day.switch(settings, False)
        simulation.simulate(settings, 1)
        with opsdb.session(settings) as db:
            events = pd.read_sql_query("SELECT event_id, user_id, movie_id, kind, value, occurred_at FROM events "
                                       "WHERE event_id NOT LIKE '%-ad%' ORDER BY seq", db.conn)   # organic
            ads = pd.read_sql_query("SELECT * FROM ad_impressions WHERE shown_at >= '2026-01-02'", db.conn)
        homes[on] = (events, ads, simulation.load_world(settings))
    pd.testing.assert_frame_equal(homes[True][0], homes[False][0])
    assert len(homes[True][1]) > 0 and len(homes[False][1]) == 0
    assert (homes[True][2].hazard >= homes[False][2].hazard - 1e-12).all()
    assert homes[True][2].hazard.sum() > homes[False][2].hazard.sum()


def test_a_scorer_plugs_a_model_into_the_selection(tmp_path):
    """policy 'model': the scorer's P(click) ranks (bid × p), is logged with its version; consent still rules."""
    settings = load_settings(tmp_path)
    simulation.init_world(settings, seed=4, users=120, movies=60, days=0)
    seen = {}

    def scorer(user_ids, campaigns, at):
        seen["args"] = (len(user_ids), len(campaigns), at)
        p = np.full((len(user_ids), len(campaigns)), 0.01)
        p[:, campaigns["campaign_id"].to_numpy() == 2] = 0.9      # Popcorn Palace: targets nobody, always wins
        return p

    policy = ads_day.AdPolicy("model", scorer, model_version=7)
    simulation.simulate(settings, 1, ad_policy=policy)
    with opsdb.session(settings) as db:
        frame = pd.read_sql_query("SELECT * FROM ad_impressions", db.conn)
        consent = dict(db.execute("SELECT user_id, consent_ad_targeting FROM users").fetchall())
    assert seen["args"][2] == "2026-01-01T00:00:00"
    ranked = frame[frame["user_id"].map(consent) == 1]
    assert (ranked["policy"] == "model").all() and (ranked["model_version"] == 7).all()
    assert (ranked["campaign_id"] == 2).mean() > 0.5 and (ranked["p_click"] == 0.9).any()
    with pytest.raises(errors.ValidationError):
        ads_day.AdPolicy("model")
    with pytest.raises(errors.ValidationError):
        ads_day.AdPolicy("best-guess")


# ------------------------------------------------------------------ worlds and databases made before ads
def _old_home(path, seed=11, users=80, movies=50):
    """A data folder as a version without ads wrote it: the ops schema up to m009, no age bands, no ads key, and a
    world file without `age_band`."""
    settings = load_settings(path)
    world, cat = world_mod.create_world(seed, users, movies)
    db = opsdb.open_db(settings.ops_db, apply_migrations=False)
    opsdb.migrations.apply(db, stop_before="m010_ads")
    t0 = "2026-01-01T00:00:00"
    for key, value in (("seed", seed), ("clock", t0), ("sim_day", 0), ("world_step", 0)):
        opsdb.set_meta(db, key, value)
    writes.add_movies(db, pd.DataFrame({"movie_id": world.movie_ids, "title": cat["titles"], "year": cat["year"],
                                        "genres": cat["genres"], "runtime_min": cat["runtime"], "added_at": t0}))
    writes.add_users(db, pd.DataFrame({"user_id": world.user_ids, "created_at": "2025-06-01T00:00:00"}))
    assert "age_band" not in {c[1] for c in db.execute("PRAGMA table_info(users)")}
    db.conn.close()
    fields = {f: np.asarray(getattr(world, f)) for f in ("seed", "user_ids", "taste", "activity", "harshness",
                                                           "rater", "movie_ids", "genre_matrix", "quality",
                                                           "runtime", "watched", "recent_watches")}
    np.savez_compressed(settings.world_file, **fields)
    return settings, world


def test_an_old_world_file_gets_its_age_bands_from_the_seed(tmp_path):
    settings, world = _old_home(tmp_path)
    loaded = world_mod.World.load(settings.world_file)
    assert loaded.age_band.tolist() == world.age_band.tolist() == \
        ads_world.world_age_bands(11, 80).tolist()
    assert loaded.hazard.sum() == 0 and not loaded.left.any()


def test_an_old_database_loads_without_ads_until_switched_on(tmp_path):
    settings, world = _old_home(tmp_path)
    summary = simulation.simulate(settings, 2)
    assert summary["ad_impressions"] == 0 and summary["events"] > 0
    with opsdb.session(settings) as db:                      # migrated on open: tables and columns, ads off
        assert not adslog.enabled(db) and adslog.campaigns(db).empty
        assert db.execute("SELECT count(*) FROM users WHERE age_band IS NULL").fetchone()[0] == 80
        assert db.execute("SELECT min(consent_ad_targeting) FROM users").fetchone()[0] == 1
        assert "ad_targeting" in {c[1] for c in db.execute("PRAGMA table_info(consent_history)")}
    switched = ads_day.switch(settings, True)
    assert switched["enabled"] and not switched["was_enabled"] and switched["campaigns_created"] == 14
    assert switched["age_bands_recorded"] == 80
    with opsdb.session(settings) as db:
        n_users = opsdb.user_count(db)
        bands = opsdb.age_bands(db, np.arange(1, 81))
    assert bands.tolist() == [AGE_BANDS[b] for b in world.age_band]
    again = ads_day.switch(settings, True)                   # idempotent: nothing created twice
    assert again["campaigns_created"] == 0 and again["age_bands_recorded"] == 0 and n_users >= 80
    summary = simulation.simulate(settings, 1)
    assert summary["ad_impressions"] > 0
    assert ads_day.switch(settings, False)["enabled"] is False
    assert simulation.simulate(settings, 1)["ad_impressions"] == 0


# ------------------------------------------------------------------ the setting, the closed loop, the command line
def test_the_slot_is_a_setting(tmp_path, monkeypatch):
    assert load_settings(tmp_path).ads_slot == 3
    monkeypatch.setenv("RETRO_ADS_SLOT", "1")
    assert load_settings(tmp_path).ads_slot == 1
    monkeypatch.setenv("RETRO_ADS_SLOT", "0")
    with pytest.raises(errors.ValidationError, match="RETRO_ADS_SLOT"):
        load_settings(tmp_path)


def test_in_the_closed_loop_each_ad_names_the_list_it_was_shown_with(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRO_ADS_SLOT", "11")            # after the organic list's ten titles
    settings = load_settings(tmp_path)
    simulation.init_world(settings, seed=6, users=120, movies=60, days=2)
    from core.simulation import loop
    loop.run(settings, 1)
    with opsdb.session(settings) as db:
        shown = pd.read_sql_query(
            "SELECT i.user_id, i.served_id, i.slot, s.user_id AS list_user, s.served_at FROM ad_impressions i "
            "LEFT JOIN served_recommendations s ON s.serve_id = i.served_id WHERE i.shown_at >= '2026-01-03'",
            db.conn)
    assert len(shown) > 0 and shown["served_id"].notna().all() and (shown["slot"] == 11).all()
    assert (shown["list_user"] == shown["user_id"]).all()
    assert set(shown["served_at"]) == {"2026-01-03T00:00:00"}


def test_the_command_line_lists_campaigns_and_switches_ads_audited(tmp_path, capsys):
    import json
    from core import cli
    from core.privacy import access
    settings = load_settings(tmp_path)
    simulation.init_world(settings, seed=2, users=60, movies=40, days=1)
    home = ["--home", str(tmp_path)]
    assert cli.main(home + ["ads", "campaigns", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 14 and sum(c["impressions"] for c in data) > 0
    assert {"campaign_id", "advertiser", "creative_kind", "bid", "daily_budget", "frequency_cap", "impressions",
            "clicks", "click_rate", "spend"} <= set(data[0])
    assert cli.main(home + ["ads", "switch", "off", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"enabled": False, "was_enabled": True, "campaigns_created": 0,
                                                    "age_bands_recorded": 0}
    row = access.audit_log(settings, 1).iloc[0]
    assert (row["action"], row["target"], row["outcome"]) == ("ads", "ads off", "ok")
    assert cli.main(home + ["ads", "campaigns"]) == 0 and "14 campaigns" in capsys.readouterr().out
    assert cli.main(home + ["ads", "campaigns", "on"]) == 1
    assert cli.main(home + ["ads", "switch"]) == 1
    assert capsys.readouterr().err.count("error:") == 2


def test_a_world_built_without_ads_has_none_until_switched_on(tmp_path):
    settings = load_settings(tmp_path)
    summary = simulation.init_world(settings, seed=8, users=90, movies=50, days=2, ads=False)
    assert summary["ad_impressions"] == 0
    with opsdb.session(settings) as db:
        assert not adslog.enabled(db) and adslog.campaigns(db).empty
        assert db.execute("SELECT count(*) FROM users WHERE age_band IS NULL").fetchone()[0] == 0
    assert ads_day.switch(settings, True)["campaigns_created"] == 14
    assert simulation.simulate(settings, 1)["ad_impressions"] > 0


def test_a_click_on_a_promoted_title_leads_to_a_watch_with_a_seeded_probability(tmp_path):
    """`simulation.ad_watches` by hand on a real world: of clicks on promoted titles, those whose draw from the
    day's stream [seed, day, 7] is below AD_CLICK_WATCH become watches — not a title watched before, not one
    watched in today's session anyway, one watch for two clicks on the same title."""
    settings = load_settings(tmp_path)
    simulation.init_world(settings, seed=4, users=400, movies=120, days=2)
    world = simulation.load_world(settings)
    active = np.arange(0, 400, 2)
    fit = simulation.taste_fit(world, active, np.ones(world.taste.shape[1]))
    unseen = [(a, j) for a in range(len(active)) for j in range(len(world.movie_ids))
              if not world.watched[active[a], j]][:600:3]                           # 200 (user, title) pairs
    a = np.array([p[0] for p in unseen])
    m = np.array([p[1] for p in unseen])
    seen_a = int(np.flatnonzero(world.watched[active].any(axis=1))[0])
    seen_m = int(np.flatnonzero(world.watched[active[seen_a]])[0])
    a = np.r_[a, seen_a, a[0], a[1]]                       # a title watched before, a second click, one watched today
    m = np.r_[m, seen_m, m[0], m[1]]
    clicks = pd.DataFrame({"a": a, "movie_id": world.movie_ids[m], "t": np.full(len(a), 36000)})
    got_a, got_m, events = simulation.ad_watches(world, 5, active, fit, clicks, [a[1]], [m[1]],
                                                 simulation.day_start(5))
    draw = np.random.default_rng([world.seed, 5, 7]).random(len(a))
    expect = draw < ads_world.AD_CLICK_WATCH
    expect[[1, len(a) - 3, len(a) - 2, len(a) - 1]] = False    # watched today; watched before; second click; today
    assert (got_a.tolist(), got_m.tolist()) == (a[expect].tolist(), m[expect].tolist())
    assert 70 < len(got_a) < 130                                # about half of 200
    assert events["event_id"].tolist() == [f"d00005-ad{i:06d}" for i in range(len(got_a))]
    assert (events["kind"] == "watch").all() and (events["value"] > 0).all()
    assert events["user_id"].tolist() == world.user_ids[active[got_a]].tolist()
    assert events["movie_id"].tolist() == world.movie_ids[got_m].tolist()
    assert set(events["occurred_at"]) == {"2026-01-06T10:00:30"}     # the click + 30 s
    assert simulation.ad_watches(world, 5, active, fit, clicks.head(0), [], [], simulation.day_start(5))[2].empty


def test_in_a_world_ad_clicks_on_titles_become_watches_the_world_remembers(tmp_path):
    settings = load_settings(tmp_path)
    simulation.init_world(settings, seed=4, users=1000, movies=150, days=10)
    with opsdb.session(settings) as db:
        clicks = pd.read_sql_query("SELECT i.user_id, c.movie_id, i.clicked_at FROM ad_impressions i JOIN ad_campaigns c "
                                   "USING (campaign_id) WHERE c.creative_kind = 'title' AND i.clicked = 1", db.conn)
        ad = pd.read_sql_query("SELECT * FROM events WHERE event_id LIKE '%-ad%' ORDER BY seq", db.conn)
        other = pd.read_sql_query("SELECT user_id, movie_id FROM events WHERE kind = 'watch' AND event_id NOT LIKE "
                                  "'%-ad%'", db.conn)
    assert len(ad) > 0 and len(ad) <= len(clicks)
    clicks["watch_at"] = (pd.to_datetime(clicks["clicked_at"]) + pd.Timedelta(seconds=30)).dt.strftime(
        "%Y-%m-%dT%H:%M:%S")
    matched = ad.merge(clicks, left_on=["user_id", "movie_id", "occurred_at"],
                       right_on=["user_id", "movie_id", "watch_at"])
    assert len(matched) == len(ad) and (ad["kind"] == "watch").all()        # each follows a click on its title
    pairs = set(zip(other["user_id"], other["movie_id"]))
    assert not any((u, m) in pairs for u, m in zip(ad["user_id"], ad["movie_id"]))   # never a title watched anyway
    world = simulation.load_world(settings)
    rows = np.searchsorted(world.user_ids, ad["user_id"].to_numpy())
    assert world.watched[rows, world.movie_rows(ad["movie_id"].to_numpy())].all()
