"""First start: an empty data folder gets the default demo world and a first production model."""
from __future__ import annotations

from . import opsdb, registry, simulation
from .settings import Settings


def needs_demo_world(settings: Settings) -> bool:
    """True when the folder holds neither a simulated world nor imported data."""
    return not simulation.has_world(settings) and not opsdb.holds_data(settings)


def needs_first_model(settings: Settings) -> bool:
    return not settings.mlops_db.exists() or registry.production(settings) is None


def ensure_demo_world(settings: Settings, progress: simulation.Progress = simulation._noop) -> bool:
    """Build the default demo world if the folder is empty; returns whether it built one."""
    if not needs_demo_world(settings):
        return False
    simulation.init_world(settings, seed=settings.seed, users=settings.demo_users, movies=settings.demo_movies,
                          days=settings.demo_days, force=True, progress=progress)
    return True


def ensure_ready(settings: Settings, progress: simulation.Progress = simulation._noop) -> dict:
    """World (if the folder is empty) then a first retrain (if nothing is in production)."""
    from .pipeline import retrain
    built = ensure_demo_world(settings, lambda f, m: progress(0.8 * f, m))
    trained = None
    if needs_first_model(settings):
        trained = retrain(settings, trigger="first-start", progress=lambda f, m: progress(0.8 + 0.2 * f, m))
    progress(1.0, "ready")
    return {"built_world": built, "first_retrain": trained}
