"""A deployable model bundle on disk: the model plus what serving needs around it.

`models/run-<id>/` holds `model.npz` + `model.json` (the recommender, no pickle),
`mapping.npz` (row ↔ user pseudonym, column ↔ movie id), `user_items.npz` (the
training matrix: seen-item filtering and ALS explanations) and `bundle.json`
(data version, training window, seed, weights). The bundle hash covers all files.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from core.warehouse.dataset import Matrix
from core.filemodes import private_tree
from core.training.models import Recommender, load_model

FILES = ("model.npz", "model.json", "mapping.npz", "user_items.npz", "bundle.json")


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
