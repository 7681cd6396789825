"""Every command the README, docs/*.md and the platform's own hints print runs without error on a small world, and
every link from the README and the docs to a local file resolves.

A command is any `python -m core …` (also `.venv/bin/python -m core …` and `python -m core.privacy.roles`) in a
code block or inline code of the Markdown, or in a string of core/ or dashboard/ (an error's "run `python -m core
etl` first", a page's "Start one with `python -m core serve`"). Placeholders (`ID`, `VERSION`, `NAME`, `N`, …) and
example ids in hints ("e.g. `python -m core runs show 1`") are replaced by values that fit the small world below;
optional parts in brackets are dropped. Each command runs as its own process on its own copy of that world, so no
command depends on another's effects; `init` and `first-start` run in an empty folder. Commands that cannot finish
on their own are in SKIP with the reason."""
import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import private_copy
from core import cli
from core.serving import serving
from core.settings import load_settings
from core.simulation import simulation
from core.training import churn_pipeline, pipeline, registry

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HINT_SOURCES = sorted([*(ROOT / "core").rglob("*.py"), *(ROOT / "dashboard").rglob("*.py")])
PROGRAM = re.compile(r"(?:\.venv/bin/)?python -m (core(?:\.[\w.]+)?)(?![\w.])")

# What cannot be run to completion here, with why (keep short).
SKIP = {
    "serve": "runs until stopped; tests/test_server.py and tests/test_hot_swap.py start the real server",
    "etl --engine spark": "starts a Spark session (a minute of JVM start-up); tests/test_spark.py runs it",
    "retrain --engine spark": "needs the standalone cluster the README starts just before; tests/test_spark_cluster.py",
}
# Hints that name a command without the arguments it needs; they must fail until their page is fixed (then drop
# the entry), so this table cannot hide a new one.
BROKEN_HINTS: dict[str, str] = {}   # hint → why it fails; both earlier entries (bare simulate, operators add) are fixed
# Small worlds for the commands that build one: the default sizes (3,000 users, 60 days) take 20 s or more.
SMALL = {"RETRO_DEMO_USERS": "150", "RETRO_DEMO_MOVIES": "80", "RETRO_DEMO_DAYS": "4"}
INIT_SIZES = ["--users", "150", "--movies", "80", "--days", "4"]


# ------------------------------------------------------------------ finding the commands
def _markdown_snippets(text: str) -> list[str]:
    """Code-block lines (without a trailing `# comment`) and inline code spans (which may wrap lines)."""
    snippets, rest = [], []
    for block in re.split(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)[1::2]:
        snippets += [re.sub(r"\s+#\s.*$", "", line) for line in block.splitlines()]
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    for double, single in re.findall(r"``(.+?)``|`([^`]+)`", prose, flags=re.S):
        snippets.append(double or single)
    return snippets


def _render(node) -> str | None:
    """A string expression as printed: f-string fields as `{expr}`, `a + b` joined, `x if c else y` as x."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}"
                       for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _render(node.left), _render(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.IfExp):
        return _render(node.body)
    return None


def _hint_snippets(path: Path) -> list[str]:
    found = []
    source = path.read_text()
    if not re.search(r"python -m|-m core", source):   # no command can be printed from it: skip parsing (most files)
        return found

    def visit(node):
        text = _render(node)
        if text is not None:
            found.extend(m for m in re.findall(r"`([^`]*python -m core[^`]*)`?|\(([^()`]*python -m core[^()`]*)\)",
                                               text) for m in m if m)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    tree = ast.parse(source)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr)}
    for node in ast.walk(tree):      # docstrings describe the code; only strings the program prints are hints
        if isinstance(node, ast.Expr) and id(node.value) in docstrings:
            node.value = ast.Constant(None)
    visit(tree)
    return found


def _commands(snippet: str) -> list[tuple[str, str]]:
    """(module, argument text) of each command in a snippet; the bare program name is not a command."""
    out = []
    for m in PROGRAM.finditer(" ".join(snippet.split())):
        args = snippet_args = " ".join(snippet.split())[m.end():]
        args = re.split(r"\s(?:or|and|then)\s|[;,]\s|\s\(|\)|`", snippet_args)[0].strip()
        if m.group(1) != "core" or args not in ("", "…", "..."):
            out.append((m.group(1), args))
    return out


def documented_commands() -> dict[tuple[str, str], list[str]]:
    """(module, arguments as written) → where it was found."""
    found: dict[tuple[str, str], list[str]] = {}
    for page in PAGES:
        for snippet in _markdown_snippets(page.read_text()):
            for cmd in _commands(snippet):
                found.setdefault(cmd, []).append(page.relative_to(ROOT).as_posix())
    for path in HINT_SOURCES:
        for snippet in _hint_snippets(path):
            for cmd in _commands(snippet):
                found.setdefault(cmd, []).append(path.relative_to(ROOT).as_posix())
    return found


# ------------------------------------------------------------------ making them concrete
def concrete(args: str, world: dict, home: Path) -> list[str]:
    """The argument list to run: optional [parts] dropped, placeholders and example ids replaced."""
    args = re.sub(r"\[[^\[\]]*\]", " ", args)                  # optional parts (one level)
    args = re.sub(r"<command>|\bCOMMAND\b", "stats", args)
    args = re.sub(r"(--days) \{[^{}]*\}", r"\1 2", args)        # a hint's computed number of days
    assert "|" not in args, f"`{args}`: write one command per choice, not a|b"
    words = shlex.split(args)
    fields = [w for w in words if w.startswith("{") and w not in ("{v}", "{args.action}")]
    assert not fields, f"`{args}`: say in concrete() what {fields} stands for"
    out = []
    for i, w in enumerate(words):
        before = out[-1] if out else ""
        head = " ".join(out[:2])
        if w in ("ID", "USER") or (before == "--user" and not w.isdigit()):
            w = str(world["movie"] if before == "--movie" else world["user"])
        elif before == "--user" or before == "--movie":
            w = str(world["movie"] if before == "--movie" else world["user"])
        elif w in ("VERSION", "V", "{v}") or (re.fullmatch(r"\d+", w) and head in (
                "models promote", "release start", "runs show", "model-card") and before in ("promote", "start",
                                                                                             "show", "model-card")):
            if head == "runs show":
                w = str(world["run"])
            elif head in ("release start", "models promote"):
                w = str(world["candidate"])
            elif out[:1] == ["churn"]:
                w = str(world["churn"])
            else:
                w = str(world["production"])
        elif w == "{args.action}":
            w = "add"
        elif w == "NAME":
            w = "tour-client" if out[:1] == ["clients"] else "tour-operator"
        elif w == "ROLE":
            w = "analyst"
        elif w == "N":
            w = "2"
        elif w == "S":
            w = "0.05"
        elif w == "DIR":
            w = str(home)
        out.append(w)
    if out[:1] == ["init"] and "--users" not in out:
        out += INIT_SIZES
    return out


# ------------------------------------------------------------------ the small world
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """600 users, 300 movies, 63 days (enough for the churn model's time split), a production CF model and ranker,
    a churn model in production, one more CF candidate, the operator `admin`; a user with a personal list who is
    active (so `explain --churn` has a risk) and a movie from that list."""
    s = load_settings(tmp_path_factory.mktemp("readme-world"))
    simulation.init_world(s, seed=5, users=600, movies=300, days=63)
    pipeline.retrain(s)
    churn = churn_pipeline.train(s)
    if not churn["promoted"]:      # a world this small is within noise of the recency rule: promoted by hand
        registry.promote(s, churn["version"], "tester", "small test world")
    run = pipeline.train(s, seed=11)
    candidate = registry.register(s, run.run_id)
    assert cli.main(["--home", str(s.home), "operators", "add", "admin", "--role", "admin"]) in (0, None)
    user = movie = None
    for uid in range(1, 200):
        explained = churn_pipeline.explain_user(s, uid)
        if not explained.get("active"):
            continue
        served = serving.recommend(s, uid, k=10)
        if served.path == "model":
            user, movie = uid, served.movie_ids[0]
            break
    assert user is not None
    serving.clear_caches()
    return {"settings": s, "user": user, "movie": movie, "run": run.run_id, "candidate": candidate,
            "churn": churn["version"], "production": registry.production(s)["version"]}


def run_command(module: str, argv: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RETRO_HOME": str(home), **SMALL}
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_docs_show_the_commands_the_tour_needs():
    """A guard on the extraction itself: the README's tour and hints are found, placeholders included."""
    found = documented_commands()
    wanted = {("core", "retrain"), ("core", "explain --user ID --movie ID"), ("core", "privacy forget --user ID"),
              ("core", "release start VERSION --mode canary --share 0.2"), ("core.privacy.roles", ""),
              ("core", "churn train"), ("core", "init")}
    assert wanted <= set(found), wanted - set(found)
    assert any("README.md" in where for where in found.values())
    assert any(w.startswith("core/") for where in found.values() for w in where)


def _command_lines() -> list:
    """One test per distinct command line (placeholders filled with stand-in ids to tell equal lines apart), so the
    ~50 commands spread over the workers of `make test` instead of running one after another in one test."""
    stand_in = {"movie": 9001, "user": 9002, "run": 9003, "candidate": 9004, "churn": 9005, "production": 9006}
    params, seen = [], set()
    for (module, args), where in sorted(documented_commands().items()):
        try:
            line = (module, *concrete(args, stand_in, Path("DIR")))
        except AssertionError:         # a command concrete() cannot fill: its test fails with the reason
            line = (module, args)
        if " ".join(line[1:]) in SKIP or line in seen:
            continue
        seen.add(line)
        params.append(pytest.param(module, args, sorted(set(where)), id=f"python -m {module} {args}".strip()))
    return params


COMMAND_LINES = _command_lines()


def test_enough_commands_are_found():
    assert len(COMMAND_LINES) >= 35


@pytest.mark.parametrize("module, args, where", COMMAND_LINES)
def test_every_printed_command_runs(module, args, where, world, tmp_path):
    home = tmp_path / "home"
    argv = concrete(args, world, home)
    shown = " ".join([f"python -m {module}", *argv])
    if argv[:1] in (["init"], ["first-start"]):
        home.mkdir()
    else:
        private_copy(world["settings"], home)
    proc = run_command(module, argv, home)
    if " ".join(argv) in BROKEN_HINTS:
        assert proc.returncode != 0, f"{shown} runs now: drop it from BROKEN_HINTS"
        return
    assert proc.returncode == 0, (f"{shown}  (from {', '.join(where)}) exited {proc.returncode}: "
                                  f"{(proc.stderr or proc.stdout).strip()[-300:]}")


def test_every_local_link_resolves():
    """[text](path) and ![alt](path) in the README and docs/*.md: the file exists; a #fragment names a heading."""
    broken = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, fragment = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif fragment and file.suffix == ".md" and fragment not in _anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{fragment})")
    assert not broken, "\n".join(broken)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6}\s+(.*)$", text, flags=re.M)}
