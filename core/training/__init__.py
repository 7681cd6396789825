"""Models and their life cycle: estimators, metrics, evaluation, the ranker, artifacts, experiment tracking,
the registry and its promotion gate, and the retraining pipeline."""
