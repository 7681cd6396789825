"""Is the yardstick right? Today's holdout, the counterfactual estimators and the simulated world's truth, side by side.

For a stable run and each of the 5 shift scenarios, on a copy of one base world:
  1. the base world: `--users`/`--movies` people and titles, `--days` days, production v1 trained 5 days before
     the end (so a fresh retrain has something new), then 5 closed-loop days serving v1 with exploration;
  2. five policies, fixed for the scenario: production (v1 as deployed), a fresh retrain (ALS on everything up
     to the scenario's start), a deliberately weak model (ALS with 2 factors, 1 iteration), the Top 50 and
     popularity (the 7 days before each day);
  3. the scenario: its shift starts, then `--window` closed-loop days serve production with the exploration
     share `--share`; before each day the world's truth (`core.simulation.truth`: expected watches per list
     of each policy's lists on that day, common random numbers) is computed for every policy;
  4. afterwards: today's holdout nDCG@10 of each policy (the last 3 days, production's served titles left out,
     as `evaluation.holdout_split` does) and IPS / SNIPS / DR on the window's exploration log
     (`core.training.offpolicy.evaluate`), each with its 90 % interval.
Printed per scenario: every policy's figures, Kendall τ of each estimator's order vs the truth's, whether the
truth's candidate − production difference lies in each estimator's interval, and the gate's verdict (the
fresh retrain and the weak model vs production, decided by the gate's rule on its estimator — production is
stale here — vs the truth's difference beyond a margin of 0.01 watches/list).

    python benchmarks/bench_yardstick.py [--users 1500 --movies 600 --days 30 --window 4 --share 0.2]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.pseudonym import pseudonym_key  # noqa: E402
from core.serving import exploration, serving  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402
from core.simulation import loop, simulation, truth  # noqa: E402
from core.store import opsdb  # noqa: E402
from core.store.mlopsdb import clone_home  # noqa: E402
from core.training import gate, metrics, offpolicy, pipeline, registry  # noqa: E402
from core.training.artifacts import load_bundle  # noqa: E402
from core.training.evaluation import full_matrix, holdout_split  # noqa: E402
from core.training.models import ALSRecommender  # noqa: E402
from core.training.top50 import top50  # noqa: E402
from core.warehouse import etl  # noqa: E402

SCENARIOS = [("stable", None, {}), ("trend", "trend", {"genre": "Western"}), ("viral", "viral", {}),
             ("seasonal", "seasonal", {"season": "halloween"}), ("life-event", "life-event", {}),
             ("new-releases", "new-releases", {})]
MARGIN = 0.01
MIN_ESS = Settings.gate_min_ess   # the gate's default minimum effective sample size (RETRO_GATE_MIN_ESS)
ESTIMATORS = ("ips", "snips", "dr", "switch", "dm")
STALE = {"stale": True, "days_behind": 5, "staleness_days": 3}   # production here: trained 5 days before the window
CANDIDATES = ("fresh retrain", "weak model")       # the comparisons the gate faces; Top 50 and popularity are baselines


def base_world(home: Path, args) -> object:
    s = load_settings(home)
    simulation.init_world(s, seed=args.seed, users=args.users, movies=args.movies, days=args.days - 5)
    pipeline.retrain(s, with_ranker=False)
    exploration.set_share(s, args.share, actor="bench")
    loop.run(s, 5, policy_mode="manual")
    return s


def _seen(settings) -> dict:
    with opsdb.session(settings) as db:
        return opsdb.seen_before(db, "9999-12-31T00:00:00")


class DailyRanking(offpolicy.RankingPolicy):
    """A ranking recomputed at each day start (the Top 50, popularity) and remembered per day."""

    def __init__(self, name, by_day):
        super().__init__(name, [])
        self.by_day = by_day
        self.day = None

    def at_day(self, day):
        self.day = day

    def lists(self, user_ids, seen, k):
        self.ranking = self.by_day[self.day]
        return super().lists(user_ids, seen, k)


def policies_for(settings, seed) -> dict:
    key = pseudonym_key(settings)
    top_by_day, pop_by_day = {}, {}
    top_policy, pop_policy = DailyRanking("top50", top_by_day), DailyRanking("popularity", pop_by_day)
    prod = load_bundle(registry.production(settings)["artifact_path"])
    full = full_matrix(settings)
    fresh = ALSRecommender(random_state=seed).fit(full.user_items)
    weak = ALSRecommender(factors=2, iterations=1, random_state=seed).fit(full.user_items)
    return {"production": offpolicy.ModelPolicy("production", prod.model, prod.matrix, key, top_policy),
            "fresh retrain": offpolicy.ModelPolicy("fresh retrain", fresh, full, key, top_policy),
            "weak model": offpolicy.ModelPolicy("weak model", weak, full, key, top_policy),
            "top50": top_policy, "popularity": pop_policy}, top_by_day, pop_by_day


def run_scenario(base, home: Path, name, shift, params, args) -> dict:
    s = clone_home(base, home)
    serving.clear_caches()
    etl.run(s)
    policies, top_by_day, pop_by_day = policies_for(s, args.seed)
    truths, t0 = [], time.perf_counter()
    for i in range(args.window):
        with opsdb.session(s) as db:
            day = int(opsdb.get_meta(db, "sim_day", "0"))
            top_by_day_key = simulation.day_start(day).strftime("%Y-%m-%d")
            top_by_day[top_by_day_key] = [int(m) for m in top50(db).movie_ids]
            start = simulation.day_start(day)
            recent = opsdb.watches_between(db, (start - pd.Timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%S"),
                                           start.strftime("%Y-%m-%dT%H:%M:%S"))
        pop_by_day[top_by_day_key] = pd.Series([m for _, m in recent]).value_counts().index.astype(int).tolist()
        for p in policies.values():
            p.at_day(top_by_day_key)
        if i == 0 and shift is not None:       # the shift starts with the window (lasting effects first)
            world = simulation.load_world(s)
            with opsdb.session(s) as db, db.atomic():
                simulation.start_shift(db, world, shift, 1.5, args.window, day, params)
            world.save(s.world_file)
        state = truth.WorldState(s)
        seen = _seen(s)
        lists = {n: p.lists(state.user_ids, seen, 10) for n, p in policies.items()}
        truths.append(truth.true_values(state, lists, draws=args.draws, seed=args.seed))
        loop.run(s, 1, policy_mode="manual")
    sim_seconds = time.perf_counter() - t0
    true = {n: float(np.mean([t[n]["watches_per_list"] for t in truths])) for n in policies}
    true_hit = {n: float(np.mean([t[n]["hit_rate"] for t in truths])) for n in policies}
    with opsdb.session(s) as db:
        end_day = int(opsdb.get_meta(db, "sim_day", "0"))
    start, end = simulation.day_start(end_day - args.window), simulation.day_start(end_day)
    log = offpolicy.load_log(s, start.strftime("%Y-%m-%dT%H:%M:%S"), end.strftime("%Y-%m-%dT%H:%M:%S"))
    t1 = time.perf_counter()      # estimation replays each logged day with that day's rankings (at_day)
    result = offpolicy.evaluate(s, log, policies, "production", top50_by_day=top_by_day, seed=args.seed,
                                n_boot=args.boot, switch=args.switch, reward_model=args.reward_model,
                                reward_scores=args.reward_scores)
    est_seconds = time.perf_counter() - t1
    holdout = _holdout_ndcg(s, policies, top_by_day)
    from core.monitoring import monitoring
    price = monitoring.exploration_price(s)
    return {"scenario": name, "price": price, "truth": true, "truth_hit_rate": true_hit, "estimates": result, "holdout": holdout,
            "log": log.summary(), "seconds": {"simulate+truth": sim_seconds, "estimate": est_seconds}}


def _holdout_ndcg(s, policies, top_by_day) -> dict:
    """Today's holdout nDCG@10 of each policy: the last 3 days, production's served titles left out."""
    split = holdout_split(s)
    with opsdb.session(s) as db:
        users = opsdb.user_ids(db)
    from core.pseudonym import pseudonymize
    keys = pseudonymize(pd.Series(users, dtype="int64"), pseudonym_key(s))
    key_to_user = dict(zip(keys, users))
    rows = sorted(split.holdout)
    user_ids = [key_to_user.get(split.train.user_keys[r]) for r in rows]
    keep = [i for i, u in enumerate(user_ids) if u is not None]
    user_ids = [user_ids[i] for i in keep]
    relevant = [{int(split.train.movie_ids[c]) for c in split.holdout[rows[i]]} for i in keep]
    cutoff_day = split.cutoff.strftime("%Y-%m-%d")
    with opsdb.session(s) as db:
        seen = opsdb.seen_before(db, split.cutoff.strftime("%Y-%m-%dT%H:%M:%S"))
    out = {}
    day = min(top_by_day, key=lambda d: abs(pd.Timestamp(d) - pd.Timestamp(cutoff_day)))
    for n, p in policies.items():
        p.at_day(day)
        lists = p.lists(user_ids, seen, 10)
        out[n] = metrics.ndcg_at_k([lists[u] for u in user_ids], relevant, 10)
    return out


def summarize(r: dict) -> dict:
    names = list(r["truth"])
    true = np.array([r["truth"][n] for n in names])
    out = {"tau": {}, "covered": {}, "covered_candidates": {}, "verdict": {}}
    for est in ESTIMATORS + ("holdout",):
        values = np.array([r["holdout"][n] if est == "holdout" else r["estimates"]["policies"][n][est]["value"]
                           for n in names])
        out["tau"][est] = float(kendalltau(values, true).statistic)
    for est in ESTIMATORS:
        cov = []
        for n in names:
            if n == "production":
                continue
            c = r["estimates"]["comparisons"][n][est]
            diff = r["truth"][n] - r["truth"]["production"]
            cov.append(bool(c["lo"] <= diff <= c["hi"]))
        out["covered"][est] = cov
        out["covered_candidates"][est] = [c for n, c in zip([n for n in names if n != "production"], cov)
                                          if n in CANDIDATES]
    # The gate's own rule on the log (core.training.gate.yardstick_checks); production is stale here (trained
    # 5+ days before the window), which on the log needs a point estimate ≥ 0 besides "not significantly worse".
    out["verdict"] = {}
    for cand in CANDIDATES:
        c = r["estimates"]["comparisons"][cand][offpolicy.BEST]
        diff = r["truth"][cand] - r["truth"]["production"]
        y = offpolicy.yardstick_of(r["estimates"], names, window=[], candidate=cand)
        ess = y["ess"]
        passes = {}
        for rule, online_check in (("direct", False), ("canary", True)):
            if ess >= MIN_ESS:
                _, base, quality = gate.yardstick_checks(y, MIN_ESS, 0.0, STALE, online_check=online_check)
                passes[rule] = bool(base[0] and quality[0])
            else:  # below the gate's minimum ESS the holdout decides (point estimates here: no paired bootstrap)
                h = r["holdout"]
                passes[rule] = bool(h[cand] >= h["production"] and h[cand] > max(h["top50"], h["popularity"]))
        promote = passes["direct"]
        out["verdict"][cand] = {"promotes": promote, "true_difference": diff, "decided_by":
                                "counterfactual" if ess >= MIN_ESS else "holdout",
                                "right": _right(promote, diff), "point": c["value"],
                                "interval": [c["lo"], c["hi"]], "ess": ess,
                                # What the retraining policy and the Training page use: the candidate heads for
                                # a canary (online_check), so "not significantly worse" on the log suffices.
                                "canary": {"passes": passes["canary"], "right": _right(passes["canary"], diff)}}
    return out


def _right(promote: bool, diff: float) -> bool:
    """The truth's verdict on a gate decision: wrong when it refuses a candidate better by more than MARGIN or
    passes one worse by more."""
    return not ((promote and diff < -MARGIN) or (not promote and diff > MARGIN))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1500)
    ap.add_argument("--movies", type=int, default=600)
    ap.add_argument("--days", type=int, default=30)
    # The documented run (docs/benchmarks.md): a 5-day window at the platform's default exploration share.
    ap.add_argument("--window", type=int, default=5, help="closed-loop days of each scenario's log")
    ap.add_argument("--share", type=float, default=0.05, help="exploration share while the log is written")
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--boot", type=int, default=500)
    ap.add_argument("--switch", type=float, default=offpolicy.SWITCH)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--reward-model", default=offpolicy.REWARD_MODEL, choices=("logistic", "boosting"),
                    help="DR's reward model (offpolicy.evaluate)")
    ap.add_argument("--reward-scores", default=offpolicy.REWARD_SCORES, choices=("reference", "all", "none"),
                    help="whose model scores DR's reward model reads (offpolicy.evaluate)")
    ap.add_argument("--scenarios", default=",".join(n for n, _, _ in SCENARIOS))
    ap.add_argument("--json", type=Path, help="write every figure to this file")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="yardstick-"))
    t = time.perf_counter()
    base = base_world(root / "base", args)
    print(f"base world: {args.users} users, {args.movies} movies, {args.days} days, exploration share {args.share}: "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    results = []
    wanted = args.scenarios.split(",")
    for name, shift, params in SCENARIOS:
        if name not in wanted:
            continue
        r = run_scenario(base, root / name, name, shift, params, args)
        r["summary"] = summarize(r)
        results.append(r)
        print(f"\n== {name} ==  log: {r['log']['lists']} lists ({r['log']['exploring_lists']} exploring), "
              f"{r['log']['rewards']} rewards; {r['seconds']['simulate+truth']:.0f} s simulating + truth, "
              f"{r['seconds']['estimate']:.1f} s estimating")
        print(f"{'policy':<15}{'holdout nDCG':>13}" + "".join(f"{offpolicy.LABELS[e]:>24}" for e in ESTIMATORS)
              + f"{'truth':>9}")
        for n in r["truth"]:
            cells = [f"{r['estimates']['policies'][n][e]['value']:.3f} [{r['estimates']['policies'][n][e]['lo']:.3f},"
                     f"{r['estimates']['policies'][n][e]['hi']:.3f}]" for e in ESTIMATORS]
            print(f"{n:<15}{r['holdout'][n]:>13.4f}" + "".join(f"{c:>24}" for c in cells) + f"{r['truth'][n]:>9.3f}")
        sm, pr = r["summary"], r["price"]
        if pr.get("difference") is not None:
            print(f"price of exploring (online hit rate@10, base + window days): deterministic "
                  f"{pr['deterministic']['hit_rate']:.3f} ({pr['deterministic']['lists']:,} lists), exploring "
                  f"{pr['explore']['hit_rate']:.3f} ({pr['explore']['lists']:,}), difference {pr['difference']:+.3f}")
        print("Kendall τ vs truth: " + ", ".join(f"{k} {v:+.2f}" for k, v in sm["tau"].items()))
        print("truth in 90 % interval of Δ vs production (all 4 / the 2 candidates): " + ", ".join(
            f"{k} {sum(v)}/{len(v)} / {sum(sm['covered_candidates'][k])}/2" for k, v in sm["covered"].items()))
        for cand, v in sm["verdict"].items():
            print(f"gate ({cand} vs production) decided on "
                  f"{offpolicy.LABELS[offpolicy.BEST] if v['decided_by'] == 'counterfactual' else 'the holdout'}: "
                  f"Δ {v['point']:+.3f} [{v['interval'][0]:+.3f}, {v['interval'][1]:+.3f}], ESS {v['ess']:.0f}; "
                  f"direct promotion: {'promote' if v['promotes'] else 'refuse'} → {'right' if v['right'] else 'WRONG'}; "
                  f"headed for a canary: {'pass' if v['canary']['passes'] else 'refuse'} → "
                  f"{'right' if v['canary']['right'] else 'WRONG'}; truth Δ {v['true_difference']:+.3f}", flush=True)
    print("\n== overall ==")
    for est in ESTIMATORS + ("holdout",):
        taus = [r["summary"]["tau"][est] for r in results]
        line = f"{est:<8} τ min {min(taus):+.2f} median {np.median(taus):+.2f}"
        if est != "holdout":
            cov = [c for r in results for c in r["summary"]["covered"][est]]
            cand = [c for r in results for c in r["summary"]["covered_candidates"][est]]
            line += (f"; truth in 90 % interval: all {sum(cov)}/{len(cov)} ({sum(cov) / len(cov):.0%}), "
                     f"candidates {sum(cand)}/{len(cand)} ({sum(cand) / len(cand):.0%})")
        print(line)
    for rule in ("direct", "canary"):
        rights = [v["right"] if rule == "direct" else v["canary"]["right"]
                  for r in results for v in r["summary"]["verdict"].values()]
        print(f"gate ({'direct promotion' if rule == 'direct' else 'headed for a canary'}): {sum(rights)}/{len(rights)} "
              f"decisions right by the truth (margin {MARGIN} watches/list; {offpolicy.LABELS[offpolicy.BEST]} where "
              f"its ESS ≥ {MIN_ESS}, else the holdout)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
