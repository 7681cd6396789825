"""First start: an empty data folder gets the default demo world."""
from __future__ import annotations

from . import opsdb, simulation
from .settings import Settings


def needs_demo_world(settings: Settings) -> bool:
    """True when the folder holds neither a simulated world nor imported data."""
    return not simulation.has_world(settings) and not opsdb.holds_data(settings)


def ensure_demo_world(settings: Settings, progress: simulation.Progress = simulation._noop) -> bool:
    """Build the default demo world if the folder is empty; returns whether it built one."""
    if not needs_demo_world(settings):
        return False
    simulation.init_world(settings, seed=settings.seed, users=settings.demo_users, movies=settings.demo_movies,
                          days=settings.demo_days, force=True, progress=progress)
    return True
