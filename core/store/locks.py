"""One lock per data folder for the jobs that read the stores and write derived copies of them.

A retrain reads the warehouse and saves a model; an erasure deletes a user from the
stores and from every saved model. Interleaved, a retrain that read the user's rows
before the erasure would save a model holding them after it — the erasure would be
undone. So ETL, training, retraining, erasure, retention and key rotation take the
same exclusive lock (an `flock` on RETRO_HOME/.store.lock, so it also holds between
the dashboard, the CLI and a second process). It is re-entrant within a thread
(retrain runs the ETL and trains inside its own lock); another thread or process
waits, and after `timeout` seconds gets a clear error naming the job that holds it.
Whoever takes it first (not re-entrantly) runs `recovery.recover`: killed jobs'
rows become 'interrupted' and pending erasure requests are finished.
"""
from __future__ import annotations

import fcntl
import functools
import os
import threading
import time
from contextlib import contextmanager

from core.errors import RetroError
from core.settings import Settings

LOCK_FILE = ".store.lock"
ERASURE = "erasure"          # the purpose `erasure.forget_user` holds the lock for
DEFAULT_TIMEOUT = 900.0     # longer than a retrain of the large benchmark world
_local = threading.local()


class StoreBusy(RetroError):
    """Another job holds the data folder's store lock."""


def _held() -> dict:
    if not hasattr(_local, "held"):
        _local.held = {}
    return _local.held


@contextmanager
def store_lock(settings: Settings, purpose: str, timeout: float = DEFAULT_TIMEOUT):
    key = str(settings.home.resolve())
    held = _held()
    if key in held:                        # re-entrant: this thread already holds it
        held[key][1] += 1
        try:
            yield
        finally:
            held[key][1] -= 1
        return
    settings.home.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another job"
                    raise StoreBusy(f"the data folder is busy ({holder}); {purpose} did not start — try again "
                                    "when it has finished") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{purpose}, pid {os.getpid()}".encode(), 0)
        held[key] = [fd, 1]
        try:
            _recover(settings, purpose)
            yield
        finally:
            del held[key]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _recover(settings: Settings, purpose: str) -> None:
    """First holder now: no other job runs, so finish what killed jobs left behind (`recovery.recover`).

    An erasure resumes pending requests itself (it must return a pending
    request's result to a `forget` for the same user)."""
    from core.privacy.recovery import recover
    recover(settings, erasures=purpose != ERASURE)


def exclusive(purpose: str):
    """Decorator for `fn(settings, ...)`: run it holding the data folder's store lock."""
    def wrap(fn):
        @functools.wraps(fn)
        def locked(settings, *args, **kwargs):
            with store_lock(settings, purpose):
                return fn(settings, *args, **kwargs)
        return locked
    return wrap
