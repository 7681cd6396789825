"""Retro Movies platform core: operational DB, simulated world, Top 50, ML pipeline."""
from core.errors import RetroError, ValidationError
from core.settings import Settings, load_settings

__all__ = ["RetroError", "ValidationError", "Settings", "load_settings"]
