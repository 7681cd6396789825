"""`python -m core <command>`: a thin command line over the core package.

User mistakes exit with status 1 and one line on stderr (`error: ...`), never a
traceback; `--json` output is stable and documented in the README.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from core.privacy import access
from core import bounds, errors
from core.store import movielens, opsdb, writes
from core.simulation import simulation
from core.settings import load_settings
from core.text import plural

COMMANDS: dict[str, Callable] = {}
CREATES_HOME = ("init", "import-movielens", "first-start")   # every other command needs an existing data folder
MAX_DAYS = 3650           # ten simulated years in one command
MAX_HOLDOUT_DAYS = 365


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn
    return register


def _emit(args, data, human: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str, sort_keys=True))
    else:
        human()


def _progress(args):
    if getattr(args, "json", False) or getattr(args, "quiet", False):
        return simulation._noop
    tty = sys.stderr.isatty()

    def show(fraction: float, message: str) -> None:
        if tty:
            print(f"\r[{fraction:4.0%}] {message:<60}", end="" if fraction < 1 else "\n", file=sys.stderr, flush=True)
        else:
            print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)
    return show


class UsageError(errors.RetroError):
    """A command line that does not parse (unknown command, missing or malformed argument)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line `error: ...` and exit status 1 like every other mistake."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _typed(check, name: str):
    """An argparse type from a `core.bounds` check, so the CLI refuses what the core refuses, in the same words."""
    def parse(text: str):
        try:
            return check(text)
        except errors.ValidationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = name
    return parse


def _int_in(lo: int, hi: int, what: str):
    return _typed(lambda t: bounds.check_int(t, what, lo, hi), what)


def _float_in(lo: float, hi: float, what: str, lo_open: bool = False):
    return _typed(lambda t: bounds.check_float(t, what, lo, hi, lo_open=lo_open), what)


_id = _typed(lambda t: bounds.check_id(t, "id"), "id")
_seed = _int_in(0, bounds.MAX_SEED, "seed")
_text = _typed(lambda t: bounds.check_text(t, "text"), "text")
_positive_int = _int_in(1, 1_000_000, "count")     # limits, list lengths


# ------------------------------------------------------------------ commands
@command("init")
def cmd_init(args, settings):
    summary = simulation.init_world(settings, seed=args.seed, users=args.users, movies=args.movies, days=args.days,
                                    force=args.force, progress=_progress(args))
    with opsdb.session(settings) as db:
        summary["stats"] = opsdb.counts(db)
    _emit(args, summary, lambda: print(
        f"built a world in {settings.home}: {summary['stats']['users']} users, {summary['stats']['movies']} movies, "
        f"{summary['stats']['ratings']} ratings, {summary['stats']['events']} events over {args.days} days"))


@command("first-start")
def cmd_first_start(args, settings):
    """What `make run` runs beside the dashboard: operator token, demo world, first model (see core.bootstrap)."""
    from core import bootstrap

    tokens: list[str] = []

    def announce(token: str) -> None:   # shown once; with --json it is in the output instead
        tokens.append(token)
        if not getattr(args, "json", False):
            print(bootstrap.token_message(settings, token), flush=True)
    result = bootstrap.first_start(settings, progress=_progress(args), announce=announce)
    status = result["status"] or {}
    data = {"built": result["built"], "followed": result["followed"], "token_created": result["token_created"],
            "token": tokens[0] if tokens else None, "state": status.get("state"),
            "seconds": status.get("seconds", {}), "home": str(settings.home)}
    if result["followed"] and status.get("state") != "done":
        raise errors.RetroError(f"the first start another process ran did not finish: {status.get('message')}")

    def human():
        if result["built"]:
            print(f"first start done in {status['seconds']['total']:.0f} s: demo world and first model in "
                  f"{settings.home}")
        elif result["followed"]:
            print(f"first start (run by process {status.get('pid')}) done; {settings.home} is ready")
        else:
            print(f"{settings.home} is ready (nothing to build)")
    _emit(args, data, human)


@command("simulate")
def cmd_simulate(args, settings):
    params = {}
    if args.genre:
        params["genre"] = args.genre
    if args.season:
        params["season"] = args.season
    if args.movie is not None:
        params["movie_id"] = args.movie
    if args.shift is None and (params or args.duration is not None):
        raise errors.ValidationError("--genre/--season/--movie/--duration only make sense with --shift")
    if args.open_loop:
        if args.policy:
            raise errors.ValidationError("--policy needs the closed loop; drop --open-loop")
        summary = simulation.simulate(settings, args.days, shift=args.shift, strength=args.strength,
                                      duration=args.duration, params=params, progress=_progress(args))
        _emit(args, summary, lambda: print(
            f"simulated days {summary['first_day'] + 1}..{summary['last_day'] + 1}: {summary['events']} events, "
            f"{summary['ratings']} ratings, {summary['rejected']} rejected writes"
            + (f"; shift {summary['shift']['kind']} started on day {summary['shift']['start_day'] + 1}" if "shift" in summary else "")))
        return
    from core.simulation import loop
    # The closed loop lets the retraining policy retrain and promote: audited like a retrain.
    with access.audited(settings, access.cli_actor(), "simulate", f"{args.days} days closed loop") as entry:
        summary = loop.run(settings, args.days, shift=args.shift, strength=args.strength, duration=args.duration,
                           params=params, policy_mode=args.policy, progress=_progress(args))
        entry["target"] += f", {summary['retrains']} retrains"

    def human():
        if "shift" in summary:
            print(f"shift {summary['shift']['kind']} (strength {summary['shift']['strength']:g}) started on day "
                  f"{summary['shift']['start_day'] + 1} for {summary['shift']['duration']} days")
        for r in summary["log"]:
            hr = "—" if r["hit_rate_model"] is None else f"{r['hit_rate_model']:.3f}"
            t5 = "—" if r["hit_rate_top50"] is None else f"{r['hit_rate_top50']:.3f}"
            extra = (f" opened {', '.join(r['opened'])}" if r["opened"] else "") + \
                    (f" closed {', '.join(r['closed'])}" if r["closed"] else "")
            act = r["action"]
            if act:
                extra += f" → retrain ({act['cause']}): v{act['version']} " + ("promoted" if act["promoted"] else "kept as candidate")
            print(f"day {r['day'] + 1:>3} {r['date']}  hit@10 model {hr}  Top 50 {t5}  [{r['classification']}]{extra}")
        print(f"{plural(summary['alerts_opened'], 'alert')} opened, {plural(summary['retrains'], 'automatic retrain')}")
    _emit(args, summary, human)


@command("top50")
def cmd_top50(args, settings):
    from core.training.top50 import top50
    with opsdb.session(settings) as db:
        result = top50(db, args.m, limit=args.limit)
    data = {"m": result.m, "C": result.C, "movies": result.table.to_dict("records")}

    def human():
        print(f"Top {len(result.table)} by weighted rating (m = {result.m:g} votes, C = {result.C:.3f})")
        for row in result.table.itertuples():
            print(f"{row.rank:>3}. {row.title} ({row.year}) [{row.genres}]  WR {row.weighted_rating:.3f}  "
                  f"mean {row.mean_rating:.2f} from {row.votes} votes")
    _emit(args, data, human)


@command("rate")
def cmd_rate(args, settings):
    with opsdb.session(settings) as db:
        writes.rate(db, args.user, args.movie, args.rating, args.at)
        row = db.execute("SELECT user_id, movie_id, rating, rated_at FROM ratings WHERE user_id = ? AND movie_id = ?",
                         [args.user, args.movie]).fetchone()
    data = dict(zip(["user_id", "movie_id", "rating", "rated_at"], row))
    _emit(args, data, lambda: print(f"user {row[0]} rated movie {row[1]}: {row[2]}/10 at {row[3]}"))


@command("import-movielens")
def cmd_import(args, settings):
    with opsdb.session(settings) as db:
        result = movielens.import_movielens(db, args.path)
    _emit(args, result, lambda: print(
        f"imported {result['movies']} movies, {result['users']} users, {result['ratings']} ratings into {settings.ops_db}"))


@command("stats")
def cmd_stats(args, settings):
    with opsdb.session(settings) as db:
        data = opsdb.counts(db)

    def human():
        for key, value in data.items():
            print(f"{key:>18}: {value}")
    _emit(args, data, human)


def _metric_line(m: dict) -> str:
    keys = ("precision@10", "recall@10", "ndcg@10", "map@10", "hit_rate@10", "coverage", "novelty")
    return "  ".join(f"{k} {m[k]:.4f}" for k in keys if isinstance(m.get(k), (int, float)))


@command("etl")
def cmd_etl(args, settings):
    from core.warehouse import etl
    result = etl.run_etl(settings).to_dict()
    _emit(args, result, lambda: print(
        f"ETL run {result['run_id']}: {result['status']}" + (
            f", data version dv{result['data_version']}: {result['rows_loaded']:,} rows loaded, "
            f"{result['rows_quarantined']:,} quarantined {result['report'].get('by_reason', {})}"
            if result["status"] == "loaded" else " (nothing changed since the last run)")))


@command("train")
def cmd_train(args, settings):
    from core.training import pipeline
    result = pipeline.train(settings, args.model, seed=args.seed, holdout_days=args.holdout_days,
                            progress=_progress(args)).to_dict()
    _emit(args, result, lambda: print(
        f"run {result['run_id']} ({result['model_kind']}, data {result['data_version']}): {_metric_line(result['metrics'])}\n"
        f"  artifact {result['artifact_path']}  (not registered; `retrain` registers and gates)"))


@command("evaluate")
def cmd_evaluate(args, settings):
    from core.training import evaluation
    result = evaluation.evaluate_version(settings, args.version, args.holdout_days)

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
    _emit(args, result, human)


@command("retrain")
def cmd_retrain(args, settings):
    from core.training import pipeline
    actor = access.cli_actor()
    with access.audited(settings, actor, "retrain") as entry:      # a retrain can promote: audited like one
        result = pipeline.retrain(settings, args.model, seed=args.seed, trigger="cli", actor=actor,
                                  margin=args.margin, progress=_progress(args))
        entry["target"] = f"v{result['version']} " + ("promoted" if result["promoted"] else "kept as candidate")

    def human():
        print(f"job {result['job_id']}: run {result['run_id']} → v{result['version']} "
              + ("PROMOTED to production" if result["promoted"] else "kept as candidate (gate refused)"))
        print(f"  {_metric_line(result['metrics'])}")
        for reason in result["gate"]["reasons"]:
            print(f"  gate: {reason}")
    _emit(args, result, human)


@command("monitor")
def cmd_monitor(args, settings):
    from core.monitoring import monitoring
    data = monitoring.latest(settings)

    def human():
        if data["day"] is None:
            print("nothing monitored yet; run `python -m core simulate --days N` (the closed loop monitors every day)")
            return
        print(f"day {data['day']}: {data['classification']} (production v{data['model_version']})")
        for r in data["drift"]:
            flag = "DRIFT" if r["drifted"] else "ok"
            score = "empty" if r["score"] is None else f"{r['score']:.4f}"
            print(f"  {r['feature']:<26} {r['test']:<15} {score:>8}  (threshold {r['threshold']:g})  {flag}")
        o = data["online"]
        if o.get("hit_rate_model") is not None:
            print(f"  online hit rate@10: model {o['hit_rate_model']:.3f}, Top 50 {o['hit_rate_top50']:.3f}"
                  + (f", baseline {o['baseline_hit_rate']:.3f}" if o.get("baseline_hit_rate") else ""))
        print(f"  quarantine rate {data['quality'].get('quarantine_rate', 0):.2%}; {len(data['open_alerts'])} open alerts")
    _emit(args, data, human)


@command("alerts")
def cmd_alerts(args, settings):
    from core.monitoring import monitoring
    frame = monitoring.all_alerts(settings) if args.all else monitoring.open_alerts(settings)
    data = frame.to_dict("records") if len(frame) else []

    def human():
        if not data:
            print("no alerts" if args.all else "no open alerts")
        for a in data:
            state = f"closed {a['closed_at']}" if a["closed_at"] else "OPEN"
            print(f"#{a['alert_id']} {a['severity']:<8} {a['kind']}:{a['metric']} value {a['value']:.4f} "
                  f"(threshold {a['threshold']:.4f}) opened {a['opened_at']} [{a['classification']}] {state}")
    _emit(args, data, human)


@command("policy")
def cmd_policy(args, settings):
    from core.monitoring import policy
    if args.action == "show":
        data = policy.get_policy(settings)
    else:
        if not args.mode:
            raise errors.ValidationError("policy set needs a mode: manual, scheduled or on-alert")
        with opsdb.session(settings) as db:
            now = opsdb.clock_now(db)
        actor = access.cli_actor()
        with access.audited(settings, actor, "policy", f"{args.mode}"
                            + (f" every {args.every_days} days" if args.every_days else "")):
            data = policy.set_policy(settings, args.mode, args.every_days, actor=actor, at=now)
    _emit(args, data, lambda: print(f"retraining policy: {data['mode']}"
                                    + (f" (every {data['every_days']} days)" if data["mode"] == "scheduled" else "")))


@command("explain")
def cmd_explain(args, settings):
    from core.governance import explain
    e = explain.explain(settings, args.user, args.movie)
    _emit(args, e, lambda: print(explain.explanation_markdown(e)))


@command("audit")
def cmd_audit(args, settings):
    from core.governance import audit
    records = audit.audit(settings, args.user, args.day, args.limit)
    if getattr(args, "json", False):
        print(audit.audit_json(records))
    else:
        print(audit.audit_markdown(records))


@command("model-card")
def cmd_model_card(args, settings):
    from core.governance import modelcard
    card = modelcard.model_card(settings, args.version)
    if args.format == "json" or getattr(args, "json", False):
        print(json.dumps(card, indent=2, default=str))
    else:
        print(modelcard.model_card_markdown(card))


@command("diagnose")
def cmd_diagnose(args, settings):
    from core.governance import diagnose
    result = diagnose.diagnose(settings, args.user)
    _emit(args, result, lambda: print(diagnose.diagnose_markdown(result)))


@command("privacy")
def cmd_privacy(args, settings):
    """Whoever runs the CLI has the files and so acts as operator; actions are still audited (OS user name)."""
    from core.privacy import access, consent, erasure, export, retention
    actor = access.cli_actor()
    if args.action == "consent":
        if args.user is None:
            raise errors.ValidationError("privacy consent needs --user ID")
        if args.tracking is None and args.personalization is None:
            data = consent.consent(settings, args.user)
        else:
            data = consent.set_consent(settings, args.user, tracking=_on_off(args.tracking),
                                       personalization=_on_off(args.personalization), actor=actor)
    elif args.action == "export":
        if args.user is None:
            raise errors.ValidationError("privacy export needs --user ID")
        data = export.export_user(settings, args.user, actor=actor)
        print(json.dumps(data, indent=2, default=str, ensure_ascii=False))
        return
    elif args.action == "forget":
        if args.user is None:
            raise errors.ValidationError("privacy forget needs --user ID")
        data = erasure.forget_user(settings, args.user, actor=actor)
    else:
        data = retention.retention(settings, args.days, actor=actor) if args.days else retention.retention_status(settings, 365)
    _emit(args, data, lambda: print(json.dumps(data, indent=2, default=str, ensure_ascii=False)))


def _on_off(value):
    return None if value is None else value == "on"


@command("models")
def cmd_models(args, settings):
    from core.training import registry
    if args.action == "list":
        frame = registry.list_versions(settings)
        data = frame.to_dict("records")

        def human():
            if frame.empty:
                print("no model versions yet; run `python -m core retrain`")
                return
            cols = [c for c in ("version", "model_kind", "stage", "data_version", "created_at", "ndcg@10", "coverage") if c in frame]
            print(frame[cols].to_string(index=False))
        _emit(args, data, human)
    elif args.action == "promote":
        if args.version is None:
            raise errors.ValidationError("models promote needs a VERSION, e.g. `python -m core models promote 3`")
        actor = access.cli_actor()
        with access.audited(settings, actor, "promote", f"v{args.version}" + (" (forced)" if args.force else "")):
            replaced = registry.promote(settings, args.version, actor, args.reason, force=args.force)
        data = {"promoted": args.version, "replaced": replaced, "forced": bool(args.force)}
        _emit(args, data, lambda: print(f"v{args.version} is now in production" + (f" (v{replaced} archived)" if replaced else "")))
    else:
        actor = access.cli_actor()
        with access.audited(settings, actor, "rollback") as entry:
            restored = registry.rollback(settings, actor, args.reason)
            entry["target"] = f"v{restored}"
        data = {"production": restored}
        _emit(args, data, lambda: print(f"rolled back: v{restored} is in production again"))


@command("runs")
def cmd_runs(args, settings):
    from core.training import tracking
    if args.action == "list":
        frame = tracking.list_runs(settings, args.limit)
        data = frame.to_dict("records")

        def human():
            if frame.empty:
                print("no runs yet; run `python -m core train` or `retrain`")
                return
            cols = [c for c in ("run_id", "model_kind", "status", "data_version", "seed", "ndcg@10", "hit_rate@10",
                                "duration_s") if c in frame]
            print(frame[cols].to_string(index=False))
        _emit(args, data, human)
    else:
        if args.run_id is None:
            raise errors.ValidationError("runs show needs a run ID, e.g. `python -m core runs show 1`")
        run = tracking.get_run(settings, args.run_id)
        _emit(args, run, lambda: print(json.dumps(run, indent=2, default=str)))


@command("recommend")
def cmd_recommend(args, settings):
    from core.serving import serving
    rec = serving.recommend(settings, args.user, args.k)
    with opsdb.session(settings) as db:
        marks = ",".join("?" * len(rec.movie_ids)) or "NULL"
        titles = dict(db.execute(f"SELECT movie_id, title || ' (' || coalesce(year, '?') || ')' FROM movies "
                                 f"WHERE movie_id IN ({marks})", rec.movie_ids).fetchall())
    data = rec.to_dict() | {"titles": [titles.get(m) for m in rec.movie_ids]}

    def human():
        print(f"user {rec.user_id}: {rec.path} — {rec.reason}"
              + (f" (model v{rec.model_version}, data {rec.data_version})" if rec.model_version else ""))
        for i, (m, s) in enumerate(zip(rec.movie_ids, rec.scores), 1):
            print(f"{i:>3}. {titles.get(m)}  [{m}]  score {s:.3f}")
    _emit(args, data, human)


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS, type=_text,
                        help="data folder (default: $RETRO_HOME, else ./data)")
    with_json = _Parser(add_help=False)
    with_json.add_argument("--json", action="store_true", help="print machine-readable JSON")

    parser = _Parser(prog="python -m core", parents=[common],
                                     description="Retro Movies platform: world, Top 50, ML pipeline.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    p = sub.add_parser("init", parents=[common, with_json], help="build a simulated world")
    p.add_argument("--seed", type=_seed, default=42)
    p.add_argument("--users", type=_int_in(1, 1_000_000, "--users"), default=3000)
    p.add_argument("--movies", type=_int_in(10, 100_000, "--movies"), default=1500)
    p.add_argument("--days", type=_int_in(0, MAX_DAYS, "--days"), default=60)
    p.add_argument("--force", action="store_true", help="replace an existing world in this data folder")

    p = sub.add_parser("first-start", parents=[common, with_json],
                       help="operator token, demo world and first model for an empty folder (what `make run` runs)")
    p.add_argument("--quiet", action="store_true", help="no progress line")

    p = sub.add_parser("simulate", parents=[common, with_json], help="simulate more days, optionally with a shift")
    p.add_argument("--days", type=_int_in(1, MAX_DAYS, "--days"), required=True)
    p.add_argument("--shift", choices=simulation.SHIFT_KINDS)
    p.add_argument("--strength", type=_float_in(0, 5, "--strength", lo_open=True), default=1.0,
                   help="shift strength in (0, 5], default 1")
    p.add_argument("--duration", type=_int_in(1, MAX_DAYS, "--duration"), help="shift length in days (default: --days)")
    p.add_argument("--genre", type=_text, help="trend: the surging genre (default Western)")
    p.add_argument("--season", choices=sorted(simulation.SEASONS), help="seasonal: which season (default halloween)")
    p.add_argument("--movie", type=_id, help="viral: the movie id that goes viral (default: an obscure good one)")
    p.add_argument("--policy", choices=["manual", "scheduled", "on-alert"],
                   help="retraining policy for this run (default: the stored policy)")
    p.add_argument("--open-loop", action="store_true",
                   help="only simulate behaviour: no serving, ETL, monitoring or policy (fast world building)")

    p = sub.add_parser("top50", parents=[common, with_json], help="the weighted-rating Top 50")
    p.add_argument("--m", type=_float_in(0, 1e12, "--m"), help="minimum votes (default: 90th percentile of vote counts)")
    p.add_argument("--limit", type=_positive_int, default=50)

    p = sub.add_parser("rate", parents=[common, with_json], help="store one rating (1..10)")
    p.add_argument("--user", type=_id, required=True)
    p.add_argument("--movie", type=_id, required=True)
    p.add_argument("--rating", type=_text, required=True, help="integer 1..10")
    p.add_argument("--at", type=_text, help="ISO timestamp (default: the service clock)")

    p = sub.add_parser("import-movielens", parents=[common, with_json], help="import a MovieLens folder")
    p.add_argument("path", type=_text, help="folder with ratings.csv+movies.csv or u.data+u.item")

    sub.add_parser("stats", parents=[common, with_json], help="row counts and date range")

    sub.add_parser("etl", parents=[common, with_json], help="incremental ETL into the warehouse")
    p = sub.add_parser("train", parents=[common, with_json], help="train and evaluate one model (no promotion)")
    p.add_argument("--model", choices=["als", "bpr"], default="als")
    p.add_argument("--seed", type=_seed, help="random seed (default: settings seed 42)")
    p.add_argument("--holdout-days", type=_int_in(1, MAX_HOLDOUT_DAYS, "--holdout-days"), default=3)
    p = sub.add_parser("evaluate", parents=[common, with_json], help="score a model version on the current holdout")
    p.add_argument("--version", type=_id, help="registry version (default: production)")
    p.add_argument("--holdout-days", type=_int_in(1, MAX_HOLDOUT_DAYS, "--holdout-days"), default=3)
    p = sub.add_parser("retrain", parents=[common, with_json], help="ETL → train → evaluate → gate → promote")
    p.add_argument("--model", choices=["als", "bpr"], default="als")
    p.add_argument("--seed", type=_seed)
    p.add_argument("--margin", type=_float_in(0, 1, "--margin"), default=0.0,
                   help="tolerance 0..1: how far below 0 the lower bound of the 90%% interval of the nDCG@10 "
                        "difference (candidate − production) may be (default 0)")
    p = sub.add_parser("models", parents=[common, with_json], help="model registry: list | promote VERSION | rollback")
    p.add_argument("action", choices=["list", "promote", "rollback"])
    p.add_argument("version", nargs="?", type=_id)
    p.add_argument("--reason", type=_text, default="manual decision from the CLI", help="recorded in the registry history")
    p.add_argument("--force", action="store_true",
                   help="promote a CF version that does not beat its baselines (recorded as forced)")
    p = sub.add_parser("runs", parents=[common, with_json], help="experiment runs: list | show ID")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("run_id", nargs="?", type=_id)
    p.add_argument("--limit", type=_int_in(1, 100_000, "--limit"), default=20)
    sub.add_parser("monitor", parents=[common, with_json], help="latest drift scores, online quality, open alerts")
    p = sub.add_parser("alerts", parents=[common, with_json], help="open alerts (--all: every alert)")
    p.add_argument("--all", action="store_true")
    p = sub.add_parser("policy", parents=[common, with_json], help="retraining policy: show | set MODE")
    p.add_argument("action", choices=["show", "set"])
    p.add_argument("mode", nargs="?", choices=["manual", "scheduled", "on-alert"])
    p.add_argument("--every-days", type=_int_in(1, 365, "--every-days"), help="scheduled: retrain every N days")
    p = sub.add_parser("explain", parents=[common, with_json], help="why was this movie recommended to this user?")
    p.add_argument("--user", type=_id, required=True)
    p.add_argument("--movie", type=_id, required=True)
    p = sub.add_parser("audit", parents=[common, with_json], help="what did we show a user (on a day), and why?")
    p.add_argument("--user", type=_id, required=True)
    p.add_argument("--day", type=_text, help="calendar date YYYY-MM-DD (default: every day)")
    p.add_argument("--limit", type=_int_in(1, 100_000, "--limit"), default=50)
    p = sub.add_parser("model-card", parents=[common, with_json], help="the model card of a registered version")
    p.add_argument("version", type=_id)
    p.add_argument("--format", choices=["md", "json"], default="md")
    p = sub.add_parser("diagnose", parents=[common, with_json], help="check data, features, model and deployment")
    p.add_argument("--user", type=_id, help="diagnose one user's recommendations (default: the system)")
    p = sub.add_parser("privacy", parents=[common, with_json],
                       help="consent | export | forget | retention (acts as operator, audited with the OS user name)")
    p.add_argument("action", choices=["consent", "export", "forget", "retention"])
    p.add_argument("--user", type=_id)
    p.add_argument("--tracking", choices=["on", "off"])
    p.add_argument("--personalization", choices=["on", "off"])
    p.add_argument("--days", type=_int_in(1, 36_500, "--days"), help="retention: purge behavioural events older than N days")
    p = sub.add_parser("recommend", parents=[common, with_json], help="recommendations for one user (logged)")
    p.add_argument("--user", type=_id, required=True)
    p.add_argument("--k", type=_int_in(1, 500, "--k"), default=10)
    return parser


def _home(raw: str | None, create: bool = True):
    """Settings for --home, with a clear error for a folder that cannot be a data folder.

    `create=False`: a folder that does not exist is NoDataFolder, and nothing is created.
    """
    if raw is not None and not raw.strip():
        raise errors.ValidationError("--home is empty; give a folder")
    try:
        return load_settings(raw, create=create)
    except RuntimeError as exc:            # '~nosuchuser/x': expanduser cannot find that user's home
        raise errors.ValidationError(f"--home {raw!r}: {exc}") from None
    except (FileExistsError, NotADirectoryError):
        raise errors.ValidationError(f"--home {raw!r} is not a folder") from None
    except PermissionError:
        raise errors.ValidationError(f"--home {raw!r}: permission denied") from None
    except OSError as exc:
        raise errors.ValidationError(f"--home {raw!r} cannot be used: {exc.strerror or exc}") from None


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        settings = _home(getattr(args, "home", None), create=args.command in CREATES_HOME)
        COMMANDS[args.command](args, settings)
        sys.stdout.flush()
    except errors.RetroError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:                # `... --json | head`: the reader left; not an error of ours
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:                 # disk full, permissions, a vanished folder: the system's words, one line
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    import os
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
