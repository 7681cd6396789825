"""The release policy: shadow and canary releases judged by their online numbers, and every decision stored.

A canary shows the candidate's lists to a share of users (a stable hash of the user id, see
`core.serving.deployments`); monitoring measures the online hit rate@10 of both arms every day
(`monitoring.arm_quality`). The policy compares them **paired by day** — each day's difference
d_t = hit rate(canary) − hit rate(production), both measured on the same day's lists and watches, so a
day that is good or bad for everyone cancels out — and averages the days:

    point = mean_t d_t,   se = sqrt(Σ_t v_t) / T,   v_t = p_c(1 − p_c)/n_c + p_p(1 − p_p)/n_p

(the binomial variance of a difference of two proportions on day t; T days), with a normal interval
point ± z·se at `level` (90 %: z = 1.645). Then, after every monitored day:

- **rollback** as soon as the canary is significantly worse: the interval's upper bound is below 0;
- **ramp** to the next share, or **promote** at the last one, once the canary has served `min_days` days at
  its current share and is not worse than production: the lower bound is above −`margin`;
- **rollback** for futility, when `futility` is set (retrains' canaries: RETRAIN_CANARY), once the canary has
  served `min_days` days at its current share and its point estimate is at or below −`futility`: its best
  guess is materially worse, and each extra day shows half the users that arm and keeps fresher candidates
  waiting (bench_drift's new-releases run: a canary at −0.028…−0.010 for 6 days held back three retrains);
- **rollback** when `max_days` pass without that evidence (not shown to be as good);
- else **continue**.

Each decision is a `release_decisions` row with its numbers (days, point, interval, hit rates, lists judged
per arm, users the candidate reached) and the per-day evidence. A promotion goes through the registry like
any other (`registry.promote`: the baselines floor still holds); a rollback archives the candidate —
production never changed, so nothing is restored, the candidate's arm just closes. A shadow release shows
nobody the candidate: it is judged by people (its counterfactual numbers are on the Deployment page) and
ended by `promote`, `rollback` or `stop` by hand. Operators can decide at any time; their decisions are
recorded the same way (actor `operator:NAME` or `cli:USER`).

A retrain's candidate that passed the offline gate earns production here too (`after_gate`, on_pass="canary",
what the retraining policy and the dashboard use): it starts a canary judged by RETRAIN_CANARY's rules. The
first model is promoted directly (nothing to compare a canary with). A retrain during a running release never
stops it: its candidate **waits** — one pending release, recorded in `actions` ('release-queued'; a newer
retrain's candidate takes its place, 'release-dequeued') — and starts when the running release ends, whoever
ends it. Only an explicit direct promotion (on_pass="promote") ends a running release, as a recorded 'stop'
decision ("release #N replaced by vK because ...").
"""
from __future__ import annotations

import json
import math
from statistics import NormalDist

import pandas as pd

from core.errors import RetroError, ValidationError
from core.monitoring import monitoring, policy
from core.serving import deployments
from core.settings import Settings
from core.store import mlopsdb, opsdb, servinglog
from core.store.mlopsdb import timestamp
from core.training import registry

POLICY = {"min_days": 3, "max_days": 10, "margin": 0.02, "level": 0.90, "ramp": None, "futility": None}
POLICY_ACTOR = "policy:release"
# The canary a retrain's candidate starts as (on_pass="canary"): share and rules (POLICY's keys).
# Half the users for at least 2 monitored days: balanced arms decide fastest, and a candidate significantly worse
# than production is rolled back after its first day. Measured in the closed loop (800 users, 300 movies, a 14-day
# Western trend at strength 2, policy on-alert), mean hit rate@10 over the 14 days: 0.761 with these rules
# (2 canaries promoted, 1 rolled back), 0.742 with 20 % → 50 % one day each (1 promoted), 0.742 with 30 % → 60 %,
# 0.781 when retrains promoted directly (no online check).
RETRAIN_CANARY = {"share": 0.5, "min_days": 2, "max_days": 6, "futility": 0.02}
QUEUED, DEQUEUED = "release-queued", "release-dequeued"       # `actions` kinds of the pending release
DECISION_COLUMNS = ["decision_id", "deployment_id", "at", "day", "decision", "actor", "reason", "days", "point", "lo",
                    "hi", "hit_rate_canary", "hit_rate_production", "users_canary", "users_production",
                    "users_affected", "share", "evidence"]


def release_policy(share: float | None = None, **overrides) -> dict:
    """The rules a canary is judged by: POLICY with `overrides`, checked. `ramp`: the shares the canary moves
    through, ascending, starting at its first share (default: just `share`, then promotion)."""
    unknown = set(overrides) - set(POLICY)
    if unknown:
        raise ValidationError(f"unknown release policy setting(s) {sorted(unknown)}; known: {', '.join(POLICY)}")
    policy = POLICY | {k: v for k, v in overrides.items() if v is not None}
    for key in ("min_days", "max_days"):
        if isinstance(policy[key], bool) or not isinstance(policy[key], int) or policy[key] < 1:
            raise ValidationError(f"{key} must be a positive whole number of days, got {policy[key]!r}")
    if policy["max_days"] < policy["min_days"]:
        raise ValidationError(f"max_days ({policy['max_days']}) must be at least min_days ({policy['min_days']})")
    if not 0 <= float(policy["margin"]) < 1:
        raise ValidationError(f"margin is a hit-rate difference in [0, 1), got {policy['margin']!r}")
    if policy["futility"] is not None and not 0 <= float(policy["futility"]) < 1:
        raise ValidationError(f"futility is a hit-rate difference in [0, 1), got {policy['futility']!r}")
    if not 0.5 <= float(policy["level"]) < 1:
        raise ValidationError(f"level is an interval's coverage in [0.5, 1), got {policy['level']!r}")
    ramp = policy["ramp"] or ([share] if share is not None else None)
    if ramp is not None:
        ramp = [deployments.check_share(x) for x in ramp]
        if ramp != sorted(ramp) or len(set(ramp)) != len(ramp):
            raise ValidationError(f"a ramp's shares must rise step by step, got {ramp}")
        if share is not None and ramp[0] != share:
            raise ValidationError(f"the ramp starts at the canary's share ({share}), not {ramp[0]}")
    policy["ramp"] = ramp
    return policy


# ------------------------------------------------------------------ evidence
def evidence(settings: Settings, release: dict) -> dict:
    """The paired-by-day comparison of a canary with production over the days monitored under `release`.

    {"days", "point", "lo", "hi", "se", "level", "hit_rate_canary", "hit_rate_production", "users_canary",
    "users_production", "per_day": [{day, share, canary, production, n_canary, n_production, diff, var}],
    "users_affected", "lists_affected"}; with no day yet, the numbers are None.
    """
    level = float((release.get("policy") or {}).get("level", POLICY["level"]))
    per_day = []
    for row in monitoring.release_days(settings, release["deployment_id"]):
        c, p = row["arms"].get("canary"), row["arms"].get("production")
        if not c or not p or not c.get("users") or not p.get("users"):
            continue
        pc, pp, nc, np_ = c["hit_rate"], p["hit_rate"], c["users"], p["users"]
        per_day.append({"day": row["day"], "share": row["release"].get("share"), "canary": pc, "production": pp,
                        "n_canary": nc, "n_production": np_, "diff": pc - pp,
                        "var": pc * (1 - pc) / nc + pp * (1 - pp) / np_})
    return summarize(per_day, level) | reach(settings, release)


def summarize(per_day: list[dict], level: float = POLICY["level"]) -> dict:
    """Point estimate and interval of the mean daily difference (see the module docstring); pure."""
    t = len(per_day)
    out = {"days": t, "level": level, "per_day": per_day, "point": None, "lo": None, "hi": None, "se": None,
           "hit_rate_canary": None, "hit_rate_production": None,
           "users_canary": sum(d["n_canary"] for d in per_day), "users_production": sum(d["n_production"] for d in per_day)}
    if not t:
        return out
    point = sum(d["diff"] for d in per_day) / t
    se = math.sqrt(sum(d["var"] for d in per_day)) / t
    z = NormalDist().inv_cdf(0.5 + level / 2)
    out |= {"point": point, "se": se, "lo": point - z * se, "hi": point + z * se,
            "hit_rate_canary": sum(d["canary"] for d in per_day) / t,
            "hit_rate_production": sum(d["production"] for d in per_day) / t}
    return out


def reach(settings: Settings, release: dict) -> dict:
    """Users and lists the candidate's own lists reached (canary arm, candidate version) since the release began."""
    if release["mode"] != "canary":
        return {"users_affected": 0, "lists_affected": 0}
    with opsdb.session(settings) as db:
        users, lists = servinglog.arm_reach(db, release["started_at"], release.get("ended_at"), "canary",
                                            release["version"])
    return {"users_affected": users, "lists_affected": lists}


def decide(ev: dict, policy: dict, share: float | None) -> tuple[str, str, float | None]:
    """(decision, reason, share after it) for a canary's evidence under `policy`; pure."""
    level = f"{policy['level']:.0%}"
    if not ev["days"]:
        return "continue", "no monitored day of the canary yet", share
    numbers = (f"hit rate@10 canary − production {ev['point']:+.4f}, {level} interval [{ev['lo']:+.4f}, "
               f"{ev['hi']:+.4f}] over {ev['days']} day{'s' if ev['days'] != 1 else ''}")
    if ev["hi"] < 0:
        return "rollback", f"significantly worse than production: {numbers}", share
    ramp = policy.get("ramp") or [share]
    at_share = 0
    for d in reversed(ev["per_day"]):
        if d["share"] != share:
            break
        at_share += 1
    if at_share >= policy["min_days"] and ev["lo"] > -policy["margin"]:
        later = [x for x in ramp if share is not None and x > share]
        why = f"not worse than production (margin {policy['margin']}): {numbers}"
        if later:
            return "ramp", f"{why}; share {share:.0%} → {later[0]:.0%}", later[0]
        return "promote", why, share
    futility = policy.get("futility")        # rules stored before the key existed have none
    if futility is not None and at_share >= policy["min_days"] and ev["point"] <= -futility:
        return "rollback", (f"unlikely to be shown as good as production (futility {futility}): the point estimate "
                            f"is at or below −{futility} after {at_share} day{'s' if at_share != 1 else ''} at "
                            f"{share:.0%}: {numbers}"), share
    if ev["days"] >= policy["max_days"]:
        return "rollback", f"not shown to be as good as production within {policy['max_days']} days: {numbers}", share
    wait = max(0, policy["min_days"] - at_share)
    return "continue", f"{numbers}; " + (f"{wait} more day{'s' if wait != 1 else ''} at {share:.0%} before a "
                                        "decision" if wait else "not yet shown to be as good"), share


# ------------------------------------------------------------------ actions
def start(settings: Settings, version: int, mode: str, *, actor: str, reason: str = "release started",
          share: float | None = None, at: str | None = None, with_ranker: bool | None = None, progress=None,
          **policy) -> dict:
    """Start a shadow or canary release of `version` judged by `policy` (POLICY's keys); returns it.

    `with_ranker` (default: when a ranker serves production): first train the candidate's own ranker, unless
    it has one, so the candidate is served two-stage like production — a canary in CF order against a
    re-ranked production would be judged on the ranker, not on the model."""
    if mode == "canary":
        share = deployments.DEFAULT_SHARE if share is None else share
        rules = release_policy(deployments.check_share(share), **policy)
    else:
        rules = release_policy(None, **policy)
    if with_ranker is None:
        from core.training.pipeline import ranker_status
        with_ranker = ranker_status(settings)["active"]
    ranker = None
    if with_ranker and _candidate_ranker(settings, version) is None:
        ranker = _train_candidate_ranker(settings, version, at, progress)
    started = deployments.start(settings, version, mode, actor=actor, reason=reason, share=share, policy=rules, at=at)
    return started | {"ranker": ranker}


def _candidate_ranker(settings: Settings, version: int) -> dict | None:
    with mlopsdb.session(settings) as db:
        # UnknownVersion, or a churn/ranker version refused, before any training
        deployments.check_releasable(registry.version_on(db, settings, int(version)))
        return registry.candidate_ranker_on(db, settings, int(version))


def _train_candidate_ranker(settings: Settings, version: int, at, progress) -> dict:
    from core.errors import RetroError
    from core.training.pipeline import train_ranker
    try:
        result = train_ranker(settings, cf_version=int(version), at=at, **({"progress": progress} if progress else {}))
    except RetroError as exc:          # too little data for a ranker: the candidate serves in CF order
        return {"error": str(exc)}
    return {k: result[k] for k in ("version", "reasons")} | {"beats_cf": result["metrics"]["beats_cf"]}


def review(settings: Settings, *, day: str | None = None, now: str | None = None, actor: str = POLICY_ACTOR) -> dict | None:
    """The policy's daily look at the active canary (after monitoring): decide, act, record; returns the
    decision (None without an active canary). A canary whose production changed meanwhile (a model promoted by
    hand) is stopped: its comparison no longer holds. With no release active, a pending one starts."""
    release = deployments.active(settings)
    if release is None:
        start_pending(settings, None, at=now)
        return None
    if release["mode"] != "canary":
        return None
    prod = registry.production(settings)
    if prod is None or int(prod["version"]) != int(release["production_version"]):
        now_v = "nothing" if prod is None else f"v{prod['version']}"
        return _finish(settings, release, "stop", actor, f"production changed during the canary (v"
                       f"{release['production_version']} → {now_v}); start a new release to compare with it",
                       evidence(settings, release), day, now)
    ev = evidence(settings, release)
    decision, reason, share = decide(ev, release["policy"] or POLICY, release["share"])
    if decision == "continue":
        return _record(settings, release, decision, actor, reason, ev, day, now, share)
    if decision == "ramp":
        deployments.set_share(settings, release["deployment_id"], share, at=now)
        return _record(settings, release, decision, actor, reason, ev, day, now, share)
    try:
        return _finish(settings, release, decision, actor, reason, ev, day, now)
    except registry.BelowBaselines as exc:
        # Good online, but the registry's floor refuses it (e.g. under its offline baselines): the policy cannot
        # promote it, and waiting changes nothing — roll it back with the registry's reason, not stop the loop.
        return _finish(settings, release, "rollback", actor, f"{reason}; but the registry refused the "
                       f"promotion: {exc}", ev, day, now)


def decide_now(settings: Settings, decision: str, *, actor: str, reason: str, at: str | None = None) -> dict:
    """An operator's decision on the active release: 'promote', 'rollback' or 'stop', recorded with the
    evidence of the moment; `ramp` goes through `ramp_to`."""
    if decision not in ("promote", "rollback", "stop"):
        raise ValidationError(f"a release is ended by promote, rollback or stop, not {decision!r}")
    release = _active_release(settings)
    return _finish(settings, release, decision, actor, reason, evidence(settings, release), None, at)


def ramp_to(settings: Settings, share: float, *, actor: str, reason: str, at: str | None = None) -> dict:
    """Change the active canary's share by hand (recorded as a 'ramp' decision)."""
    release = _active_release(settings)
    if release["mode"] != "canary":
        raise ValidationError("only a canary has a share; a shadow shows nobody the candidate")
    deployments.set_share(settings, release["deployment_id"], share, at=at)
    return _record(settings, release, "ramp", actor, reason, evidence(settings, release), None, at,
                   deployments.check_share(share))


def _active_release(settings: Settings) -> dict:
    release = deployments.active(settings)
    if release is None:
        raise deployments.NoActiveRelease("no shadow or canary release is active; start one first")
    return release


def _finish(settings, release, decision, actor, reason, ev, day, at) -> dict:
    """Promote, roll back or stop the release, then record the decision (promotion first: if the registry
    refuses it, e.g. under its baselines, the release stays active and nothing is recorded)."""
    version = int(release["version"])
    if decision == "promote":
        gate = {"promote": True, "reasons": [f"release #{release['deployment_id']} ({release['mode']}): {reason}"],
                "checks": {"release": _numbers(ev)}}
        registry.promote(settings, version, actor, f"{release['mode']} release #{release['deployment_id']}: {reason}",
                         gate=gate, at=at)
        ranker = _candidate_ranker(settings, version)
        if ranker is not None:            # the ranker the candidate served with follows it into production
            registry.promote(settings, int(ranker["version"]), actor, f"ranker of v{version}, promoted by release "
                             f"#{release['deployment_id']}", gate=gate, at=at)
        deployments.end(settings, release["deployment_id"], "promoted", actor=actor, reason=reason, at=at)
    elif decision == "rollback":
        deployments.end(settings, release["deployment_id"], "rolled-back", actor=actor, reason=reason, at=at)
        if registry.get_version(settings, version)["stage"] == "candidate":
            registry.archive(settings, version, actor, f"rolled back from release #{release['deployment_id']}: "
                             f"{reason}", at=at)
    else:
        deployments.end(settings, release["deployment_id"], "stopped", actor=actor, reason=reason, at=at)
    ended = deployments.get(settings, release["deployment_id"])
    recorded = _record(settings, ended, decision, actor, reason, ev | reach(settings, ended), day, at, release["share"])
    return recorded | {"pending": start_pending(settings, ended, at=at)}


def _numbers(ev: dict) -> dict:
    return {k: ev.get(k) for k in ("days", "point", "lo", "hi", "level", "hit_rate_canary", "hit_rate_production",
                                    "users_canary", "users_production", "users_affected")}


def _record(settings, release, decision, actor, reason, ev, day, at, share) -> dict:
    when = timestamp(at, settings)
    evidence_json = json.dumps({"per_day": ev.get("per_day", []), "policy": release.get("policy"),
                                "lists_affected": ev.get("lists_affected"), "se": ev.get("se"),
                                "level": ev.get("level")})
    with mlopsdb.session(settings) as db:
        cur = db.conn.execute(
            "INSERT INTO release_decisions(deployment_id, at, day, decision, actor, reason, days, point, lo, hi, "
            "hit_rate_canary, hit_rate_production, users_canary, users_production, users_affected, share, evidence) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [release["deployment_id"], when, day, decision, actor, reason, ev.get("days"), ev.get("point"), ev.get("lo"),
             ev.get("hi"), ev.get("hit_rate_canary"), ev.get("hit_rate_production"), ev.get("users_canary"),
             ev.get("users_production"), ev.get("users_affected"), share, evidence_json])
        decision_id = cur.lastrowid
    return {"decision_id": decision_id, "deployment_id": release["deployment_id"], "version": release["version"],
            "mode": release["mode"], "at": when, "day": day, "decision": decision, "actor": actor, "reason": reason,
            "share": share, **_numbers(ev)}


# ------------------------------------------------------------------ a retrain's candidate
def after_gate(settings: Settings, version: int, on_pass: str, *, actor: str, trigger: str, gate,
               job_id: int | None = None, at: str | None = None, with_ranker: bool = True, progress=None,
               rules: dict | None = None) -> dict:
    """What a retrain's candidate that passed the offline gate does; returns the retrain result's `release`.

    on_pass="canary": start a canary judged by `rules` (share and POLICY's keys; default RETRAIN_CANARY) →
    {"mode": "canary", "state": "active", "deployment_id", "share", "production_version", "reason", "ranker"};
    while another release runs, wait for it → {"mode": "canary", "state": "pending", "deployment_id": None,
    "share", "waits_for": {"deployment_id", "version", "mode"}, "supersedes": the version it replaces in the
    queue or None, "reason"}. With nothing in production, and for on_pass="promote": promote now →
    {"mode": "direct", "state": "promoted", "reason", "replaced"}; `replaced` is the recorded 'stop' decision of
    a release that was running (else None)."""
    from core.training.pipeline import check_on_pass
    check_on_pass(on_pass, after_gate)
    when = timestamp(at, settings)
    prod = registry.production(settings)
    if on_pass == "promote" or prod is None:
        why = ("nothing in production yet: the first model is promoted directly (no canary to compare it with)"
               if prod is None else "on_pass=promote: promoted directly when the gate passed")
        running = deployments.active(settings)
        registry.promote(settings, int(version), actor, f"gate passed ({trigger} retrain)", gate=gate, at=when)
        replaced = None
        if running is not None:
            reason = (f"release #{running['deployment_id']} replaced by v{version} because a {trigger} retrain "
                      f"promoted it directly (on_pass=promote): production changed from v{prod['version']} to "
                      f"v{version}, so the {running['mode']} of v{running['version']} no longer compares with "
                      "production")
            replaced = _finish(settings, running, "stop", actor, reason, evidence(settings, running), None, when)
        return {"mode": "direct", "state": "promoted", "reason": why, "replaced": replaced}
    rules = dict(RETRAIN_CANARY if rules is None else rules)
    share = rules.pop("share", deployments.DEFAULT_SHARE)
    release_policy(deployments.check_share(share), **rules)        # checked now, not when a pending one starts
    reason = (f"a {trigger} retrain's candidate passed the offline gate" + (f" (job {job_id})" if job_id else "")
              + "; it earns production on its online hit rate")
    running = deployments.active(settings)
    if running is not None:
        return _queue(settings, {"version": int(version), "mode": "canary", "share": share, "rules": rules,
                                 "with_ranker": with_ranker, "actor": actor, "reason": reason, "trigger": trigger,
                                 "production_version": int(prod["version"])}, running, job_id=job_id, at=when)
    started = start(settings, int(version), "canary", actor=actor, reason=reason, share=share, at=when,
                    with_ranker=with_ranker, progress=progress, **rules)
    return {"mode": "canary", "state": "active", "deployment_id": started["deployment_id"], "share": started["share"],
            "production_version": started["production_version"], "reason": reason, "ranker": started["ranker"]}


def outcome(result: dict) -> str:
    """What became of a retrain's candidate, in words (`pipeline.release_outcome`)."""
    from core.training.pipeline import release_outcome
    return release_outcome(result)


def pending(settings: Settings) -> dict | None:
    """The release waiting for the running one to end (one at most), or None: the newest 'release-queued'
    action not followed by a 'release-dequeued' one, with its `action_id` and `queued_at`."""
    with mlopsdb.session(settings) as db:
        return _pending_on(db)


def _pending_on(db) -> dict | None:
    last = policy.last_action(db, (QUEUED, DEQUEUED))
    if last is None or last["kind"] != QUEUED:
        return None
    return last["result"] | {"action_id": last["action_id"], "queued_at": last["at"]}


def _queue(settings: Settings, waiting: dict, running: dict, *, job_id, at: str) -> dict:
    """Record `waiting` as the pending release (a newer candidate takes the place of an older one)."""
    waits_for = {"deployment_id": running["deployment_id"], "version": int(running["version"]), "mode": running["mode"]}
    with mlopsdb.write_session(settings) as db:
        before = _pending_on(db)
        if before is not None:
            _action(db, DEQUEUED, at, waiting["actor"], f"pending release of v{before['version']} superseded by "
                    f"v{waiting['version']}", {"version": before["version"], "outcome": "superseded",
                                               "by": waiting["version"], "queued": before["action_id"]}, job_id)
        record = waiting | {"waits_for": waits_for, "supersedes": None if before is None else before["version"],
                            "job_id": job_id}
        _action(db, QUEUED, at, waiting["actor"], f"v{waiting['version']} waits for release "
                f"#{running['deployment_id']} ({running['mode']} of v{running['version']}) to end", record, job_id)
    return {"mode": waiting["mode"], "state": "pending", "deployment_id": None, "share": waiting["share"],
            "waits_for": waits_for, "supersedes": record["supersedes"], "reason": waiting["reason"]}


def start_pending(settings: Settings, ended: dict | None, *, at: str | None = None) -> dict | None:
    """Start the pending release now that `ended` (None: no release is active) has ended; returns
    {"version", "outcome": "started"|"dropped", "deployment_id", "reason"} or None when nothing waits.

    It is dropped, with the reason recorded, when its version is no longer a candidate, when production is
    a newer version than it (a later model was promoted meanwhile), or when it cannot start."""
    waiting = pending(settings)
    if waiting is None or deployments.active(settings) is not None:
        return None
    when = timestamp(at, settings)
    version = int(waiting["version"])
    after = "" if ended is None else f" after release #{ended['deployment_id']} ended ({ended['state']})"
    prod = registry.production(settings)
    stage = registry.get_version(settings, version)["stage"]
    why_not = (f"v{version} is no longer a candidate ({stage})" if stage != "candidate" else
               f"production v{prod['version']} is newer" if prod is not None and int(prod["version"]) > version else
               None)
    started = None
    if why_not is None:
        try:
            started = start(settings, version, waiting["mode"], actor=waiting["actor"], reason=waiting["reason"],
                            share=waiting["share"], at=when, with_ranker=waiting.get("with_ranker"),
                            **waiting.get("rules", {}))
        except deployments.ReleaseActive:       # another release started meanwhile: keep waiting for it
            return None
        except RetroError as exc:
            why_not = f"could not start: {exc}"
    if started is not None:
        fate, cause = "started", (f"pending v{version} started as {waiting['mode']} release "
                                  f"#{started['deployment_id']}{after}")
    else:
        fate, cause = "dropped", f"pending v{version} dropped{after}: {why_not}"
    out = {"version": version, "outcome": fate, "deployment_id": started and started["deployment_id"], "reason": cause}
    with mlopsdb.write_session(settings) as db:
        current = _pending_on(db)
        if current is not None and current["action_id"] == waiting["action_id"]:
            _action(db, DEQUEUED, when, POLICY_ACTOR, cause, out | {"queued": waiting["action_id"]},
                    waiting.get("job_id"))
    return out


def _action(db, kind: str, at: str, actor: str, cause: str, result: dict, job_id) -> None:
    policy.record_action(db, kind, at=at, actor=actor, cause=cause, result=result, job_id=job_id)


# ------------------------------------------------------------------ reads
def decisions(settings: Settings, deployment_id: int | None = None) -> pd.DataFrame:
    """Release decisions, oldest first (all, or one release's); `evidence` stays JSON text."""
    where, args = ("WHERE deployment_id = ?", [int(deployment_id)]) if deployment_id is not None else ("", [])
    with mlopsdb.session(settings) as db:
        rows = db.execute(f"SELECT * FROM release_decisions {where} ORDER BY decision_id", args).fetchall()
    return pd.DataFrame(rows, columns=DECISION_COLUMNS)


def status(settings: Settings) -> dict:
    """What serves and what is being released: production, the active release with its evidence so far and
    its decisions, the release waiting for it (`pending`) and the releases before it (the `release status`
    command and the Deployment page)."""
    prod = registry.production(settings)
    active = deployments.active(settings)
    out = {"production": None if prod is None else {k: prod[k] for k in ("version", "model_kind", "data_version",
                                                                         "created_at")},
           "release": active, "evidence": None, "decisions": [], "history": deployments.history(settings),
           "pending": pending(settings)}
    if active is not None:
        ev = evidence(settings, active)
        out["evidence"] = {k: v for k, v in ev.items() if k != "per_day"} | {"per_day": ev["per_day"]}
        out["decisions"] = decisions(settings, active["deployment_id"]).to_dict("records")
    return out


FATES = ("promoted", "canary", "waiting", "rolled back", "stopped", "replaced", "refused")


def fate(settings: Settings, version: int) -> dict:
    """What became of model `version` by now, read from the registry and the releases (not from the result of
    the action that made it: a canary started by a retrain may since have been promoted or rolled back).

    Returns {"version", "state": one of FATES, "text": the state in words, "stage": the registry stage}:
    'promoted' (in production now), 'canary' (its release is running), 'waiting' (queued behind a running
    release), 'rolled back' / 'stopped' (its release ended so), 'replaced' (was in production, another version
    serves now), 'refused' (a candidate that never reached production or a release)."""
    version = int(version)
    row = registry.get_version(settings, version)
    stage = row["stage"]
    events = registry.history(settings, version)
    to_prod = events[events["to_stage"] == "production"]
    releases = deployments.history(settings)
    mine = releases[releases["version"] == version] if len(releases) else releases
    out = {"version": version, "stage": stage}
    if stage == "production":
        last = to_prod.iloc[-1] if len(to_prod) else None
        by = "" if last is None else f" by {last['actor']} on {str(last['at'])[:10]}"
        return out | {"state": "promoted", "text": f"v{version} promoted to production{by}"}
    active = mine[mine["state"] == "active"] if len(mine) else mine
    if len(active):
        r = active.iloc[0]
        return out | {"state": "canary", "text": f"v{version} in canary release #{int(r['deployment_id'])} "
                                                 f"({float(r['share']):.0%} of users) since "
                                                 f"{str(r['started_at'])[:10]}; the release policy decides it "
                                                 "(Deployment page)"}
    waiting = pending(settings)
    if waiting is not None and int(waiting["version"]) == version:
        w = waiting["waits_for"]
        return out | {"state": "waiting", "text": f"v{version} waits for release #{w['deployment_id']} ({w['mode']} "
                                                  f"of v{w['version']}) to end, then starts as a canary"}
    if len(to_prod):
        return out | {"state": "replaced", "text": f"v{version} was promoted on {str(to_prod.iloc[-1]['at'])[:10]} "
                                                   f"and has since been replaced (stage {stage})"}
    if len(mine):
        r = mine.iloc[0]
        state = "rolled back" if r["state"] == "rolled-back" else "stopped"
        return out | {"state": state, "text": f"v{version}'s release #{int(r['deployment_id'])} was {state} on "
                                              f"{str(r['ended_at'])[:10]} by {r['ended_by']}: {r['end_reason']}"}
    return out | {"state": "refused", "text": f"v{version} kept as candidate — the gate refused it"}
