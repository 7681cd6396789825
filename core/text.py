"""Words for messages shown to people: counts with the right plural, 'a' or 'an', one time format.

Used wherever the dashboard, the CLI or a core message builds such text, so it reads '1 alert',
'an 8% chance' and '2026-03-05 00:00' everywhere. Pure functions, no I/O.
"""
from __future__ import annotations

import re
from datetime import date, datetime

TIME_FORMAT = "%Y-%m-%d %H:%M"   # every time shown on a page (minutes are the finest step an operator reads)


def plural(n: int | float, singular: str, plural_form: str | None = None) -> str:
    """`n` with the noun in the right number: plural(1, 'alert') -> '1 alert', plural(1200, 'row') -> '1,200 rows'.

    `plural_form` defaults to `singular + 's'`; give it for irregular nouns (plural(2, 'day', ...)).
    Integers get thousands separators; only exactly 1 takes the singular ('0 alerts', '1.5 days').
    """
    word = singular if n == 1 else (plural_form or singular + "s")
    shown = f"{int(n):,}" if float(n).is_integer() else f"{n:g}"
    return f"{shown} {word}"


def article(phrase: str) -> str:
    """'a' or 'an' for the phrase as spoken: numbers by their sound ('an 8%', 'an 11%', 'an 18%', 'an 80%',
    'a 12%', 'an 11,000'), words by their first letter ('an alert', 'a model'; 'a user' is not special-cased)."""
    text = phrase.strip()
    digits = re.match(r"[0-9][0-9,]*", text)
    if digits:
        whole = digits.group().replace(",", "")
        # 8, 80, 800, 8000 … ('eight…') and eleven / eighteen (and eleven / eighteen thousand, million …)
        vowel_sound = whole.startswith("8") or (len(whole) % 3 == 2 and whole[:2] in ("11", "18"))
    else:
        vowel_sound = text[:1].lower() in ("a", "e", "i", "o")
    return "an" if vowel_sound else "a"


def with_article(phrase: str) -> str:
    """The phrase after its article: with_article('8% chance') -> 'an 8% chance'."""
    return f"{article(phrase)} {phrase}"


def percent_chance(probability: float) -> str:
    """'an 8% chance' from 0.08 (rounded to a whole percent)."""
    return with_article(f"{probability:.0%} chance")


def fmt_time(value, missing: str | None = "—") -> str | None:
    """Any timestamp (ISO string with 'T' or a space, datetime, pandas Timestamp, date) as 'YYYY-MM-DD HH:MM'.

    Missing values (None, NaN, NaT, '') give `missing`; a string that is not a time is returned unchanged.
    """
    if value is None or value == "" or value != value:     # NaN and NaT are unequal to themselves
        return missing
    if isinstance(value, datetime):                        # also a pandas Timestamp
        return value.strftime(TIME_FORMAT)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day).strftime(TIME_FORMAT)
    text = str(value)
    if text in ("NaT", "nan", "None"):
        return missing
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).strftime(TIME_FORMAT)
    except ValueError:
        return text
