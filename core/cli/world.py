"""The world and its operational store: init, first-start, simulate, top50, rate, import-movielens, stats."""
from __future__ import annotations

from core import errors
from core.cli import ID, MAX_DAYS, POSITIVE_INT, SEED, TEXT, arg, command, emit, float_in, int_in, progress
from core.privacy import access
from core.simulation import simulation
from core.store import movielens, opsdb, writes
from core.text import plural


@command("init", help="build a simulated world", args=[
    arg("--seed", type=SEED, default=42),
    arg("--users", type=int_in(1, 1_000_000, "--users"), default=3000),
    arg("--movies", type=int_in(10, 100_000, "--movies"), default=1500),
    arg("--days", type=int_in(0, MAX_DAYS, "--days"), default=60),
    arg("--force", action="store_true", help="replace an existing world in this data folder"),
    arg("--no-ads", action="store_true", help="build the world without ads (switch them on later: `ads switch on`)"),
])
def cmd_init(args, settings):
    summary = simulation.init_world(settings, seed=args.seed, users=args.users, movies=args.movies, days=args.days,
                                    force=args.force, progress=progress(args), ads=not args.no_ads)
    with opsdb.session(settings) as db:
        summary["stats"] = opsdb.counts(db)
    emit(args, summary, lambda: print(
        f"built a world in {settings.home}: {summary['stats']['users']} users, {summary['stats']['movies']} movies, "
        f"{summary['stats']['ratings']} ratings, {summary['stats']['events']} events over {args.days} days"))


@command("first-start", help="operator token, demo world and first model for an empty folder (what `make run` runs)",
         args=[arg("--quiet", action="store_true", help="no progress line")])
def cmd_first_start(args, settings):
    """What `make run` runs beside the dashboard: operator token, demo world, first model (see core.bootstrap)."""
    from core import bootstrap

    tokens: list[str] = []

    def announce(token: str) -> None:   # shown once; with --json it is in the output instead
        tokens.append(token)
        if not getattr(args, "json", False):
            print(bootstrap.token_message(settings, token), flush=True)
    result = bootstrap.first_start(settings, progress=progress(args), announce=announce)
    status = result["status"] or {}
    data = {"built": result["built"], "followed": result["followed"], "token_created": result["token_created"],
            "token": tokens[0] if tokens else None, "state": status.get("state"),
            "seconds": status.get("seconds", {}), "follow_up": status.get("follow_up"), "home": str(settings.home)}
    if result["followed"] and status.get("state") != "done":
        raise errors.RetroError(f"the first start another process ran did not finish: {status.get('message')}")

    def human():
        if result["built"]:
            after = (status.get("follow_up") or {}).get("seconds")
            print(f"first start done in {status['seconds']['total']:.0f} s: demo world and first model in "
                  f"{settings.home}" + (f"; the ranker and the churn model followed in {after:.0f} s more"
                                        if after is not None else ""))
        elif result["followed"]:
            print(f"first start (run by process {status.get('pid')}) done; {settings.home} is ready")
        else:
            print(f"{settings.home} is ready (nothing to build)")
    emit(args, data, human)


@command("simulate", help="simulate more days, optionally with a shift", args=[
    arg("--days", type=int_in(1, MAX_DAYS, "--days"), required=True),
    arg("--shift", choices=simulation.SHIFT_KINDS),
    arg("--strength", type=float_in(0, 5, "--strength", lo_open=True), default=1.0,
        help="shift strength in (0, 5], default 1"),
    arg("--duration", type=int_in(1, MAX_DAYS, "--duration"), help="shift length in days (default: --days)"),
    arg("--genre", type=TEXT, help="trend: the surging genre (default Western)"),
    arg("--season", choices=sorted(simulation.SEASONS), help="seasonal: which season (default halloween)"),
    arg("--movie", type=ID, help="viral: the movie id that goes viral (default: an obscure good one)"),
    arg("--policy", choices=["manual", "scheduled", "on-alert"],
        help="retraining policy for this run (default: the stored policy)"),
    arg("--open-loop", action="store_true",
        help="only simulate behaviour: no serving, ETL, monitoring or policy (fast world building)"),
    arg("--serve-url", type=TEXT, metavar="URL",
        help="serve the days through the model server at URL (`python -m core serve`) instead of in-process"),
])
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
        if args.policy or args.serve_url:
            raise errors.ValidationError("--policy and --serve-url need the closed loop; drop --open-loop")
        with access.cli_action(settings, "grow the world", f"{args.days} days open loop"):
            summary = simulation.simulate(settings, args.days, shift=args.shift, strength=args.strength,
                                          duration=args.duration, params=params, progress=progress(args))
        emit(args, summary, lambda: print(
            f"simulated days {summary['first_day'] + 1}..{summary['last_day'] + 1}: {summary['events']} events, "
            f"{summary['ratings']} ratings, {summary['rejected']} rejected writes"
            + (f"; shift {summary['shift']['kind']} started on day {summary['shift']['start_day'] + 1}" if "shift" in summary else "")))
        return
    if args.serve_url is not None and not args.serve_url.startswith(("http://", "https://")):
        raise errors.ValidationError(f"--serve-url {args.serve_url!r} is not an http:// URL, e.g. http://127.0.0.1:8000")
    from core.simulation import loop
    # The closed loop lets the retraining policy retrain and promote: audited like a retrain.
    with access.cli_action(settings, "simulate", f"{args.days} days closed loop") as entry:
        summary = loop.run(settings, args.days, shift=args.shift, strength=args.strength, duration=args.duration,
                           params=params, policy_mode=args.policy, progress=progress(args), serve_url=args.serve_url)
        entry["target"] += f", {summary['retrains']} retrains" + (
            f", {summary['ads_retrains']} ads retrains" if summary.get("ads_retrains") else "")
    from core.monitoring import release
    from core.training.pipeline import release_outcome
    # Re-read after the run: a canary a retrain started may have been promoted or rolled back since.
    summary["now"] = [release.fate(settings, v) for v in
                      dict.fromkeys(r["action"]["version"] for r in summary["log"] if r["action"])]

    def human():
        if "shift" in summary:
            print(f"shift {summary['shift']['kind']} (strength {summary['shift']['strength']:g}) started on day "
                  f"{summary['shift']['start_day'] + 1} for {summary['shift']['duration']} days")
        for r in summary["log"]:
            hr = "—" if r["hit_rate_model"] is None else f"{r['hit_rate_model']:.3f}"
            t5 = "—" if r["hit_rate_top50"] is None else f"{r['hit_rate_top50']:.3f}"
            extra = (f" opened {', '.join(r['opened'])}" if r["opened"] else "") + \
                    (f" closed {', '.join(r['closed'])}" if r["closed"] else "")
            if r.get("churn_scored"):
                extra += f" churn: {r['churn_scored']} scored, mean risk {r['churn_mean_risk']:.3f}"
            elif r.get("churn_error"):
                extra += f" churn scoring failed: {r['churn_error']}"
            act = r["action"]
            if act:
                extra += (f" → retrain ({act['cause']}): v{act['version']} "
                          + (release_outcome(act) if act.get("gate_passed", act["promoted"]) else
                             "kept as candidate (gate refused)"))
            ads_act = r.get("ads_action")
            if ads_act:
                extra += f" → ads retrain ({ads_act['cause']}): " + (
                    f"failed: {ads_act['error']}" if ads_act["error"] else
                    f"ads v{ads_act['version']} " + ("promoted" if ads_act["promoted"] else "kept as candidate (gate refused)"))
            print(f"day {r['day'] + 1:>3} {r['date']}  hit@10 model {hr}  Top 50 {t5}  [{r['classification']}]{extra}")
        print(f"{plural(summary['alerts_opened'], 'alert')} opened, {plural(summary['retrains'], 'automatic retrain')}"
              + (f", {plural(summary['ads_retrains'], 'ads retrain')}" if summary.get("ads_retrains") else ""))
        for now in summary["now"]:
            print("now: " + now["text"])
    emit(args, summary, human)


@command("top50", help="the weighted-rating Top 50", args=[
    arg("--m", type=float_in(0, 1e12, "--m"), help="minimum votes (default: 90th percentile of vote counts)"),
    arg("--limit", type=POSITIVE_INT, default=50),
])
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
    emit(args, data, human)


@command("rate", help="store one rating (1..10)", args=[
    arg("--user", type=ID, required=True),
    arg("--movie", type=ID, required=True),
    arg("--rating", type=TEXT, required=True, help="integer 1..10"),
    arg("--at", type=TEXT, help="ISO timestamp (default: the service clock)"),
])
def cmd_rate(args, settings):
    with opsdb.session(settings) as db:
        writes.rate(db, args.user, args.movie, args.rating, args.at)
        data = opsdb.current_rating(db, args.user, args.movie)
    emit(args, data, lambda: print(
        f"user {data['user_id']} rated movie {data['movie_id']}: {data['rating']}/10 at {data['rated_at']}"))


@command("import-movielens", help="import a MovieLens folder",
         args=[arg("path", type=TEXT, help="folder with ratings.csv+movies.csv or u.data+u.item")])
def cmd_import(args, settings):
    with opsdb.session(settings) as db:
        result = movielens.import_movielens(db, args.path)
    emit(args, result, lambda: print(
        f"imported {result['movies']} movies, {result['users']} users, {result['ratings']} ratings into {settings.ops_db}"))


@command("stats", help="row counts and date range")
def cmd_stats(args, settings):
    with opsdb.session(settings) as db:
        data = opsdb.counts(db)

    def human():
        for key, value in data.items():
            print(f"{key:>18}: {value}")
    emit(args, data, human)
