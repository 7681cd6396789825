"""Retro Movies platform core: operational DB, simulated world, Top 50, ML pipeline."""
from .errors import RetroError, ValidationError
from .settings import Settings, load_settings

__all__ = ["RetroError", "ValidationError", "Settings", "load_settings"]
