"""Serving: recommendations from the production model with fallbacks, logged in the serving log."""
