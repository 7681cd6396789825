"""Plotly figures built from core results (pages only display them)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.monitoring import drift
from core.monitoring.monitoring import FEATURE_LABELS, FEATURES, QUARANTINE_RATE_ALERT


def percent_axis(values) -> str:
    """A plotly tick format for shares with enough decimals that ticks differ: '.0%' from 10 % up, else
    '.1%' or '.2%' (a 0–2.5 % axis would otherwise read '2%, 2%, 1%, 1%, 0%')."""
    top = pd.to_numeric(pd.Series(list(values)), errors="coerce").abs().max()
    if pd.isna(top) or top >= 0.1:
        return ".0%"
    return ".1%" if top >= 0.01 else ".2%"


def _markers(fig, alerts: pd.DataFrame, actions: pd.DataFrame, rows: int) -> None:
    for _, a in alerts.iterrows():
        for r in range(1, rows + 1):
            fig.add_vline(x=str(a["window_start"])[:10], line_dash="dot", line_color="#E8553D", row=r, col=1)
    if len(actions):
        for _, act in actions[actions["kind"] == "retrain"].iterrows():
            for r in range(1, rows + 1):
                fig.add_vline(x=str(act["day"]), line_dash="dash", line_color="#4CAF50", row=r, col=1)


def _day_ticks(fig, n_days: int) -> None:
    """Whole simulated days on the x axis (never '12:00'), at most about 12 labels."""
    fig.update_xaxes(tickformat="%b %d", dtick=86_400_000 * max(1, -(-n_days // 12)))


def drift_timeline(days: pd.DataFrame, scores: pd.DataFrame, alerts: pd.DataFrame, actions: pd.DataFrame) -> go.Figure:
    """Primary drift score per feature with its threshold, online hit rate (model vs Top 50) and the
    quarantine rate on one time axis; red dotted lines = alerts opened, green dashed = retrains."""
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.45, 0.35, 0.2],
                        subplot_titles=("Data drift (primary test per feature) vs threshold",
                                        "Online hit rate@10 of served lists", "Quarantine rate (data quality)"))
    primary = {f: tests[0] for f, (_, tests) in FEATURES.items()}
    if len(scores):
        main = scores[scores.apply(lambda r: primary.get(r["feature"]) == r["test"], axis=1)]
        for feature, grp in main.groupby("feature"):
            fig.add_trace(go.Scatter(x=grp["day"], y=grp["score"], mode="lines+markers", name=FEATURE_LABELS[feature]),
                          row=1, col=1)
        fig.add_hline(y=0.1, line_dash="dash", line_color="orange", annotation_text="PSI 0.1", row=1, col=1)
        fig.add_hline(y=0.25, line_dash="dash", line_color="red", annotation_text="PSI 0.25", row=1, col=1)
        if (main["feature"] == "title_share").any():
            surge = drift.get_test(primary["title_share"]).default_threshold
            fig.add_hline(y=surge, line_dash="dot", line_color="purple", annotation_text=f"title surge {surge:g}",
                          annotation_position="bottom right", row=1, col=1)
    if len(days):
        fig.add_trace(go.Scatter(x=days["day"], y=days["online"].map(lambda o: o.get("hit_rate_model")),
                                 mode="lines+markers", name="model", line_color="#E8A33D"), row=2, col=1)
        fig.add_trace(go.Scatter(x=days["day"], y=days["online"].map(lambda o: o.get("hit_rate_top50")),
                                 mode="lines+markers", name="Top 50 (control)", line_color="#8AA1B1"), row=2, col=1)
        fig.add_trace(go.Bar(x=days["day"], y=days["quality"].map(lambda q: q.get("quarantine_rate")),
                             name="quarantined share", marker_color="#E8553D"), row=3, col=1)
        fig.add_hline(y=QUARANTINE_RATE_ALERT, line_dash="dash", line_color="red", row=3, col=1)
    _markers(fig, alerts, actions, 3)
    fig.update_yaxes(title_text="score", row=1, col=1)
    fig.update_yaxes(title_text="hit rate", tickformat=".0%", row=2, col=1)
    rates = days["quality"].map(lambda q: q.get("quarantine_rate")) if len(days) else []
    fig.update_yaxes(title_text="rows", tickformat=percent_axis([*rates, QUARANTINE_RATE_ALERT]), row=3, col=1)
    _day_ticks(fig, len(days))
    fig.update_xaxes(title_text="day (simulated clock)", row=3, col=1)
    fig.update_layout(height=720, legend=dict(orientation="h", y=-0.12), margin=dict(t=40))
    return fig


def model_drift(days: pd.DataFrame, actions: pd.DataFrame, top_genres: int = 6) -> go.Figure:
    """Served score quantiles and the genre mix of recommended titles per day; green dashed = retrains."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=("Scores of the served lists (p10 / p50 / p90)",
                                        "Genres of the recommended titles (share of slots)"))
    model = days["model"] if len(days) else pd.Series(dtype=object)
    for q, dash in (("score_p90", "dot"), ("score_p50", "solid"), ("score_p10", "dot")):
        fig.add_trace(go.Scatter(x=days["day"], y=model.map(lambda m, q=q: m.get(q)), mode="lines+markers",
                                 name=q.replace("score_", ""), line_dash=dash, line_color="#E8A33D"), row=1, col=1)
    shares = pd.DataFrame([m.get("recommended_genres") or {} for m in model], index=days["day"] if len(days) else None)
    if not shares.empty:
        shares = shares.fillna(0)
        shares = shares.div(shares.sum(axis=1).where(lambda x: x > 0), axis=0).fillna(0)
        keep = shares.mean().sort_values(ascending=False).index[:top_genres]
        shares["other"] = shares.drop(columns=keep).sum(axis=1)
        for genre in [*keep, "other"]:
            fig.add_trace(go.Bar(x=shares.index, y=shares[genre], name=genre), row=2, col=1)
    _markers(fig, pd.DataFrame(), actions, 2)
    fig.update_yaxes(title_text="score", row=1, col=1)
    fig.update_yaxes(title_text="share", tickformat=".0%", row=2, col=1)
    _day_ticks(fig, len(days))
    fig.update_layout(barmode="stack", height=560, legend=dict(orientation="h", y=-0.15), margin=dict(t=40))
    return fig


def feature_comparison(dist: pd.DataFrame, feature: str) -> go.Figure:
    fig = go.Figure()
    for window, grp in dist.groupby("window", sort=False):
        fig.add_trace(go.Bar(x=grp["bucket"], y=grp["share"], name=window))
    fig.update_layout(barmode="group", title=f"{FEATURE_LABELS.get(feature, feature)}: reference vs current",
                      yaxis_tickformat=percent_axis(dist["share"]), yaxis_title="share", xaxis_title="bucket")
    return fig


ARM_COLORS = {"production": "#E8A33D", "canary": "#4C9BE8", "shadow": "#9B7FD1"}


def arm_quality(history: pd.DataFrame, decisions: pd.DataFrame | None = None) -> go.Figure:
    """Online hit rate@10 per release arm and day (markers sized by lists judged); a decision's day is a
    vertical line (green: promote, red: rollback, grey: ramp or stop)."""
    fig = go.Figure()
    for arm, grp in history.groupby("arm", sort=False):
        label = arm if arm == "production" else f"{arm} (v{', v'.join(str(int(v)) for v in grp['version'].dropna().unique())})"
        fig.add_trace(go.Scatter(x=grp["day"], y=grp["hit_rate"], mode="lines+markers", name=label,
                                 line_color=ARM_COLORS.get(arm), line_dash="dot" if arm == "shadow" else "solid",
                                 customdata=grp[["users"]], hovertemplate="%{x}: %{y:.1%} of %{customdata[0]} lists"))
    colors = {"promote": "#4CAF50", "rollback": "#E8553D"}
    if decisions is not None and len(decisions):
        for _, d in decisions[decisions["decision"] != "continue"].dropna(subset=["day"]).iterrows():
            fig.add_vline(x=d["day"], line_dash="dash", line_color=colors.get(d["decision"], "#8AA1B1"))
    fig.update_layout(height=360, yaxis_title="hit rate@10", yaxis_tickformat=".0%", xaxis_title="day (simulated clock)",
                      legend=dict(orientation="h", y=-0.25), margin=dict(t=30),
                      title="Online hit rate@10 per arm (lists shown that day that led to a watch)")
    _day_ticks(fig, history["day"].nunique() if len(history) else 0)
    return fig
