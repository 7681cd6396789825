"""Top 50 vs For You: the traditional list next to a user's personalized list."""
import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from core.governance import insights
from dashboard import cache, ui

st.title("Top 50 vs For You")
token = cache.token()
with ui.core_errors():
    movies = cache.movies(token)
    pop = cache.popularity(token)

if not ui.personal_view("For You list"):       # one user's history and list are personal data: the Top 50 only
    m_votes = st.slider("m — minimum votes for the Top 50 (0 = default: 90th percentile of vote counts)", 0, 500, 0, 5,
                        key="m")
    with ui.core_errors():
        top, m_used, C = cache.top50_table(token, m_votes or None)
    st.subheader("Top 50 (same for everyone)")
    st.caption(f"WR = v/(v+m)·R + m/(v+m)·C with m = {m_used:g} votes, C = {C:.2f}; {ui.plural(len(top), 'title')}")
    st.dataframe(top[["rank", "title", "year", "genres", "votes", "weighted_rating"]], hide_index=True, height=390,
                 key="top50_table",
                 column_config={"weighted_rating": st.column_config.NumberColumn("WR", format="%.3f")})
    st.stop()
with ui.core_errors():
    directory = cache.users(token)

labels = {int(r.user_id): f"user {r.user_id} — {ui.plural(r.watches, 'watch', 'watches')}, {ui.plural(r.ratings, 'rating')}" for r in directory.itertuples()}
default = int(directory.sort_values("watches", ascending=False)["user_id"].iloc[0]) if len(directory) else None
user_id = st.selectbox("User (type to search)", list(labels), index=list(labels).index(default) if default else 0,
                       format_func=labels.get, key="user")
m_votes = st.slider("m — minimum votes for the Top 50 (0 = default: 90th percentile of vote counts)", 0, 500, 0, 5, key="m")

ui.personal_view("For You list", user_id, banner=False)      # audited once per session and user
with ui.core_errors():
    prof = cache.profile(token, user_id)
    rec = cache.recommendation(token, user_id, 10)
    top, m_used, C = cache.top50_table(token, m_votes or None)

with st.container(border=True):
    a, b, c, d = st.columns(4)
    a.metric("Watched titles", prof["watches"])
    b.metric("Ratings", prof["ratings"], help="mean rating shown below")
    c.metric("Favourite genres", ", ".join(prof["favourite_genres"]) or "—")
    d.metric("Personalization consent", "yes" if prof["consent_personalization"] else "withdrawn")
    if len(prof["recent"]):
        st.caption("Recent watches: " + "; ".join(f"{r.title} ({r.year}, {r.watched_pct:.0f}%)" for r in prof["recent"].itertuples()))

personal = movies.set_index("movie_id").reindex(rec.movie_ids).reset_index()
personal.insert(0, "rank", range(1, len(personal) + 1))
personal["score"] = rec.scores
if rec.ranker_version:     # the ranker's scores are log-odds: shown as the probability they stand for
    personal["score"] = 100 / (1 + np.exp(-np.asarray(rec.scores, dtype=float)))
    SCORE = st.column_config.NumberColumn("P(watch)", format="%.1f%%", width=64,
                                          help="the ranker's predicted chance that this user watches the title "
                                               "(its log-odds score s as 1 / (1 + e^−s))")
else:
    SCORE = st.column_config.NumberColumn("score", format="%.3f", width=64,
                                          help="the collaborative-filtering model's score (user factors · title "
                                               "factors): higher ranks first; not a probability")
top10 = top.head(10)
# Both lists share half the page (about 460 px at 1400 px): column widths in px that add up to less, so no
# column (WR!) hides behind a horizontal scrollbar; long titles and genres are cut, in full on hover.
NARROW = {"rank": st.column_config.NumberColumn("#", width=36),
          "year": st.column_config.NumberColumn(format="%d", width=52)}
left, right = st.columns(2)
with left:
    st.subheader("Top 50 (same for everyone)")
    st.caption(f"WR = v/(v+m)·R + m/(v+m)·C with m = {m_used:g} votes, C = {C:.2f}; {ui.plural(len(top), 'title')} "
               + ("qualifies" if len(top) == 1 else "qualify"))
    st.dataframe(top[["rank", "title", "year", "genres", "votes", "weighted_rating"]], hide_index=True,
                 height=390, key="top50_table", column_config={**NARROW, "title": st.column_config.TextColumn(width=150),
                                                               "genres": st.column_config.TextColumn(width=100),
                                                               "votes": st.column_config.NumberColumn(width=56),
                                                               "weighted_rating": st.column_config.NumberColumn("WR", format="%.3f", width=56)})
with right:
    st.subheader("For You")
    if rec.path == "model":
        st.caption(f"Personalized by model v{rec.model_version} (trained on {rec.data_version})"
                   + (f", re-ranked by ranker v{rec.ranker_version} (P(watch) = its predicted chance of a watch)"
                      if rec.ranker_version else " (score: higher ranks first, not a probability)"))
    else:
        st.warning(f"Falling back to the Top 50: {rec.reason}.")
    st.dataframe(personal[["rank", "title", "year", "genres", "score"]], hide_index=True, height=390, key="for_you_table",
                 column_config={**NARROW, "title": st.column_config.TextColumn(width=166),
                                 "genres": st.column_config.TextColumn(width=130),
                                 "score": SCORE})

cmp = insights.compare_lists(top10["movie_id"].tolist(), rec.movie_ids)
s_top = insights.list_summary(top10["movie_id"].tolist(), movies, pop)
s_you = insights.list_summary(rec.movie_ids, movies, pop)
a, b, c = st.columns(3)
a.metric("Overlap of the top 10s", f"{cmp['overlap']} / 10")
b.metric("Novelty, Top 50 top 10", f"{s_top['novelty']:.2f} bits", help="mean −log2(share of users who watched the title)")
c.metric("Novelty, For You", f"{s_you['novelty']:.2f} bits", delta=f"{s_you['novelty'] - s_top['novelty']:+.2f}")
mix = pd.concat([pd.DataFrame({"genre": list(s["genre_mix"]), "share": list(s["genre_mix"].values()), "list": name})
                 for name, s in (("Top 10 of the Top 50", s_top), ("For You", s_you)) if s["genre_mix"]])
if len(mix):
    fig = px.bar(mix, x="genre", y="share", color="list", barmode="group", labels={"share": "share of list"},
                 title="Genre mix of each list")
    fig.update_yaxes(tickformat=".0%")
    st.plotly_chart(fig, key="genre_mix")
