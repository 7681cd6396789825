"""The closed loop: simulated days where users see the *served* recommendations, the ETL and
monitoring run every day, and the retraining policy acts.

shift → behaviour changes → served lists fit worse → alerts → retrain → recovery.
"""
from __future__ import annotations

from datetime import timedelta

import numpy as np

from core.warehouse import etl
from core.monitoring import monitoring, policy
from core.store import opsdb
from core.serving import serving
from core.simulation import simulation
from core.constants import TS_FORMAT
from core.errors import ValidationError
from core.settings import Settings
from core.training.top50 import top50


def run(settings: Settings, days: int, *, shift: str | None = None, strength: float = 1.0, duration: int | None = None,
        params: dict | None = None, policy_mode: str | None = None, progress=simulation._noop) -> dict:
    """Simulate `days` closed-loop days; returns a per-day log (online quality, alerts, retrains)."""
    if not isinstance(days, (int, np.integer)) or days < 1:
        raise ValidationError(f"--days must be a positive integer, got {days!r}")
    if policy_mode is not None:
        policy.validate(policy_mode)
    world = simulation.load_world(settings)
    db = opsdb.connect(settings)
    log, started = [], None
    try:
        first = int(opsdb.get_meta(db, "sim_day", "0"))
        if shift is not None:
            with db.atomic():
                started = simulation.start_shift(db, world, shift, strength, days if duration is None else duration,
                                                 first, params)
            world.save(settings.world_file)
        shifts = simulation.load_shifts(db)
        for i in range(days):
            day = first + i
            progress(i / days, f"day {day + 1}: serving, simulating, ETL, monitoring")
            start = simulation.day_start(day)
            served_at = start.strftime(TS_FORMAT)
            monitoring.record_top50(settings, start, top50(db).movie_ids)

            def serve(user_ids, k, _at=served_at):
                recs = serving.recommend_many(settings, user_ids, k, at=_at)
                return {u: r.movie_ids for u, r in recs.items()}

            stats = simulation.simulate_day(db, world, day, shifts, serve)
            world.save(settings.world_file)
            now = (start + timedelta(days=1)).strftime(TS_FORMAT)
            etl.run(settings, at=now)
            report = monitoring.monitor_day(settings, start)
            action = policy.apply(settings, report, now=now, mode=policy_mode,
                                  progress=lambda f, m, d=day: progress((i + f) / days, f"day {d + 1}: retrain — {m}"))
            if action:
                serving.clear_caches()
            log.append({"day": day, "date": report.day, "events": stats.events, "rejected": stats.rejected,
                        "classification": report.classification, "opened": report.opened, "closed": report.closed,
                        "hit_rate_model": report.online.get("hit_rate_model"),
                        "hit_rate_top50": report.online.get("hit_rate_top50"),
                        "quarantine_rate": report.quality["quarantine_rate"], "action": action})
        progress(1.0, "done")
    finally:
        db.conn.close()
    summary = {"days": days, "first_day": first, "last_day": first + days - 1, "log": log,
               "retrains": sum(1 for r in log if r["action"]), "alerts_opened": sum(len(r["opened"]) for r in log)}
    if started is not None:
        summary["shift"] = {"kind": started.kind, "strength": started.strength, "start_day": started.start_day,
                            "duration": started.duration, "params": started.params}
    return summary
