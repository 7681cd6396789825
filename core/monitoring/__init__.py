"""Monitoring: drift tests, the daily monitoring of data and online quality, and the retraining policy."""
