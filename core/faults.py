"""Failure injection at named step boundaries, for crash-recovery tests only.

A long job that must survive a kill (an erasure) calls `point(name)` at each
step boundary. Normally nothing happens. A test can set `hook` to a callable
(e.g. one that raises `SimulatedKill` at one name), or set $RETRO_FAULT_AT to a
name to have the process SIGKILL itself there — a real, deterministic kill -9.
"""
from __future__ import annotations

import os
import signal
from typing import Callable

ENV = "RETRO_FAULT_AT"
hook: Callable[[str], None] | None = None


class SimulatedKill(BaseException):
    """Raised by a test hook to stop a job where a kill would (no `except Exception` handler runs)."""


def point(name: str) -> None:
    """A step boundary named `name` (e.g. 'erasure:ranker-swapped')."""
    if hook is not None:
        hook(name)
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
