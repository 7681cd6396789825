"""The ML pipeline: etl, train, evaluate, retrain, and the registry and runs behind them (models, runs)."""
from __future__ import annotations

import json
from dataclasses import replace

from core import errors
from core.cli import ID, MAX_HOLDOUT_DAYS, SEED, TEXT, arg, command, emit, float_in, int_in, progress
from core.privacy import access
from core.constants import CF_KINDS
from core.settings import ENGINES

ENGINE = arg("--engine", choices=list(ENGINES), default=None,
             help="embedded (SQLite → DuckDB, implicit) or spark (Parquet lake, Spark SQL, MLlib ALS); "
                  "default: the engine setting ($RETRO_ENGINE, else embedded)")


def _on_engine(args, settings):
    """The settings with `--engine` applied (the setting itself when the flag is absent)."""
    return replace(settings, engine=args.engine) if args.engine else settings


def _metric_line(m: dict) -> str:
    keys = ("precision@10", "recall@10", "ndcg@10", "map@10", "hit_rate@10", "coverage", "novelty")
    return "  ".join(f"{k} {m[k]:.4f}" for k in keys if isinstance(m.get(k), (int, float)))


@command("etl", help="incremental ETL into the warehouse", args=[ENGINE])
def cmd_etl(args, settings):
    from core.warehouse import etl
    with access.cli_action(settings, "etl") as entry:
        result = etl.run(_on_engine(args, settings)).to_dict()
        entry["target"] = f"dv{result['data_version']}" if result["status"] == "loaded" else result["status"]
    emit(args, result, lambda: print(etl_line(result)))


def etl_line(result: dict) -> str:
    """The ETL's human summary: quarantined rows by reason in words, nothing when none was quarantined."""
    if result["status"] != "loaded":
        return f"ETL run {result['run_id']}: {result['status']} (nothing changed since the last run)"
    reasons = (result.get("report") or {}).get("by_reason") or {}
    why = ", ".join(f"{n:,} {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    return (f"ETL run {result['run_id']}: loaded, data version dv{result['data_version']}: "
            f"{result['rows_loaded']:,} rows loaded, {result['rows_served']:,} served titles, "
            f"{result['rows_quarantined']:,} quarantined" + (f" ({why})" if why else ""))


@command("train", help="train and evaluate one model (no promotion)", args=[
    arg("--model", choices=list(CF_KINDS), default="als"),
    arg("--seed", type=SEED, help="random seed (default: settings seed 42)"),
    arg("--holdout-days", type=int_in(1, MAX_HOLDOUT_DAYS, "--holdout-days"), default=3),
    ENGINE,
])
def cmd_train(args, settings):
    from core.training import pipeline
    with access.cli_action(settings, "train") as entry:
        result = pipeline.train(_on_engine(args, settings), args.model, seed=args.seed, holdout_days=args.holdout_days,
                                progress=progress(args)).to_dict()
        entry["target"] = f"run {result['run_id']}"
    emit(args, result, lambda: print(
        f"run {result['run_id']} ({result['model_kind']}, data {result['data_version']}): {_metric_line(result['metrics'])}\n"
        f"  artifact {result['artifact_path']}  (not registered; `retrain` registers and gates)"))


@command("evaluate", help="score a model version on the current holdout", args=[
    arg("--version", type=ID, help="registry version (default: production)"),
    arg("--holdout-days", type=int_in(1, MAX_HOLDOUT_DAYS, "--holdout-days"), default=3),
])
def cmd_evaluate(args, settings):
    from core.training import evaluation
    with access.cli_action(settings, "evaluate") as entry:
        result = evaluation.evaluate_version(settings, args.version, args.holdout_days)
        entry["target"] = f"v{result['version']}"

    def human():
        if result["metrics"] is None:
            print(f"v{result['version']} ({result['model_kind']}, trained on {result['trained_on']}): no score — "
                  f"{result['note']}")
            return
        print(f"v{result['version']} ({result['model_kind']}, trained on {result['trained_on']} until "
              f"{result['trained_until']}) on the days after it, {result['holdout_start']} .. {result['holdout_end']} "
              f"of {result['data_version']} ({result['metrics']['users_evaluated']} users):")
        print(f"  model       {_metric_line(result['metrics'])}")
        for name, m in result["baselines"].items():
            print(f"  {name:<11} {_metric_line(m)}")
    emit(args, result, human)


@command("retrain", help="ETL → train → evaluate → gate → promote (or start a canary)", args=[
    arg("--model", choices=[*CF_KINDS, "best"], default="als",
        help="the model kind (default als); best: ALS, EASE and the blend trained on the same split, the one with "
             "the best holdout nDCG@10 goes to the gate"),
    arg("--seed", type=SEED),
    arg("--margin", type=float_in(0, 1, "--margin"), default=0.0,
        help="tolerance 0..1: how far below 0 the lower bound of the 90%% interval of the nDCG@10 "
             "difference (candidate − production) may be (default 0)"),
    arg("--on-pass", choices=["promote", "canary"], default="promote",
        help="what a candidate that passes the gate does: promote it now (default; a running release is ended "
             "as a recorded decision), or start a canary release that the release policy of the closed loop "
             "(`simulate`) promotes or rolls back on its online hit rate (waits while another release runs; "
             "the first model is promoted directly)"),
    ENGINE,
])
def cmd_retrain(args, settings):
    from core.monitoring import release
    from core.training import pipeline
    actor = access.cli_actor()
    with access.cli_action(settings, "retrain") as entry:      # a retrain can promote: audited like one
        result = pipeline.retrain(_on_engine(args, settings), args.model, seed=args.seed, trigger="cli", actor=actor,
                                  margin=args.margin, progress=progress(args), on_pass=args.on_pass,
                                  release_with=release.after_gate)
        entry["target"] = f"v{result['version']} " + ("promoted" if result["promoted"] else
                                                     "kept as candidate" if result["release"] is None else
                                                     pipeline.release_outcome(result))

    def human():
        released = result["release"]
        print(f"job {result['job_id']}: run {result['run_id']} → v{result['version']} "
              + ("PROMOTED to production" if result["promoted"] else
                 "kept as candidate (gate refused)" if released is None else pipeline.release_outcome(result)))
        print(f"  {_metric_line(result['metrics'])}")
        for c in result.get("candidates") or []:
            print(f"  {c['model_kind']:<6} " + (f"holdout nDCG@10 {c['ndcg@10']:.4f}, fit {c['fit_seconds']:.1f} s"
                                                 + ("  ← chosen" if c["chosen"] else "") if c["run_id"] is not None
                                                 else f"not trained: {c['error']}"))
        for reason in result["gate"]["reasons"]:
            print(f"  gate: {reason}")
        if released is not None and released["mode"] == "direct" and result["on_pass"] == "canary":
            print(f"  release: {released['reason']}")
        if released is not None and released.get("replaced"):
            print(f"  release: {released['replaced']['reason']}")
        if released is not None and released.get("supersedes"):
            print(f"  release: takes the place of v{released['supersedes']}, which waited before it")
    emit(args, result, human)


@command("models", help="model registry: list | promote VERSION | rollback", args=[
    arg("action", choices=["list", "promote", "rollback"]),
    arg("version", nargs="?", type=ID),
    arg("--reason", type=TEXT, default="manual decision from the CLI", help="recorded in the registry history"),
    arg("--force", action="store_true",
        help="promote a CF version that does not beat its baselines (recorded as forced)"),
    arg("--family", choices=["cf", "ranker", "churn", "ads"], default="cf",
        help="the model family to roll back (default cf; promote takes the version's own family)"),
])
def cmd_models(args, settings):
    from core.training import registry
    if args.action == "list":
        frame = registry.list_versions(settings)
        # Families record different metrics: a metric another family has no value for is null, not NaN (not JSON).
        data = frame.astype(object).where(frame.notna(), None).to_dict("records")

        def human():
            if frame.empty:
                print("no model versions yet; run `python -m core retrain`")
                return
            cols = [c for c in ("version", "family", "model_kind", "stage", "data_version", "created_at", "depends_on",
                                "ndcg@10", "coverage", "roc_auc", "brier", "log_loss") if c in frame]
            view = frame[cols].astype({"depends_on": "Int64"} if "depends_on" in cols else {})
            print(view.astype(object).where(view.notna(), "").to_string(index=False))
        emit(args, data, human)
    elif args.action == "promote":
        if args.version is None:
            raise errors.ValidationError("models promote needs a VERSION, e.g. `python -m core models promote 3`")
        actor = access.cli_actor()
        with access.cli_action(settings, "promote", f"v{args.version}" + (" (forced)" if args.force else "")):
            replaced = registry.promote(settings, args.version, actor, args.reason, force=args.force)
        data = {"promoted": args.version, "replaced": replaced, "forced": bool(args.force)}
        emit(args, data, lambda: print(f"v{args.version} is now in production" + (f" (v{replaced} archived)" if replaced else "")))
    else:
        actor = access.cli_actor()
        with access.cli_action(settings, "rollback") as entry:
            restored = registry.rollback(settings, actor, args.reason, family=args.family)
            entry["target"] = f"v{restored}"
        data = {"production": restored}
        emit(args, data, lambda: print(f"rolled back: v{restored} is in production again"))


@command("runs", help="experiment runs: list | show ID", args=[
    arg("action", choices=["list", "show"]),
    arg("run_id", nargs="?", type=ID),
    arg("--limit", type=int_in(1, 100_000, "--limit"), default=20),
])
def cmd_runs(args, settings):
    from core.training import tracking
    if args.action == "list":
        frame = tracking.list_runs(settings, args.limit)
        data = frame.to_dict("records")

        def human():
            if frame.empty:
                print("no runs yet; run `python -m core train` or `retrain`")
                return
            cols = [c for c in ("run_id", "model_kind", "engine", "status", "data_version", "seed", "ndcg@10", "hit_rate@10",
                                "duration_s") if c in frame]
            print(frame[cols].to_string(index=False))
        emit(args, data, human)
    else:
        if args.run_id is None:
            raise errors.ValidationError("runs show needs a run ID, e.g. `python -m core runs show 1`")
        run = tracking.get_run(settings, args.run_id)
        emit(args, run, lambda: print(json.dumps(run, indent=2, default=str)))
