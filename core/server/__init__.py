"""The model server (issue 16): `python -m core serve` — FastAPI + uvicorn over `core.serving`, with hot swap
of the serving state, shadow and canary arms, Prometheus metrics and operator-only explanations."""
