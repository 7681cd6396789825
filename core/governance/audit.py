"""The audit trail of one user: what was shown, when, and why.

"What did we show user 42 on 2026-01-30, and why?" Every served list is in the
serving log (`served_recommendations`); this module joins it with the catalog
(titles), the registry (which version, the gate decision that promoted it, was it
the production model at that moment), the experiment tracker (parameters, seed,
code version of the run behind the version) and the job log (what triggered the
retrain that produced it). Records are plain JSON-ready dicts; `audit_markdown`
renders them for people.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

from core.store import opsdb, servinglog
from core.training import registry, tracking
from core.constants import TS_FORMAT
from core.errors import RetroError, ValidationError
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import Settings

UNKNOWN_TRIGGER = "unknown"
MAX_LIMIT = 1000
# Serving paths (see core.serving) and what they mean for the person reading the audit.
PATH_REASONS = {
    "model": "personalised by the production model",
    "top50:no-model": "Top 50 fallback: no model was in production yet",
    "top50:cold-start": "Top 50 fallback: the production model had no history for this user (cold start)",
    "top50:no-consent": "Top 50 fallback: the user had withdrawn consent to personalisation",
}
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def path_reason(path: str) -> str:
    """A readable sentence for a serving path ('model', 'top50:cold-start', ...)."""
    if path in PATH_REASONS:
        return PATH_REASONS[path]
    if path.startswith("top50"):
        return f"Top 50 fallback ({path.partition(':')[2] or 'no reason recorded'})"
    return f"personalised ({path})"


def is_fallback(path: str) -> bool:
    return path.startswith("top50")


def parse_day(day: str) -> tuple[str, str]:
    """'YYYY-MM-DD' → [start, end) timestamps of that UTC calendar day; ValidationError otherwise."""
    if not isinstance(day, str) or not _DAY.fullmatch(day.strip()):
        raise ValidationError(f"day must be a calendar date 'YYYY-MM-DD', got {day!r}")
    try:
        start = datetime.strptime(day.strip(), "%Y-%m-%d")
    except ValueError:
        raise ValidationError(f"day {day!r} is not a valid date (expected 'YYYY-MM-DD')") from None
    return start.strftime(TS_FORMAT), (start + timedelta(days=1)).strftime(TS_FORMAT)


def audit(settings: Settings, user_id: int, day: str | None = None, limit: int = 50) -> list[dict]:
    """The lists served to `user_id` (optionally only on calendar date `day`), newest first.

    Each record: serve_id, served_at, user_id, path, personalised, path_reason,
    movies [{position (1-based), movie_id, title, year, score}], model_version,
    data_version, model_kind, run_id, params, seed, code_version, promotion
    {at, actor, reason, from_stage, gate (decoded)}, trigger ('manual', 'scheduled',
    'drift-alert', ... or 'unknown'), job_id, was_production (the version was the
    registry's production model at served_at), production_at_served, ranker and
    notes. Fallback lists have the model fields set to None.
    Raises UnknownUser for a user id not in the operational database and
    ValidationError for a malformed `day` or `limit`.
    """
    user_id = _user_id(user_id)
    limit = _limit(limit)
    start, end = parse_day(day) if day is not None else (None, None)
    with opsdb.session(settings) as db:
        opsdb.require_user(db, user_id, opsdb.NO_SUCH_USER + " (an erased user leaves no audit trail)")
        rows = servinglog.lists_for_user(db, user_id, start, end, limit)
        titles = opsdb.titles(db, sorted({int(m) for r in rows for m in json.loads(r["movie_ids"])}))
    if not rows:
        return []
    lineage: dict = {}
    return [_record(settings, row, titles, lineage) for row in rows]


def _record(settings: Settings, row: dict, titles: dict, lineage: dict) -> dict:
    movie_ids, scores = json.loads(row["movie_ids"]), json.loads(row["scores"])
    movies = [{"position": i + 1, "movie_id": int(m), "title": titles.get(int(m), (None, None))[0],
               "year": titles.get(int(m), (None, None))[1], "score": None if s is None else float(s)}
              for i, (m, s) in enumerate(zip(movie_ids, scores + [None] * (len(movie_ids) - len(scores))))]
    path = row["path"]
    record = {
        "serve_id": int(row["serve_id"]), "served_at": row["served_at"], "user_id": int(row["user_id"]),
        "path": path, "personalised": not is_fallback(path), "path_reason": path_reason(path),
        "movies": movies, "model_version": row["model_version"], "data_version": row["data_version"],
        "model_kind": None, "run_id": None, "params": None, "seed": None, "code_version": None,
        "promotion": None, "trigger": None, "job_id": None,
        "was_production": None, "production_at_served": None, "ranker": None, "notes": [],
        # who confirmed the list was shown: 'in-process', 'client:NAME', 'logged' (before impressions), or None
        # for a model-server answer nobody confirmed (logged, never counted as shown)
        "shown_by": row.get("shown_by", "logged"),
    }
    try:
        record["production_at_served"] = registry.production_at(settings, row["served_at"])
        record["ranker"] = _ranker(settings, row)
    except RetroError as exc:   # e.g. a served_at written by a legacy writer in another format
        record["notes"].append(f"registry not consulted: {exc}")
    version = row["model_version"]
    if version is None:
        if not is_fallback(path):
            record["notes"].append("the serving log names no model version for this list")
        return record
    version = int(version)
    if version not in lineage:
        lineage[version] = _lineage(settings, version)
    info = lineage[version]
    record.update({k: info[k] for k in ("model_kind", "run_id", "params", "seed", "code_version", "trigger", "job_id")})
    record["notes"] += info["notes"]
    record["promotion"] = _promotion(info["promotions"], row["served_at"])
    if info["promotions"] and record["promotion"]["at"] > row["served_at"]:
        record["notes"].append(f"v{version} was promoted only after this list was served")
    elif not info["promotions"] and info["known"]:
        record["notes"].append(f"v{version} was never promoted to production")
    if any(n.startswith("registry not consulted") for n in record["notes"]):
        return record
    # Events stamped in the served list's second are simultaneous at the clock's resolution: any version in
    # production during that second agrees with the log (and is the one reported).
    during = registry.production_during(settings, row["served_at"])
    if version in during:
        record["production_at_served"] = version
    record["was_production"] = record["production_at_served"] == version
    if not record["was_production"]:
        serving_then = record["production_at_served"]
        record["notes"].append(f"the registry's production model at {row['served_at']} was "
                               + (f"v{serving_then}" if serving_then is not None else "none")
                               + f", not v{version}: the serving log and the registry disagree")
    if row["data_version"] and info["data_version"] and row["data_version"] != info["data_version"]:
        record["notes"].append(f"logged data version {row['data_version']} differs from v{version}'s "
                               f"training data {info['data_version']}")
    return record


def _lineage(settings: Settings, version: int) -> dict:
    """Run, job and promotion events behind a registry version (computed once per audit)."""
    info = {"known": False, "model_kind": None, "run_id": None, "params": None, "seed": None, "code_version": None,
            "trigger": UNKNOWN_TRIGGER, "job_id": None, "data_version": None, "promotions": [], "notes": []}
    try:
        entry = registry.get_version(settings, version)
    except RetroError as exc:
        info["notes"].append(str(exc))
        return info
    info.update(known=True, model_kind=entry["model_kind"], run_id=entry["run_id"], params=entry["params"],
                data_version=entry["data_version"])
    try:
        run = tracking.get_run(settings, entry["run_id"])
    except RetroError as exc:
        info["notes"].append(str(exc))
    else:
        info.update(params=run["params"], seed=run["seed"], code_version=run["code_version"], job_id=run["job_id"])
        if run["job_id"] is not None:
            try:
                info["trigger"] = tracking.get_job(settings, run["job_id"])["trigger"] or UNKNOWN_TRIGGER
            except RetroError as exc:
                info["notes"].append(str(exc))
        else:
            info["notes"].append(f"run {entry['run_id']} was not part of a pipeline job: trigger unknown")
    info["promotions"] = registry.promotions(settings, version)
    return info


def _promotion(promotions: list[dict], served_at: str) -> dict | None:
    """The promotion in force when the list was served (the latest at or before it), else the first one."""
    before = [p for p in promotions if p["at"] <= served_at]
    if before:
        return before[-1]
    return promotions[0] if promotions else None


def _ranker(settings: Settings, row: dict) -> dict | None:
    """The ranker that re-ordered the list (optional second stage), None for CF order or a fallback.

    Read from the serving log's `ranker_version` when the log has that column (NULL: CF
    order); an older log without it falls back to the ranker in production at served_at.
    """
    if is_fallback(row["path"]):
        return None
    if "ranker_version" in row:
        version, source = row["ranker_version"], "serving log"
    else:
        version = registry.production_at(settings, row["served_at"], family=registry.RANKER)
        source = "registry: ranker in production at served_at (this serving log does not record re-ranking)"
    if version is None:
        return None
    out = {"version": int(version), "source": source}
    try:
        entry = registry.get_version(settings, int(version))
        out |= {"depends_on": entry["depends_on"], "run_id": entry["run_id"]}
    except RetroError as exc:
        out["error"] = str(exc)
    return out


# ------------------------------------------------------------------ stored churn scores
def churn_scores(settings: Settings, user_id: int, day: str | None = None, limit: int = 50) -> list[dict]:
    """The churn scores stored about `user_id` (`churn_predictions`, under the user's pseudonym), newest as_of
    first; with `day`, only the scores whose as_of (the day their features describe) is that calendar date.

    Each record: as_of, scored_at, risk, model_version, model_kind, stage_now (the version's registry stage
    today), was_production (the version was the churn family's production model when the score was stored).
    Raises UnknownUser and ValidationError like `audit`.
    """
    from core.training import churn_pipeline
    user_id = _user_id(user_id)
    limit = _limit(limit)
    start, end = parse_day(day) if day is not None else (None, None)
    with opsdb.session(settings) as db:
        opsdb.require_user(db, user_id, opsdb.NO_SUCH_USER + " (an erased user leaves no audit trail)")
    key = pseudonym(user_id, pseudonym_key(settings))
    frame = churn_pipeline.predictions(settings, user_key=key, since=start)
    if end is not None:
        frame = frame[frame["as_of"] < end]
    frame = frame.head(limit)
    versions: dict = {}
    out = []
    for row in frame.to_dict("records"):
        version = int(row["model_version"])
        if version not in versions:
            try:
                entry = registry.get_version(settings, version)
                versions[version] = {"model_kind": entry["model_kind"], "stage_now": entry["stage"]}
            except RetroError:
                versions[version] = {"model_kind": None, "stage_now": "unknown (not in the registry)"}
        out.append({"as_of": row["as_of"], "scored_at": row["scored_at"], "risk": float(row["risk"]),
                    "model_version": version, **versions[version],
                    "was_production": registry.production_at(settings, row["scored_at"], family=registry.CHURN)
                    == version})
    return out


def _user_id(user_id) -> int:
    if isinstance(user_id, bool) or not isinstance(user_id, int):
        try:
            return int(user_id)
        except (TypeError, ValueError):
            raise ValidationError(f"user id must be an integer, got {user_id!r}") from None
    return user_id


def _limit(limit) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be an integer in 1..{MAX_LIMIT}, got {limit!r}")
    return limit


# ------------------------------------------------------------------ export
def audit_json(records: list[dict], churn: list[dict] | None = None, user_id: int | None = None) -> str:
    """The records as JSON text (they are plain dicts already; this only fixes the formatting). With `churn`
    (the user's stored churn scores), one object {"user_id", "lists": records, "churn_scores": churn}."""
    data = records if churn is None else {"user_id": user_id, "lists": records, "churn_scores": churn}
    return json.dumps(data, indent=2, default=str, ensure_ascii=False)


def audit_markdown(records: list[dict], title: str | None = None, churn: list[dict] | None = None) -> str:
    """A readable report: one section per served list, its movies as a table; with `churn`, the user's stored
    churn scores as a last section."""
    if title is None:
        users = sorted({r["user_id"] for r in records})
        title = "Audit: user " + ", ".join(map(str, users)) if users else "Audit"
    lines = [f"# {title}", ""]
    if not records:
        lines.append("No list was served to this user in the selected period.")
        return "\n".join(lines + _churn_lines(churn)) + "\n"
    lines.append(f"{len(records)} served list{'s' if len(records) != 1 else ''}, newest first.")
    for r in records:
        lines += ["", f"## List {r['serve_id']} — served {r['served_at']}", "",
                  f"- **Path:** {r['path_reason']} (`{r['path']}`)"]
        if r["model_version"] is not None:
            params = ", ".join(f"{k}={v}" for k, v in (r["params"] or {}).items() if not isinstance(v, (dict, list)))
            lines += [
                f"- **Model:** v{r['model_version']} ({r['model_kind'] or 'unknown kind'}, run {r['run_id']}), "
                f"data {r['data_version'] or 'unknown'}, seed {r['seed']}, code {_short(r['code_version'])}",
                f"- **Parameters:** {params or 'none recorded'}",
                f"- **Retrain triggered by:** {r['trigger']}" + (f" (job {r['job_id']})" if r["job_id"] else ""),
                f"- **Production model when served:** {'yes' if r['was_production'] else 'no'}"
                f" (registry: {'v' + str(r['production_at_served']) if r['production_at_served'] else 'none'})",
            ]
            p = r["promotion"]
            if p:
                lines.append(f"- **Promoted:** {p['at']} by {p['actor']} — {p['reason']}")
                for reason in (p.get("gate") or {}).get("reasons", []):
                    lines.append(f"  - gate: {reason}")
            else:
                lines.append("- **Promoted:** never")
        if r.get("ranker"):
            lines.append(f"- **Ranker:** v{r['ranker']['version']} ({r['ranker']['source']})")
        for note in r["notes"]:
            lines.append(f"- ⚠ {note}")
        lines += ["", "| # | Movie | Year | Score |", "|---:|---|---:|---:|"]
        for m in r["movies"]:
            score = "" if m["score"] is None else f"{m['score']:.4f}"
            year = "" if m["year"] is None else m["year"]
            name = m["title"] or f"movie {m['movie_id']} (not in catalog)"
            lines.append(f"| {m['position']} | {name} | {year} | {score} |")
    return "\n".join(lines + _churn_lines(churn)) + "\n"


def _churn_lines(churn: list[dict] | None) -> list[str]:
    if churn is None:
        return []
    lines = ["", "## Stored churn scores", ""]
    if not churn:
        return lines + ["No churn score is stored about this user in the selected period."]
    lines += [f"{len(churn)} stored score{'s' if len(churn) != 1 else ''}, newest first (risk: the chance of no "
              "watch in the 14 days from as_of).", "",
              "| as of | scored at | risk | model | stage now | production when scored |", "|---|---|---:|---|---|---|"]
    for c in churn:
        then = "yes" if c["was_production"] else "no"
        lines.append(f"| {str(c['as_of'])[:10]} | {c['scored_at']} | {c['risk']:.1%} | v{c['model_version']} "
                     f"({c['model_kind'] or 'unknown'}) | {c['stage_now']} | {then} |")
    return lines


def _short(code_version: str | None) -> str:
    if not code_version:
        return "unknown"
    head, plus, rest = code_version.partition("+")
    return head[:10] + (plus + rest if plus else "")
