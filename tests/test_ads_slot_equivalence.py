"""The model server's sponsored slot (`ads_slot.choose_many`) reads and writes less per list than it first did —
campaigns cached on their rows, today's caps of the batch's users only, the write's plain pass, the impression ids
from the insert — and must choose exactly as before: the same winners, policies, p_click and rows written. Two
copies of the ads test world serve the same lists, one through the slot, one through the slot as first written
(`ads_slot_reference`, the write through the general checks), while campaigns, consent, the clock, clicks and
the ads model change between the phases."""
from __future__ import annotations

import random

import ads_slot_reference
import pandas as pd
import pytest
from ads_testworld import ads_world
from conftest import private_copy

from core.serving import ads_slot, serving
from core.store import mlopsdb, opsdb, writes

NEW_CAMPAIGN = {"advertiser": "Late Bloomer", "creative_kind": "product", "product": "Seeds", "target_genres": "",
                "target_age_bands": "", "bid": 3.0, "daily_budget": 50.0, "frequency_cap": 3}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ads_world(tmp_path_factory.mktemp("ads-world"))


def _change(s, phase: int) -> None:
    """What happens between the phases (the same on both copies)."""
    with opsdb.session(s) as db:
        if phase == 1:      # a campaign added, another paused, one user withdraws ad-targeting consent, one gives it
            writes.add_ad_campaigns(db, [NEW_CAMPAIGN])
            db.execute("UPDATE ad_campaigns SET active = 0 WHERE campaign_id = (SELECT min(campaign_id) FROM "
                       "ad_campaigns WHERE target_genres = '' AND target_age_bands = '')")
            yes = [u for (u,) in db.execute("SELECT user_id FROM users WHERE consent_ad_targeting = 1 "
                                            "ORDER BY user_id LIMIT 1")]
            no = [u for (u,) in db.execute("SELECT user_id FROM users WHERE consent_ad_targeting = 0 "
                                           "ORDER BY user_id LIMIT 1")]
            clock = opsdb.get_meta(db, "clock")
            opsdb.set_consent(db, yes[0], tracking=None, personalization=None, ad_targeting=False, actor="test",
                              at=clock)
            opsdb.set_consent(db, no[0], tracking=None, personalization=None, ad_targeting=True, actor="test", at=clock)
        if phase == 2:      # fifteen hours later, with clicks charged on a third of today's slots: pacing, budgets
            clock = opsdb.get_meta(db, "clock")[:10] + "T15:00:00"
            opsdb.set_meta(db, "clock", clock)
            today = [i for (i,) in db.execute("SELECT impression_id FROM ad_impressions WHERE shown_at >= ? "
                                              "ORDER BY impression_id", [clock[:10]])]
            writes.record_ad_clicks(db, [{"impression_id": i, "clicked_at": clock, "price": 0.05}
                                         for i in today[::3]])
    if phase == 3:          # no ads model in production: each campaign's click rate before the day
        with mlopsdb.session(s) as db:
            db.execute("UPDATE model_versions SET stage = 'archived' WHERE family = 'ads' AND stage = 'production'")


def _serve(s, choose, batches: list[list[list[int]]]) -> tuple[list, list, int]:
    """Serve each phase's batches of users (lists logged as the server logs them) and choose their slots."""
    slots = []
    for phase, phase_batches in enumerate(batches):
        _change(s, phase)
        state = serving.load_state(s)
        for users in phase_batches:
            answers = serving.recommend_batch(s, [(u, 10) for u in users], state=state)
            slots.append(choose(s, [(a.user_id, a.serve_id, a.served_at) for a in answers]))
    with opsdb.session(s) as db:
        rows = db.execute("SELECT * FROM ad_impressions ORDER BY impression_id").fetchall()
        rejected = db.execute("SELECT count(*) FROM rejected_writes").fetchone()[0]
    serving.clear_caches()
    return slots, rows, rejected


def test_the_slot_chooses_and_writes_what_it_chose_before(world, tmp_path, monkeypatch):
    rng = random.Random(5)
    regulars = rng.sample(range(1, 301), 12)            # asked again and again: their frequency caps fill up
    batches = [[[rng.choice(regulars) if rng.random() < 0.5 else rng.randint(1, 300)
                 for _ in range(rng.randint(1, 8))] for _ in range(12)] for _ in range(4)]
    fast = _serve(private_copy(world, tmp_path / "fast"), ads_slot.choose_many, batches)
    monkeypatch.setattr(writes, "SMALL_AD_BATCH", 0)
    before = _serve(private_copy(world, tmp_path / "before"), ads_slot_reference.choose_many, batches)
    assert fast[0] == before[0]
    assert fast[1] == before[1] and fast[2] == before[2] == 0
    chosen = [slot for batch in fast[0] for slot in batch]
    assert len(chosen) == sum(len(b) for phase in batches for b in phase)
    shown = [c for c in chosen if c is not None]
    assert {c["policy"] for c in shown} == {"model", "campaign-rate", "untargeted"}
    assert None in chosen and all(c["impression_id"] is not None for c in shown)
    assert len(shown) == len(fast[1]) - len(ads_world_impressions(world))
    assert any(c["advertiser"] == NEW_CAMPAIGN["advertiser"] for c in shown)


def ads_world_impressions(s) -> list:
    with opsdb.session(s) as db:
        return db.execute("SELECT impression_id FROM ad_impressions").fetchall()


def test_the_impression_id_is_the_row_just_written_even_when_later_ones_exist(world, tmp_path):
    """The slot names the impression it wrote. It used to look it up among the user's newest few impressions by
    time, and named none when the user had more than that shown after the list's time."""
    s = private_copy(world, tmp_path / "copy")
    with opsdb.session(s) as db:
        today = opsdb.get_meta(db, "clock")
        user = db.execute("SELECT user_id FROM users WHERE consent_ad_targeting = 0 ORDER BY user_id").fetchone()[0]
        campaign = db.execute("SELECT campaign_id FROM ad_campaigns WHERE active = 1 AND target_genres = '' AND "
                              "target_age_bands = '' ORDER BY campaign_id").fetchone()[0]
    state = serving.load_state(s)
    answer = serving.recommend_batch(s, [(user, 10)], state=state)[0]
    with opsdb.session(s) as db:             # the next day, the user is shown six more ads
        later = (pd.Timestamp(today) + pd.Timedelta(hours=36)).strftime("%Y-%m-%dT%H:%M:%S")
        opsdb.set_meta(db, "clock", later)
        writes.record_ad_impressions(db, [{"user_id": user, "campaign_id": campaign, "slot": 3, "shown_at": later,
                                           "policy": "untargeted", "p_click": None, "clicked": 0}] * 6)
    slot = ads_slot.choose(s, user, answer.serve_id, answer.served_at)
    assert slot is not None and slot["policy"] == "untargeted"
    with opsdb.session(s) as db:
        row = db.execute("SELECT served_id, user_id, campaign_id, shown_at FROM ad_impressions WHERE "
                         "impression_id = ?", [slot["impression_id"]]).fetchone()
    assert row == (answer.serve_id, user, slot["campaign_id"], answer.served_at)
    serving.clear_caches()
