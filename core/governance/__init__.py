"""Governance: explanations, the audit of what was shown and why, model cards, diagnosis and the
read-only summaries the dashboard shows."""
