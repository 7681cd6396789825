"""Plotly figures built from core results (pages only display them)."""
from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.monitoring import drift
from core.monitoring.monitoring import FEATURE_LABELS, FEATURES, QUARANTINE_RATE_ALERT


def percent_axis(values) -> str:
    """A plotly tick format for shares with enough decimals that ticks differ: '.0%' from 10 % up, else
    '.1%' or '.2%' (a 0–2.5 % axis would otherwise read '2%, 2%, 1%, 1%, 0%'), and more when the values span
    a narrow band (10.2–10.9 % would read '10%, 10%, 11%'): about five ticks' step, to one significant digit."""
    shares = pd.to_numeric(pd.Series(list(values)), errors="coerce").dropna()
    top = shares.abs().max() if len(shares) else float("nan")
    if pd.isna(top):
        return ".0%"
    digits = 0 if top >= 0.1 else 1 if top >= 0.01 else 2
    span = float(shares.max() - shares.min())
    if span > 0:
        step = span * 100 / 5                          # in percentage points
        digits = max(digits, min(3, -math.floor(math.log10(step))))
    return f".{max(digits, 0)}%"


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
    fig.update_layout(height=360, yaxis_title="hit rate@10", yaxis_tickformat=percent_axis(history["hit_rate"]),
                      xaxis_title="day (simulated clock)",
                      legend=dict(orientation="h", y=-0.25), margin=dict(t=30),
                      title="Online hit rate@10 per arm (lists shown that day that led to a watch)")
    _day_ticks(fig, history["day"].nunique() if len(history) else 0)
    return fig


# --- churn ------------------------------------------------------------------------------------------------
CHURN_COLORS = {"model": "#E8A33D", "recency rule": "#8AA1B1", "observed": "#4C9BE8"}


def risk_histogram(risk, title: str = "Predicted churn risk of the scored users") -> go.Figure:
    """Share of scored users per 5-point risk band, with the mean risk as a dashed line."""
    fig = go.Figure(go.Histogram(x=list(risk), xbins=dict(start=0.0, end=1.0, size=0.05), histnorm="percent",
                                 marker_color=CHURN_COLORS["model"], name="users"))
    if len(risk):
        mean = float(pd.Series(list(risk)).mean())
        fig.add_vline(x=mean, line_dash="dash", line_color="#E8553D", annotation_text=f"mean {mean:.0%}")
    fig.update_layout(title=title, height=300, margin=dict(t=40, b=10), bargap=0.05, showlegend=False,
                      xaxis=dict(title="risk of no watch in the next 14 days", tickformat=".0%", range=[0, 1]),
                      yaxis_title="% of users")
    return fig


def churn_calibration(table: pd.DataFrame) -> go.Figure:
    """Reliability curve: observed churn rate per bin of predicted risk (model, recency rule) vs the diagonal."""
    fig = go.Figure()
    top = float(max(table["predicted"].max(), table["observed"].max(), 0.05)) if len(table) else 1.0
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="perfectly calibrated",
                             line=dict(dash="dot", color="#999")))
    for who, grp in table.groupby("who", sort=False):
        fig.add_trace(go.Scatter(x=grp["predicted"], y=grp["observed"], mode="lines+markers", name=who,
                                 line_color=CHURN_COLORS.get(who)))
    fig.update_layout(title="Calibration on the holdout (10 quantile bins)", height=340, margin=dict(t=40),
                      xaxis=dict(title="predicted risk", tickformat=".0%"),
                      yaxis=dict(title="observed churn rate", tickformat=".0%"), legend=dict(orientation="h", y=-0.25))
    return fig


def churn_online(days: list[dict]) -> go.Figure:
    """Per scoring day: mean predicted risk of the stored scores vs the share of those users who churned."""
    frame = pd.DataFrame(days)
    fig = go.Figure()
    if len(frame):
        label = frame["as_of"] + frame["model_version"].map(lambda v: f" (v{int(v)})")
        fig.add_trace(go.Bar(x=label, y=frame["predicted"], name="predicted (mean risk)",
                             marker_color=CHURN_COLORS["model"], customdata=frame[["users"]],
                             hovertemplate="%{x}: %{y:.1%} predicted for %{customdata[0]} users"))
        fig.add_trace(go.Bar(x=label, y=frame["observed"], name="observed (churned within 14 days)",
                             marker_color=CHURN_COLORS["observed"]))
    fig.update_layout(title="Online check: stored scores vs who churned", height=340, barmode="group",
                      margin=dict(t=40), yaxis=dict(title="share of scored users", tickformat=percent_axis(
                          [0.0, *frame.get("predicted", []), *frame.get("observed", [])])),
                      xaxis_title="scoring day (model version)", legend=dict(orientation="h", y=-0.3))
    return fig


def churn_and_quality(frame: pd.DataFrame) -> go.Figure:
    """The world's churn rate per day (active users with no watch in the next 14 days) above the online
    hit rate@10 of the served lists (model vs the Top 50 control), on one simulated time axis. A panel whose
    series has no value yet is left out (an empty panel draws a meaningless −100 %…400 % axis); the page says
    what will fill it (`churn_quality_panels`)."""
    churn_panel, hit_panel = churn_quality_panels(frame)
    hits = ("hit_rate_model", "hit_rate_top50")
    titles = ([("churn", "Churn rate of active users (no watch in the next 14 days)")] if churn_panel else []) + \
             ([("hit", "Online hit rate@10 of the served lists")] if hit_panel else [])
    rows = max(len(titles), 1)
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=[t for _, t in titles] or None)
    row = {name: i + 1 for i, (name, _) in enumerate(titles)}
    if churn_panel:
        fig.add_trace(go.Scatter(x=frame["day"], y=frame["churn_rate"], mode="lines+markers", name="churn rate",
                                 line_color="#E8553D", customdata=frame[["active_users"]],
                                 hovertemplate="%{x}: %{y:.1%} of %{customdata[0]} active users"), row=row["churn"], col=1)
        fig.update_yaxes(title_text="churn rate", tickformat=percent_axis(frame["churn_rate"]), row=row["churn"], col=1)
    if hit_panel:
        for col, name, color in (("hit_rate_model", "model", "#E8A33D"), ("hit_rate_top50", "Top 50 (control)", "#8AA1B1")):
            fig.add_trace(go.Scatter(x=frame["day"], y=frame[col], mode="lines+markers", name=name, line_color=color,
                                     connectgaps=False), row=row["hit"], col=1)
        fig.update_yaxes(title_text="hit rate", tickformat=percent_axis(pd.concat([frame[c] for c in hits])),
                         row=row["hit"], col=1)
    _day_ticks(fig, len(frame))
    fig.update_xaxes(title_text="day (simulated clock)", row=rows, col=1)
    fig.update_layout(height=280 + 240 * (rows - 1), legend=dict(orientation="h", y=-0.15 * 2 / (rows + 1)),
                      margin=dict(t=40))
    return fig


def churn_quality_panels(frame: pd.DataFrame) -> tuple[bool, bool]:
    """(churn-rate panel has a value, hit-rate panel has a value) for `churn_and_quality`."""
    if not len(frame):
        return False, False
    return bool(frame["churn_rate"].notna().any()), bool(frame[["hit_rate_model", "hit_rate_top50"]].notna().any().any())


def _dot_text(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"')


STALE_STYLE = 'color="#E8553D", fillcolor="#FDECEA", style="rounded,filled,dashed", penwidth=2'
CURRENT_STYLE = 'color="#4CAF50", fillcolor="#EDF7EE", style="rounded,filled"'
ABSENT_STYLE = 'color="#9E9E9E", fillcolor="#F5F5F5", style="rounded,filled,dotted", fontcolor="#757575"'


def dependency_dot(deps: dict) -> str:
    """A Graphviz DOT digraph of the four model families (`churn_insights.dependencies`): each node names its
    production version and is marked STALE (red, dashed) when what it depends on changed since it was trained;
    the arrows say what flows from one family into the other (a `deps` without "ads" draws it absent)."""
    cf, rk, ch = deps["cf"], deps["ranker"], deps["churn"]
    ad = deps.get("ads") or {"version": None, "stale": False}

    def node(name: str, title: str, version, detail: str | None, stale: bool) -> str:
        if version is None:
            lines, style = [title, "no production version"], ABSENT_STYLE
        else:
            lines = [title, f"v{version} in production" + (f" · {detail}" if detail else "")] + (["STALE"] if stale else [])
            style = STALE_STYLE if stale else CURRENT_STYLE
        label = "\\n".join(_dot_text(t) for t in lines)
        return f'  {name} [label="{label}", {style}];'

    def saw(family: str) -> str:
        if ch.get("version") is None:
            return ""
        deps_ = ch.get("depends_on") or {}
        at_training = (deps_.get("at_training") or {}).get(family)
        versions = sorted(set((deps_.get("served") or {}).get(family, [])) | set((deps_.get("production") or {}).get(family, []))
                          | ({at_training} if at_training is not None else set()))
        return "\\n(trained while " + (", ".join(f"v{v}" for v in versions) or "none") + " served)"

    def trained_with(family: str) -> str:
        if ad.get("version") is None:
            return ""
        v = ((ad.get("depends_on") or {}).get("at_training") or {}).get(family)
        return "\\n(trained with " + (f"v{v}" if v is not None else "none") + ")"

    ranker_on = "candidates" + (f" of v{rk['depends_on']}" if rk["version"] is not None and rk["depends_on"] is not None else "")
    return "\n".join([
        "digraph model_families {",
        '  rankdir=TB; bgcolor="transparent"; nodesep=0.8; ranksep=0.7;',
        '  node [shape=box, fontname="Helvetica", fontsize=16, margin="0.2,0.1", fontcolor="#212121"];',
        '  edge [fontname="Helvetica", fontsize=13, color="#90A4AE", fontcolor="#B0BEC5", penwidth=1.5];',
        node("cf", "Collaborative filtering (cf)", cf["version"], cf.get("model_kind"), False),
        node("ranker", "Ranker", rk["version"], None, rk["stale"]),
        node("churn", "Churn", ch.get("version"), f"trained {str(ch.get('created_at'))[:10]}" if ch.get("created_at") else None,
             bool(ch.get("stale"))),
        node("ads", "Ads targeting", ad.get("version"),
             f"trained {str(ad.get('created_at'))[:10]}" if ad.get("created_at") else None, bool(ad.get("stale"))),
        f'  cf -> ranker [label="{ranker_on}"];',
        f'  cf -> churn [label="served lists → features{saw("cf")}"];',
        f'  ranker -> churn [label="re-ranked lists → features{saw("ranker")}"];',
        f'  cf -> ads [label="genre affinities{trained_with("cf")}"];',
        f'  churn -> ads [label="churn risk{trained_with("churn")}"];',
        "}",
    ])


def churn_contributions(explanation: dict, top: int = 12) -> go.Figure:
    """One user's SHAP contributions to the calibrated log-odds of their churn risk (`explain_user`), biggest
    effect on top; red raises the risk, green lowers it. base + Σ contributions = the risk's log-odds."""
    items = sorted(explanation["contributions"], key=lambda c: abs(c["contribution"]))[-top:]

    def shown(v):
        return "unknown" if v is None else (f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}")
    fig = go.Figure(go.Bar(
        x=[c["contribution"] for c in items], y=[f"{c['label']} = {shown(c['value'])}" for c in items], orientation="h",
        marker_color=["#E8553D" if c["contribution"] > 0 else "#4CAF50" for c in items],
        hovertemplate="%{y}: %{x:+.3f} log-odds<extra></extra>"))
    fig.update_layout(title=f"Churn v{explanation['version']}: from base {explanation['base_logit']:+.2f} to "
                            f"{explanation['logit']:+.2f} log-odds = {explanation['risk']:.0%} risk",
                      height=90 + 32 * len(items), margin=dict(t=40, l=10), xaxis_title="SHAP contribution (log-odds)",
                      yaxis=dict(automargin=True))
    return fig


SEVERITY_COLORS = {"none": "#4CAF50", "moderate": "#E8A33D", "significant": "#E8553D", "insufficient": "#9E9E9E"}
SEVERITY_METRIC_COLORS = {"none": "green", "moderate": "orange", "significant": "red", "insufficient": "gray"}


def churn_feature_psi(features: list[dict]) -> go.Figure:
    """PSI of each churn feature (stored scores of one day vs the reference holdout), coloured by severity;
    a feature with too few rows to judge is a grey stub marked 'insufficient'."""
    rows = sorted(features, key=lambda f: -1.0 if f["psi"] is None else f["psi"])
    fig = go.Figure(go.Bar(
        x=[0.0 if f["psi"] is None else f["psi"] for f in rows], y=[f["label"] for f in rows], orientation="h",
        marker_color=[SEVERITY_COLORS.get(f["severity"], "#9E9E9E") for f in rows],
        text=[f["severity"] if f["psi"] is None else f"{f['psi']:.3f}" for f in rows],
        customdata=[f["severity"] for f in rows], textposition="outside", cliponaxis=False,
        hovertemplate="%{y}: %{text} (%{customdata})<extra></extra>"))
    top = max([f["psi"] or 0.0 for f in rows] + [0.3])
    fig.add_vline(x=0.1, line_dash="dash", line_color="orange")
    fig.add_vline(x=0.25, line_dash="dash", line_color="red")
    fig.update_layout(title="Churn features: PSI vs the reference",
                      height=110 + 30 * len(rows), margin=dict(t=40, l=10, r=10), showlegend=False,
                      xaxis=dict(title="PSI", range=[0, top * 1.3]), yaxis=dict(automargin=True))
    return fig


def churn_risk_shift(risk: dict) -> go.Figure:
    """Share of users per tenth of predicted risk: the reference holdout vs the day's stored scores."""
    edges = risk["bins"]
    labels = [f"{a:.0%}–{b:.0%}" for a, b in zip(edges[:-1], edges[1:])]
    fig = go.Figure([go.Bar(x=labels, y=risk["reference"], name="reference (holdout)", marker_color="#8AA1B1"),
                     go.Bar(x=labels, y=risk["current"], name="current (stored scores)", marker_color="#E8A33D")])
    psi = "not judged (too few rows)" if risk["psi"] is None else f"PSI {risk['psi']:.3f}, {risk['severity']}"
    fig.update_layout(title=f"Predicted risk, reference vs current: {psi}", barmode="group", height=420,
                      margin=dict(t=40), xaxis_title="predicted churn risk", legend=dict(orientation="h", y=-0.4),
                      yaxis=dict(title="share of users", tickformat=".0%"))
    return fig


def churn_drift_history(history: list[dict]) -> go.Figure:
    """Per scored day: the predicted risk's PSI and the largest feature PSI (left axis, with the 0.1 and 0.25
    lines) and the mean predicted risk (right axis)."""
    frame = pd.DataFrame(history)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if len(frame):
        fig.add_trace(go.Scatter(x=frame["as_of"], y=frame["risk_psi"], mode="lines+markers", name="risk PSI",
                                 line_color="#E8553D"))
        fig.add_trace(go.Scatter(x=frame["as_of"], y=frame["max_feature_psi"], mode="lines+markers",
                                 name="largest feature PSI", line_color="#9B7FD1", line_dash="dot"))
        fig.add_trace(go.Scatter(x=frame["as_of"], y=frame["mean_risk"], mode="lines+markers", name="mean risk",
                                 line_color="#E8A33D", customdata=frame[["users"]],
                                 hovertemplate="%{x}: mean %{y:.1%} over %{customdata[0]} users"), secondary_y=True)
    fig.add_hline(y=0.1, line_dash="dash", line_color="orange")
    fig.add_hline(y=0.25, line_dash="dash", line_color="red")
    fig.update_yaxes(title_text="PSI", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="mean predicted risk", tickformat=".0%", rangemode="tozero", secondary_y=True,
                     showgrid=False)
    fig.update_xaxes(type="category", title_text="scored day")
    fig.update_layout(title="Churn drift per scored day", height=360, margin=dict(t=40),
                      legend=dict(orientation="h", y=-0.3))
    return fig


def yardstick_history(history: pd.DataFrame) -> go.Figure:
    """The gate's evidence per retrain over simulated time (`tracking.gate_history`): the holdout's Δ nDCG@10 on
    top, the counterfactual Δ watches/list (the gate's estimator on the exploration log) and the world's true Δ watches/list below —
    two panels because the units differ. Error bars are the 90 % intervals; a filled marker is the estimate that
    decided that retrain, a hollow one the estimate that did not."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.17,
                        subplot_titles=("Holdout: Δ nDCG@10 (candidate − production)",
                                        "Exploration log vs truth: Δ expected watches per list"))
    h = history.copy()
    h["x"] = pd.to_datetime(h["at"])
    h["label"] = "job " + h["job_id"].astype(str) + ", v" + h["version"].astype(str)

    def intervals(point, lo, hi, decided, name, color, row):
        shown = h[h[point].notna()]
        if shown.empty:
            return
        filled = shown["decided_by"] == decided
        fig.add_trace(go.Scatter(
            x=shown["x"], y=shown[point], mode="markers", name=name, marker_color=color, text=shown["label"],
            marker=dict(size=10, symbol=["circle" if f else "circle-open" for f in filled], line_width=2),
            error_y=dict(type="data", symmetric=False, array=(shown[hi] - shown[point]).fillna(0),
                         arrayminus=(shown[point] - shown[lo]).fillna(0)),
            hovertemplate="%{text}<br>%{y:+.4f}<extra>" + name + "</extra>"), row=row, col=1)

    intervals("holdout_delta", "holdout_lo", "holdout_hi", "holdout", "holdout Δ nDCG@10 (90% interval)",
              "#8AA1B1", 1)
    intervals("cf_delta", "cf_lo", "cf_hi", "counterfactual", "counterfactual Δ watches/list (90% interval)",
              "#E8A33D", 2)
    truth = h[h["truth_delta"].notna()]
    if len(truth):
        colors = truth["truth_verdict"].map({"right": "#4CAF50"}).fillna("#E8553D")
        fig.add_trace(go.Scatter(x=truth["x"], y=truth["truth_delta"], mode="markers", name="true Δ watches/list",
                                 marker=dict(symbol="diamond", size=11, color=colors), text=truth["label"],
                                 customdata=truth["truth_verdict"],
                                 hovertemplate="%{text}<br>true %{y:+.4f} — %{customdata}<extra></extra>"),
                      row=2, col=1)
    for row in (1, 2):
        fig.add_hline(y=0, line_dash="dot", line_color="grey", row=row, col=1)
    fig.update_yaxes(title_text="Δ nDCG@10", tickformat="+.3f", row=1, col=1)
    fig.update_yaxes(title_text="Δ watches/list", tickformat="+.2f", row=2, col=1)
    fig.update_xaxes(title_text="retrain time (simulated clock)", row=2, col=1)
    fig.update_layout(height=460, legend=dict(orientation="h", y=-0.22), margin=dict(t=40))
    return fig
