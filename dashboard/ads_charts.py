"""Plotly figures of the Ads page, built from `core.governance.ads_insights` results (the page only shows them)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.charts import _day_ticks, percent_axis

COLORS = {"model": "#E8A33D", "campaign click rates": "#8AA1B1", "revenue": "#4C9BE8", "hit": "#E8A33D",
          "churn": "#E8553D"}


def panels(daily: pd.DataFrame) -> list[str]:
    """The panels of `over_time` that have at least one value: 'revenue', 'hit', 'churn' (an empty panel draws a
    meaningless axis, so it is left out and the page says what would fill it)."""
    if not len(daily):
        return []
    have = {"revenue": daily["impressions"].notna().any(), "hit": daily["hit_rate_model"].notna().any(),
            "churn": daily["churn_rate"].notna().any()}
    return [name for name in ("revenue", "hit", "churn") if have[name]]


def over_time(daily: pd.DataFrame) -> go.Figure:
    """Ad revenue per simulated day above the recommender's online hit rate@10 and the churn rate of active users,
    on one time axis: what ads earn next to what they may cost in engagement."""
    shown = panels(daily)
    titles = {"revenue": "Ad revenue per day (clicks × second price)", "hit": "Online hit rate@10 of the served lists",
              "churn": "Churn rate of active users (no watch in the next 14 days)"}
    rows = max(len(shown), 1)
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=[titles[p] for p in shown] or None)
    for i, name in enumerate(shown, start=1):
        if name == "revenue":
            fig.add_trace(go.Bar(x=daily["day"], y=daily["revenue"], name="revenue", marker_color=COLORS["revenue"],
                                 customdata=daily[["impressions", "clicks"]].fillna(0),
                                 hovertemplate="%{x}: %{y:.2f} from %{customdata[1]} clicks on %{customdata[0]} ads"
                                               "<extra></extra>"), row=i, col=1)
            fig.update_yaxes(title_text="revenue", row=i, col=1)
        else:
            col = "hit_rate_model" if name == "hit" else "churn_rate"
            fig.add_trace(go.Scatter(x=daily["day"], y=daily[col], mode="lines+markers", connectgaps=False,
                                     name="hit rate@10" if name == "hit" else "churn rate", line_color=COLORS[name]),
                          row=i, col=1)
            fig.update_yaxes(title_text="hit rate" if name == "hit" else "churn rate",
                             tickformat=percent_axis(daily[col]), row=i, col=1)
    _day_ticks(fig, len(daily))
    fig.update_xaxes(title_text="day (simulated clock)", row=rows, col=1)
    fig.update_layout(height=260 + 200 * (rows - 1), showlegend=False, margin=dict(t=40, b=10))
    return fig


def calibration(table: pd.DataFrame) -> go.Figure:
    """Predicted vs observed click rate per bin of predicted probability (10 equal-width bins of [0, 1], the ECE's),
    model and campaign click rates on the same holdout, against the diagonal; marker size = rows in the bin."""
    fig = go.Figure()
    top = float(max(table["predicted"].max(), table["observed"].max(), 0.02)) * 1.1
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="perfectly calibrated",
                             line=dict(dash="dot", color="#999")))
    for who, grp in table.groupby("who", sort=False):
        fig.add_trace(go.Scatter(x=grp["predicted"], y=grp["observed"], mode="lines+markers", name=who,
                                 line_color=COLORS.get(who), customdata=grp[["rows"]],
                                 marker=dict(size=[min(6 + n ** 0.5 / 3, 18) for n in grp["rows"]]),
                                 hovertemplate="predicted %{x:.2%}, observed %{y:.2%} over %{customdata[0]} "
                                               "impressions<extra></extra>"))
    fmt = percent_axis([0.0, top])
    fig.update_layout(title="Calibration on the holdout (predicted vs observed click rate per bin)", height=360,
                      margin=dict(t=40), xaxis=dict(title="predicted click probability", tickformat=fmt),
                      yaxis=dict(title="observed click rate", tickformat=fmt), legend=dict(orientation="h", y=-0.25))
    return fig
