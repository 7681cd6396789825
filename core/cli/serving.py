"""Serving: recommend (the same logged path the dashboard and the closed loop use) and the model server."""
from __future__ import annotations

from core.cli import ID, TEXT, arg, command, emit, float_in, int_in
from core import bounds
from core.store import opsdb


@command("recommend", help="recommendations for one user (logged)", args=[
    arg("--user", type=ID, required=True),
    arg("--k", type=int_in(*bounds.limit("k"), "--k"), default=10),
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
        help="address to listen on (default 127.0.0.1: this machine only; /recommend needs no key, and without "
             "one its answers leave out the release arm)"),
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


@command("clients", help="API keys of the model server's clients: add NAME | list | revoke NAME (audited)", args=[
    arg("action", choices=["add", "list", "revoke"]),
    arg("name", nargs="?", type=TEXT, help="add, revoke: the client's name (letters, digits, '.', '_', '-')"),
])
def cmd_clients(args, settings):
    """A client (a front end) confirms the lists it showed with POST /impressions and its key; `add` prints the
    key once (only its hash is kept; adding an existing name replaces its key)."""
    from core import errors
    from core.privacy import access
    from core.server import clients
    if args.action == "list":
        names = clients.clients(settings)
        emit(args, {"clients": names}, lambda: print("\n".join(names) if names else "no clients"))
        return
    if args.name is None:
        raise errors.ValidationError(f"clients {args.action} needs a NAME, e.g. `python -m core clients "
                                     f"{args.action} web-front`")
    with access.cli_action(settings, "client keys", f"client:{args.name}", audit_as=f"client {args.action}"):
        if args.action == "add":
            key = clients.add(settings, args.name)
        else:
            clients.revoke(settings, args.name)
            key = None
    if key is None:
        emit(args, {"client": args.name, "revoked": True}, lambda: print(f"client {args.name}: key revoked"))
        return
    emit(args, {"client": args.name, "key": key, "header": clients.HEADER},
         lambda: print(f"client {args.name}: key (shown once, keep it secret; send it as {clients.HEADER}):\n{key}"))


@command("release", help="shadow and canary releases: status | start VERSION | promote | rollback | stop | ramp", args=[
    arg("action", choices=["status", "start", "promote", "rollback", "stop", "ramp"]),
    arg("version", nargs="?", type=ID, help="start: the CF version to release beside production"),
    arg("--mode", choices=["canary", "shadow"], default="canary",
        help="canary: a share of users sees it; shadow: scored and logged beside production, shown to nobody"),
    arg("--share", type=float_in(0, 1, "--share", lo_open=True),
        help="canary (start, ramp): share of users in its arm, in (0, 1] (start default 0.1)"),
    arg("--ramp", type=TEXT, help="canary: shares to move through before promotion, e.g. 0.1,0.5"),
    arg("--min-days", type=int_in(1, 365, "--min-days"), help="days at a share before ramping or promoting (3)"),
    arg("--max-days", type=int_in(1, 365, "--max-days"), help="days without evidence before a rollback (10)"),
    arg("--margin", type=float_in(0, 1, "--margin"),
        help="how far below production's hit rate@10 the interval may reach and still count as not worse (0.02)"),
    arg("--reason", type=TEXT, default="decision from the CLI", help="recorded with the release or decision"),
])
def cmd_release(args, settings):
    from core import errors
    from core.monitoring import release
    from core.privacy import access
    if args.action == "status":
        data = release.status(settings)
        data["history"] = data["history"].to_dict("records")
        emit(args, data, lambda: _print_release_status(data))
        return
    actor = access.cli_actor()
    if args.action == "start":
        if args.version is None:
            raise errors.ValidationError("release start needs a VERSION, e.g. `python -m core release start 4 --share 0.1`")
        ramp = None
        if args.ramp:
            try:
                ramp = [float(x) for x in args.ramp.split(",")]
            except ValueError:
                raise errors.ValidationError(f"--ramp {args.ramp!r} is not a list of shares like 0.1,0.5") from None
        if args.mode == "shadow" and (args.share is not None or ramp):
            raise errors.ValidationError("a shadow release shows nobody the candidate: --share and --ramp are for canaries")
        with access.cli_action(settings, "shadow release" if args.mode == "shadow" else "canary start",
                               f"v{args.version} ({args.mode})", audit_as="release start"):
            data = release.start(settings, args.version, args.mode, actor=actor, reason=args.reason, share=args.share,
                                 ramp=ramp, min_days=args.min_days, max_days=args.max_days, margin=args.margin)
        emit(args, data, lambda: print(f"release #{data['deployment_id']}: {data['mode']} of v{data['version']}"
                                       + (f" for {data['share']:.0%} of users" if data["share"] else "")
                                       + f" beside production v{data['production_version']}"))
        return
    with access.cli_action(settings, "release decide", audit_as=f"release {args.action}") as entry:
        if args.action == "ramp":
            if args.share is None:
                raise errors.ValidationError("release ramp needs --share, e.g. --share 0.5")
            data = release.ramp_to(settings, args.share, actor=actor, reason=args.reason)
        else:
            data = release.decide_now(settings, args.action, actor=actor, reason=args.reason)
        entry["target"] = f"release #{data['deployment_id']} (v{data['version']})"
    emit(args, data, lambda: print(f"release #{data['deployment_id']} (v{data['version']}): {data['decision']}"
                                   + (f" — {data['reason']}" if data["reason"] else "")))


def _print_release_status(data: dict) -> None:
    prod = data["production"]
    print("production: " + (f"v{prod['version']} ({prod['model_kind']}, data {prod['data_version']})" if prod
                            else "nothing yet"))
    rel = data["release"]
    if rel is None:
        print("no active release")
    else:
        print(f"release #{rel['deployment_id']}: {rel['mode']} of v{rel['version']}"
              + (f" for {rel['share']:.0%} of users" if rel["share"] else "") + f" since {rel['started_at']}")
        ev = data["evidence"]
        if ev and ev["days"]:
            print(f"  {ev['days']} day(s): hit rate@10 canary {ev['hit_rate_canary']:.4f} vs production "
                  f"{ev['hit_rate_production']:.4f}, difference {ev['point']:+.4f}, {ev['level']:.0%} interval "
                  f"[{ev['lo']:+.4f}, {ev['hi']:+.4f}]; candidate shown to {ev['users_affected']} users")
        for d in data["decisions"]:
            print(f"  {d['at']} {d['decision']}: {d['reason']}")
    ended = [h for h in data["history"] if h["state"] != "active"]
    for h in ended[:5]:
        print(f"release #{h['deployment_id']} ({h['mode']} of v{h['version']}): {h['state']} at {h['ended_at']} — "
              f"{h['end_reason']}")
