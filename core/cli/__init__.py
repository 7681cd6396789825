"""`python -m core <command>`: a thin command line over the core package.

User mistakes exit with status 1 and one line on stderr (`error: ...`), never a
traceback; `--json` output is stable and documented in docs/contracts.md.

Each command sits in a small module of this package with its arguments right above its handler
(`@command("top50", help=..., args=[arg("--m", ...)])`); this module holds the parser, the argument
types, the output helpers and `main`.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable

from core import bounds, errors
from core.simulation import simulation
from core.settings import load_settings

CREATES_HOME = ("init", "import-movielens", "first-start")   # every other command needs an existing data folder
MAX_DAYS = 3650           # ten simulated years in one command
MAX_HOLDOUT_DAYS = 365


@dataclass(frozen=True)
class Command:
    """One subcommand: `run(args, settings)`, its one-line help and its `arg(...)` specs, in order."""
    run: Callable
    help: str
    args: tuple


COMMANDS: dict[str, Command] = {}   # in registration order, which is the order of `--help`


def arg(*flags, **options) -> tuple:
    """One `add_argument(*flags, **options)` call, written next to the handler that reads it."""
    return flags, options


def command(name: str, *, help: str, args: tuple | list = ()):
    """Register a handler as subcommand `name` with its help line and arguments (every command takes
    --home and --json)."""
    def register(fn):
        COMMANDS[name] = Command(fn, help, tuple(args))
        return fn
    return register


def emit(args, data, human: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str, sort_keys=True))
    else:
        human()


def progress(args):
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


def int_in(lo: int, hi: int, what: str):
    return _typed(lambda t: bounds.check_int(t, what, lo, hi), what)


def float_in(lo: float, hi: float, what: str, lo_open: bool = False):
    return _typed(lambda t: bounds.check_float(t, what, lo, hi, lo_open=lo_open), what)


ID = _typed(lambda t: bounds.check_id(t, "id"), "id")
SEED = int_in(0, bounds.MAX_SEED, "seed")
TEXT = _typed(lambda t: bounds.check_text(t, "text"), "text")
POSITIVE_INT = int_in(1, 1_000_000, "count")     # limits, list lengths


# The command modules register themselves on import; this order is the order of `--help`.
from core.cli import world, training, churn, ads, monitoring, governance, privacy, serving, operators, integrations  # noqa: E402,F401,E501


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS, type=TEXT,
                        help="data folder (default: $RETRO_HOME, else ./data)")
    with_json = _Parser(add_help=False)
    with_json.add_argument("--json", action="store_true", help="print machine-readable JSON")

    parser = _Parser(prog="python -m core", parents=[common],
                     description="Retro Movies platform: world, Top 50, ML pipeline.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name, spec in COMMANDS.items():
        p = sub.add_parser(name, parents=[common, with_json], help=spec.help)
        for flags, options in spec.args:
            p.add_argument(*flags, **options)
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
        COMMANDS[args.command].run(args, settings)
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
