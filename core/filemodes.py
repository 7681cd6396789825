"""Owner-only data folder: the home and every folder in it 0700, every file the platform writes 0600.

The data folder holds personal data (ratings, events), models trained on it and
the keys in `secrets.toml`, so no other account on the machine may read any of
it. Files get their mode where they are created: `os.open(..., 0o600)` where we
create the file ourselves (SQLite then gives its -wal/-shm files the database's
mode), a chmod right after the write where a library creates it (NumPy, DuckDB,
joblib). There is no process-wide `os.umask` here — that would change every
file the host process writes; the entry points (`python -m core`, the
dashboard) set one only as a second line of defence.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def _chmod(path: Path, mode: int) -> None:
    """Set `mode` on `path` if it is ours and differs; symlinks and vanished files are left alone."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) == mode or st.st_uid != os.getuid():
            return
        if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:   # a shared folder such as /tmp
            return
        os.chmod(path, mode)
    except FileNotFoundError:   # a -wal that SQLite/DuckDB removed meanwhile
        pass


def private_file(path: Path | str) -> Path:
    """Chmod an existing file to 0600 (a missing file is fine: nothing to tighten)."""
    _chmod(Path(path), FILE_MODE)
    return Path(path)


def create_private(path: Path | str) -> Path:
    """Create `path` empty with mode 0600 unless it exists (then just tighten it) — before a library opens it."""
    path = Path(path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass
    return private_file(path)


def private_dir(path: Path | str) -> Path:
    """Create the folder (and parents) if needed and make it 0700."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _chmod(path, DIR_MODE)
    return path


def private_tree(path: Path | str) -> Path:
    """A folder written by a library (a model bundle): the folder and everything under it owner-only."""
    path = Path(path)
    _chmod(path, DIR_MODE)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            _chmod(Path(root) / name, DIR_MODE)
        for name in files:
            _chmod(Path(root) / name, FILE_MODE)
    return path
