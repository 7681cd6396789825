"""The model card of an ads (click-through) version: built from the registry, its run and its artifact, like every
card (`core.governance.modelcard` dispatches here for family 'ads' and hands over the lifecycle and trigger)."""
from __future__ import annotations

import json

import numpy as np

from core.ads import features
from core.ads import model as ads_model
from core.ads import pipeline as ads_pipeline
from core.settings import Settings
from core.store import mlopsdb
from core.training import gate

INTENDED_USE = ("Predicts the probability that a user clicks the ad of a campaign in the sponsored slot of a served "
                "list, so the selection can rank eligible campaigns by bid × click probability (a second-price "
                "auction) and an operator can see why an ad was shown (per-prediction SHAP reasons).")
OUT_OF_SCOPE = ("Not for users without ad-targeting consent (they only get untargeted ads). Never uses a sensitive "
                "attribute (life events, free text, the user id); the age band only as a campaign's declared "
                "criterion. A campaign created after training has no one-hot column: its rows are scored on its bid "
                "and targeting only. Its features come from the CF and churn models: a change of either can shift "
                "its predictions (see dependencies).")
LABEL = ("clicked = the user clicked the ad of this impression; features use only what was known before the "
         "impression was shown (impressions and clicks of the 7 days before, the CF and churn models of that time)")
METRICS = ("log_loss", "roc_auc", "calibration_error", "expected_revenue", "click_rate", "mean_predicted", "rows",
           "clicks")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def gate_of(lifecycle: list[dict], metrics: dict, baselines: dict) -> dict:
    """The gate's decision: the one a promotion recorded in the registry, else re-evaluated from the run's numbers."""
    for e in reversed(lifecycle):
        if e["to_stage"] == "production" and e.get("gate"):
            return {"source": f"registry: promotion at {e['at']} by {e['actor']}", "promote": e["gate"].get("promote"),
                    "reasons": e["gate"].get("reasons", [])}
    production = baselines.get("production")
    production = production if production and "error" not in production else None
    finite = all(isinstance(metrics.get(k), (int, float)) and np.isfinite(metrics[k]) for k in ("log_loss", "mean_predicted"))
    decision = gate.evaluate_ads_gate(metrics, baselines.get("campaign_rate") or {}, production, finite=finite)
    return {"source": "re-evaluated from the run's recorded holdout numbers (no promotion recorded a gate)",
            "promote": decision.promote, "reasons": decision.reasons}


def card(settings: Settings, entry: dict, run: dict, lifecycle: list[dict], trigger: str) -> dict:
    """Keys: model, lifecycle, intended_use, out_of_scope, label, features, time_split, training_data, parameters,
    seed, code_version, trigger, metrics {model, campaign_rate, production}, calibration, gate, dependencies, notes."""
    params, metrics, baselines = run["params"] or {}, run["metrics"] or {}, run["baselines"] or {}
    pick = lambda m: {k: m.get(k) for k in METRICS} if m and "error" not in m else None  # noqa: E731
    notes = []
    rows = ads_model.read_rows(mlopsdb.artifact_dir(settings, entry["artifact_path"])) if entry["artifact_path"] else {}
    if not rows:
        notes.append("the artifact holds no training rows file: row counts come from the run only")
    deps = params.get("depends_on") or {}
    production = baselines.get("production")
    if production and "error" in production:
        notes.append(f"production at training time: {production['error']}")
    neutral = (deps.get("churn_neutral") or {}).get("note")
    if neutral:
        notes.append(neutral)
    return {
        "model": {k: entry[k] for k in ("version", "model_kind", "family", "stage", "created_at", "run_id",
                                        "depends_on", "artifact_path", "artifact_hash")},
        "lifecycle": lifecycle, "intended_use": INTENDED_USE, "out_of_scope": OUT_OF_SCOPE,
        "label": {"definition": LABEL, "exposure_days": params.get("exposure_days", features.EXPOSURE_DAYS)},
        "features": [{"feature": f, "label": features.label_of(f)} for f in params.get("features", [])],
        "time_split": {"days": params.get("split") or {},
                       "note": "trees fit on the training days, Platt scaling of their log-odds on the calibration "
                               "days, every metric on the holdout days (the last ones)"},
        "training_data": {"data_version": entry["data_version"], "training_rows": metrics.get("training_rows"),
                          "calibration_rows": metrics.get("calibration_rows"), "holdout_rows": metrics.get("rows"),
                          "rows_kept": int(len(rows.get("user_key", []))) if rows else None},
        "parameters": {k: v for k, v in params.items() if k not in ("depends_on", "features", "split")},
        "seed": run["seed"], "code_version": run["code_version"], "trigger": trigger,
        "metrics": {"model": pick(metrics), "campaign_rate": pick(baselines.get("campaign_rate")),
                    "production": (pick(production) | {"version": production.get("version")}) if pick(production) else None},
        "calibration": {"method": params.get("calibration", "platt"), "model": metrics.get("calibration") or {},
                        "campaign_rate": (baselines.get("campaign_rate") or {}).get("calibration") or {}},
        "gate": gate_of(lifecycle, metrics, baselines),
        "dependencies": {"depends_on": entry["depends_on"], "at_training": deps.get("at_training") or {},
                         "used": deps.get("used") or {}, "window": deps.get("window"),
                         "churn_neutral": deps.get("churn_neutral"), "status": ads_pipeline.status(settings, entry)},
        "notes": notes,
    }


def markdown(card: dict) -> str:
    """The ads card as Markdown, one section per part."""
    m, td, deps = card["model"], card["training_data"], card["dependencies"]
    lines = [f"# Model card: {m['model_kind']} v{m['version']} (ads)", "",
             f"Stage **{m['stage']}** · family `{m['family']}` · registered {m['created_at']} from run {m['run_id']}"
             + (f" · depends on CF v{m['depends_on']}" if m.get("depends_on") else ""), "",
             "## Intended use", "", card["intended_use"], "", "**Out of scope.** " + card["out_of_scope"], "",
             "## Label", "", card["label"]["definition"] + ".", "",
             "## Features", "", "| feature | meaning |", "|---|---|"]
    lines += [f"| `{f['feature']}` | {f['label']} |" for f in card["features"]]
    days = card["time_split"]["days"]
    lines += ["", "## Time split", ""] + [f"- {part}: {' → '.join(span) or 'none'}" for part, span in days.items()]
    lines += [f"- {card['time_split']['note']}.", "", "## Training data", "",
              f"- Data version: {td.get('data_version') or 'unknown'}",
              f"- Impressions: {_fmt(td.get('training_rows'))} training, {_fmt(td.get('calibration_rows'))} "
              f"calibration, {_fmt(td.get('holdout_rows'))} holdout; kept in the artifact now: {_fmt(td.get('rows_kept'))}",
              "", "## Parameters and reproducibility", "", f"- Seed: {card['seed']}",
              f"- Code version: {card['code_version'] or 'unknown'}", f"- Trained by: {card['trigger']}"]
    for k, v in card["parameters"].items():
        lines.append(f"- `{k}`: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    table = card["metrics"]
    cols = [(c, name) for c, name in (("model", "model"), ("campaign_rate", "each campaign's click rate"),
                                      ("production", "production then")) if table.get(c)]
    lines += ["", "## Metrics on the holdout days, against each campaign's click rate", "",
              "| metric | " + " | ".join(name for _, name in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name in METRICS:
        lines.append(f"| {name} | " + " | ".join(_fmt(table[c].get(name)) for c, _ in cols) + " |")
    cal = card["calibration"]
    lines += ["", f"Calibration: {cal['method']} scaling on the calibration days; calibration_error is the ECE over "
              "10 equal-width bins."]
    g = card["gate"]
    lines += ["", "## Gate", "", f"{'Passed' if g['promote'] else 'Not passed'} — {g['source']}:"]
    lines += [f"- {r}" for r in g["reasons"]]
    lines += ["", "## Lifecycle", ""]
    lines += [f"- {e['at']}: {e['from_stage'] or 'registered'} → {e['to_stage']} by {e['actor']} — {e['reason']}"
              for e in card["lifecycle"]]
    status, at = deps["status"], deps.get("at_training") or {}
    lines += ["", "## Dependencies", "",
              f"- Trained with CF {'v' + str(at['cf']) if at.get('cf') is not None else 'none'} (genre affinities) and "
              f"churn {'v' + str(at['churn']) if at.get('churn') is not None else 'none'} (churn risk)",
              f"- Now: {'POSSIBLY STALE' if status['stale'] else 'current'} — " + "; ".join(status["reasons"])]
    if card["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in card["notes"]]
    return "\n".join(lines) + "\n"
