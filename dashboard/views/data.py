"""Data: ETL runs and data versions, the validation report and the quarantine, daily volumes."""
import pandas as pd
import plotly.express as px
import streamlit as st

from core.warehouse import etl
from dashboard import cache, ui

st.title("Data: ETL, validation, warehouse")
ui.show_done("data")                # the ETL's message; the tables below are re-read after it
with ui.core_errors():
    rep = cache.etl_report(cache.token())

if st.button("Run ETL now", key="run_etl", help="Data engineers (sign in under Operator in the sidebar); audited.") and \
        (who := ui.operator("run the ETL")) is not None:
    bar = st.progress(0.0, text="ETL: starting")
    with ui.audited(who, "etl") as entry:
        result = etl.run(cache.settings(), progress=ui.progress_callback(bar, prefix="ETL: "))
        entry["target"] = f"dv{result.data_version}" if result.status == "loaded" else result.status
    if result.status == "loaded":        # the validation report then opens on the new data version
        st.session_state["dv"] = f"dv{result.data_version}"
    ui.done("data", ("success" if result.status == "loaded" else "info", f"ETL run {result.run_id}: {result.status}, {ui.plural(result.rows_loaded, 'row')} "
                                f"loaded, {result.rows_quarantined:,} quarantined."))

versions = rep["versions"]
if versions.empty:
    st.info("No ETL has run yet — press “Run ETL now” or retrain on the Training & Models page.")
    st.stop()

latest = versions.iloc[0]
a, b, c, d = st.columns(4)
a.metric("Data version", f"dv{int(latest['version'])}")
b.metric("Interactions in the warehouse", f"{int(latest['total_facts']):,}")
c.metric("Loaded by the last run", f"{int(latest['rows_loaded']):,}")
d.metric("Quarantined by the last run", f"{int(latest['rows_quarantined']):,}")

st.subheader("Data versions")
show = versions.assign(data_version="dv" + versions["version"].astype(str),
                       volume_alerts=versions["validation"].map(lambda v: len(v.get("volume_alerts", []))))
# px widths adding up to less than the main column at 1400 px (938 px): no table scrolls sideways.
show = show.assign(content_hash=show["content_hash"].astype(str).str[:12])
col = st.column_config
st.dataframe(ui.times(show)[["data_version", "created_at", "rows_extracted", "rows_loaded", "rows_quarantined", "total_facts",
                   "window_start", "window_end", "volume_alerts", "content_hash"]], hide_index=True, key="versions",
             column_config={"data_version": col.TextColumn("version", width=60),
                            "created_at": col.TextColumn("created", width=120),
                            "rows_extracted": col.NumberColumn("extracted", width=80),
                            "rows_loaded": col.NumberColumn("loaded", width=70),
                            "rows_quarantined": col.NumberColumn("quarantined", width=85),
                            "total_facts": col.NumberColumn("facts", width=75),
                            "window_start": col.TextColumn("window start", width=120),
                            "window_end": col.TextColumn("window end", width=120),
                            "volume_alerts": col.NumberColumn("alerts", width=55),
                            "content_hash": col.TextColumn("hash", width=95,
                                                           help="first 12 hex digits of the content hash")})

st.subheader("Validation report")
pick = st.selectbox("Data version", show["data_version"], key="dv")
report = versions.loc[show["data_version"] == pick, "validation"].iloc[0]
col1, col2 = st.columns([1, 1])
col1.json({k: v for k, v in report.items() if k != "volume_alerts"}, expanded=True)
if report.get("volume_alerts"):
    col2.warning("Sudden volume changes (more than 3× or less than ⅓ of the trailing 7-day mean):")
    col2.dataframe(pd.DataFrame(report["volume_alerts"]), hide_index=True)
else:
    col2.success("No sudden volume change in this version.")

st.subheader("Quarantine — rejected rows and why")
if rep["quarantine"].empty:
    st.success("Nothing quarantined: every extracted row passed the validation gate.")
else:
    fig = px.bar(rep["reasons"], x="data_version", y="rows", color="category",
                 labels={"data_version": "data version", "rows": "rows quarantined"}, title="Quarantined rows by reason")
    st.plotly_chart(fig, key="quarantine_chart")
    st.dataframe(ui.times(rep["quarantine"]), hide_index=True, key="quarantine_table",
                 column_config={"source": col.TextColumn("source", width=80),
                                "source_id": col.Column("id", width=70),
                                "reason": col.TextColumn("reason", width=250),
                                "kind": col.TextColumn("kind", width=60), "value": col.Column("value", width=60),
                                "occurred_at": col.TextColumn("occurred", width=120),
                                "data_version": col.Column("dv", width=50),
                                "quarantined_at": col.TextColumn("quarantined", width=120)})

st.subheader("Daily volumes")
daily = rep["daily"]
kinds = st.multiselect("Signals", sorted(daily["kind"].unique()), default=[k for k in ("watch", "click", "rating", "quarantined")
                                                                           if k in set(daily["kind"])], key="kinds")
fig = px.line(daily[daily["kind"].isin(kinds)], x="day", y="n", color="kind", markers=True,
              labels={"n": "rows per day", "day": "day (simulated clock)", "kind": "signal"})
st.plotly_chart(fig, key="daily_chart")
