"""The serving log: every list shown to a user (served_recommendations), written by serving and read by
monitoring, governance, evaluation and privacy through these functions only."""
from __future__ import annotations
