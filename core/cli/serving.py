"""Serving: recommend (the same logged path the dashboard and the closed loop use) and the model server."""
from __future__ import annotations

from core.cli import ID, TEXT, arg, command, emit, int_in
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


@command("serve", help="run the model server over HTTP (/recommend, /explain, /health, /ready, /metrics, /version)",
         args=[
    arg("--host", type=TEXT, default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; /recommend needs no token)"),
    arg("--port", type=int_in(0, 65535, "--port"), default=8000, help="TCP port (default 8000; 0: any free port)"),
])
def cmd_serve(args, settings):
    import sys

    from core.server.app import serve
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who reaches it gets recommendations without a token "
              "(/explain still needs an operator token)", file=sys.stderr)

    def ready(url: str) -> None:
        emit(args, {"url": url, "pid": __import__("os").getpid()},
             lambda: print(f"serving {url} from {settings.home} — Ctrl-C stops", flush=True))
        sys.stdout.flush()
    serve(settings, args.host, args.port, ready=ready)
