"""The artifact folder of the boosted-tree models (churn, ads): a joblib model and a JSON card that the artifact hash
covers, and beside them the rows the model was fit and judged on, which the hash does not cover so an erasure can
rewrite them without breaking the registered hash."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import joblib
import numpy as np

from core.filemodes import private_file, private_tree

TRAINING_ROWS = "training.npz"


def save(directory: Path, files: tuple[str, str], blob: dict, meta: dict, rows: dict[str, np.ndarray]) -> str:
    """Write the model `blob` and `meta` under `files` (model, card) and the training rows; returns the hash."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    joblib.dump(blob, directory / files[0])
    (directory / files[1]).write_text(json.dumps(meta, indent=2, default=str))
    write_rows(directory, rows)
    private_tree(directory)
    return artifact_hash(directory, files)


def write_rows(directory: Path, rows: dict[str, np.ndarray]) -> None:
    """The training rows file, replaced whole (an erasure rewrites it without a user's rows)."""
    tmp = Path(directory) / (TRAINING_ROWS + ".tmp.npz")
    np.savez_compressed(tmp, **rows)
    private_file(tmp)
    tmp.replace(Path(directory) / TRAINING_ROWS)


def read_rows(directory: Path) -> dict[str, np.ndarray]:
    path = Path(directory) / TRAINING_ROWS
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def artifact_hash(directory: Path, files: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in files:
        h.update(name.encode())
        h.update((Path(directory) / name).read_bytes())
    return h.hexdigest()


def load_blob(directory: Path, files: tuple[str, str], expected_hash: str | tuple[str, ...] | None,
              error: type[Exception], family: str) -> dict:
    """The model blob; with `expected_hash` the bytes are checked before unpickling (`error` when they differ)."""
    accepted = (expected_hash,) if isinstance(expected_hash, str) else expected_hash
    if accepted is not None and artifact_hash(directory, files) not in accepted:
        raise error(f"{family} artifact {directory} does not match its registered hash; refusing to load it")
    return joblib.load(Path(directory) / files[0])


def read_meta(directory: Path, files: tuple[str, str]) -> dict:
    return json.loads((Path(directory) / files[1]).read_text())
