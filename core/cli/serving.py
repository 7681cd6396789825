"""Serving: recommend (the same logged path the dashboard and the closed loop use)."""
from __future__ import annotations

from core.cli import ID, arg, command, emit, int_in
from core.store import opsdb


@command("recommend", help="recommendations for one user (logged)", args=[
    arg("--user", type=ID, required=True),
    arg("--k", type=int_in(1, 500, "--k"), default=10),
])
def cmd_recommend(args, settings):
    from core.serving import serving
    rec = serving.recommend(settings, args.user, args.k)
    with opsdb.session(settings) as db:
        titles = opsdb.movie_labels(db, rec.movie_ids)
    data = rec.to_dict() | {"titles": [titles.get(m) for m in rec.movie_ids]}

    def human():
        print(f"user {rec.user_id}: {rec.path} — {rec.reason}"
              + (f" (model v{rec.model_version}, data {rec.data_version})" if rec.model_version else ""))
        for i, (m, s) in enumerate(zip(rec.movie_ids, rec.scores), 1):
            print(f"{i:>3}. {titles.get(m)}  [{m}]  score {s:.3f}")
    emit(args, data, human)
