"""Every figure the README quotes has a results file behind it (issue 27.6).

1. Every `benchmarks/results/<file>` the README or a doc names exists.
2. In the README's "Benchmarks in brief", every bullet cites at least one results file, and each of its figures —
   a number with a decimal point, or a number in bold — is in a file it cites: as written or rounded to the
   README's decimals (signs, thousands separators and the unit ignored). A figure found nowhere is stale or unbacked.

Cheap: reads Markdown only.
"""
import re
from decimal import Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = re.compile(r"benchmarks/results/[\w.-]+\.(?:md|json|jsonl)")
DECIMAL = re.compile(r"(?<![\w.])\d[\d,]*\.\d+(?![\d.])")     # 0.386, 1,151.5; not a version such as 0.7.23
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
BOLD = re.compile(r"\*\*([^*]+)\*\*")

# Figures the README still quotes without a results file behind them, with why; each must still be quoted and
# still unbacked (remove the entry once a file holds the figure or the README drops it). Empty: every figure of
# "Benchmarks in brief" has its file.
# The check is by value, so a figure can pass on an unrelated number that rounds to it.
UNBACKED: dict[str, str] = {}


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _bullets(section: str) -> list[str]:
    """The section's top-level bullets, each with its indented continuation (tables included)."""
    return [b.strip() for b in re.split(r"\n(?=- )", section)[1:]]


def _figures(bullet: str) -> list[str]:
    prose = re.sub(r"\]\([^)]*\)", "]", bullet)                       # link targets are no figures
    found = DECIMAL.findall(prose)
    for bold in BOLD.findall(prose):
        found += [n for n in NUMBER.findall(bold) if n not in found]
    return found


def _value(number: str) -> Decimal:
    return Decimal(number.replace(",", ""))


def _backed(figure: str, text: str) -> bool:
    """`figure` is in `text` as written, or some number there rounds to it at the figure's decimals."""
    f = _value(figure)
    places = -f.as_tuple().exponent if "." in figure else 0
    half = Decimal(5) * Decimal(10) ** -(places + 1)
    return any(abs(_value(n) - f) <= half for n in NUMBER.findall(text))


def _cited(text: str) -> list[str]:
    return sorted(set(RESULTS.findall(text)))


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_every_results_file_named_exists(page):
    missing = [name for name in _cited(page.read_text()) if not (ROOT / name).exists()]
    assert not missing, f"{page.name} names results files that do not exist: {missing}"


def test_every_figure_in_benchmarks_in_brief_is_in_the_file_it_cites():
    section = _section(README.read_text(), "Benchmarks in brief")
    problems, used = [], set()
    for bullet in _bullets(section):
        head = bullet.splitlines()[0][:60]
        files = _cited(bullet)
        if not files:
            problems.append(f"{head}: cites no benchmarks/results/ file")
            continue
        text = "\n".join((ROOT / f).read_text() for f in files if (ROOT / f).exists())
        for figure in _figures(bullet):
            if _backed(figure, text):
                continue
            if figure in UNBACKED:
                used.add(figure)
                continue
            problems.append(f"{head}: {figure} is not in {', '.join(files)}")
    stale = sorted(set(UNBACKED) - used)
    assert not problems, "figures without a results file behind them:\n" + "\n".join(problems)
    assert not stale, f"UNBACKED lists figures the README no longer quotes unbacked: {stale}"
