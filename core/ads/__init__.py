"""Ads (issue 25, docs/ads.md): the click-through model (features, model, metrics, pipeline)."""
