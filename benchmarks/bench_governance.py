"""Monitoring and governance timings on the default world: one monitored day, drift on 1M rows,
explanations of a whole list, model card, diagnosis, erasure.

Usage: python benchmarks/bench_governance.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.governance import diagnose, explain, modelcard
from core.monitoring import drift, monitoring
from core.simulation import loop, simulation
from core.store import clock, opsdb
from core.training import pipeline, registry
from core.privacy import erasure, export
from core.serving import serving  # noqa: E402,E501
from core.settings import load_settings  # noqa: E402


def timed(fn, repeat=1):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, float(np.median(times))


def main() -> None:
    rows = []
    rng = np.random.default_rng(0)
    ref, cur = rng.normal(0, 1, 1_000_000), rng.normal(0.1, 1, 1_000_000)
    labels_ref = rng.choice(list("ABCDEFGHIJKLMNOPQR"), 1_000_000)
    labels_cur = rng.choice(list("ABCDEFGHIJKLMNOPQR"), 1_000_000)
    for name, a, b in (("psi", ref, cur), ("ks", ref, cur), ("jensen_shannon", ref, cur), ("chi_square", labels_ref, labels_cur), ("max_share_gain", labels_ref, labels_cur)):
        _, t = timed(lambda: drift.run_test(name, a, b), 3)
        rows.append((f"drift test `{name}` on 1,000,000 + 1,000,000 rows", t))
    with tempfile.TemporaryDirectory() as home:
        s = load_settings(home)
        simulation.init_world(s)
        pipeline.retrain(s)
        loop.run(s, 2, policy_mode="manual")
        with opsdb.session(s) as db:
            day = clock.now(db=db)[:10]
        import pandas as pd
        last = str((pd.Timestamp(day) - pd.Timedelta(days=1)).date())
        _, t = timed(lambda: monitoring.monitor_day(s, last), 3)
        rows.append(("monitor one day (all features, tests, online quality, alerts)", t))
        _, t = timed(lambda: loop.run(s, 1, policy_mode="manual"))
        rows.append(("one closed-loop day (serve, simulate, ETL, monitor)", t))
        with opsdb.session(s) as db:
            users = [u for (u,) in db.execute("SELECT user_id FROM events WHERE kind = 'watch' GROUP BY user_id "
                                               "ORDER BY count(*) DESC LIMIT 20")]
        explain.explain_list(s, users[0])
        times = []
        for u in users:
            t0 = time.perf_counter()
            explain.explain_list(s, u)
            times.append(time.perf_counter() - t0)
        rows.append((f"explain a whole top-10 list (ALS contributions + SHAP), median of {len(users)} users", float(np.median(times))))
        prod = registry.production(s)
        _, t = timed(lambda: modelcard.model_card(s, int(prod["version"])))
        rows.append(("model card of the production model (with breakdowns)", t))
        _, t = timed(lambda: diagnose.diagnose(s, users[0]))
        rows.append(("diagnose one user", t))
        _, t = timed(lambda: export.export_user(s, users[1], actor="bench"))
        rows.append(("export one user", t))
        _, t = timed(lambda: erasure.forget_user(s, users[2], actor="bench"))
        rows.append(("erase one user from every store and model", t))
        serving.clear_caches()
    print("| operation | time (s) |\n| --- | ---: |")
    for label, t in rows:
        print(f"| {label} | {t:.3f} |")


if __name__ == "__main__":
    from benchmarks import results_file
    with results_file.recorded("governance", "Governance (`bench_governance.py`)"):
        main()
