"""Consent: a user's tracking, personalization and ad-targeting flags, their history, and what a change does where."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.errors import UnknownUser, ValidationError
from core.privacy import access, common
from core.pseudonym import pseudonym, pseudonym_key
from core.settings import Settings
from core.store import opsdb
from core.training import artifacts, registry

EFFECTS = {   # (flag, new value) → what changes, where and when
    ("tracking", False): ["Storage, immediately: new behavioural events of the user are no longer stored "
                          "(ratings still are: they are the user's explicit input)."],
    ("tracking", True): ["Storage, immediately: behavioural events are stored again."],
    ("personalization", False): [
        "Serving, immediately: the user gets the Top 50 (path 'top50:no-consent').",
        "Training, at the next retrain: its ETL marks the user without personalization and the training matrix "
        "excludes their data; until then it is still in the production model (see pending effects)."],
    ("personalization", True): [
        "Serving: personalized again immediately if the production model knows the user, else after the next retrain.",
        "Training, at the next retrain: the user's data is included again."],
    ("ad_targeting", False): ["Ads, immediately: the user only gets untargeted ads (campaigns without targeting "
                              "criteria, chosen without their data)."],
    ("ad_targeting", True): ["Ads, immediately: targeted ads may be chosen for the user again."],
}


def set_consent(settings: Settings, user_id: int, *, tracking: bool | None = None,
                personalization: bool | None = None, actor: str, at: str | None = None,
                ad_targeting: bool | None = None) -> dict:
    """Change a user's consent flags (one transaction) and append the change to `consent_history`.

    Effects: storage immediately (the write API skips events without tracking
    consent; ratings are always stored), serving immediately (no personalization
    → Top 50, path 'top50:no-consent'), training at the next retrain (its ETL
    syncs the flag and the training matrix excludes the user) — see
    `pending_effects` for users whose data is still in the production model.
    Ad targeting (issue 25) is its own flag: without it a user gets untargeted ads only.
    Returns {'user_id', 'tracking', 'personalization', 'ad_targeting', 'changed_at', 'effects'}
    (effects: one sentence per store touched, saying when).
    """
    uid = common.user_id(user_id)
    actor = common.actor(actor)
    if tracking is None and personalization is None and ad_targeting is None:
        raise ValidationError("set_consent needs tracking=, personalization=, ad_targeting= or several (True or "
                              "False)")
    flags = {name: common.flag(value, name) for name, value in (("tracking", tracking),
                                                                 ("personalization", personalization),
                                                                 ("ad_targeting", ad_targeting))
             if value is not None}
    with opsdb.session(settings) as db:
        when = common.when(db, at)
        new = opsdb.set_consent(db, uid, tracking=flags.get("tracking"), personalization=flags.get("personalization"),
                                ad_targeting=flags.get("ad_targeting"), actor=actor, at=when)
    if new is None:                      # the atomic update found no such user
        raise UnknownUser(f"unknown user {uid}: {opsdb.NO_SUCH_USER}")
    access.log_action(settings, actor, "consent", pseudonym(uid, pseudonym_key(settings)), "ok", when)
    effects = [sentence for name, value in flags.items() for sentence in EFFECTS[(name, value)]]
    return {"user_id": uid, **new, "changed_at": when, "effects": effects}


def consent(settings: Settings, user_id: int) -> dict:
    """Current flags and the full change history (oldest first)."""
    uid = common.user_id(user_id)
    with opsdb.session(settings) as db:
        opsdb.require_user(db, uid)
        flags = opsdb.consent_flags(db, uid)
        ads = bool(opsdb.ad_targeting_consent(db, [uid])[0])
        history = opsdb.consent_history(db, uid)
    for h in history:
        h["tracking"], h["personalization"] = bool(h["tracking"]), bool(h["personalization"])
        h["ad_targeting"] = None if h["ad_targeting"] is None else bool(h["ad_targeting"])
    return {"user_id": uid, "tracking": flags[0], "personalization": flags[1], "ad_targeting": ads,
            "history": history}


def pending_effects(settings: Settings) -> list[dict]:
    """Users who withdrew personalization consent but whose data is still in the production model.

    It stays there until the next retrain (serving already ignores it). The
    production bundle decides: its mapping still holds the user's pseudonym. That
    agrees with comparing the withdrawal (`changed_at`, the start of the latest
    run of 'personalization off' in consent_history) with the model's training
    time (registry `created_at`, when the retrain's ETL synced the flags), and
    stays right after a rollback to an older model or a training run without a
    fresh ETL; `withdrawn_after_training` reports that comparison. Raw user ids:
    this is for the operator page. Newest withdrawals first.
    """
    prod = registry.production(settings)
    if prod is None:
        return []
    trained_at = pd.Timestamp(prod["created_at"])
    directory = Path(prod["artifact_path"])
    trained_until = artifacts.trained_until(directory)
    keys = artifacts.user_keys(directory)
    in_model = set(keys.tolist()) if keys is not None else set()
    key = pseudonym_key(settings)
    with opsdb.session(settings) as db:
        withdrawals = opsdb.personalization_withdrawals(db)
    out = []
    for uid, history in withdrawals.items():
        if pseudonym(uid, key) not in in_model:
            continue
        since = None   # start of the latest run of 'personalization = 0' entries
        for changed_at, pers in history:
            since = (since or changed_at) if not pers else None
        out.append({"user_id": int(uid), "changed_at": since,
                    "withdrawn_after_training": None if since is None else bool(pd.Timestamp(since) >= trained_at),
                    "model_version": int(prod["version"]), "model_trained_at": prod["created_at"],
                    "trained_until": trained_until,
                    "effect": f"their data is still in model v{prod['version']} until the next retrain"})
    return sorted(out, key=lambda r: r["changed_at"] or "", reverse=True)
