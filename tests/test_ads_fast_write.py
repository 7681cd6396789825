"""`writes.record_ad_impressions` checks a small batch of plain records row by row before its pandas checks
(`_plain_ad_impressions`, what the model server's sponsored slot writes). That pass only ever accepts; these tests
feed the same rows — valid, invalid, and of odd types — to the write with and without it and require the same
outcome: the rows stored, the result (counts, reasons, ids), the error (class, message, code), the quarantine."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st

from core import errors
from core.store import servinglog, writes

# Exhaustive: every value of every column and Hypothesis batches through both write paths, 3-9 s a test.
pytestmark = pytest.mark.slow

# 1: targets Drama, bid 1; 2: no criteria, bid 0.5; 3: targets Comedy and two age bands, bid 2; SHOWN is before
# the conftest's clock (2026-01-10T00:00:00).
from test_ads_data import CAMPAIGNS, SHOWN  # noqa: E402


@pytest.fixture
def ads_db(small_db):
    """Users 1 (consents to ad targeting) and 2 (does not), three campaigns, lists 1 and 3 of user 1 and list 2
    of user 2 in the serving log."""
    small_db.execute("UPDATE users SET consent_ad_targeting = 0 WHERE user_id = 2")
    writes.add_ad_campaigns(small_db, CAMPAIGNS)
    for user in (1, 2, 1):
        servinglog.log_list(small_db, {"user_id": user, "served_at": SHOWN, "path": "model", "model_version": 1,
                                       "data_version": "1", "movie_ids": [1, 2], "scores": [0.5, 0.4],
                                       "ranker_version": None})
    return small_db


BASES = [   # valid rows, one per policy and kind of row
    {"user_id": 1, "campaign_id": 1, "slot": 3, "shown_at": SHOWN, "policy": "campaign-rate", "p_click": 0.04,
     "clicked": 0},
    {"served_id": 1, "user_id": 1, "campaign_id": 3, "slot": 3, "shown_at": SHOWN, "price": 0.0, "p_click": 0.2,
     "policy": "model", "model_version": 1, "clicked": 0, "clicked_at": None},
    {"served_id": 2, "user_id": 2, "campaign_id": 2, "slot": 1, "shown_at": SHOWN, "price": 0.0, "p_click": None,
     "policy": "untargeted", "model_version": None, "clicked": 0, "clicked_at": None},
    {"user_id": 1, "campaign_id": 2, "slot": 101, "shown_at": SHOWN, "policy": "campaign-rate", "p_click": 1.0,
     "clicked": 1, "clicked_at": "2026-01-09T10:00:20", "price": 0.3},
    {"served_id": 3, "user_id": 1, "campaign_id": 3, "slot": 2, "shown_at": "2026-01-10T00:00:00", "price": 2,
     "p_click": 0.0, "policy": "model", "model_version": 7, "clicked": 1, "clicked_at": "2026-01-10T00:00:00"},
]
NAN = float("nan")
VALUES = {  # per column: valid values, invalid ones, and values of other types the general checks take or refuse
    "served_id": [None, 1, 2, 3, 77, 0, -3, np.int64(1), 1.0, "1", True, pd.NA, NAN, 2**60],
    "user_id": [1, 2, 99, 0, -1, np.int64(1), 1.0, "1", True, None, NAN, 2**53, 2**70],
    "campaign_id": [1, 2, 3, 9, np.int64(2), 2.0, "2", None, True, pd.NA],
    "slot": [3, 1, 101, 0, 102, -1, 3.0, 3.5, "3", True, None, np.int64(3)],
    "shown_at": [SHOWN, "2026-01-10T00:00:00", "2026-01-10T00:00:01", "2026-02-01T00:00:00", "1900-01-01T00:00:00",
                 "1899-12-31T23:59:59", "2026-01-09T10:00:00.5", "2026-01-09T10:00:00+02:00",
                 "2026-01-09T10:00:00Z", "2026-01-09 10:00:00", "2026-02-30T00:00:00", "2026-1-9T10:00:00",
                 "2026-01-09T24:00:00", "\u0662026-01-09T10:00:00", "9999-01-01T00:00:00", "", "soon", None,
                 pd.Timestamp(SHOWN), 5, NAN],
    "price": [None, 0.0, 0, 0.3, 0.5, 1.0, 1.0 + 1e-10, 2.0, 2.5, -0.0, -0.1, NAN, math.inf, "0", "0.3",
              np.float64(0.3), True, 2**60],
    "p_click": [None, 0.04, 0.0, 1.0, -0.0, 0, 1, 1.5, -0.1, NAN, "0.04", np.float64(0.04), True, pd.NA],
    "policy": ["campaign-rate", "untargeted", "model", "best-guess", "Model", None, 3, np.str_("model")],
    "model_version": [None, 1, 3, 0, -1, 1.0, "1", np.int64(1), True, NAN],
    "clicked": [None, 0, 1, True, False, 1.0, 0.0, 2, -1, "1", np.int64(1)],
    "clicked_at": [None, "2026-01-09T10:00:20", SHOWN, "2026-01-09T09:59:59", "2026-01-10T00:00:00",
                   "2026-01-10T00:00:01", "2026-01-09T10:00:20Z", "2026-01-09T10:00:20.250", NAN, "", 0],
}


def _outcome(db, rows, *, plain: bool, **kwargs) -> tuple:
    """What the write does to `rows` (the general checks alone unless `plain`), rolled back afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        if not plain:
            patch.setattr(writes, "SMALL_AD_BATCH", 0)
        db.conn.execute("BEGIN")
        try:
            return _written(db, rows, **kwargs)
        finally:
            db.conn.execute("ROLLBACK")


def _written(db, rows, **kwargs) -> tuple:
    """The outcome of one write: its result or error, the rows stored (and their types), the quarantine."""
    try:
        r = writes.record_ad_impressions(db, [dict(x) for x in rows], **kwargs)
        said = ("ok", r.accepted, r.duplicates, r.rejected, r.skipped_no_consent, r.reasons, r.ids)
    except errors.RetroError as exc:
        said = (type(exc).__name__, str(exc), getattr(exc, "code", None))
    stored = db.execute("SELECT * FROM ad_impressions ORDER BY impression_id").fetchall()
    quarantined = db.execute("SELECT target, reason, payload, rejected_at, code FROM rejected_writes "
                             "ORDER BY reject_id").fetchall()
    # the stored values with their SQLite types (an int where a float belongs would compare equal)
    types = db.execute("SELECT typeof(price), typeof(p_click), typeof(served_id), typeof(model_version) "
                       "FROM ad_impressions ORDER BY impression_id").fetchall()
    return said, stored, types, quarantined


def _same(db, rows, **kwargs):
    general = _outcome(db, rows, plain=False, **kwargs)
    assert _outcome(db, rows, plain=True, **kwargs) == general, rows
    return general


def test_valid_plain_rows_take_the_plain_pass_and_are_stored_as_the_general_checks_store_them(ads_db, monkeypatch):
    taken = []
    plain = writes._plain_ad_impressions
    monkeypatch.setattr(writes, "_plain_ad_impressions", lambda *a: taken.append(plain(*a)) or taken[-1])
    outcome = _same(ads_db, BASES, return_ids=True)
    assert outcome[0] == ("ok", len(BASES), 0, 0, 0, {}, [1, 2, 3, 4, 5]) and len(outcome[1]) == len(BASES)
    assert [r[1:12] for r in outcome[1]] == [   # (click_seq: NULL, a click written with its impression)
        (None, 1, 1, 3, SHOWN, 0.0, 0.04, "campaign-rate", None, 0, None),
        (1, 1, 3, 3, SHOWN, 0.0, 0.2, "model", 1, 0, None),
        (2, 2, 2, 1, SHOWN, 0.0, None, "untargeted", None, 0, None),
        (None, 1, 2, 101, SHOWN, 0.3, 1.0, "campaign-rate", None, 1, "2026-01-09T10:00:20"),
        (3, 1, 3, 2, "2026-01-10T00:00:00", 2.0, 0.0, "model", 7, 1, "2026-01-10T00:00:00")]
    assert outcome[2][-1] == ("real", "real", "integer", "integer")
    assert taken and all(t is not None for t in taken)          # the plain pass accepted each batch itself


@pytest.mark.parametrize("column", list(VALUES))
def test_every_value_of_every_column_gives_the_same_outcome(ads_db, column):
    outcomes = set()
    for base in BASES:
        for value in VALUES[column]:
            row = base | {column: value}
            said = _same(ads_db, [row])[0][0]
            _same(ads_db, [BASES[0], row], on_invalid="quarantine", return_ids=True)
            outcomes.add(said)
    assert "ok" in outcomes and len(outcomes) > 1                # each column has accepted and refused values


def test_a_missing_column_and_extra_keys_give_the_same_outcome(ads_db):
    for column in ("user_id", "campaign_id", "slot", "shown_at", "policy", "p_click", "clicked"):
        _same(ads_db, [{k: v for k, v in BASES[0].items() if k != column}])
        _same(ads_db, [{k: v for k, v in BASES[0].items() if k != column}, BASES[2]],
              on_invalid="quarantine")
    _same(ads_db, [BASES[0] | {"note": "extra"}, BASES[1]], on_invalid="quarantine")
    _same(ads_db, [BASES[0] | {"note": "extra"}, BASES[1] | {"slot": 0}], on_invalid="quarantine")


def test_consent_and_campaign_criteria_are_checked_alike(ads_db):
    untargeted_for_2 = BASES[2] | {"served_id": None}
    for campaign in (1, 2, 3):
        for policy, p in (("untargeted", None), ("campaign-rate", 0.1)):
            _same(ads_db, [untargeted_for_2 | {"campaign_id": campaign, "policy": policy, "p_click": p}])
    ads_db.execute("UPDATE users SET consent_ad_targeting = 1 WHERE user_id = 2")
    assert _same(ads_db, [untargeted_for_2 | {"campaign_id": 3, "policy": "campaign-rate", "p_click": 0.1}])[0][0] \
        == "ok"


ROWS = st.lists(st.builds(lambda base, changes: base | changes, st.sampled_from(BASES),
                          st.dictionaries(st.sampled_from(list(VALUES)), st.none(), max_size=3).flatmap(
                              lambda keys: st.fixed_dictionaries({k: st.sampled_from(VALUES[k]) for k in keys}))),
                min_size=1, max_size=5)


@hyp_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS, mode=st.sampled_from(["raise", "quarantine"]), return_ids=st.booleans())
def test_any_batch_of_mixed_rows_gives_the_same_outcome(ads_db, rows, mode, return_ids):
    _same(ads_db, rows, on_invalid=mode, return_ids=return_ids)
