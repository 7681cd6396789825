"""Reason codes: the write API names the check that refused a write, and the ETL files the reject by that code,
not by the wording of its message. Rejects stored before the codes existed keep the message rule."""
import ast
import pickle
from pathlib import Path

import pytest

from core import bounds, errors
from core.store import opsdb, writes
from core.warehouse import etl, warehouse

pytestmark = pytest.mark.both_backends     # tests on `settings`/`db` run on SQLite and on PostgreSQL

ROOT = Path(__file__).resolve().parents[1]
EV = {"event_id": None, "user_id": 1, "movie_id": 1, "kind": "click", "value": 1, "occurred_at": None}
RT = {"user_id": 1, "movie_id": 1, "rating": 7, "rated_at": None}

# One refused write per check of the quarantining paths: (target, row changes, code, category).
CHECKS = [
    ("ratings", {"user_id": None}, "missing_user_id", "missing user id"),
    ("ratings", {"user_id": 99}, "unknown_user", "orphan user id"),
    ("ratings", {"movie_id": None}, "missing_movie_id", "missing movie id"),
    ("ratings", {"movie_id": "abc"}, "movie_id_not_integer", "other"),
    ("ratings", {"movie_id": 99}, "unknown_movie", "orphan movie id"),
    ("ratings", {"rating": "x"}, "rating_not_integer", "rating out of range"),
    ("ratings", {"rating": 55}, "rating_out_of_range", "rating out of range"),
    ("ratings", {"rated_at": "yesterday"}, "invalid_timestamp", "malformed timestamp"),
    ("ratings", {"rated_at": "2031-01-01T00:00:00"}, "future_timestamp", "timestamp in the future"),
    ("events", {"kind": "teleport"}, "unknown_event_kind", "unknown kind"),
    ("events", {"value": "abc"}, "value_not_number", "malformed value"),
    ("events", {"value": 2e6}, "value_too_large", "value out of range"),
    ("events", {"kind": "watch", "value": -5}, "negative_value", "negative value"),
    ("events", {"value": -1}, "negative_value", "negative value"),
    ("events", {"event_id": ""}, "empty_event_id", "other"),
    ("events", {"event_id": "a\nb"}, "invalid_event_id", "malformed value"),
]


def refuse(db, target, change, on_invalid="quarantine"):
    if target == "ratings":
        return writes.rate_many(db, [RT | change], on_invalid=on_invalid)
    return writes.record_events(db, [EV | change], on_invalid=on_invalid)


def stored_rejects(db):
    return db.execute("SELECT reason, code FROM rejected_writes ORDER BY reject_id").fetchall()


@pytest.mark.parametrize("target, change, code, category", CHECKS, ids=[c[2] + ":" + str(c[1]) for c in CHECKS])
def test_each_check_stores_its_code_and_files_as_the_message_rule_did(small_db, target, change, code, category):
    """The code and today's message agree on the category: moving to codes changes no number."""
    refuse(small_db, target, change)
    [(reason, stored)] = stored_rejects(small_db)
    assert stored == code
    assert etl.reason_category(etl.INGESTION + reason, stored) == f"ingestion: {category}"
    assert etl.reason_category(etl.INGESTION + reason) == f"ingestion: {category}"    # the legacy text rule


@pytest.mark.parametrize("target, change, code, category", CHECKS, ids=[c[2] + ":" + str(c[1]) for c in CHECKS])
def test_raise_mode_raises_with_the_same_code(small_db, target, change, code, category):
    with pytest.raises(errors.ValidationError) as err:
        refuse(small_db, target, change, on_invalid="raise")
    assert err.value.code == code


def test_a_double_logged_event_is_coded_duplicate(small_db):
    writes.record_events(small_db, [EV | {"event_id": "a"}, EV | {"event_id": "b"}], on_invalid="quarantine")
    [(reason, code)] = stored_rejects(small_db)
    assert code == "duplicate_in_batch" and etl.reason_category(etl.INGESTION + reason, code) == "ingestion: duplicate"


def test_a_quoted_value_no_longer_decides_the_category(small_db):
    """The message quotes the refused value; the text rule matched 'negative' in it before 'unknown event kind'."""
    writes.record_events(small_db, [EV | {"kind": "negative"}], on_invalid="quarantine")
    [(reason, code)] = stored_rejects(small_db)
    assert etl.reason_category(etl.INGESTION + reason) == "ingestion: negative value"     # what the text rule said
    assert etl.reason_category(etl.INGESTION + reason, code) == "ingestion: unknown kind"


def etl_categories(settings) -> dict:
    result = etl.run_etl(settings)
    with warehouse.session(settings) as con:
        reasons = [r for (r,) in con.execute("SELECT reason FROM quarantine ORDER BY source_id").fetchall()]
    return result.report["by_reason"], reasons


def test_the_etl_files_by_code_whatever_the_message_says(settings, small_db):
    """A reworded message (here: rewritten in the store) keeps its category; the quarantine shows the stored text."""
    writes.rate_many(small_db, [RT | {"rating": 55}], on_invalid="quarantine")
    writes.record_events(small_db, [EV | {"user_id": None}], on_invalid="quarantine")
    small_db.execute("UPDATE rejected_writes SET reason = 'the rating must lie between one and ten' WHERE target = 'ratings'")
    by_reason, reasons = etl_categories(settings)
    assert by_reason == {"ingestion: rating out of range": 1, "ingestion: missing user id": 1}
    assert reasons == ["rejected at ingestion: the rating must lie between one and ten",
                       "rejected at ingestion: user_id None is missing or not an integer"]


def test_rejects_stored_before_the_codes_keep_the_message_rule(settings, small_db):
    """Rows of an older store have no code: the documented fallback files them by their text, as before."""
    small_db.execute("INSERT INTO rejected_writes(target, reason, payload, rejected_at) VALUES "
                     "('ratings', 'rating 55 is outside 1..10', '{\"user_id\": 1, \"movie_id\": 1, \"rating\": 55}', "
                     "'2026-01-09T00:00:00'), ('events', 'a message no rule knows', '{}', '2026-01-09T00:00:00')")
    by_reason, reasons = etl_categories(settings)
    assert by_reason == {"ingestion: rating out of range": 1, "ingestion: other": 1}
    assert reasons == ["rejected at ingestion: rating 55 is outside 1..10", "rejected at ingestion: a message no rule knows"]


def test_the_migration_adds_a_nullable_code_column_and_a_store_before_it_still_extracts(settings, tmp_path):
    db = opsdb.open_db(tmp_path / "old.db", apply_migrations=False)
    opsdb.migrations.apply(db, stop_before="m006_rejected_write_codes")
    db.execute("INSERT INTO rejected_writes(target, reason, payload, rejected_at) VALUES ('events', 'x', '{}', 't')")
    assert opsdb.rejected_writes_after(db, 0)["code"].tolist() == [None]      # read-only readers cannot migrate
    opsdb.migrations.apply(db)
    cols = {c.name: c for c in db["rejected_writes"].columns}
    assert "code" in cols and cols["code"].notnull == 0
    assert opsdb.rejected_writes_after(db, 0)[["reason", "code"]].values.tolist() == [["x", None]]
    db.conn.close()


def test_a_bulk_load_before_the_deferred_migrations_still_quarantines(tmp_path):
    """open_db(defer_indexes=True) stops before m002 and so before m006: the reject is kept, without a code."""
    db = opsdb.open_db(tmp_path / "bulk.db", defer_indexes=True)
    opsdb.set_meta(db, "clock", "2026-01-10T00:00:00")
    writes.add_users(db, [{"user_id": 1}])
    writes.add_movies(db, [{"movie_id": 1, "title": "A", "year": 1960, "genres": "Drama"}])
    assert writes.rate_many(db, [RT | {"rating": 55}], on_invalid="quarantine").rejected == 1
    opsdb.finish_deferred_migrations(db)
    assert stored_rejects(db) == [("rating 55 is outside 1..10", None)]
    db.conn.close()


def test_exceptions_carry_a_code_that_survives_pickling():
    assert errors.ValidationError("x").code == "invalid"
    assert errors.UnknownUser("x").code == "unknown_user"
    e = errors.InvalidRating("rating 55 is outside 1..10", code="rating_out_of_range")
    back = pickle.loads(pickle.dumps(e))
    assert (type(back), str(back), back.code) == (errors.InvalidRating, "rating 55 is outside 1..10", "rating_out_of_range")
    for call, code in ((lambda: bounds.check_id("x"), "not_an_integer"), (lambda: bounds.check_id(0), "out_of_range"),
                       (lambda: bounds.check_int(99, "k", 1, 10), "out_of_range"),
                       (lambda: bounds.check_float("x", "f", 0, 1), "not_a_number"),
                       (lambda: bounds.check_float(float("inf"), "f", 0, 1), "not_finite"),
                       (lambda: bounds.check_text(3, "t"), "not_text"), (lambda: bounds.check_text("a\0", "t"), "control_characters"),
                       (lambda: bounds.check_text("abc", "t", 2), "too_long")):
        with pytest.raises(errors.ValidationError) as err:
            call()
        assert err.value.code == code


def quarantining_codes() -> set[str]:
    """Every code the quarantining write paths can store: literal codes of their checks and their classes' codes."""
    tree = ast.parse((ROOT / "core/store/writes.py").read_text())
    funcs = [f for f in tree.body if isinstance(f, ast.FunctionDef)
             and f.name in ("_validate_user_movie", "rate_many", "record_events")]
    out = set()
    for call in (n for f in funcs for n in ast.walk(f) if isinstance(n, ast.Call)):
        if isinstance(call.func, ast.Attribute) and call.func.attr == "add" and len(call.args) >= 3:
            if len(call.args) >= 4:
                out.add(call.args[3].value)
            else:
                out.add(getattr(errors, call.args[2].attr).code)
    return out


def test_every_code_of_a_quarantining_check_has_a_category():
    codes = quarantining_codes()
    assert len(codes) >= 15
    assert codes == set(etl.CODE_CATEGORIES)                       # no check unfiled, no stale entry
    assert codes == {c[2] for c in CHECKS} | {"duplicate_in_batch"}  # and each is exercised above


def test_the_warehouse_keeps_the_code_so_the_data_page_files_by_it_too(settings, small_db):
    """The Data page's category breakdown (insights.etl_report) reads the code stored beside the reason in the
    warehouse's quarantine, so a reworded message files the same there as in the ETL report."""
    from core.governance import insights
    writes.rate_many(small_db, [RT | {"rating": 55}], on_invalid="quarantine")
    small_db.execute("UPDATE rejected_writes SET reason = 'the rating must lie between one and ten'")
    etl.run_etl(settings)
    with warehouse.session(settings) as con:
        assert con.execute("SELECT code FROM quarantine").fetchall() == [("rating_out_of_range",)]
    reasons = insights.etl_report(settings)["reasons"]
    assert reasons[["category", "rows"]].to_dict("records") == [{"category": "ingestion: rating out of range",
                                                                  "rows": 1}]


def test_a_warehouse_from_before_the_code_column_gains_it_and_keeps_its_rows(settings, small_db):
    """An older warehouse file (quarantine without `code`) is migrated by the next writer; its rows keep NULL and
    are filed by their text."""
    writes.rate_many(small_db, [RT | {"rating": 55}], on_invalid="quarantine")
    etl.run_etl(settings)
    with warehouse.transaction(settings) as con:
        con.execute("ALTER TABLE quarantine DROP COLUMN code")
    writes.record_events(small_db, [EV | {"user_id": None}], on_invalid="quarantine")
    etl.run_etl(settings)
    with warehouse.session(settings) as con:
        rows = con.execute("SELECT reason, code FROM quarantine ORDER BY source_id").fetchall()
    assert [c for _, c in rows] == [None, "missing_user_id"]
    from core.governance import insights
    cats = sorted(insights.etl_report(settings)["reasons"]["category"])
    assert cats == ["ingestion: missing user id", "ingestion: rating out of range"]
