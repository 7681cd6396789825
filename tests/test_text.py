"""Words on pages and in messages: plurals, 'a'/'an', one time format, percent axes (hand-worked cases)."""
import datetime as dt

import pandas as pd
import pytest

from core.text import article, fmt_time, percent_chance, plural, with_article


@pytest.mark.parametrize("n,noun,expected", [
    (1, "alert", "1 alert"), (2, "alert", "2 alerts"), (0, "alert", "0 alerts"), (1, "rating", "1 rating"),
    (1_200, "row", "1,200 rows"), (1, "watch", "1 watch"), (3, "watch", "3 watches"), (1.0, "day", "1 day"),
    (1.5, "day", "1.5 days")])
def test_plural(n, noun, expected):
    assert plural(n, noun, "watches" if noun == "watch" else None) == expected


@pytest.mark.parametrize("p,expected", [
    (0.08, "an 8% chance"), (0.12, "a 12% chance"), (0.80, "an 80% chance"), (0.11, "an 11% chance"),
    (0.18, "an 18% chance"), (0.01, "a 1% chance"), (0.5, "a 50% chance"), (0.83, "an 83% chance")])
def test_percent_chance_takes_the_article_of_the_spoken_number(p, expected):
    assert percent_chance(p) == expected


def test_article_of_numbers_and_words():
    assert [article(x) for x in ("8", "800", "11,000 users", "18", "110", "1", "alert", "model")] == \
        ["an", "an", "an", "an", "a", "a", "an", "a"]
    assert with_article("ALS model") == "an ALS model"


@pytest.mark.parametrize("value,expected", [
    ("2026-03-03 00:00:00", "2026-03-03 00:00"), ("2026-03-05T00:00:00", "2026-03-05 00:00"),
    ("2026-03-05T13:04:59.123", "2026-03-05 13:04"), (pd.Timestamp("2026-03-05 13:04:05"), "2026-03-05 13:04"),
    (dt.datetime(2026, 1, 2, 3, 4), "2026-01-02 03:04"), (dt.date(2026, 1, 2), "2026-01-02 00:00"),
    ("2026-01-09", "2026-01-09 00:00"), (None, "—"), (float("nan"), "—"), (pd.NaT, "—"), ("not a time", "not a time")])
def test_fmt_time_gives_one_format(value, expected):
    assert fmt_time(value) == expected


def test_times_formats_every_time_column_of_a_table():
    from dashboard import ui
    df = pd.DataFrame({"alert_id": [1, 2], "window_start": pd.to_datetime(["2026-03-03", "2026-03-04"]),
                       "closed_at": ["2026-03-05T00:00:00", None], "day": ["2026-03-03", "2026-03-04"]})
    shown = ui.times(df)
    assert shown["window_start"].tolist() == ["2026-03-03 00:00", "2026-03-04 00:00"]
    assert shown["closed_at"].tolist() == ["2026-03-05 00:00", None]
    assert shown["day"].tolist() == ["2026-03-03", "2026-03-04"] and shown["alert_id"].tolist() == [1, 2]
    assert df["closed_at"].iloc[0] == "2026-03-05T00:00:00"          # a copy: the cached frame is untouched


@pytest.mark.parametrize("values,expected", [([0.0, 0.004, 0.025], ".1%"), ([0.0, 0.02], ".1%"),
                                             ([0.0, 0.003], ".2%"), ([0.2, 0.45], ".0%"), ([], ".0%")])
def test_percent_axis_has_enough_decimals(values, expected):
    from dashboard.charts import percent_axis
    assert percent_axis(values) == expected
