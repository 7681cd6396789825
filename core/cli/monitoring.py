"""Monitoring and the retraining policy: monitor, alerts, policy."""
from __future__ import annotations

from core import errors
from core.cli import arg, command, emit, int_in, float_in
from core.privacy import access
from core.store import clock, opsdb


@command("monitor", help="latest drift scores, online quality, open alerts")
def cmd_monitor(args, settings):
    from core.monitoring import monitoring
    data = monitoring.latest(settings)

    def churn_line():
        c = data["churn_model"]
        if c["version"] is None:
            return "  churn model: none in production"
        if c["stale"]:
            return f"  churn model v{c['version']}: POSSIBLY STALE — " + "; ".join(c["reasons"])
        return f"  churn model v{c['version']}: up to date ({c['reasons'][0]})"

    def ads_lines():
        a = data["ads"]
        if not a["enabled"] and a["day"] is None:
            return ["  ads: off (`python -m core ads switch on`)"]
        lines = []
        head = f"  ads ({'on' if a['enabled'] else 'off'})"
        if a["day"] is None:
            lines.append(head + ": no ads day monitored yet")
        else:
            rate = "—" if a["click_rate"] is None else f"{a['click_rate']:.2%}"
            base = "" if a["baseline_click_rate"] is None else f", baseline {a['baseline_click_rate']:.2%}"
            ece = "—" if a["ece"] is None else f"{a['ece']:.4f}"
            chance = "" if a["ece_chance"] is None else f" (chance level {a['ece_chance']:.4f})"
            lines.append(f"{head}, day {a['day']}: {a['impressions']:,} impressions, {a['clicks']:,} clicks, click "
                         f"rate {rate}{base}; revenue {a['revenue']:.2f}; calibration ECE {ece}{chance}")
            lines.append("    budget pacing (spend ÷ daily budget): " + ", ".join(
                f"#{p['campaign_id']} {p['pacing']:.0%}" for p in a["pacing"]) if a["pacing"] else
                "    budget pacing: no campaign")
            for d in a["days"]:
                r = "—" if d["click_rate"] is None else f"{d['click_rate']:.2%}"
                e = "—" if d["ece"] is None else f"{d['ece']:.4f}"
                spent = "—" if d["budget_spent"] is None else f"{d['budget_spent']:.0%}"
                lines.append(f"    {d['day']}  click rate {r:>6}  revenue {d['revenue']:>9.2f}  ECE {e:>6}  "
                             f"budgets spent {spent:>4} ({d['budgets_exhausted']} exhausted)")
        for al in a["open_alerts"]:
            lines.append(f"    ALERT ads-drift:{al['metric']} value {al['value']:.4f} (threshold {al['threshold']:.4f})"
                         f" open since {al['opened_at']}")
        m = a["model"]
        if m["version"] is None:
            lines.append("    ads model: none in production (selection by the campaigns' click rates)")
        else:
            lines.append(f"    ads model v{m['version']}: " + ("POSSIBLY STALE — " + "; ".join(m["reasons"])
                                                                if m["stale"] else f"up to date ({m['reasons'][0]})"))
        return lines

    def human():
        if data["day"] is None:
            print("nothing monitored yet; run `python -m core simulate --days N` (the closed loop monitors every day)")
            print(churn_line())
            print("\n".join(ads_lines()))
            return
        print(f"day {data['day']}: {data['classification']} (production v{data['model_version']})")
        for r in data["drift"]:
            flag = "DRIFT" if r["drifted"] else "ok"
            score = "empty" if r["score"] is None else f"{r['score']:.4f}"
            print(f"  {r['feature']:<26} {r['test']:<15} {score:>8}  (threshold {r['threshold']:g})  {flag}")
        o = data["online"]
        if o.get("hit_rate_model") is not None:
            print(f"  online hit rate@10: model {o['hit_rate_model']:.3f}, Top 50 {o['hit_rate_top50']:.3f}"
                  + (f", baseline {o['baseline_hit_rate']:.3f}" if o.get("baseline_hit_rate") else ""))
        print(f"  quarantine rate {data['quality'].get('quarantine_rate', 0):.2%}; {len(data['open_alerts'])} open alerts")
        print(churn_line())
        print("\n".join(ads_lines()))
    emit(args, data, human)


@command("alerts", help="open alerts (--all: every alert)", args=[arg("--all", action="store_true")])
def cmd_alerts(args, settings):
    from core.monitoring import monitoring
    frame = monitoring.all_alerts(settings) if args.all else monitoring.open_alerts(settings)
    data = frame.to_dict("records") if len(frame) else []

    def human():
        if not data:
            print("no alerts" if args.all else "no open alerts")
        for a in data:
            state = f"closed {a['closed_at']}" if a["closed_at"] else "OPEN"
            print(f"#{a['alert_id']} {a['severity']:<8} {a['kind']}:{a['metric']} value {a['value']:.4f} "
                  f"(threshold {a['threshold']:.4f}) opened {a['opened_at']} [{a['classification']}] {state}")
    emit(args, data, human)


@command("policy", help="retraining policy and exploration share: show | set [MODE] [--explore-share S]", args=[
    arg("action", choices=["show", "set"]),
    arg("mode", nargs="?", choices=["manual", "scheduled", "on-alert"]),
    arg("--every-days", type=int_in(1, 365, "--every-days"), help="scheduled: retrain every N days"),
    arg("--explore-share", type=float_in(0.0, 0.5, "--explore-share"),
        help="share of served lists that explore (0 … 0.5; default setting RETRO_EXPLORE_SHARE, 0.05)"),
])
def cmd_policy(args, settings):
    from core.monitoring import policy
    from core.serving import exploration
    if args.action == "set":
        if not args.mode and args.explore_share is None:
            raise errors.ValidationError("policy set needs a mode (manual, scheduled or on-alert) "
                                         "and/or --explore-share")
        with opsdb.session(settings) as db:
            now = clock.now(db=db)
        actor = access.cli_allow(settings, "policy")
        if args.mode:
            with access.audited(settings, actor, "policy", f"{args.mode}"
                                + (f" every {args.every_days} days" if args.every_days else "")):
                policy.set_policy(settings, args.mode, args.every_days, actor=actor, at=now)
        if args.explore_share is not None:
            with access.audited(settings, actor, "policy", f"explore share {args.explore_share:g}"):
                exploration.set_share(settings, args.explore_share, actor=actor, at=now)
    data = policy.get_policy(settings) | {"explore_share": exploration.get_share(settings)}
    emit(args, data, lambda: print(f"retraining policy: {data['mode']}"
                                   + (f" (every {data['every_days']} days)" if data["mode"] == "scheduled" else "")
                                   + f"; {data['explore_share']:.0%} of served lists explore"))
