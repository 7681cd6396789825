"""Key rotation: a new pseudonymization key, and every store that holds pseudonyms re-keyed through its own
`rekey` (warehouse, model bundles, churn scores and churn training rows, the audit log)."""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from core.errors import RetroError
from core.privacy import access, common
from core.pseudonym import KEY_ENV, PSEUDONYM_HEX, pseudonym_key, pseudonymize
from core import secretstore
from core.secretstore import secrets_file
from core.serving import serving
from core.settings import Settings
from core.store import locks, opsdb
from core.ads import pipeline as ads_pipeline
from core.training import artifacts, churn_pipeline, registry
from core.warehouse import lake, warehouse


def _unlinked(old_key: str, new_key: bytes) -> str:
    """New pseudonym for a key whose user id is unknown (not in the ops DB): still distinct, never linkable."""
    return hmac.new(new_key, b"unlinked:" + old_key.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def _set_artifact_hashes(settings: Settings, hashes: dict[Path, str]) -> int:
    """Register the re-keyed bundles' hashes (runs and model versions, one transaction)."""
    return registry.set_artifact_hashes(settings, hashes)


@locks.exclusive("key rotation")
def rotate_key(settings: Settings, *, actor: str, at: str | None = None) -> dict:
    """Replace the pseudonymization key and re-key every store that holds pseudonyms.

    Steps: a new random key (32 bytes, hex) is first parked in secrets.toml as
    `[pseudonymization] next_key` (so an interrupted rotation can be finished by
    hand); old → new pseudonyms are computed for every user id the ops DB knows
    (users, and ids named in rejected-write payloads); the warehouse's `user_key`
    columns are updated through that mapping (`warehouse.rekey`, one
    transaction); every bundle's mapping is rewritten (`artifacts.rekey`) and its
    hash updated in `runs` / `model_versions`; the stored churn scores and every
    churn training set follow (`churn_pipeline.rekey`), then `operator_audit`
    targets (`access.rekey`); finally `key` is replaced and `next_key` dropped (file mode 0600).
    An interrupted rotation is resumed by calling it again: the parked
    `next_key` is reused and keys already under it are left as they are.
    A pseudonym whose id is unknown (no longer in the ops DB) gets
    HMAC(new key, 'unlinked:' + old pseudonym): it changes like every other key
    but can no longer be linked to anyone. Refused when $RETRO_PSEUDONYM_KEY is
    set: the key is then managed outside this folder. Run it while no ETL or
    retrain is running (they would write pseudonyms under the old key).
    """
    actor = common.actor(actor)
    from core.pseudonym import STREAMLIT_SECRETS, key_source
    if key_source(settings) == "streamlit":
        raise RetroError(f"the pseudonymization key comes from {STREAMLIT_SECRETS}, so it is managed outside this "
                         "data folder; rotate it there")
    if os.environ.get(KEY_ENV):
        raise RetroError(f"the pseudonymization key comes from ${KEY_ENV}, so it is managed outside this data "
                         f"folder; rotate it there (or unset ${KEY_ENV} to let the platform manage "
                         f"{secrets_file(settings)})")
    old_key = pseudonym_key(settings)     # creates the key file on first use
    data = secretstore.read_secrets(settings)
    section = data.setdefault("pseudonymization", {})
    new_hex = section.get("next_key") or secrets.token_hex(32)   # a parked key: resume an interrupted rotation
    new_key = new_hex.encode()
    section["next_key"] = new_hex
    secretstore.write_secrets(settings, data)

    with opsdb.session(settings) as db:
        when = common.when(db, at)
        ids = sorted(opsdb.known_user_ids(db))
    fresh = pseudonymize(ids, new_key) if ids else []
    known = dict(zip(pseudonymize(ids, old_key), fresh)) if ids else {}
    known |= {k: k for k in fresh}         # already under the new key (a resumed rotation): kept

    def new_for(keys) -> dict:
        """old → new for every key that changes (known ids, else an unlinked key; '' and new keys stay)."""
        table = {k: known.get(k) or _unlinked(k, new_key) for k in keys if k and k != artifacts.ERASED_KEY}
        return {old: new for old, new in table.items() if old != new}

    # Stage the bundles' new mappings first (nothing visible changes yet).
    staged, changed = artifacts.rekey(settings, new_for)
    unlinked = {k for k in changed if k not in known}
    rekeyed: dict[str, int] = {}
    lake_rekeyed: dict[str, int] | None = None
    compacted = False
    try:
        # Re-keyed and rewritten in one swap: the old pseudonyms' bytes leave the file too.
        result = warehouse.rekey(settings, new_for)
        if result is not None:
            rekeyed, applied = result
            unlinked |= {k for k in applied if k not in known}
            compacted = True
        if lake.exists(settings):          # the Spark engine's lake: files holding old pseudonyms rewritten
            mapping = new_for(lake.user_keys(settings))
            lake_rekeyed = lake.rekey(settings, mapping)
            unlinked |= {k for k in mapping if k not in known}
    except BaseException:
        artifacts.discard_staged(staged)
        raise

    _set_artifact_hashes(settings, artifacts.commit_staged(staged))
    churn_rekeyed = churn_pipeline.rekey(settings, new_for)
    ads_rekeyed = ads_pipeline.rekey(settings, new_for)
    audit_rekeyed = access.rekey(settings, new_for)

    data = secretstore.read_secrets(settings)
    section = data.setdefault("pseudonymization", {})
    section["key"] = new_hex
    section.pop("next_key", None)
    secretstore.write_secrets(settings, data)
    serving.clear_caches()
    access.log_action(settings, actor, "rotate-key", None, "ok", when)
    out = {"warehouse_rows_rekeyed": rekeyed, "bundles_rekeyed": len(staged), "users_rekeyed": len(ids),
           "unlinked_keys": len(unlinked), "audit_targets_rekeyed": audit_rekeyed,
           "warehouse_compacted": compacted, "churn_predictions_rekeyed": churn_rekeyed["churn_predictions"],
           "churn_training_rows_rekeyed": churn_rekeyed["churn_training_rows"],
           "ads_training_rows_rekeyed": ads_rekeyed["ads_training_rows"]}
    return out | ({"lake_rows_rekeyed": lake_rekeyed} if lake_rekeyed is not None else {})
