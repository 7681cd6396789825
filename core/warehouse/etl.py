"""Incremental ETL: operational SQLite → validation gate → DuckDB warehouse.

Extract only rows past the watermarks (`events.seq`, `rating_history.history_id`,
`rejected_writes.reject_id`, `served_recommendations.serve_id`), validate them (invalid rows go to `quarantine`
with a reason, never to the facts), pseudonymize users, load everything in one
DuckDB transaction and move the watermarks last, then record a data version.
The lists shown to users become `fact_served`, one row per title (`served_rows`); the sponsored slots shown
(`ad_impressions`) become `fact_ad_impression` and their clicks `fact_ad_click` (`ad_rows`); a click reported after
its impression was loaded arrives by its own watermark (`ad_clicks`, `ad_batch`).
A run that fails leaves the warehouse exactly as it was.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core import bounds
from core.store import adslog, clock, locks, opsdb, servinglog
from core.warehouse import datahash, warehouse
from core.constants import AD_POLICIES, EVENT_KINDS, RATING_MAX, RATING_MIN
from core.pseudonym import pseudonym_key, pseudonymize
from core.settings import Settings

WATERMARKS = {"events": "seq", "rating_history": "history_id", "rejected_writes": "reject_id",
              "served_recommendations": "serve_id", "ad_impressions": "impression_id",
              "ad_clicks": "click_seq"}   # ad_clicks: clicks reported after their impression (adslog.late_clicks)
MAX_VALUE = 1_000_000  # the write API's largest event value (writes.MAX_EVENT_VALUE)
VOLUME_RATIO = 3.0  # a day with > 3x or < 1/3 of the trailing 7-day mean volume is reported


@dataclass
class EtlResult:
    run_id: int
    status: str                      # 'loaded', 'no-new-data' or 'failed'
    data_version: int | None = None
    rows_extracted: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    report: dict = field(default_factory=dict)
    rows_served: int = 0             # fact_served rows loaded (titles of shown lists)
    rows_ads: int = 0                # fact_ad_impression rows loaded (sponsored slots shown)

    def to_dict(self) -> dict:
        return self.__dict__.copy()


# ------------------------------------------------------------------ extract
def extract(settings: Settings, marks: dict[str, int]) -> dict[str, pd.DataFrame]:
    with opsdb.read_only(settings) as conn:
        events = opsdb.events_after(conn, marks.get("events", 0))
        ratings = opsdb.rating_history_after(conn, marks.get("rating_history", 0))
        rejects = opsdb.rejected_writes_after(conn, marks.get("rejected_writes", 0))
        served = servinglog.lists_after(conn, marks.get("served_recommendations", 0))
        ads = adslog.impressions_after(conn, marks.get("ad_impressions", 0))
        late = adslog.late_clicks(conn, marks.get("ad_clicks", 0), marks.get("ad_impressions", 0))
        click_seq = adslog.max_click_seq(conn)
        # Dimension rows with an id outside 1..MAX_ID (only ever written around the write API) are left out:
        # their facts are quarantined as "id out of range".
        users = opsdb.users_with_valid_ids(conn)
        movies = opsdb.movies_with_valid_ids(conn)
        for col in ("year", "runtime_min"):
            movies[col] = pd.to_numeric(movies[col], errors="coerce").where(lambda v: v.abs() < 2**31).round().astype("Int64")
        users["consent_personalization"] = pd.to_numeric(users["consent_personalization"], errors="coerce").fillna(1)
        service_now = clock.now(db=conn)
    rows = pd.concat([events.assign(source="event"), ratings.assign(source="rating")], ignore_index=True)
    return {"rows": rows, "rejects": rejects, "served": served, "ads": ads, "ad_clicks": late, "users": users,
            "movies": movies,
            "clock": service_now,
            "max": {"events": int(events["source_id"].max()) if len(events) else marks.get("events", 0),
                    "rating_history": int(ratings["source_id"].max()) if len(ratings) else marks.get("rating_history", 0),
                    "rejected_writes": int(rejects["reject_id"].max()) if len(rejects) else marks.get("rejected_writes", 0),
                    "served_recommendations": int(served["serve_id"].max()) if len(served)
                    else marks.get("served_recommendations", 0),
                    "ad_impressions": int(ads["impression_id"].max()) if len(ads) else marks.get("ad_impressions", 0),
                    "ad_clicks": max(click_seq, marks.get("ad_clicks", 0))}}


# ------------------------------------------------------------------ validate
def parse_times(values: pd.Series) -> pd.Series:
    """ISO-8601 text → naive timestamps; anything else, or a time before 1900, → NaT (never an exception)."""
    ts = pd.to_datetime(values.astype(str), errors="coerce", format="ISO8601", utc=True)
    ts = ts.where(ts >= pd.Timestamp(bounds.EARLIEST_TIME, tz="UTC"))
    return ts.dt.tz_localize(None)


def _user_keys(user_ids: pd.Series, key: bytes) -> np.ndarray:
    """Pseudonyms where the id is a valid integer id, None elsewhere (a quarantined row may hold anything)."""
    ok = bounds.id_mask(user_ids).to_numpy()
    out = np.full(len(user_ids), None, dtype=object)
    if ok.any():
        out[ok] = pseudonymize(pd.to_numeric(user_ids[ok]).astype("int64"), key)
    return out


def duplicate_rows(frame: pd.DataFrame) -> pd.Series:
    """Rows equal, as text, to an earlier row: `frame.astype(str).duplicated()`, without turning every value into a
    string when the columns are typed so that equal values are equal texts (0.65 s → 0.2 s on a first start's
    450,000 rows). Integer columns always are; float columns unless they hold −0.0 (equal to 0.0, another text);
    text columns without a missing value. Anything else — missing texts, the mixed columns a writer around the
    API leaves — takes the slow way (tests/test_etl_duplicates.py checks both against the text comparison)."""
    def same_as_text(col: pd.Series) -> bool:
        dtype = col.dtype
        if isinstance(dtype, np.dtype) and dtype.kind in "iu":
            return True
        if isinstance(dtype, np.dtype) and dtype.kind == "f":
            values = col.to_numpy()
            return not bool(((values == 0) & np.signbit(values)).any())
        return isinstance(dtype, pd.StringDtype) and not bool(col.isna().any())
    if all(same_as_text(frame[c]) for c in frame.columns):
        return frame.duplicated(keep="first")
    return frame.astype(str).duplicated(keep="first")


def validate(rows: pd.DataFrame, known_users, known_movies, clock: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into (valid, quarantined-with-reason). The first failing check names the reason."""
    reason = pd.Series(None, index=rows.index, dtype=object)

    def flag(mask, text):
        reason[mask & reason.isna()] = text

    kind = rows["kind"]
    user = pd.to_numeric(rows["user_id"], errors="coerce")
    movie = pd.to_numeric(rows["movie_id"], errors="coerce")
    value = pd.to_numeric(rows["value"], errors="coerce")
    ts = parse_times(rows["occurred_at"])
    integral = lambda s: s.notna() & np.isfinite(s.astype(float)) & (s.astype(float) == np.round(s.astype(float)))  # noqa: E731
    flag(~kind.isin(list(EVENT_KINDS) + ["rating"]), "unknown kind")
    flag(user.isna(), "missing user id")
    flag(integral(user) & ~bounds.id_mask(user), "id out of range")
    flag(~user.isin(known_users), "orphan user id")
    flag(movie.isna() & (kind != "scroll"), "missing movie id")
    flag(integral(movie) & ~bounds.id_mask(movie), "id out of range")
    flag(movie.notna() & ~movie.isin(known_movies), "orphan movie id")
    flag(value.isna(), "malformed value")
    flag(~np.isfinite(value.fillna(0).astype(float)) | (value > MAX_VALUE), "value out of range")
    flag((kind == "rating") & ((value != np.round(value)) | (value < RATING_MIN) | (value > RATING_MAX)),
         "rating out of range")
    flag(value < 0, "negative value")
    flag(ts.isna(), "malformed timestamp")
    flag(ts > pd.Timestamp(clock), "timestamp in the future")
    flag(duplicate_rows(rows[["user_id", "movie_id", "kind", "value", "occurred_at"]]), "duplicate")
    bad = reason.notna()
    return rows[~bad].copy(), rows[bad].assign(reason=reason[bad])


def _volume_alerts(con, valid: pd.DataFrame, clock: str) -> list[dict]:
    if valid.empty:
        return []
    days = pd.to_datetime(valid["occurred_at"]).dt.normalize()
    per_day = days[days < pd.Timestamp(clock).normalize()].value_counts().sort_index()
    if per_day.empty:
        return []
    hist = con.execute("SELECT day, sum(n) AS n FROM daily_aggregates WHERE kind <> 'quarantined' GROUP BY day").df()
    hist = pd.Series(hist["n"].to_numpy(), index=pd.to_datetime(hist["day"])).sort_index() if len(hist) else pd.Series(dtype=float, index=pd.DatetimeIndex([]))
    alerts = []
    for day, n in per_day.items():
        prior = hist[(hist.index < day) & (hist.index >= day - pd.Timedelta(days=7))]
        if len(prior) >= 3:
            baseline = float(prior.mean())
            ratio = n / baseline if baseline else float("inf")
            if ratio > VOLUME_RATIO or ratio < 1 / VOLUME_RATIO:
                alerts.append({"day": str(day.date()), "rows": int(n), "trailing_mean": round(baseline, 1),
                               "ratio": round(ratio, 2)})
        hist.loc[day] = n
    return alerts


def _ingestion_rejects(rejects: pd.DataFrame, key: bytes, started: str) -> pd.DataFrame:
    """Rows the write API refused at ingestion, carried into the quarantine (pseudonymized)."""
    if rejects.empty:
        return pd.DataFrame()
    payload = pd.DataFrame([_json_object(p) for p in rejects["payload"]], index=range(len(rejects)))
    for col in ("user_id", "movie_id", "kind", "value", "occurred_at", "rated_at", "rating", "shown_at"):
        if col not in payload:
            payload[col] = None
    ad = (rejects["target"] == "ad_impressions").to_numpy()      # a sponsored slot: its kind and time
    if ad.any():
        payload["kind"] = payload["kind"].astype(object).where(~ad, "ad_impression")
        payload["occurred_at"] = payload["occurred_at"].astype(object).where(~ad, payload["shown_at"])
    user = pd.to_numeric(payload["user_id"], errors="coerce")
    return pd.DataFrame({
        "source": "ingestion", "source_id": rejects["reject_id"].to_numpy(),
        "reason": (INGESTION + rejects["reason"]).to_numpy(),
        "user_key": _user_keys(user, key),
        "movie_id": _movie_ids(payload["movie_id"]),
        "kind": np.where(rejects["target"] == "ratings", "rating", payload["kind"].astype(object)),
        "value": payload["value"].where(rejects["target"].to_numpy() != "ratings", payload["rating"]).astype(str).to_numpy(),
        "occurred_at": payload["occurred_at"].where(payload["occurred_at"].notna(), payload["rated_at"]).astype(str).to_numpy(),
        "quarantined_at": parse_times(rejects["rejected_at"]).fillna(pd.Timestamp(started)).to_numpy(),
        "code": rejects["code"].to_numpy(),    # the write API's check code: files the row's category
    })


def _json_object(text) -> dict:
    """A rejected write's payload; an unreadable one (written by hand) becomes an empty record."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _movie_ids(values: pd.Series) -> np.ndarray:
    """Movie ids where valid, else <NA> (a quarantined row keeps what can be kept)."""
    ok = bounds.id_mask(values)
    return pd.to_numeric(values.where(ok), errors="coerce").astype("Int64").to_numpy()


# ------------------------------------------------------------------ served lists → fact_served
SERVED_COLUMNS = ["serve_id", "user_key", "served_at", "path", "model_version", "ranker_version", "arm", "position",
                  "movie_id", "policy", "propensity", "slate_propensity"]
POLICIES = ("deterministic", "explore")
_ID_LIST = r"\[\s*(\d+\s*(,\s*\d+\s*)*)?\]"   # what servinglog writes: a JSON list of integers
_NUMBER = r"\d+(\.\d+)?([eE][-+]?\d+)?"
_NUMBER_LIST = rf"\[\s*({_NUMBER}\s*(,\s*{_NUMBER}\s*)*)?\]"   # its propensities: a JSON list of numbers
INT32_MAX = 2**31 - 1


def served_rows(lists: pd.DataFrame, key: bytes) -> tuple[pd.DataFrame, int]:
    """(one row per title of each shown list, lists refused): `SERVED_COLUMNS`, position 1 = first, users
    pseudonymized like the facts, served_at parsed like occurred_at.

    `lists` as `servinglog.lists_after` returns them. A list the serving log could not have written (only ever
    written around it) is refused whole: movie_ids that are not a JSON list of ids, a user id out of range, a
    served_at that is not a time, no path, a version that is not a positive 32-bit integer. An empty list
    gives no row.
    """
    if lists.empty:
        return pd.DataFrame(columns=SERVED_COLUMNS), 0
    lists = lists.reset_index(drop=True)
    titles, unreadable = _explode_ids(lists["movie_ids"])
    served_at = parse_times(lists["served_at"])
    model, bad_model = _small_ints(lists["model_version"])
    ranker, bad_ranker = _small_ints(lists["ranker_version"])
    policy = lists["policy"] if "policy" in lists else pd.Series(None, index=lists.index, dtype=object)
    bad_policy = policy.notna() & ~policy.isin(POLICIES)
    props, bad_props = _propensities(lists, "propensities", titles)
    slate, bad_slate = _propensities(lists, "slate_propensities", titles)
    bad = (unreadable | ~bounds.id_mask(lists["user_id"]) | served_at.isna() | lists["path"].isna()
           | bad_model | bad_ranker | bad_policy | bad_props | bad_slate)
    bad |= lists.index.isin(titles.index[~bounds.id_mask(titles)])
    keep = ~titles.index.isin(lists.index[bad])
    titles, props, slate = titles[keep], props[keep], slate[keep]
    ok = lists.index[~bad]
    keys = pd.Series(pseudonymize(lists.loc[ok, "user_id"].astype("int64"), key), index=ok, dtype=object)
    at = titles.index
    rows = pd.DataFrame({
        "serve_id": lists["serve_id"].to_numpy()[at].astype("int64"), "user_key": keys.loc[at].to_numpy(),
        "served_at": served_at.to_numpy()[at], "path": lists["path"].astype(str).to_numpy()[at],
        "model_version": model.to_numpy()[at], "ranker_version": ranker.to_numpy()[at],
        "arm": lists["arm"].astype(str).where(lists["arm"].notna(), None).to_numpy()[at],
        "position": (titles.groupby(level=0).cumcount() + 1).to_numpy().astype("int32"),
        "movie_id": titles.to_numpy().astype("int64"),
        "policy": policy.astype(object).where(policy.notna(), None).to_numpy()[at],
        "propensity": props, "slate_propensity": slate})
    rows["model_version"] = rows["model_version"].astype("Int64")
    rows["ranker_version"] = rows["ranker_version"].astype("Int64")
    return rows, int(bad.sum())


def _propensities(lists: pd.DataFrame, column: str, titles: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """(one probability per row of `titles`, by position, NaN where the list has none; True for lists whose
    probabilities are not a JSON list of numbers in (0, 1] as long as the list of titles)."""
    texts = lists[column] if column in lists else pd.Series(None, index=lists.index, dtype=object)
    given = texts.notna()
    values, unreadable = _explode_ids(texts.where(given, "[]"), numbers=True)
    bad = given & unreadable
    counts = values.groupby(level=0).size().reindex(lists.index, fill_value=0)
    lengths = titles.groupby(level=0).size().reindex(lists.index, fill_value=0)
    out_of_range = values[~((values > 0) & (values <= 1))].index.unique()
    bad |= given & ((counts != lengths) | lists.index.isin(out_of_range))
    aligned = np.full(len(titles), np.nan)
    ok = given & ~bad
    if ok.any():      # both in list order within a list label, lists in label order: positions line up
        aligned[titles.index.isin(lists.index[ok])] = values[values.index.isin(lists.index[ok])].to_numpy()
    return aligned, bad


def _explode_ids(texts: pd.Series, numbers: bool = False) -> tuple[pd.Series, pd.Series]:
    """(the ids of each list as float64, one per row in list order, indexed by the list's label, NaN where an
    element is not a number; True for lists that are not a JSON list). Lists as servinglog writes them are split
    as text (vectorized); any other text is read with `json.loads` one by one (only ever written by hand)."""
    text = texts.astype(str)
    plain = texts.notna() & text.str.fullmatch(_NUMBER_LIST if numbers else _ID_LIST)
    inner = text[plain].str.slice(1, -1).str.strip()
    parts = inner[inner != ""].str.split(",").explode().str.strip()
    others = texts[~plain & texts.notna()].map(_json_list)
    unreadable = pd.Series(False, index=texts.index)
    unreadable[texts.isna()] = True
    unreadable[others.index[others.isna()]] = True
    others = others.dropna()
    others = others[others.map(len) > 0].explode()
    others = others.where(~others.map(lambda v: isinstance(v, bool)))     # JSON true is not the id 1
    ids = pd.concat([pd.to_numeric(parts, errors="coerce").astype("float64"),
                     pd.to_numeric(others, errors="coerce").astype("float64")]).sort_index(kind="stable")
    return ids, unreadable


def _json_list(text):
    """A JSON list, or None when the text is not one."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, list) else None


def _small_ints(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(values as nullable integers, True where a value is given but is not an integer in 1..2^31-1)."""
    ok = bounds.id_mask(values) & (pd.to_numeric(values, errors="coerce") <= INT32_MAX)
    return pd.to_numeric(values.where(ok), errors="coerce").astype("Int64"), values.notna() & ~ok


def _load_served(con, served: pd.DataFrame, version: int) -> None:
    if len(served):
        con.register("served_df", served.assign(data_version=version))
        try:
            con.execute("INSERT INTO fact_served BY NAME SELECT serve_id, user_key, served_at, path, model_version, "
                        "ranker_version, arm, position, movie_id, data_version, policy, propensity, slate_propensity "
                        "FROM served_df")
        finally:
            con.unregister("served_df")


# ------------------------------------------------------------------ ad impressions → fact_ad_impression, fact_ad_click
AD_TABLES = ("fact_ad_impression", "fact_ad_click")
AD_MAX_SLOT = 101


def ad_rows(impressions: pd.DataFrame, key: bytes) -> tuple[dict[str, pd.DataFrame], int]:
    """({'fact_ad_impression': one row per impression, 'fact_ad_click': one per click}, impressions refused), users
    pseudonymized, times parsed like occurred_at; columns as `datahash.AD_IMPRESSION_COLUMNS` / `AD_CLICK_COLUMNS`.

    `impressions` as `adslog.impressions_after` returns them. An impression the write API could not have written
    (only ever written around it) is refused whole: a user or campaign id out of range, a time that is not a
    time, a slot outside 1..101, a policy not in AD_POLICIES, a version or list id that is not a positive
    integer, p_click outside [0, 1], a price that is negative or not a number, a click without its time."""
    empty = {"fact_ad_impression": pd.DataFrame(columns=list(datahash.AD_IMPRESSION_COLUMNS)),
             "fact_ad_click": pd.DataFrame(columns=list(datahash.AD_CLICK_COLUMNS))}
    if impressions.empty:
        return empty, 0
    imp = impressions.reset_index(drop=True)
    shown = parse_times(imp["shown_at"])
    clicked_at = parse_times(imp["clicked_at"])
    serve, bad_serve = _small_ints(imp["served_id"])
    model, bad_model = _small_ints(imp["model_version"])
    slot = pd.to_numeric(imp["slot"], errors="coerce")
    clicked = pd.to_numeric(imp["clicked"], errors="coerce")
    price = pd.to_numeric(imp["price"], errors="coerce").astype(float)
    p_click = pd.to_numeric(imp["p_click"], errors="coerce").astype(float)
    bad = (~bounds.id_mask(imp["user_id"]) | ~bounds.id_mask(imp["campaign_id"]) | shown.isna() | bad_serve
           | bad_model | ~slot.between(1, AD_MAX_SLOT) | (slot != slot.round()) | ~clicked.isin([0, 1])
           | ~imp["policy"].isin(list(AD_POLICIES)) | ~(np.isfinite(price) & (price >= 0))
           | (imp["p_click"].notna() & ~p_click.between(0, 1)) | ((clicked == 1) & clicked_at.isna()))
    ok = imp.index[~bad]
    if not len(ok):
        return empty, int(bad.sum())
    keys = pseudonymize(imp.loc[ok, "user_id"].astype("int64"), key)
    age = imp["age_band"] if "age_band" in imp else pd.Series(None, index=imp.index, dtype=object)
    rows = pd.DataFrame({
        "impression_id": imp.loc[ok, "impression_id"].astype("int64").to_numpy(),
        "serve_id": serve[ok].to_numpy(), "user_key": keys,
        "campaign_id": imp.loc[ok, "campaign_id"].astype("int64").to_numpy(),
        "slot": slot[ok].astype("int32").to_numpy(), "shown_at": shown[ok].to_numpy(),
        "p_click": p_click[ok].to_numpy(), "policy": imp.loc[ok, "policy"].astype(str).to_numpy(),
        "model_version": model[ok].to_numpy(), "clicked": (clicked[ok] == 1).to_numpy(),
        "age_band": age[ok].astype(object).where(age[ok].notna(), None).to_numpy()})
    rows["serve_id"] = rows["serve_id"].astype("Int64")
    rows["model_version"] = rows["model_version"].astype("Int64")
    hit = rows["clicked"].to_numpy()
    clicks = pd.DataFrame({
        "impression_id": rows["impression_id"][hit].to_numpy(), "user_key": rows["user_key"][hit].to_numpy(),
        "campaign_id": rows["campaign_id"][hit].to_numpy(), "clicked_at": clicked_at[ok][hit].to_numpy(),
        "price": price[ok][hit].to_numpy(), "policy": rows["policy"][hit].to_numpy(),
        "model_version": rows["model_version"][hit].to_numpy()})
    return {"fact_ad_impression": rows, "fact_ad_click": clicks}, int(bad.sum())


def ad_batch(ex: dict, key: bytes) -> tuple[dict[str, pd.DataFrame], int, int]:
    """The run's ad fact rows from an extraction (both engines): the new impressions with their clicks
    (`ad_rows`), and the clicks reported late on impressions an earlier run loaded (`ex['ad_clicks']`, checked like
    an impression by `ad_rows`, only their click row kept). Returns (rows, impressions refused, late clicks loaded)."""
    ads, refused = ad_rows(ex["ads"], key)
    late = ex.get("ad_clicks")
    if late is None or late.empty:
        return ads, refused, 0
    clicks = ad_rows(late, key)[0]["fact_ad_click"]
    if len(clicks):
        both = [f for f in (ads["fact_ad_click"], clicks) if len(f)]
        ads["fact_ad_click"] = pd.concat(both, ignore_index=True) if len(both) > 1 else clicks
    return ads, refused, int(len(clicks))


def has_ad_rows(ex: dict) -> bool:
    """Whether an extraction has ad impressions or late clicks to load."""
    return not ex["ads"].empty or not (ex.get("ad_clicks") is None or ex["ad_clicks"].empty)


def ads_report(impressions: pd.DataFrame, ads: dict[str, pd.DataFrame], refused: int, late_clicks: int = 0) -> dict:
    """The validation report's `ads` entry: impressions extracted, loaded, refused, clicks loaded (late ones
    included) and `late_clicks`, the clicks reported after their impression was loaded by an earlier run."""
    return {"impressions": int(len(impressions)), "rows": int(len(ads["fact_ad_impression"])),
            "clicks": int(len(ads["fact_ad_click"])), "refused": int(refused), "late_clicks": int(late_clicks)}


def _load_ads(con, ads: dict[str, pd.DataFrame], version: int) -> None:
    for table, columns in (("fact_ad_impression", datahash.AD_IMPRESSION_COLUMNS),
                           ("fact_ad_click", datahash.AD_CLICK_COLUMNS)):
        frame = ads[table]
        if not len(frame):
            continue
        con.register("ads_df", frame.assign(data_version=version))
        try:
            con.execute(f"INSERT INTO {table} BY NAME SELECT {', '.join(columns)}, data_version FROM ads_df")
        finally:
            con.unregister("ads_df")


INGESTION = "rejected at ingestion: "   # the quarantine reason of a write the write API refused: this + its message
# The write API's check codes (errors.ValidationError.code, stored with each rejected write) → the validation
# gate's own reason names. An unlisted code files as 'other'. The category depends on which check refused the
# write, never on the wording of its message (nor on a value quoted in it).
CODE_CATEGORIES = {
    "missing_user_id": "missing user id", "unknown_user": "orphan user id",
    "missing_movie_id": "missing movie id", "unknown_movie": "orphan movie id",
    "movie_id_not_integer": "other",            # as the message rule filed it (no needle matched)
    "rating_not_integer": "rating out of range", "rating_out_of_range": "rating out of range",
    "invalid_timestamp": "malformed timestamp", "future_timestamp": "timestamp in the future",
    "unknown_event_kind": "unknown kind", "value_not_number": "malformed value",
    "value_too_large": "value out of range", "negative_value": "negative value",
    "empty_event_id": "other", "invalid_event_id": "malformed value", "duplicate_in_batch": "duplicate",
}
# Fallback for rejects stored without a code (before opsdb migration m006): write-API message text → category,
# first match wins. Frozen: new checks get a code above, not a needle here.
REASON_CATEGORIES = (
    ("outside 1..10", "rating out of range"), ("not an integer (ratings", "rating out of range"),
    ("unknown movie", "orphan movie id"), ("movie_id is missing", "missing movie id"),
    ("is missing or not an integer", "missing user id"), ("unknown user", "orphan user id"),
    ("negative", "negative value"), ("after the service clock", "timestamp in the future"),
    ("is not a timestamp", "malformed timestamp"), ("unknown event kind", "unknown kind"),
    ("duplicate", "duplicate"), ("not a number", "malformed value"), ("is out of range (at most", "value out of range"),
    ("control characters", "malformed value"),
)


def reason_category(reason: str, code: str | None = None) -> str:
    """A stable category for a quarantine reason ('ingestion: <category>' for write-API rejects).

    A write-API reject is filed by its check `code`; one stored without a code (before the codes existed) by
    its message text (REASON_CATEGORIES); the warehouse's quarantine keeps the code beside the reason.
    """
    if not reason.startswith(INGESTION):
        return reason
    if isinstance(code, str) and code:
        return f"ingestion: {CODE_CATEGORIES.get(code, 'other')}"
    for needle, category in REASON_CATEGORIES:
        if needle in reason:
            return f"ingestion: {category}"
    return "ingestion: other"


def _categories(quarantine: pd.DataFrame) -> pd.Series:
    """reason_category of each quarantined row, by its code where the row has one."""
    codes = quarantine["code"] if "code" in quarantine else pd.Series(None, index=quarantine.index, dtype=object)
    return pd.Series([reason_category(r, c) for r, c in zip(quarantine["reason"], codes)], index=quarantine.index,
                     dtype=object)


def content_hash(facts: pd.DataFrame, previous: str | None, served: pd.DataFrame | None = None,
                 ads: dict[str, pd.DataFrame] | None = None) -> str:
    """SHA-256 over the loaded rows (facts, then served-list rows and ad rows if any), chained to the previous
    version's hash (engine-independent: `datahash`)."""
    return datahash.content_hash(facts, previous, served, ads)


# ------------------------------------------------------------------ load
def _recompute_daily(con, days: list) -> None:
    if not days:
        return
    con.execute("DELETE FROM daily_aggregates WHERE day IN (SELECT unnest(?::DATE[]))", [days])
    con.execute("""
        INSERT INTO daily_aggregates
        SELECT CAST(occurred_at AS DATE), kind, count(*), count(DISTINCT user_key), count(DISTINCT movie_id), sum(value)
        FROM fact_interaction WHERE CAST(occurred_at AS DATE) IN (SELECT unnest(?::DATE[])) GROUP BY 1, 2
        UNION ALL
        SELECT coalesce(CAST(TRY_CAST(occurred_at AS TIMESTAMP) AS DATE), CAST(quarantined_at AS DATE)) AS d,
               'quarantined', count(*), count(DISTINCT user_key), count(DISTINCT movie_id), 0
        FROM quarantine WHERE d IN (SELECT unnest(?::DATE[])) GROUP BY 1""", [days, days])


def run(settings: Settings, *, at: str | None = None, progress=None) -> EtlResult:
    """One incremental ETL run on the settings' engine: this module's into the DuckDB file (`embedded`), or
    `lake_etl`'s into the Parquet lake with Spark (`spark`). Every caller (CLI, retrain, closed loop, Data page)
    goes through here. `progress(fraction, message)`, if given, hears each stage with the rows it handles."""
    if settings.engine == "spark":
        from core.warehouse import lake_etl      # imports this module; pyspark only on use
        if progress:
            progress(0.05, "Spark ETL into the lake: extract, validate, load")
        result = lake_etl.run_etl(settings, at=at)
        if progress:
            progress(1.0, f"{result.status}: {result.rows_loaded:,} rows loaded")
        return result
    return run_etl(settings, at=at, progress=progress)


@locks.exclusive("ETL")
def run_etl(settings: Settings, *, at: str | None = None, progress=None) -> EtlResult:
    """One incremental ETL run; returns what it loaded (or 'no-new-data')."""
    progress = progress or (lambda fraction, message: None)
    progress(0.0, "opening the warehouse (a copy, swapped in when the run commits)")
    key = pseudonym_key(settings)
    if at is None:
        with opsdb.session(settings) as db:
            at = clock.now(db=db)
    started = at
    try:
        with warehouse.transaction(settings, purpose="ETL") as con:
            # A run commits whole (a copy swapped in), so it never leaves a 'running' row; one written by an
            # older version whose process was killed is marked here (no other ETL runs under the store lock).
            con.execute("UPDATE etl_runs SET status = 'interrupted', error = 'interrupted: the process ended while "
                        "it ran (found at the next ETL start)' WHERE status = 'running'")
            run_id = int(con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM etl_runs").fetchone()[0])
            result = _run(con, settings, key, run_id, started, progress)
            progress(0.9, f"committing data version dv{result.data_version}" if result.data_version
                     else "nothing new: recording the run")
            con.execute("INSERT INTO etl_runs(run_id, started_at, finished_at, status, data_version, rows_extracted, "
                        "rows_loaded, rows_quarantined) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [run_id, started, started, result.status, result.data_version, result.rows_extracted,
                         result.rows_loaded, result.rows_quarantined])
    except Exception as exc:
        # The run's changes were discarded with its copy of the warehouse; only the failure is recorded.
        with warehouse.transaction(settings, purpose="ETL") as con:
            run_id = int(con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM etl_runs").fetchone()[0])
            con.execute("INSERT INTO etl_runs(run_id, started_at, finished_at, status, error) "
                        "VALUES (?, ?, ?, 'failed', ?)", [run_id, started, started, f"{type(exc).__name__}: {exc}"])
        raise
    progress(1.0, f"{result.status}: {result.rows_loaded:,} rows loaded, {result.rows_quarantined:,} quarantined")
    return result


def _run(con, settings: Settings, key: bytes, run_id: int, started: str, progress) -> EtlResult:
    marks = warehouse.watermarks(con)
    progress(0.1, "extracting rows newer than the watermarks from the operational store")
    ex = extract(settings, marks)
    rows, rejects = ex["rows"], ex["rejects"]
    progress(0.3, f"validating {len(rows):,} extracted rows ({len(rejects):,} refused at ingestion, "
                  f"{len(ex['served']):,} served lists)")
    valid, bad = validate(rows, ex["users"]["user_id"], ex["movies"]["movie_id"], ex["clock"])
    result = EtlResult(run_id=run_id, status="no-new-data", rows_extracted=len(rows) + len(rejects))
    if rows.empty and rejects.empty and ex["served"].empty and not has_ad_rows(ex):
        _sync_consent(con, ex["users"], key)   # consent changes reach training even without new rows
        return result
    served, refused = served_rows(ex["served"], key)
    ads, ads_refused, late_clicks = ad_batch(ex, key)

    valid["user_key"] = pseudonymize(valid["user_id"].astype("int64"), key)
    valid["occurred_at"] = parse_times(valid["occurred_at"])
    facts = valid[["source", "source_id", "user_key", "movie_id", "kind", "value", "occurred_at"]].copy()
    facts["movie_id"] = pd.to_numeric(facts["movie_id"]).astype("Int64")
    facts["value"] = facts["value"].astype(float)
    # Duplicates of rows loaded by an earlier run (a double-logged event arriving late).
    if len(facts):
        con.register("batch", facts)
        dup_ids = con.execute("""
            SELECT b.source, b.source_id FROM batch b JOIN fact_interaction f
              ON f.user_key = b.user_key AND f.kind = b.kind AND f.value = b.value AND f.occurred_at = b.occurred_at
             AND f.movie_id IS NOT DISTINCT FROM b.movie_id
            WHERE f.occurred_at >= (SELECT min(occurred_at) FROM batch)""").df()
        con.unregister("batch")
        if len(dup_ids):
            is_dup = facts.set_index(["source", "source_id"]).index.isin(dup_ids.set_index(["source", "source_id"]).index)
            bad = pd.concat([bad, valid[is_dup].assign(reason="duplicate of a loaded row")], ignore_index=True)
            facts, valid = facts[~is_dup], valid[~is_dup]

    quarantine = pd.DataFrame({
        "source": bad["source"], "source_id": bad["source_id"], "reason": bad["reason"],
        "user_key": _user_keys(bad["user_id"].reset_index(drop=True), key),
        "movie_id": _movie_ids(bad["movie_id"].reset_index(drop=True)),
        "kind": bad["kind"].astype(str), "value": bad["value"].astype(str), "occurred_at": bad["occurred_at"].astype(str),
        "quarantined_at": pd.Timestamp(started),
    }) if len(bad) else pd.DataFrame()
    ingest = _ingestion_rejects(rejects, key, started)
    quarantine = pd.concat([q for q in (quarantine, ingest) if len(q)], ignore_index=True) if len(quarantine) or len(ingest) else pd.DataFrame()

    by_reason = _categories(quarantine).value_counts().to_dict() if len(quarantine) else {}
    report = {"extracted": int(len(rows)), "ingestion_rejects": int(len(rejects)), "valid": int(len(facts)),
              "quarantined": int(len(quarantine)), "by_reason": {k: int(v) for k, v in by_reason.items()},
              "volume_alerts": _volume_alerts(con, facts, ex["clock"]),
              "served": served_report(ex["served"], served, refused), "ads": ads_report(ex["ads"], ads, ads_refused, late_clicks)}
    prev = warehouse.latest_version(con)
    version = int(prev["version"]) + 1 if prev else 1
    digest = content_hash(facts, prev["content_hash"] if prev else None, served, ads)

    users = pd.DataFrame({"user_key": pseudonymize(ex["users"]["user_id"], key),
                          "created_at": parse_times(ex["users"]["created_at"]),
                          "personalization": ex["users"]["consent_personalization"].astype(bool)})
    movies = ex["movies"].assign(added_at=lambda d: parse_times(d["added_at"]),
                                 title=lambda d: d["title"].map(_printable))
    facts = facts.assign(data_version=version)
    days = sorted({d.date() for d in facts["occurred_at"].dt.normalize().unique()} |
                  ({d.date() for d in parse_times(quarantine["occurred_at"]).dropna().dt.normalize().unique()}
                   if len(quarantine) else set()) |
                  ({d.date() for d in pd.to_datetime(quarantine["quarantined_at"]).dropna().dt.normalize().unique()} if len(quarantine) else set()))

    progress(0.5, f"loading {len(facts):,} facts and {len(quarantine):,} quarantined rows as data version dv{version}")
    try:
        con.register("users_df", users)
        con.register("movies_df", movies)
        con.execute("INSERT OR REPLACE INTO dim_user SELECT user_key, created_at, personalization FROM users_df")
        con.execute("INSERT OR REPLACE INTO dim_movie SELECT movie_id, title, year, genres, runtime_min, added_at FROM movies_df")
        if len(facts):
            con.register("facts_df", facts)
            con.execute("INSERT INTO fact_interaction SELECT source, source_id, user_key, movie_id, kind, value, "
                        "occurred_at, data_version FROM facts_df")
        if len(quarantine):
            q = quarantine.assign(data_version=version)
            codes = q["code"] if "code" in q else pd.Series(None, index=q.index, dtype=object)
            con.register("q_df", q.assign(code=codes.astype(object).where(codes.notna(), None)))
            con.execute("INSERT INTO quarantine BY NAME SELECT source, source_id, reason, user_key, movie_id, kind, "
                        "value, occurred_at, data_version, quarantined_at, code FROM q_df")
        _load_served(con, served, version)
        _load_ads(con, ads, version)
        progress(0.75, f"recomputing daily aggregates for {len(days):,} days")
        _recompute_daily(con, days)
        window = (facts["occurred_at"].min(), facts["occurred_at"].max()) if len(facts) else (None, None)
        total = con.execute("SELECT count(*) FROM fact_interaction").fetchone()[0]
        con.execute("INSERT INTO data_versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [version, started, run_id, len(rows) + len(rejects), len(facts), len(quarantine), total, digest,
                     window[0], window[1], json.dumps(report), json.dumps(ex["max"])])
        for name, value in ex["max"].items():  # watermarks move last
            con.execute("INSERT OR REPLACE INTO etl_state VALUES (?, ?)", [name, int(value)])
    finally:
        for name in ("users_df", "movies_df", "facts_df", "q_df"):
            try:
                con.unregister(name)
            except Exception:  # noqa: BLE001 - not registered in this run
                pass
    result.status = "loaded"
    result.data_version = version
    result.rows_loaded = int(len(facts))
    result.rows_quarantined = int(len(quarantine))
    result.rows_served = int(len(served))
    result.rows_ads = int(len(ads["fact_ad_impression"]))
    result.report = report
    return result


def served_report(lists: pd.DataFrame, served: pd.DataFrame, refused: int) -> dict:
    """The validation report's `served` entry: lists extracted, titles loaded (rows), lists refused."""
    return {"lists": int(len(lists)), "rows": int(len(served)), "refused": int(refused)}


def _printable(title) -> str:
    """A title for the warehouse: control characters (written by hand around the write API) replaced."""
    text = "" if title is None else str(title)
    bad = set(bounds.control_chars(text))
    return "".join("\ufffd" if c in bad else c for c in text) if bad else text


def _sync_consent(con, users: pd.DataFrame, key: bytes) -> None:
    """Personalization consent flags of the dimension follow the operational database (not a data version)."""
    if users.empty:
        return
    frame = pd.DataFrame({"user_key": pseudonymize(users["user_id"], key),
                          "personalization": users["consent_personalization"].astype(bool)})
    con.register("consent_df", frame)
    try:
        con.execute("UPDATE dim_user SET personalization = c.personalization FROM consent_df c "
                    "WHERE dim_user.user_key = c.user_key AND dim_user.personalization <> c.personalization")
    finally:
        con.unregister("consent_df")

