"""'Why am I seeing this ad?' (issue 25.6) on the command line and the model server, and the server's sponsored
slot in /recommend (issue 25.8): answers by policy, criteria by hand, the model's p_click reproduced, audit rows,
401/403/404, and the slot logged through the write API."""
import json

import numpy as np
import pytest
from ads_testworld import ads_world
from conftest import private_copy
from fastapi.testclient import TestClient

from core import cli
from core.ads import auction, scoring
from core.constants import GENRES
from core.governance import ads_explain
from core.privacy import access
from core.pseudonym import pseudonym, pseudonym_key
from core.server import clients
from core.server.app import create_app
from core.serving import serving
from core.store import adslog, opsdb
from core.training import registry


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ads_world(tmp_path_factory.mktemp("ads-world"))


def last_impression(s, where: str, args=()) -> dict:
    with opsdb.session(s) as db:
        iid, uid = db.execute("SELECT i.impression_id, i.user_id FROM ad_impressions i JOIN ad_campaigns c "
                              f"USING (campaign_id) WHERE {where} ORDER BY i.impression_id DESC LIMIT 1",
                              list(args)).fetchone()
        row = next(r for r in adslog.user_impressions(db, uid) if r["impression_id"] == iid)
    return row | {"user_id": uid}


def explain_cli(capsys, s, user, ad, *extra):
    code = cli.main(["--home", str(s.home), "explain", "--user", str(user), "--ad", str(ad), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_criteria_in_words_by_hand():
    assert ads_explain.criteria_met("Sci-Fi|Fantasy", "18-24|25-34", ["Drama", "Fantasy", "Sci-Fi"], "25-34") == [
        "Sci-Fi, Fantasy among your favourite genres (the campaign targets Sci-Fi, Fantasy)",
        "your age band 25-34 (the campaign targets 18-24, 25-34)"]
    assert ads_explain.criteria_met("Musical", "55+", ["Drama"], "18-24") == []
    assert ads_explain.criteria_met("", "", ["Drama"], None) == []


def test_an_untargeted_ad_of_a_user_without_ad_targeting_consent(world, tmp_path, capsys):
    s = private_copy(world, tmp_path / "copy")
    imp = last_impression(s, "i.policy = 'untargeted'")
    with opsdb.session(s) as db:
        assert not opsdb.ad_targeting_consent(db, [imp["user_id"]])[0]
    code, out, _ = explain_cli(capsys, s, imp["user_id"], imp["impression_id"], "--json")
    e = json.loads(out)
    assert code == 0 and e["why"] == "untargeted (no ad-targeting consent)" and e["policy"] == "untargeted"
    assert e["advertiser"] == imp["advertiser"] and e["creative"] == imp["product"] and e["slot"] == 3
    assert e["criteria_met"] == [] and e["reasons"] == [] and e["inferred_interest"] is None
    assert e["targeting"] == {"genres": [], "age_bands": []}
    assert e["answer"] == (f"You saw this ad from {imp['advertiser']} ({imp['product']}) on {imp['shown_at'][:10]}, "
                           "at position 3 of your list. You have not agreed to ad targeting, so it was untargeted: "
                           "picked at random among campaigns that target no one in particular. Nothing about you "
                           "was used to choose it.")
    row = access.audit_log(s, limit=1).iloc[0]
    assert (row["action"], row["outcome"], row["actor"]) == ("explain ad", "ok", access.cli_actor())
    assert row["target"] == pseudonym(imp["user_id"], pseudonym_key(s))
    code, out, _ = explain_cli(capsys, s, imp["user_id"], imp["impression_id"])
    assert out.splitlines()[0] == f"# Why am I seeing this ad? (user {imp['user_id']}, impression {imp['impression_id']})"
    assert "- chosen by: untargeted (no ad-targeting consent)" in out.splitlines()


def favourites_by_hand(s, user_id: int, before: str) -> list[str]:
    with opsdb.session(s) as db:
        genres = dict(db.execute("SELECT movie_id, genres FROM movies").fetchall())
        seen = {m for (m,) in db.execute(
            "SELECT movie_id FROM events WHERE kind = 'watch' AND user_id = ? AND occurred_at < ? UNION "
            "SELECT movie_id FROM ratings WHERE user_id = ? AND rated_at < ?", [user_id, before, user_id, before])}
    share = dict.fromkeys(GENRES, 0.0)
    for m in seen:
        gs = [g for g in genres[m].split("|") if g in share]
        for g in gs:
            share[g] += 1 / len(gs)
    ranked = sorted(GENRES, key=lambda g: (-share[g], GENRES.index(g)))[:3]
    return [g for g in GENRES if g in ranked and share[g] > 0]


def test_campaign_rate_targeting_names_the_criteria_met(world, capsys):
    imp = last_impression(world, "i.policy = 'campaign-rate' AND c.target_age_bands != '' AND c.target_genres = ''")
    code, out, _ = explain_cli(capsys, world, imp["user_id"], imp["impression_id"], "--json")
    e = json.loads(out)
    with opsdb.session(world) as db:
        band = opsdb.age_bands(db, [imp["user_id"]])[0]
        bands = adslog.campaigns(db).set_index("campaign_id").loc[imp["campaign_id"], "target_age_bands"]
    assert code == 0 and e["why"] == "campaign-rate targeting" and e["model"] is None
    assert e["criteria_met"] == [f"your age band {band} (the campaign targets {', '.join(bands.split('|'))})"]
    fav = favourites_by_hand(world, imp["user_id"], imp["shown_at"])
    assert e["inferred_interest"] == {"favourite_genres": fav} and fav
    assert e["answer"].endswith(f"From what you watched, your favourite genres are {', '.join(fav)}. Among the ads "
                                "you matched it won on its bid times how often people click it overall "
                                "(campaign-rate targeting); no prediction about you was made.")


def test_a_model_chosen_ad_gives_the_models_reasons_and_its_stored_p_click(world, capsys):
    imp = last_impression(world, "i.policy = 'model'")
    code, out, _ = explain_cli(capsys, world, imp["user_id"], imp["impression_id"], "--json")
    e = json.loads(out)
    version = registry.production(world, family="ads")["version"]
    assert code == 0 and e["why"] == f"ads model v{version}" and e["model_version"] == version
    assert e["model"]["p_click"] == pytest.approx(imp["p_click"], abs=1e-6)      # what the selection stored
    assert e["model"]["scored_as_of"] == imp["shown_at"][:10] + "T00:00:00"
    assert len(e["reasons"]) == 3 and all("the click chance (" in r for r in e["reasons"])
    assert e["reasons"][0].startswith(e["model"]["contributions"][0]["label"])
    assert f"estimated a {e['model']['p_click']:.1%} chance that you would click it" in e["answer"]
    assert "genre_interest" in e["inferred_interest"]


def test_a_feature_not_known_when_the_ad_was_chosen_is_said_in_words():
    """Every reason reads as an answer to the person who saw the ad: a value missing then is 'not known at that
    time', with why for the tastes the recommender had not learnt — never '= unknown'."""
    from core.ads.pipeline import reason
    c = lambda f, label, v, x: {"feature": f, "label": label, "value": v, "contribution": x}  # noqa: E731
    assert reason(c("aff_Comedy", "interest in Comedy (from the recommender)", None, -0.1234)) == (
        "interest in Comedy (from the recommender): not known at that time (we had not yet learnt your tastes from "
        "what you watched) — this lowers the click chance (-0.12 log-odds)")
    assert reason(c("genre_match", "a favourite genre is targeted", None, 0.3)) == (
        "a favourite genre is targeted: not known at that time (we had not yet learnt your tastes from what you "
        "watched) — this raises the click chance (+0.30 log-odds)")
    assert reason(c("bid", "the campaign's bid", None, 0.0)) == (
        "the campaign's bid: not known at that time — this does not change the click chance (+0.00 log-odds)")
    assert reason(c("genre_interest", "interest in the campaign's genres", 1.2, 0.41)) == (
        "interest in the campaign's genres = 1.20 raises the click chance (+0.41 log-odds)")
    assert reason(c("impressions_7d", "ads seen in the last 7 days", 2.0, -0.05)) == (
        "ads seen in the last 7 days = 2 lowers the click chance (-0.05 log-odds)")


def test_the_models_reasons_for_a_user_whose_tastes_were_not_known_yet(world):
    """The production ads model explains a candidate whose recommender affinities are missing (a user the CF model
    had not seen): no reason says 'unknown'; each missing one says it was not known at that time."""
    from core.ads import data, pipeline
    _, model = pipeline.production_model(world)
    campaigns = data.campaigns(world)
    as_of = last_impression(world, "i.policy = 'model'")["shown_at"]
    cross = scoring.pairs(world, [1], campaigns, as_of)
    cross[[f"aff_{g}" for g in GENRES]] = np.nan
    explained = pipeline.explain(model, cross, campaigns, scoring.recent_impressions(world, as_of), top=100)
    said = [(c, r) for e in explained for c, r in zip(e["contributions"], e["reasons"])]
    assert said and not any("unknown" in r for _, r in said)
    missing = [r for c, r in said if c["value"] is None]
    assert missing and all(": not known at that time (we had not yet learnt your tastes" in r for r in missing)


def test_an_impression_of_another_user_or_none_is_refused(world, tmp_path, capsys):
    s = private_copy(world, tmp_path / "copy")
    imp = last_impression(s, "i.policy = 'model'")
    other = imp["user_id"] % 300 + 1
    code, out, err = explain_cli(capsys, s, other, imp["impression_id"])
    assert (code, out) == (1, "") and err == (f"error: unknown ad impression {imp['impression_id']} for user {other}: "
                                              "not an ad this user was shown\n")
    row = access.audit_log(s, limit=1).iloc[0]
    assert (row["action"], row["outcome"]) == ("explain ad", "failed")
    code, _, err = explain_cli(capsys, s, imp["user_id"], imp["impression_id"], "--movie", "1")
    assert code == 1 and err.startswith("error: --ad does not go with --movie or --churn")
    code, _, err = explain_cli(capsys, s, 999999, imp["impression_id"])
    assert code == 1 and err == "error: unknown user 999999\n"


# ------------------------------------------------------------------ the model server
@pytest.fixture(scope="module")
def server_home(world, tmp_path_factory):
    s = private_copy(world, tmp_path_factory.mktemp("ads-server"))
    token = access.ensure_operator(s)
    access.add_operator(s, "ann", "ann-token-0123456789", role="analyst")
    return s, token


@pytest.fixture
def client(server_home):
    s, _ = server_home
    with TestClient(create_app(s, poll_seconds=0.05)) as c:
        yield c
    serving.clear_caches()


def test_the_server_explains_an_ad_to_operators_only(server_home, client):
    s, token = server_home
    imp = last_impression(s, "i.policy = 'model'")
    url = f"/explain/{imp['user_id']}/ad/{imp['impression_id']}"
    before = len(access.audit_log(s))
    assert client.get(url).status_code == 401
    r = client.get(url, headers={"Authorization": "Bearer ann:ann-token-0123456789"})
    assert r.status_code == 403 and "needs the role privacy-officer or admin" in r.json()["error"]
    ok = client.get(url, headers={"Authorization": f"Bearer admin:{token}"})
    assert ok.status_code == 200 and ok.json() == ads_explain.explain_ad(s, imp["user_id"], imp["impression_id"])
    missing = client.get(f"/explain/{imp['user_id']}/ad/99999999", headers={"Authorization": f"Bearer admin:{token}"})
    assert missing.status_code == 404 and missing.json() == {
        "error": f"unknown ad impression 99999999 for user {imp['user_id']}: not an ad this user was shown",
        "status": 404}
    nobody = client.get(f"/explain/999999/ad/{imp['impression_id']}", headers={"Authorization": f"Bearer admin:{token}"})
    assert nobody.status_code == 404 and nobody.json()["error"] == "unknown user 999999"
    audit = access.audit_log(s).head(len(access.audit_log(s)) - before)[::-1]
    assert list(zip(audit["action"], audit["outcome"])) == [
        ("explain", "denied"), ("explain", "denied"), ("explain ad", "ok"), ("explain ad", "failed"),
        ("explain ad", "failed")]
    assert set(audit["target"][audit["action"] == "explain ad"]) == {pseudonym(imp["user_id"], pseudonym_key(s)),
                                                                     pseudonym(999999, pseudonym_key(s))}
    assert set(audit["actor"][audit["action"] == "explain ad"]) == {"operator:admin"}


def consenting_user(s, consent: bool) -> int:
    with opsdb.session(s) as db:
        ids = np.arange(1, 301)
        return int(ids[opsdb.ad_targeting_consent(db, ids) == consent][0])


def test_recommend_carries_the_sponsored_slot_chosen_by_the_production_ads_model(server_home, client):
    s, _ = server_home
    uid = consenting_user(s, True)
    key = clients.add(s, "ads-front")
    r = client.get(f"/recommend/{uid}", params={"k": 5}, headers={clients.HEADER: key})
    body = r.json()
    slot = body["sponsored"]
    version = registry.production(s, family="ads")["version"]
    assert r.status_code == 200 and len(body["movie_ids"]) == 5              # the slot is extra
    assert (slot["policy"], slot["ads_model_version"], slot["position"], slot["arm"]) == ("model", version, 3,
                                                                                         "production")
    with opsdb.session(s) as db:
        stored = adslog.user_impressions(db, uid, limit=1)[0]
        camps = adslog.campaigns(db, active_only=True)
    assert stored["impression_id"] == slot["impression_id"] and stored["served_id"] == body["serve_id"]
    assert (stored["campaign_id"], stored["policy"], stored["model_version"]) == (slot["campaign_id"], "model", version)
    assert (stored["price"], stored["clicked"], stored["shown_at"]) == (0.0, 0, body["served_at"])
    assert stored["p_click"] == slot["p_click"] and stored["advertiser"] == slot["advertiser"]
    day_start = body["served_at"][:10] + "T00:00:00"
    p = scoring.scorer(s)([uid], camps, day_start)[0]
    column = list(camps["campaign_id"]).index(slot["campaign_id"])
    assert slot["p_click"] == round(float(p[column]), 6)                     # the production scorer's P(click)
    explained = ads_explain.explain_ad(s, uid, slot["impression_id"])       # and it explains what it chose
    assert explained["model"]["p_click"] == pytest.approx(slot["p_click"], abs=1e-6)
    anonymous = client.get(f"/recommend/{uid}", params={"k": 5}).json()
    assert "arm" not in anonymous["sponsored"] and "arm" not in anonymous and anonymous["sponsored"]["position"] == 3


def test_untargeted_without_consent_none_with_ads_0_or_ads_off(server_home, client, capsys):
    s, _ = server_home
    uid = consenting_user(s, False)
    slot = client.get(f"/recommend/{uid}").json()["sponsored"]
    with opsdb.session(s) as db:
        camp = adslog.campaigns(db).set_index("campaign_id").loc[slot["campaign_id"]]
        count = len(adslog.user_impressions(db, uid))
    assert (slot["policy"], slot["p_click"], slot["ads_model_version"]) == ("untargeted", None, None)
    assert camp["target_genres"] == "" and camp["target_age_bands"] == ""
    assert "sponsored" not in client.get(f"/recommend/{uid}", params={"ads": "0"}).json()
    with opsdb.session(s) as db:
        assert len(adslog.user_impressions(db, uid)) == count
    assert client.get(f"/recommend/{uid}", params={"ads": "2"}).status_code == 422
    assert cli.main(["--home", str(s.home), "ads", "switch", "off"]) == 0
    capsys.readouterr()
    assert "sponsored" not in client.get(f"/recommend/{consenting_user(s, True)}").json()
    assert cli.main(["--home", str(s.home), "ads", "switch", "on"]) == 0


def test_favourite_genres_match_the_auctions_rule():
    share = np.zeros((1, len(GENRES)))
    share[0, [GENRES.index("Drama"), GENRES.index("Comedy"), GENRES.index("Horror")]] = [2.0, 1.5, 0.5]
    assert [GENRES[i] for i in np.flatnonzero(auction.favourite_genres(share)[0])] == ["Comedy", "Drama", "Horror"]
