"""A deployable model bundle on disk: the model plus what serving needs around it.

`models/run-<id>/` holds `model.npz` + `model.json` (the recommender, no pickle),
`mapping.npz` (row ↔ user pseudonym, column ↔ movie id), `user_items.npz` (the
training matrix: seen-item filtering and ALS explanations) and `bundle.json`
(data version, training window, seed, weights). The bundle hash covers all files.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from core.warehouse.dataset import Matrix
from core.filemodes import private_file, private_tree
from core.settings import Settings
from core.training.models import Recommender, load_model

FILES = ("model.npz", "model.json", "mapping.npz", "user_items.npz", "bundle.json")
PERSONAL_FILES = ("mapping.npz", "model.npz", "user_items.npz")   # the bundle files that hold per-user rows
RANKER_PERSONAL_FILES = ("context.npz",)                            # the ranker's per-row features


@dataclass
class Bundle:
    model: Recommender
    matrix: Matrix
    meta: dict
    path: Path

    @property
    def user_row(self) -> dict:
        if not hasattr(self, "_user_row"):
            self._user_row = {k: i for i, k in enumerate(self.matrix.user_keys)}
        return self._user_row

    @property
    def item_col(self) -> dict:
        if not hasattr(self, "_item_col"):
            self._item_col = {int(m): j for j, m in enumerate(self.matrix.movie_ids)}
        return self._item_col


def save_bundle(directory: Path, model: Recommender, matrix: Matrix, meta: dict) -> str:
    """Write the bundle (folder 0700, files 0600); returns its SHA-256 (over every file, in a fixed order)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory)
    np.savez(directory / "mapping.npz", user_keys=matrix.user_keys.astype(str), movie_ids=matrix.movie_ids)
    sp.save_npz(directory / "user_items.npz", matrix.user_items)
    (directory / "bundle.json").write_text(json.dumps(meta, indent=2, default=str))
    private_tree(directory)
    return bundle_hash(directory)


def bundle_hash(directory: Path) -> str:
    h = hashlib.sha256()
    for name in FILES:
        h.update(name.encode())
        h.update((Path(directory) / name).read_bytes())
    return h.hexdigest()


def load_bundle(directory: Path) -> Bundle:
    directory = Path(directory)
    model = load_model(directory)
    with np.load(directory / "mapping.npz", allow_pickle=False) as m:
        keys, movies = m["user_keys"].astype(object), m["movie_ids"]
    matrix = Matrix(sp.load_npz(directory / "user_items.npz").tocsr(), keys, movies)
    return Bundle(model, matrix, json.loads((directory / "bundle.json").read_text()), directory)


# --- a user's rows in the bundles on disk: export, erasure, key rotation (orchestrated by core/privacy) -------
CF_BUNDLE_GLOB, RANKER_GLOB = "run-*", "ranker-run-*"
ERASED_KEY = ""                      # what replaces an erased user's pseudonym in a bundle's mapping.npz
STAGING = ".privacy-staging"         # a bundle's rewritten files wait here until they replace the old ones


def _dirs(settings: Settings, pattern: str) -> list[Path]:
    if not settings.models_dir.exists():
        return []
    return sorted(d for d in settings.models_dir.glob(pattern) if d.is_dir())


def _mapping(directory: Path) -> tuple[np.ndarray, np.ndarray] | None:
    path = directory / "mapping.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as m:
        return m["user_keys"].astype(str), m["movie_ids"]


def user_keys(directory: Path) -> np.ndarray | None:
    """The pseudonym of each row of a CF bundle (erased rows: ''); None when it has no mapping."""
    mapping = _mapping(Path(directory))
    return None if mapping is None else mapping[0]


def trained_until(directory: Path) -> str | None:
    """The end of a CF bundle's training window, as its bundle.json records it (None when unreadable)."""
    try:
        return json.loads((Path(directory) / "bundle.json").read_text()).get("trained_until")
    except (OSError, ValueError):
        return None


def bundles_holding(settings: Settings, user_key: str) -> int:
    """How many CF bundles in the models folder have a row for the pseudonym."""
    return sum(m is not None and bool((m[0] == user_key).any()) for m in map(_mapping, _dirs(settings, CF_BUNDLE_GLOB)))


def export_user(settings: Settings, user_key: str) -> list[tuple[Path, dict]]:
    """(directory, {'bundle', 'row', 'training_interactions', 'learned_user_factors'}) of every CF bundle
    with a row for the pseudonym."""
    out = []
    for directory in _dirs(settings, CF_BUNDLE_GLOB):
        mapping = _mapping(directory)
        if mapping is None:
            continue
        rows = np.flatnonzero(mapping[0] == user_key)
        if not len(rows):
            continue
        row = int(rows[0])
        ui = sp.load_npz(directory / "user_items.npz").tocsr()
        with np.load(directory / "model.npz", allow_pickle=False) as arrays:
            has_factors = bool(arrays["user_factors"][row].any()) if "user_factors" in arrays.files else False
        out.append((directory, {"bundle": directory.name, "row": row, "training_interactions": int(ui[row].nnz),
                                "learned_user_factors": has_factors}))
    return out


def _staging(directory: Path) -> Path:
    path = directory / STAGING
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
    return path


def _fsync(path: Path) -> None:
    """Flush a file's (or a directory's entries') bytes to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_staged(staging: Path, directory: Path) -> None:
    """Move every file written in `staging` over its namesake in `directory` (each rename is atomic).

    The files are flushed first; `mapping.npz` goes last, so while it still names a user, every
    other file may still be the old one (a killed erasure redoes the bundle from the start).
    """
    files = sorted(staging.iterdir(), key=lambda f: (f.name == "mapping.npz", f.name))
    for f in files:
        private_file(f)   # owner-only, like every file in the data folder
        _fsync(f)
    for f in files:
        os.replace(f, directory / f.name)
    _fsync(directory)
    staging.rmdir()


def staged_hash(directory: Path, staging: Path | None = None) -> str:
    """A bundle's or ranker's hash; with `staging`, as it will be once the staged files replace theirs."""
    from core.training.ranker import RANKER_FILES
    names = RANKER_FILES if (directory / "ranker.json").exists() else FILES
    h = hashlib.sha256()
    for name in names:
        source = staging / name if staging is not None and (staging / name).exists() else directory / name
        h.update(name.encode())
        h.update(source.read_bytes())
    return h.hexdigest()


def erase_user(settings: Settings, user_key: str, commit) -> dict:
    """Erase the pseudonym's rows from every CF bundle that holds it; returns counts.

    Per bundle: the user's factors zeroed (`drop_user`) and, for EASE, their rows taken out of the Gram matrix
    and the item-item weights re-solved (`forget`), their training-matrix row emptied and the key
    replaced by '' in mapping.npz, all written aside (`STAGING`); `commit(directory, staging)` then swaps
    them in (the caller's crash-safe protocol: see `replace_staged`) and returns registry rows updated.
    Returns {'bundles', 'rows_erased', 'registry_hashes_updated'}.
    """
    bundles = rows_erased = registry_rows = 0
    for directory in _dirs(settings, CF_BUNDLE_GLOB):
        mapping = _mapping(directory)
        if mapping is None:
            continue
        keys, movie_ids = mapping
        rows = np.flatnonzero(keys == user_key)
        if not len(rows):
            continue
        staging = _staging(directory)
        model = load_model(directory)
        ui = sp.load_npz(directory / "user_items.npz").tocsr()
        if hasattr(model, "forget"):       # EASE (and the blend's EASE part): the rows leave the Gram matrix
            model.forget(ui[rows])
        if hasattr(model, "drop_user"):
            for row in rows:
                model.drop_user(int(row))
        model.save(staging)
        for row in rows:
            ui.data[ui.indptr[row]:ui.indptr[row + 1]] = 0
        ui.eliminate_zeros()
        sp.save_npz(staging / "user_items.npz", ui)
        keys = keys.copy()
        keys[rows] = ERASED_KEY
        np.savez(staging / "mapping.npz", user_keys=keys.astype(str), movie_ids=movie_ids)
        registry_rows += commit(directory, staging)
        bundles += 1
        rows_erased += len(rows)
    return {"bundles": bundles, "rows_erased": int(rows_erased), "registry_hashes_updated": registry_rows}


def reset_erased_ranker_rows(settings: Settings, cf_dirs: dict[int, Path], commit) -> tuple[int, int]:
    """Reset every ranker's context rows that belong to erased ('') rows of its CF bundle and are not reset yet.

    `cf_dirs` maps registry versions to their directories (a ranker names its CF version). Stateless, so a
    resumed erasure finds the rows of a CF bundle rewritten before a kill. Each ranker is staged and handed
    to `commit(directory, staging)` like in `erase_user`. Returns (rankers rewritten, registry rows updated).
    """
    from core.training.ranker import MAX_DAYS, Context
    rankers = registry_rows = 0
    for directory in _dirs(settings, RANKER_GLOB):
        try:
            cf_version = int(json.loads((directory / "ranker.json").read_text())["cf_version"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        mapping = _mapping(cf_dirs[cf_version]) if cf_version in cf_dirs else None
        if mapping is None:
            continue
        ctx = Context.load(directory / "context.npz")
        rows = np.flatnonzero(mapping[0] == ERASED_KEY)
        rows = rows[rows < len(ctx.activity)]
        if not (ctx.user_genres[rows].any() or ctx.activity[rows].any()
                or (ctx.user_genre_days[rows] != MAX_DAYS).any()):
            continue
        ctx.user_genres[rows] = 0.0
        ctx.user_genre_days[rows] = MAX_DAYS
        ctx.activity[rows] = 0.0
        staging = _staging(directory)
        ctx.save(staging / "context.npz")
        registry_rows += commit(directory, staging)
        rankers += 1
    return rankers, registry_rows


def rekey(settings: Settings, new_for) -> tuple[list[tuple[Path, Path]], set[str]]:
    """Stage every CF bundle's mapping re-keyed through `new_for(keys) -> {old: new}` (nothing visible changes).

    Returns ([(staging, directory)], the old keys that change); `commit_staged` swaps them in,
    `discard_staged` drops them.
    """
    staged: list[tuple[Path, Path]] = []
    changed: set[str] = set()
    for directory in _dirs(settings, CF_BUNDLE_GLOB):
        mapping = _mapping(directory)
        if mapping is None:
            continue
        keys, movie_ids = mapping
        table = new_for(set(keys.tolist()))
        changed |= set(table)
        staging = _staging(directory)
        rekeyed_keys = np.array([table.get(k, k) for k in keys.tolist()]).astype(str)
        np.savez(staging / "mapping.npz", user_keys=rekeyed_keys, movie_ids=movie_ids)
        staged.append((staging, directory))
    return staged, changed


def discard_staged(staged: list[tuple[Path, Path]]) -> None:
    for staging, _ in staged:
        shutil.rmtree(staging, ignore_errors=True)


def commit_staged(staged: list[tuple[Path, Path]]) -> dict[Path, str]:
    """Swap staged files in (`replace_staged`); returns each bundle's new hash."""
    hashes = {}
    for staging, directory in staged:
        replace_staged(staging, directory)
        hashes[directory] = bundle_hash(directory)
    return hashes
