"""The model server: FastAPI over `core.serving` (issue 16).

Endpoints: `GET /recommend/{user_id}?k=10` (the same paths, fallbacks and serving log as `recommend`),
`POST /impressions` (a client with an API key confirms which answers it showed), `GET /explain/{user_id}/{movie_id}`
and `GET /explain/{user_id}/ad/{impression_id}` (personal data: operator bearer token), `/health` (alive), `/ready` (a production model is loaded), `/metrics`
(Prometheus text), `/version` (what serves now).

Serving is not showing: every answer is logged, but only a list a trusted front end confirmed counts as shown
(online quality, the release policy's arms). Without an `X-API-Key` an answer omits what tells the arm of a
release (`UNAUTHENTICATED_OMITS`), so requests for chosen users cannot tell canary users apart, and nothing they
cause moves a release decision.

Hot swap: the server answers from one immutable `ServingState`; a watcher thread re-reads the registry and
the active release every `poll_seconds` (0.5 s) and, when anything changed (a promotion or rollback from
the CLI, the dashboard or a policy, a release started or ramped, an erasure that rewrote a bundle), loads
the new state beside the old one and swaps the reference. A request takes the reference once, so it is
answered wholly by the old state or wholly by the new one, and names the version that produced it. A state
that fails to load (a damaged artifact) is not swapped in: the old one keeps serving and /ready says why.

Errors are JSON `{"error": message, "status": code}` — 422 for a malformed id or k, 404 for an unknown user,
movie or route, 401/429 for a missing, wrong or throttled operator token, 409 for a request the data cannot
answer (a cold-start user's explanation), 503 while the stores are busy or no state could be loaded, 500 for
anything else — never a traceback. URLs hold user ids, so the server writes no access log.
"""
from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from core import bounds
from core.errors import RetroError, UnknownImpression, UnknownMovie, UnknownUser, ValidationError
from core.filemodes import private_file
from core.privacy import access
from core.pseudonym import pseudonym, pseudonym_key
from core.server import clients, guard
from core.server.metrics import ServerMetrics
from core.serving import ads_slot, remote, serving
from core.settings import Settings
from core.store import clock, opsdb, servinglog
from core.store.locks import StoreBusy

log = logging.getLogger("retro.server")
POLL_SECONDS = 0.5
# Recommendations are computed on ONE thread, in arrival order, in batches (`Batcher`). Measured on the default
# world (2 cores): 8 threads computing at once served 311 lists/s with p99 162 ms, one at a time 522/s with
# p99 5 ms — the request path releases the GIL dozens of times (NumPy, SQLite), and every release invites
# another thread to take it for a whole switch interval (the GIL convoy); and what queues while a batch runs
# is answered together (8 users: 6 ms together, 15 ms one by one). Explanations (PBKDF2, SHAP) run on the
# ordinary thread pool, so a slow one never holds up the lists.
MAX_BATCH = 32
# Explanations and their operator-token checks (PBKDF2, 200,000 rounds: ~0.1 s of CPU each) run on ONE thread of
# their own, with at most EXPLAIN_WAITING waiting; beyond that a request is refused at once (503) before any
# token is checked. On the ordinary pool (40 threads) a flood of /explain guesses took both cores: /recommend's p95
# went from 7 to 207 ms (benchmarks/bench_explain_flood.py, 16 guessers). The one thread is also the flood's
# back-pressure: each guesser waits its turn, so the event loop is not kept busy answering it. A small bound (8)
# made things worse — cheap 503s let the guessers send 5× as many requests and took the loop instead.
EXPLAIN_WAITING = 64
# What an answer without a client key leaves out: each of these tells (or lets one infer) the release arm the
# user is in — the arm itself, the reason ("the canary of release #3"), the version that produced the list
# (a canary's differs from production's) and its ranker.
UNAUTHENTICATED_OMITS = ("arm", "reason", "model_version", "ranker_version")
MAX_IMPRESSIONS = 1000           # serve ids per POST /impressions
UNTRACKED = ("/metrics",)        # scrapes are not traffic: kept out of the recent-request window


class Batcher:
    """One thread that answers queued recommendation requests in batches: it takes the oldest request and,
    without waiting, every other one queued behind it (up to MAX_BATCH), and answers them together from the
    state serving at that moment (`serving.recommend_batch`). An idle server answers one request at once;
    a busy one amortises the model calls over what arrived meanwhile."""

    def __init__(self, settings: Settings, holder: "StateHolder", max_batch: int = MAX_BATCH):
        self.settings, self.holder, self.max_batch = settings, holder, max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="retro-recommend", daemon=True)
        self.sizes = ServerBatchSizes()

    def start(self) -> None:
        self._thread.start()

    def submit(self, user_id: int, k: int, with_ads: bool = True) -> Future:
        future: Future = Future()
        self._queue.put((user_id, k, future, with_ads))
        return future

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        serving.clear_caches()            # this thread's connections

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)         # stop after this batch
                    break
                batch.append(item)
            self.sizes.add(len(batch))
            state = self.holder.state
            try:
                if state is None:
                    raise StoreBusy(f"the serving state could not be loaded ({self.holder.error}); see /ready")
                answers = serving.recommend_batch(self.settings, [(u, k) for u, k, _, _ in batch], state=state)
            except BaseException as exc:  # noqa: BLE001 - every request of the batch gets the error
                answers = [exc] * len(batch)
            slots = self._sponsored(batch, answers)
            for (_, _, future, _), answer, slot in zip(batch, answers, slots):
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result((answer, state, slot))

    def _sponsored(self, batch, answers) -> list:
        """The sponsored slot of each answered list that asked for one, chosen for the batch at once
        (`ads_slot.choose_many`: one read of today's spend and caps, one validated write). A failure costs the
        batch its ads, never its lists; it goes to the server's log."""
        wanted = [i for i, ((_, _, _, with_ads), a) in enumerate(zip(batch, answers))
                  if with_ads and not isinstance(a, BaseException) and a.served_at is not None]
        slots = [None] * len(batch)
        if not wanted:
            return slots
        try:
            chosen = ads_slot.choose_many(self.settings, [(answers[i].user_id, answers[i].serve_id,
                                                           answers[i].served_at) for i in wanted])
        except Exception as exc:  # noqa: BLE001 - the lists are answered without their ads
            log.warning("sponsored slots not chosen (%s: %s)", type(exc).__name__, _one_line(exc))
            return slots
        for i, slot in zip(wanted, chosen):
            slots[i] = slot
        return slots


class ServerBatchSizes:
    """Counts of batch sizes (for /metrics: how much batching the load brought)."""

    def __init__(self):
        self.batches = 0
        self.requests = 0

    def add(self, n: int) -> None:
        self.batches += 1
        self.requests += n


class StateHolder:
    """The serving state the server answers from, and the watcher that swaps it when the registry changes."""

    def __init__(self, settings: Settings, metrics: ServerMetrics, poll_seconds: float = POLL_SECONDS):
        self.settings, self.metrics, self.poll_seconds = settings, metrics, poll_seconds
        self.state: serving.ServingState | None = None
        self.error: str | None = None
        self.swapped_at: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Swap in the current state if it differs from the one serving; True when it swapped."""
        rows = serving.read_serving_rows(self.settings)
        if self.state is not None and serving.fingerprint_of(*rows) == self.state.fingerprint:
            return False
        state = serving.load_state(self.settings, rows)      # loads beside the serving state
        self.state = state                                   # one reference assignment: the swap
        self.swapped_at = clock.utc_now()         # real time: when this process swapped, not a service event
        self.metrics.swapped(state)
        return True

    def _refresh_safely(self) -> None:
        try:
            self.refresh()
            self.error = None
        except Exception as exc:  # noqa: BLE001 - a damaged artifact or a busy store: keep serving the old state
            self.metrics.state_errors.inc()
            message = " ".join(str(exc).split()) or type(exc).__name__
            if message != self.error:
                log.warning("serving state not refreshed (%s); the previous state keeps serving", message)
            self.error = message

    def start(self) -> None:
        self._refresh_safely()
        self._thread = threading.Thread(target=self._watch, name="retro-state-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self._refresh_safely()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        serving.clear_caches()


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class ObservedApp:
    """Pure ASGI middleware: metrics per route template and status, and a JSON 500 (no traceback) for any
    exception nothing else handled; the traceback goes to the server's log only, without the URL."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500, "started": False}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)
        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:            # the client left, or its body timed out (guard.py): nobody to answer
            status["code"] = 499
        except Exception as exc:  # noqa: BLE001 - the one place that turns the unexpected into a JSON 500
            log.error("request failed: %s", type(exc).__name__, exc_info=exc)
            status["code"] = 500
            if not status["started"]:
                await _error(500, "internal server error; the server log has the details")(scope, receive, send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            if path not in UNTRACKED:
                self.metrics.observe(path, status["code"], time.perf_counter() - start)


def _status_for(exc: RetroError) -> int:
    if isinstance(exc, (UnknownUser, UnknownMovie, UnknownImpression)):
        return 404
    if isinstance(exc, (access.SignInThrottled, clients.RateLimited)):
        return 429
    if isinstance(exc, access.RoleDenied):       # a valid login whose role may not (roles.PERMISSIONS)
        return 403
    if isinstance(exc, access.PermissionDenied):
        return 401
    if isinstance(exc, ValidationError):
        return 422
    if isinstance(exc, StoreBusy):
        return 503
    return 409


def _operator(settings: Settings, authorization: str | None, action: str) -> str:
    """The operator named by `Authorization: Bearer NAME:TOKEN`, checked, throttled and audited by
    `access.require` (a refusal is a 'denied' audit row and raises)."""
    name, token = None, ""
    if authorization and authorization.lower().startswith("bearer "):
        credentials = authorization[7:].strip()
        name, _, token = credentials.partition(":")
    return access.require(settings, name or "", token, action)


def create_app(settings: Settings, *, poll_seconds: float = POLL_SECONDS, announce: dict | None = None) -> FastAPI:
    """The server app for a data folder. `announce` ({host, port}): write `RETRO_HOME/.server.json` while it
    runs, so the dashboard and the CLI find it."""
    metrics = ServerMetrics()
    holder = StateHolder(settings, metrics, poll_seconds)
    batcher = Batcher(settings, holder)
    metrics.track_batches(batcher.sizes)
    limiter = clients.ImpressionLimiter(settings.impressions_per_minute)
    denials = clients.DenialAudit(settings)
    from concurrent.futures import ThreadPoolExecutor
    explainer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retro-explain")
    explaining = {"n": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        holder.start()
        batcher.start()
        path = remote.status_path(settings)
        if announce is not None:
            info = {"pid": os.getpid(), "host": announce["host"], "port": announce["port"],
                    "url": f"http://{announce['host']}:{announce['port']}", "started_at": clock.utc_now()}
            path.write_text(json.dumps(info))
            private_file(path)
        try:
            yield
        finally:
            batcher.stop()
            holder.stop()
            explainer.shutdown(wait=False, cancel_futures=True)
            if announce is not None:
                try:
                    if json.loads(path.read_text()).get("pid") == os.getpid():
                        path.unlink()
                except (OSError, ValueError):
                    pass

    app = FastAPI(title="Retro Movies model server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.holder, app.state.metrics, app.state.settings = holder, metrics, settings

    @app.exception_handler(RetroError)
    async def retro_error(request: Request, exc: RetroError):
        status = _status_for(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 401 and request.url.path == "/impressions":
            headers = {"WWW-Authenticate": f'ApiKey header="{clients.HEADER}"'}
        if status == 429:
            headers = {"Retry-After": str(max(1, int(round(getattr(exc, "retry_after", 1)))))}
        return _error(status, _one_line(exc), headers)

    @app.exception_handler(sqlite3.OperationalError)
    async def store_busy(request: Request, exc: sqlite3.OperationalError):
        if "locked" in str(exc) or "busy" in str(exc):
            return _error(503, "the stores are busy; try again in a moment")
        raise exc

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = {404: f"no such endpoint: {request.method} {request.url.path}; endpoints: /recommend/{{user_id}}, "
                        "/impressions (POST), /explain/{user_id}/{movie_id}, /explain/{user_id}/ad/{impression_id}, "
                        "/health, /ready, /metrics, /version",
                   405: f"{request.method} is not allowed here; the server answers GET (POST on /impressions)"}.get(exc.status_code,
                                                                                         str(exc.detail))
        return _error(exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return _error(422, "invalid request: " + "; ".join(parts))

    def current_state() -> serving.ServingState:
        state = holder.state
        if state is None:
            raise StoreBusy(f"the serving state could not be loaded ({holder.error}); see /ready")
        return state

    def client_of(key: str | None, action: str) -> str:
        """The client holding `key`; a missing or wrong key is refused (401) and audited (folded under a flood)."""
        name = clients.authenticate(settings, key)
        if name is None:
            why = "no API key" if not key else "wrong API key"
            denials.refused(f"client:{clients.claimed_name(key)}", action, why)
            raise access.PermissionDenied(f"{action} needs a client API key in the {clients.HEADER} header "
                                          f"({why}); an operator makes one with `python -m core clients add NAME`")
        return name

    @app.get("/recommend/{user_id}")
    async def recommend(user_id: str, request: Request, k: str = "10", ads: str = "1"):
        uid = bounds.check_id(user_id, "user id")
        n = bounds.check_int(k, "k", 1, serving.MAX_K)
        with_ads = bounds.check_int(ads, "ads", 0, 1) == 1
        key = request.headers.get(clients.HEADER)
        client = None if key is None else await run_in_threadpool(client_of, key, "recommend")
        current_state()
        rec, state, sponsored = await asyncio.wrap_future(batcher.submit(uid, n, with_ads))
        metrics.served(rec)
        body = rec.to_dict()
        headers = {"X-Production-Version": "" if state.version is None else str(state.version)}
        if sponsored is not None:
            body["sponsored"] = sponsored | {"arm": rec.arm}
        if client is None:
            for name in UNAUTHENTICATED_OMITS:
                body.pop(name, None)
                body.get("sponsored", {}).pop(name, None)
        else:
            headers["X-Model-Version"] = "" if rec.model_version is None else str(rec.model_version)
        return JSONResponse(body, headers=headers)

    @app.post("/impressions")
    async def impressions(request: Request):
        client = await run_in_threadpool(client_of, request.headers.get(clients.HEADER), "impressions")
        try:
            payload = await request.json()
        except ValueError:
            raise ValidationError('the body must be JSON: {"serve_ids": [serve ids of the lists shown]}') from None
        ids = payload.get("serve_ids") if isinstance(payload, dict) else None
        if not isinstance(ids, list) or not ids or not 1 <= len(ids) <= MAX_IMPRESSIONS:
            raise ValidationError(f'the body must be {{"serve_ids": [1..{MAX_IMPRESSIONS} serve ids]}}')
        ids = [bounds.check_id(i, "serve id") for i in ids]
        limiter.take(client, len(ids))

        def confirm() -> dict:
            with opsdb.session(settings) as db:
                return servinglog.confirm_shown(db, ids, f"client:{client}")
        return {"client": client, **await run_in_threadpool(confirm)}

    def explain_now(user_id: str, movie_id: str, authorization: str | None):
        who = _operator(settings, authorization, "explain")
        uid = bounds.check_id(user_id, "user id")
        mid = bounds.check_id(movie_id, "movie id")
        from core.governance.explain import explain as explain_one
        target = pseudonym(uid, pseudonym_key(settings))
        with access.audited(settings, f"operator:{who}", "explain", target):
            return JSONResponse(explain_one(settings, uid, mid))

    def explain_ad_now(user_id: str, impression_id: str, authorization: str | None):
        who = _operator(settings, authorization, "explain")
        uid = bounds.check_id(user_id, "user id")
        iid = bounds.check_id(impression_id, "impression id")
        from core.governance.ads_explain import explain_ad
        with access.audited(settings, f"operator:{who}", "explain ad", pseudonym(uid, pseudonym_key(settings))):
            return JSONResponse(explain_ad(settings, uid, iid))

    async def explain_queued(work, *args):
        """Run an explanation on the one explanation thread, refusing at once beyond EXPLAIN_WAITING waiting."""
        if explaining["n"] > EXPLAIN_WAITING:       # one running, EXPLAIN_WAITING waiting: refuse before any work
            return _error(503, "explanations are busy; try again in a moment", {"Retry-After": "1"})
        explaining["n"] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(explainer, work, *args)
        finally:
            explaining["n"] -= 1

    @app.get("/explain/{user_id}/{movie_id}")
    async def explain(user_id: str, movie_id: str, request: Request):
        return await explain_queued(explain_now, user_id, movie_id, request.headers.get("authorization"))

    @app.get("/explain/{user_id}/ad/{impression_id}")
    async def explain_ad(user_id: str, impression_id: str, request: Request):
        return await explain_queued(explain_ad_now, user_id, impression_id, request.headers.get("authorization"))

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/ready")
    def ready():
        state = holder.state
        if state is None:
            return _error(503, f"not ready: the serving state could not be loaded ({holder.error})")
        if state.production is None:
            return _error(503, "not ready: no model is in production (requests get the Top 50)")
        return {"ready": True, **state.describe(), "refresh_error": holder.error}

    @app.get("/version")
    def version():
        state = holder.state
        described = state.describe() if state is not None else {}
        return {"service": "retro-movies model server", **described,
                "state_swapped_at": holder.swapped_at, "refresh_error": holder.error,
                "poll_seconds": poll_seconds}

    @app.get("/metrics")
    def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(ObservedApp, metrics=metrics)
    return app


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, *, poll_seconds: float = POLL_SECONDS,
          ready=None) -> None:
    """Run the server until interrupted (SIGINT/SIGTERM end it cleanly). The socket is bound here, so a port in
    use is one clear error; `ready(url)` is called once it accepts requests."""
    import socket

    import uvicorn
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        why = os.strerror(exc.errno) if isinstance(exc.errno, int) and exc.errno > 0 else (exc.strerror or str(exc))
        hint = "; choose another --port" if exc.errno == errno.EADDRINUSE else ""
        raise RetroError(f"cannot listen on {host}:{port}: {why.split(' (while attempting')[0]}{hint}") from None
    # socket.create_server makes proto-0 sockets, on which asyncio does not set TCP_NODELAY for accepted
    # connections; uvicorn writes a response's head and body separately, so Nagle's algorithm and the client's
    # delayed ACK cost every request 40 ms. Accepted sockets inherit the option from the listening one.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    port = sock.getsockname()[1]
    app = create_app(settings, poll_seconds=poll_seconds, announce={"host": host, "port": port})
    # Slow and half-open clients: read timeouts and a connection limit (core/server/guard.py).
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5,
                            http=guard.protocol_for(settings))
    server = uvicorn.Server(config)
    if ready is not None:
        def announce_when_started():
            while not server.started and not server.should_exit:
                time.sleep(0.02)
            if server.started:
                ready(f"http://{host}:{port}")
        threading.Thread(target=announce_when_started, daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:          # Ctrl-C is how a server is stopped: uvicorn shut down cleanly, re-raised
        pass
    finally:
        sock.close()
