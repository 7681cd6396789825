"""The ETL's duplicate check takes a typed shortcut; it must flag exactly the rows the text comparison flags."""
import numpy as np
import pandas as pd
from hypothesis import given, settings as hyp_settings, strategies as st

from core.warehouse.etl import duplicate_rows

FLOATS = st.sampled_from([0.0, -0.0, 1.0, 1.5, float("nan"), float("inf"), 1e300, 2.0])
TEXTS = st.sampled_from(["watch", "nan", "None", "", "2026-01-01T00:00:00", None])
OBJECTS = st.sampled_from([1, "1", 1.0, None, float("nan"), "nan", True])


def _by_text(frame):
    return frame.astype(str).duplicated(keep="first")


@hyp_settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), FLOATS, TEXTS, OBJECTS), min_size=1, max_size=12))
def test_duplicates_match_the_text_comparison_for_every_mix_of_columns(rows):
    ints, floats, texts, objects = zip(*rows)
    frame = pd.DataFrame({"i": np.array(ints, dtype="int64"), "f": np.array(floats, dtype="float64"),
                          "s": pd.array(texts, dtype="str"), "o": pd.Series(objects, dtype=object)})
    for columns in (["i", "f"], ["i", "s"], ["f", "s"], ["i", "f", "s"], ["i", "o"], ["i", "f", "s", "o"]):
        assert duplicate_rows(frame[columns]).tolist() == _by_text(frame[columns]).tolist(), columns


def test_the_cases_where_values_and_texts_disagree():
    # -0.0 equals 0.0 as a number but not as text: not a duplicate.
    frame = pd.DataFrame({"u": [1, 1], "v": [0.0, -0.0]})
    assert duplicate_rows(frame).tolist() == [False, False]
    # A missing text and the word "nan": whatever the text comparison says (the slow way is taken for them).
    frame = pd.DataFrame({"u": [1, 1], "k": pd.array([None, "nan"], dtype="str")})
    assert duplicate_rows(frame).tolist() == _by_text(frame).tolist()
    # Typed columns, plain case: the second equal row is flagged, the first kept.
    frame = pd.DataFrame({"u": [1, 2, 1], "k": pd.array(["watch", "watch", "watch"], dtype="str"),
                          "v": [3.0, 3.0, 3.0]})
    assert duplicate_rows(frame).tolist() == [False, False, True]
