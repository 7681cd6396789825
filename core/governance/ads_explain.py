"""'Why am I seeing this ad?' for one served ad impression, as the user should read it.

The answer names the advertiser and the creative, and the parameters that chose the user, by the policy logged
with the impression:
- `untargeted`: nothing about the user was used (without ad-targeting consent that is the only kind they get);
- `campaign-rate`: the campaign's targeting criteria the user met; the winner had the highest bid × the
  campaign's overall click rate — no prediction about the user;
- `model`: the criteria met, the interest the recommender infers, and the ads model's top SHAP reasons, recomputed
  from the point-in-time inputs the selection scored at (the day's start, `core.ads.scoring`), so the p_click in
  the answer is the one stored with the impression.
The user's favourite genres are what the service knew then: the genres of the titles they watched or rated
before the ad was shown (`core.ads.auction.favourite_genres`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.ads import auction
from core.constants import AGE_BANDS, GENRES
from core.errors import UnknownImpression
from core.settings import Settings
from core.store import adslog, opsdb

UNTARGETED_NO_CONSENT = "untargeted (no ad-targeting consent)"
CAMPAIGN_RATE = "campaign-rate targeting"


def _creative(db, row: dict) -> str:
    if row["creative_kind"] == "title" and row.get("movie_id") is not None:
        title, year = opsdb.titles(db, [int(row["movie_id"])]).get(int(row["movie_id"]), (f"title {row['movie_id']}",
                                                                                          None))
        return f"{title} ({year})" if year else title
    return row.get("product") or "a product"


def favourite_genres(db, user_id: int, before: str) -> list[str]:
    """The user's (up to) 3 favourite genres by share of the titles they watched or rated before `before`."""
    seen = opsdb.seen_before(db, before).get(int(user_id), set())
    if not seen:
        return []
    texts = opsdb.movie_genres(db)
    g = auction.genre_matrix([texts.get(m, "") for m in sorted(seen)])
    share = (g / np.maximum(g.sum(axis=1, keepdims=True), 1)).sum(axis=0)
    fav = auction.favourite_genres(share[None, :])[0]
    return [GENRES[i] for i in np.flatnonzero(fav)]


def criteria_met(target_genres: str, target_bands: str, favourites: list[str], band: str | None) -> list[str]:
    """The campaign's criteria the user met, in words (empty: the campaign targets anyone)."""
    genres = [g for g in (target_genres or "").split("|") if g]
    bands = [b for b in (target_bands or "").split("|") if b]
    met = []
    if genres:
        hit = [g for g in genres if g in favourites]
        if hit:
            met.append(f"{', '.join(hit)} among your favourite genres (the campaign targets {', '.join(genres)})")
    if bands and band in bands:
        met.append(f"your age band {band} (the campaign targets {', '.join(bands)})")
    return met


def _model_reasons(settings: Settings, user_id: int, row: dict) -> dict:
    """The ads model's p_click and top reasons for this impression, from the inputs the selection scored at."""
    from core.ads import data, pipeline, scoring
    from core.training import registry
    version = registry.get_version(settings, int(row["model_version"]))
    model = pipeline.load_version(settings, version)
    as_of = pd.Timestamp(row["shown_at"]).normalize().strftime("%Y-%m-%dT%H:%M:%S")
    campaigns = data.campaigns(settings)
    campaigns = campaigns[campaigns["campaign_id"] == int(row["campaign_id"])].reset_index(drop=True)
    cross = scoring.pairs(settings, [int(user_id)], campaigns, as_of)
    e = pipeline.explain(model, cross, campaigns, scoring.recent_impressions(settings, as_of))[0]
    interest = next((c["value"] for c in e["contributions"] if c["feature"] == "genre_interest"), None)
    return {"p_click": e["p_click"], "scored_as_of": as_of, "reasons": e["reasons"],
            "genre_interest": interest, "contributions": e["contributions"][:10], "base_logit": e["base_logit"],
            "logit": e["logit"]}


def explain_ad(settings: Settings, user_id: int, impression_id: int) -> dict:
    """Why user `user_id` was shown ad impression `impression_id`: advertiser, creative, criteria met, inferred
    interest, the model's reasons or the policy's, and `answer` — the same in plain words. Raises UnknownUser, or
    UnknownImpression for an id that is not one of the user's impressions."""
    with opsdb.session(settings) as db:
        opsdb.require_user(db, int(user_id), None)
        found = [r for r in adslog.user_impressions(db, int(user_id)) if r["impression_id"] == int(impression_id)]
        if not found:
            raise UnknownImpression(f"unknown ad impression {impression_id} for user {user_id}: "
                                    "not an ad this user was shown")
        row = found[0]
        camp = adslog.campaigns(db)
        camp = camp[camp["campaign_id"] == row["campaign_id"]].iloc[0]
        consent = bool(opsdb.ad_targeting_consent(db, [int(user_id)])[0])
        band = opsdb.age_bands(db, [int(user_id)])[0]
        favourites = favourite_genres(db, int(user_id), row["shown_at"])
        creative = _creative(db, row)
    targeting = {"genres": [g for g in (camp["target_genres"] or "").split("|") if g],
                 "age_bands": [b for b in (camp["target_age_bands"] or "").split("|") if b in AGE_BANDS]}
    out = {"user_id": int(user_id), "impression_id": int(impression_id), "shown_at": row["shown_at"],
           "slot": int(row["slot"]), "served_id": row["served_id"], "campaign_id": int(row["campaign_id"]),
           "advertiser": row["advertiser"], "creative": creative, "creative_kind": row["creative_kind"],
           "policy": row["policy"], "model_version": row["model_version"], "p_click_stored": row["p_click"],
           "clicked": bool(row["clicked"]), "targeting": targeting, "ad_targeting_consent": consent,
           "criteria_met": [], "inferred_interest": None, "reasons": [], "model": None}
    if row["policy"] == "untargeted":
        out["why"] = UNTARGETED_NO_CONSENT if not consent else "untargeted"
    else:
        out["criteria_met"] = criteria_met(camp["target_genres"], camp["target_age_bands"], favourites, band)
        out["inferred_interest"] = {"favourite_genres": favourites}
        if row["policy"] == "campaign-rate":
            out["why"] = CAMPAIGN_RATE
        else:
            model = _model_reasons(settings, int(user_id), row)
            out["why"] = f"ads model v{row['model_version']}"
            out["model"] = model
            out["reasons"] = model["reasons"]
            out["inferred_interest"]["genre_interest"] = model["genre_interest"]
    out["answer"] = answer(out)
    return out


def answer(e: dict) -> str:
    """The explanation as the user reads it, in a few sentences."""
    first = (f"You saw this ad from {e['advertiser']} ({e['creative']}) on {str(e['shown_at'])[:10]}, at position "
             f"{e['slot']} of your list.")
    if e["policy"] == "untargeted":
        if not e["ad_targeting_consent"]:
            return (first + " You have not agreed to ad targeting, so it was untargeted: picked at random among "
                    "campaigns that target no one in particular. Nothing about you was used to choose it.")
        return first + " It was untargeted: picked at random among the ads you could be shown; nothing about your " \
                       "interests ranked it."
    fav = e["inferred_interest"]["favourite_genres"]
    parts = [first]
    parts.append("You match what the advertiser targets: " + "; ".join(e["criteria_met"]) + "."
                 if e["criteria_met"] else "The advertiser targets anyone.")
    if fav:
        parts.append(f"From what you watched, your favourite genres are {', '.join(fav)}.")
    if e["policy"] == "campaign-rate":
        parts.append("Among the ads you matched it won on its bid times how often people click it overall "
                     "(campaign-rate targeting); no prediction about you was made.")
    else:
        m = e["model"]
        parts.append(f"Our ads model estimated a {m['p_click']:.1%} chance that you would click it; the main reasons: "
                     + "; ".join(m["reasons"]) + ".")
    return " ".join(parts)


def explanation_markdown(e: dict) -> str:
    """For people on the command line: the answer, then the facts it rests on."""
    lines = [f"# Why am I seeing this ad? (user {e['user_id']}, impression {e['impression_id']})", "", e["answer"], "",
             f"- advertiser: {e['advertiser']} — {e['creative']} (campaign {e['campaign_id']})",
             f"- chosen by: {e['why']}"]
    t = e["targeting"]
    lines.append("- targeting: " + ("; ".join(x for x in (", ".join(t["genres"]), ", ".join(t["age_bands"])) if x)
                                    or "anyone"))
    if e["criteria_met"]:
        lines += [f"- criterion met: {c}" for c in e["criteria_met"]]
    lines += [f"- reason: {r}" for r in e["reasons"]]
    return "\n".join(lines) + "\n"
