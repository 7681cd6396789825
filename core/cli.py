"""`python -m core <command>`: a thin command line over the core package.

User mistakes exit with status 1 and one line on stderr (`error: ...`), never a
traceback; `--json` output is stable and documented in the README.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from . import errors, movielens, opsdb, simulation, writes
from .settings import load_settings

COMMANDS: dict[str, Callable] = {}


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
    def show(fraction: float, message: str) -> None:  # noqa: E306
        print(f"\r[{fraction:4.0%}] {message:<50}", end="" if fraction < 1 else "\n", file=sys.stderr, flush=True)
    return show


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


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
    summary = simulation.simulate(settings, args.days, shift=args.shift, strength=args.strength,
                                  duration=args.duration, params=params, progress=_progress(args))
    _emit(args, summary, lambda: print(
        f"simulated days {summary['first_day'] + 1}..{summary['last_day'] + 1}: {summary['events']} events, "
        f"{summary['ratings']} ratings, {summary['rejected']} rejected writes"
        + (f"; shift {summary['shift']['kind']} started on day {summary['shift']['start_day'] + 1}" if "shift" in summary else "")))


@command("top50")
def cmd_top50(args, settings):
    from .top50 import top50
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


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS,
                        help="data folder (default: $RETRO_HOME, else ./data)")
    with_json = argparse.ArgumentParser(add_help=False)
    with_json.add_argument("--json", action="store_true", help="print machine-readable JSON")

    parser = argparse.ArgumentParser(prog="python -m core", parents=[common],
                                     description="Retro Movies platform: world, Top 50, ML pipeline.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("init", parents=[common, with_json], help="build a simulated world")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--users", type=_positive_int, default=3000)
    p.add_argument("--movies", type=_positive_int, default=1500)
    p.add_argument("--days", type=_positive_int, default=60)
    p.add_argument("--force", action="store_true", help="replace an existing world in this data folder")

    p = sub.add_parser("simulate", parents=[common, with_json], help="simulate more days, optionally with a shift")
    p.add_argument("--days", type=_positive_int, required=True)
    p.add_argument("--shift", choices=simulation.SHIFT_KINDS)
    p.add_argument("--strength", type=float, default=1.0, help="shift strength in (0, 5], default 1")
    p.add_argument("--duration", type=_positive_int, help="shift length in days (default: --days)")
    p.add_argument("--genre", help="trend: the surging genre (default Western)")
    p.add_argument("--season", choices=sorted(simulation.SEASONS), help="seasonal: which season (default halloween)")
    p.add_argument("--movie", type=int, help="viral: the movie id that goes viral (default: an obscure good one)")

    p = sub.add_parser("top50", parents=[common, with_json], help="the weighted-rating Top 50")
    p.add_argument("--m", type=float, help="minimum votes (default: 90th percentile of vote counts)")
    p.add_argument("--limit", type=_positive_int, default=50)

    p = sub.add_parser("rate", parents=[common, with_json], help="store one rating (1..10)")
    p.add_argument("--user", type=int, required=True)
    p.add_argument("--movie", type=int, required=True)
    p.add_argument("--rating", required=True, help="integer 1..10")
    p.add_argument("--at", help="ISO timestamp (default: the service clock)")

    p = sub.add_parser("import-movielens", parents=[common, with_json], help="import a MovieLens folder")
    p.add_argument("path", help="folder with ratings.csv+movies.csv or u.data+u.item")

    sub.add_parser("stats", parents=[common, with_json], help="row counts and date range")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(getattr(args, "home", None))
        COMMANDS[args.command](args, settings)
    except errors.RetroError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
