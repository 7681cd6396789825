"""Ads (docs/ads.md): ads campaigns | switch on|off."""
from __future__ import annotations

from core import errors
from core.cli import arg, command, emit
from core.privacy import access


def _campaign_line(c: dict) -> str:
    creative = f"title {c['movie_id']}" if c["creative_kind"] == "title" else c["product"]
    targets = ", ".join(t for t in (c["target_genres"], c["target_age_bands"]) if t) or "anyone"
    rate = "—" if c["click_rate"] is None else f"{100 * c['click_rate']:.1f} %"
    return (f"  #{c['campaign_id']:<3} {c['advertiser'][:22]:<22} {creative[:30]:<30} bid {c['bid']:.2f}  budget "
            f"{c['daily_budget']:.2f}/day  cap {c['frequency_cap']}/day  {'active' if c['active'] else 'paused'}  "
            f"{c['impressions']} shown, {c['clicks']} clicks ({rate}), spent {c['spend']:.2f}  → {targets}")


@command("ads", help="ads: campaigns | switch on|off (the world's sponsored slot)", args=[
    arg("action", choices=["campaigns", "switch"]),
    arg("state", nargs="?", choices=["on", "off"], help="switch: on or off"),
])
def cmd_ads(args, settings):
    from core.simulation import ads_day
    if args.action != "switch" and args.state is not None:
        raise errors.ValidationError("on/off belongs to `ads switch`")
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
