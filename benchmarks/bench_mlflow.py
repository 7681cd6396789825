"""MLflow mirror benchmark: `mlflow export` of the default world, a second export, and the pyfunc recommender's
lists for every user against embedded serving.

Usage: python benchmarks/bench_mlflow.py [--home DIR]

The default world (first start: 3,000 users, 1,500 movies, 30 days, ALS + ranker in production) is built in a
temporary folder unless --home names a ready one (exported on a copy). Measures the first export (new store,
pyfunc model included), the second (nothing new: the store's bytes compared before and after), loading the pyfunc
model, its `predict` for every user, `serving.recommend_many` for the same users (not logged), and how many
deterministic lists are equal (an exploring list is a draw, not the model's list). Needs requirements-mlflow.txt.
The report is kept in benchmarks/results/mlflow.md.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.governance import mlflow_export  # noqa: E402
from core.serving import serving  # noqa: E402
from core.settings import load_settings  # noqa: E402
from core.store import opsdb  # noqa: E402
from core.store.mlopsdb import clone_home  # noqa: E402


def store_digest(home: Path) -> str:
    """One hash over mlflow.db and every artifact file (path and bytes): equal digests, nothing written."""
    h = hashlib.sha256()
    files = [home / mlflow_export.DB_FILE, *sorted((home / mlflow_export.ARTIFACTS_DIR).rglob("*"))]
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(home)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--home", help="a ready data folder (default: build the default world in a temporary folder)")
    args = p.parse_args()
    import mlflow
    import pandas as pd
    from core import bootstrap
    with tempfile.TemporaryDirectory() as tmp:
        if args.home:
            base = load_settings(args.home)
        else:
            base = load_settings(Path(tmp) / "base")
            bootstrap.first_start(base)
        s = clone_home(base, Path(tmp) / "run")
        first, t_first = timed(lambda: mlflow_export.export(s))
        before = store_digest(s.home)
        second, t_second = timed(lambda: mlflow_export.export(s))
        unchanged = store_digest(s.home) == before
        with opsdb.session(s) as db:
            users = [int(u) for u in opsdb.user_ids(db)]
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_export.default_uri(s)
        model, t_load = timed(lambda: mlflow.pyfunc.load_model("models:/retro-recommender@production"))
        predicted, t_predict = timed(lambda: model.predict(pd.DataFrame({"user_id": users})).set_index("user_id"))
        served, t_serve = timed(lambda: serving.recommend_many(s, users, log=False))
        deterministic = [u for u, rec in served.items() if rec.policy == "deterministic"]
        equal = sum(predicted.loc[u, "path"] == served[u].path
                    and list(predicted.loc[u, "movie_ids"]) == served[u].movie_ids for u in deterministic)
    runs, versions = first["runs"], first["versions"]
    print(f"world: {len(users):,} users; {runs['created']} runs and {versions['created']} registered versions "
          f"exported; recommender {first['recommender']}; mlflow {mlflow.__version__}\n")
    print("| step | seconds |\n| --- | ---: |")
    print(f"| first export (new store, pyfunc model included) | {t_first:.2f} |")
    print(f"| second export (runs {second['runs']}, versions {second['versions']}; store bytes "
          f"{'unchanged' if unchanged else 'CHANGED'}) | {t_second:.2f} |")
    print(f"| `mlflow.pyfunc.load_model` of retro-recommender@production | {t_load:.2f} |")
    print(f"| pyfunc `predict` for all {len(users):,} users | {t_predict:.2f} |")
    print(f"| embedded `serving.recommend_many` for the same users (not logged) | {t_serve:.2f} |")
    print(f"\ndeterministic lists equal to serving's: {equal:,} of {len(deterministic):,} "
          f"({len(users) - len(deterministic):,} exploring lists not compared)")


if __name__ == "__main__":
    from benchmarks import results_file
    with results_file.recorded("mlflow", "Runs and models in MLflow (`bench_mlflow.py`)"):
        main()
