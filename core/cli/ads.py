"""Ads (docs/ads.md): ads campaigns | switch on|off | train | evaluate | status."""
from __future__ import annotations

from core import errors
from core.cli import ID, SEED, arg, command, emit, progress
from core.privacy import access


def _campaign_line(c: dict) -> str:
    creative = f"title {c['movie_id']}" if c["creative_kind"] == "title" else c["product"]
    targets = ", ".join(t for t in (c["target_genres"], c["target_age_bands"]) if t) or "anyone"
    rate = "—" if c["click_rate"] is None else f"{100 * c['click_rate']:.1f} %"
    return (f"  #{c['campaign_id']:<3} {c['advertiser'][:22]:<22} {creative[:30]:<30} bid {c['bid']:.2f}  budget "
            f"{c['daily_budget']:.2f}/day  cap {c['frequency_cap']}/day  {'active' if c['active'] else 'paused'}  "
            f"{c['impressions']} shown, {c['clicks']} clicks ({rate}), spent {c['spend']:.2f}  → {targets}")


def _num(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


METRIC_ROWS = (("log loss (lower is better)", "log_loss", 4), ("ROC AUC", "roc_auc", 3),
               ("ECE, 10 bins (lower is better)", "calibration_error", 4), ("expected revenue", "expected_revenue", 2))


def metric_table(model: dict, baseline: dict) -> str:
    """The model beside the campaigns' click rates, one metric a line (`ads train`, `ads evaluate`)."""
    width = max(len(label) for label, _, _ in METRIC_ROWS)
    lines = [f"  {'':{width}}  {'model':>8}  {'campaign rate':>13}"]
    lines += [f"  {label:{width}}  {_num(model.get(k), d):>8}  {_num(baseline.get(k), d):>13}"
              for label, k, d in METRIC_ROWS]
    return "\n".join(lines)


def status_lines(result: dict) -> str:
    """`ads status` for people: the version, what it was trained with, whether it may be stale and why."""
    if result["version"] is None:
        return "no ads model in production\n" + "\n".join(f"  - {r}" for r in result["reasons"])
    at = (result.get("depends_on") or {}).get("at_training") or {}
    used = (result.get("depends_on") or {}).get("used") or {}

    def dep(family):
        trained = ", ".join(f"v{v}" for v in used.get(family, [])) or "none"
        now = "none" if at.get(family) is None else f"v{at[family]}"
        return f"{family} {now} in production at training (features from {trained})"
    return (f"ads v{result['version']} ({'POSSIBLY STALE' if result['stale'] else 'current'}), trained "
            f"{result['created_at']} on data {result['data_version']}\n  depends on: {dep('cf')}; {dep('churn')}\n"
            + f"  serving now: cf {_v(result['serving_now']['cf'])}, churn {_v(result['serving_now']['churn'])}\n"
            + "\n".join(f"  - {r}" for r in result["reasons"]))


def _v(version) -> str:
    return "none" if version is None else f"v{version}"


def _train(args, settings):
    from core.ads import pipeline
    actor = access.cli_actor()
    with access.cli_action(settings, "ads train") as entry:
        result = pipeline.train(settings, seed=args.seed, promote=not args.no_promote, actor=actor,
                                progress=progress(args))
        entry["target"] = f"v{result['version']}"
    emit(args, result, lambda: print(
        f"ads v{result['version']} (run {result['run_id']}, data {result['data_version']}): "
        + ("promoted" if result["promoted"] else "kept as candidate") + "\n"
        + metric_table(result["metrics"], result["baselines"]["campaign_rate"]) + "\n"
        + "\n".join(f"  {r}" for r in result["gate"]["reasons"])))


def _evaluate(args, settings):
    from core.ads import evaluation
    with access.cli_action(settings, "evaluate", audit_as="ads evaluate") as entry:
        result = evaluation.evaluate(settings, args.version)
        entry["target"] = f"v{result['version']}"
    online = result["online"]

    def human():
        print(f"ads v{result['version']} ({result['stage']}) on the holdout {result['holdout'][0]} – "
              f"{result['holdout'][1]} ({result['model']['rows']:,} impressions, {result['model']['clicks']:,} "
              "clicks):")
        print(metric_table(result["model"], result["baseline"]))
        if result["note"]:
            print(f"  note: {result['note']}")
        if online.get("rows"):
            print(f"online check ({online['rows']:,} impressions it chose): log loss {_num(online['log_loss'])}, "
                  f"ECE {_num(online['calibration_error'])}, predicted {100 * online['mean_predicted']:.2f} % vs "
                  f"clicked {100 * online['click_rate']:.2f} %")
        else:
            print("online check: " + online["note"])
    emit(args, result, human)


@command("ads", help="ads: campaigns | switch on|off | train | evaluate | status (the sponsored slot and its model)",
         args=[
    arg("action", choices=["campaigns", "switch", "train", "evaluate", "status"]),
    arg("state", nargs="?", choices=["on", "off"], help="switch: on or off"),
    arg("--seed", type=SEED, help="train: random seed (default: settings seed 42)"),
    arg("--no-promote", action="store_true", help="train: register the candidate but never promote it"),
    arg("--version", type=ID, help="evaluate: an ads version (default: production)"),
])
def cmd_ads(args, settings):
    from core.simulation import ads_day
    if args.action != "switch" and args.state is not None:
        raise errors.ValidationError("on/off belongs to `ads switch`")
    if args.action != "train" and (args.seed is not None or args.no_promote):
        raise errors.ValidationError("--seed and --no-promote belong to `ads train`")
    if args.action != "evaluate" and args.version is not None:
        raise errors.ValidationError("--version belongs to `ads evaluate`")
    if args.action == "train":
        return _train(args, settings)
    if args.action == "evaluate":
        return _evaluate(args, settings)
    if args.action == "status":
        from core.ads import pipeline
        from core.training import registry
        now = {f: registry.production(settings, family=f) for f in pipeline.DEPENDENCY_FAMILIES}
        result = pipeline.status(settings) | {"serving_now": {f: None if v is None else int(v["version"])
                                                               for f, v in now.items()}}
        emit(args, result, lambda: print(status_lines(result)))
        return
    if args.action == "campaigns":
        data = ads_day.campaign_report(settings)
        emit(args, data, lambda: print(f"{len(data)} campaigns\n" + "\n".join(_campaign_line(c) for c in data)
                                       if data else "no campaigns: switch ads on (`python -m core ads switch on`)"))
        return
    if args.state is None:
        raise errors.ValidationError("ads switch needs on or off")
    with access.cli_action(settings, "ads", f"ads {args.state}"):
        data = ads_day.switch(settings, args.state == "on")
    emit(args, data, lambda: print(
        f"ads {'on' if data['enabled'] else 'off'} (were {'on' if data['was_enabled'] else 'off'})"
        + (f"; {data['campaigns_created']} campaigns created" if data["campaigns_created"] else "")
        + (f"; age bands recorded for {data['age_bands_recorded']} users" if data["age_bands_recorded"] else "")))
