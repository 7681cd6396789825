"""Talking to a running model server (`python -m core serve`, `core.server`) over HTTP.

The closed loop serves its simulated days through it (`simulate --serve-url URL`), the dashboard reads its
metrics, the load benchmark drives it. The server announces itself in `RETRO_HOME/.server.json` (pid, URL,
start time) while it runs.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from core.errors import RetroError, ValidationError
from core.settings import Settings

STATUS_FILE = ".server.json"
RECENT_WINDOW_SECONDS = 60


class ServerUnavailable(RetroError):
    """The model server did not answer (not running, wrong URL, or it failed the request)."""


def status_path(settings: Settings):
    return settings.home / STATUS_FILE


def server_status(settings: Settings) -> dict | None:
    """The announcement of the server running on this data folder ({pid, url, host, port, started_at}), or
    None when none runs (no file, or its process is gone)."""
    try:
        info = json.loads(status_path(settings).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info


def check_url(url: str) -> str:
    """`url` when it is an http(s) URL with a host name a connection can be made to (each label at most 63
    characters, IDNA-encodable, a port in range); else ValidationError saying why."""
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(url)
        parts.port                                   # noqa: B018 - raises ValueError for a port out of range
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("give http://HOST:PORT, e.g. http://127.0.0.1:8000")
        parts.hostname.encode("idna")
    except (ValueError, UnicodeError) as exc:        # UnicodeError: a label longer than 63 characters
        raise ValidationError(f"--serve-url {url[:100]!r} is not a usable URL: {exc}") from None
    return url


def _client(timeout: float = 10.0):
    import httpx
    return httpx.Client(timeout=timeout, trust_env=False)     # localhost: never through a proxy


def get_json(url: str, path: str, *, timeout: float = 5.0, headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of GET url+path; ServerUnavailable when nothing answers."""
    import httpx
    try:
        with _client(timeout) as c:
            r = c.get(url.rstrip("/") + path, headers=headers)
    except httpx.HTTPError as exc:
        raise ServerUnavailable(f"no model server answers at {url}: {exc}") from None
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, {"error": r.text[:200]}


def version(url: str) -> dict:
    """The server's /version: what it serves now (production, ranker, release)."""
    code, body = get_json(url, "/version")
    if code != 200:
        raise ServerUnavailable(f"{url}/version answered {code}: {body.get('error')}")
    return body


def recommend_many(url: str, user_ids, k: int = 10, *, concurrency: int = 8, timeout: float = 30.0,
                   ads: bool = False) -> dict[int, dict]:
    """{user_id: the server's JSON answer} for every user, `concurrency` requests at a time; any answer that is
    not 200 raises ServerUnavailable naming the user and the server's error. Without `ads` the server leaves the
    sponsored slot out (`ads=0`): the closed loop's simulated day chooses and logs its ads itself, with the clicks
    the server cannot know, so one list never carries two."""
    user_ids = [int(u) for u in user_ids]
    base = url.rstrip("/")
    with _client(timeout) as client:
        def one(uid: int) -> dict:
            import httpx
            try:
                r = client.get(f"{base}/recommend/{uid}", params={"k": k, "ads": int(ads)})
            except httpx.HTTPError as exc:
                raise ServerUnavailable(f"no model server answers at {url}: {exc}") from None
            if r.status_code != 200:
                raise ServerUnavailable(f"{url} refused user {uid}: {r.status_code} {r.text[:200]}")
            return r.json()
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return dict(zip(user_ids, pool.map(one, user_ids)))


def wait_until_serving(url: str, production_version: int | None, release: tuple | None,
                       timeout: float = 10.0) -> dict:
    """Poll /version until the server serves `production_version` and `release` ((deployment id, share) or
    None); returns its last answer. The closed loop calls it before a day, so the day's lists come from the
    registry's current state, not from the state before a promotion the server has not picked up yet."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        now = version(url)
        served = now.get("release")
        served = None if served is None else (served.get("deployment_id"), served.get("share"))
        if now.get("production_version") == production_version and served == release:
            return now
        if time.monotonic() > deadline:
            raise ServerUnavailable(f"the server at {url} still serves production v{now.get('production_version')} "
                                    f"and release {served} after {timeout:.0f} s, expected v{production_version} and "
                                    f"{release}; is it running on this data folder?")
        time.sleep(0.05)


# --- metrics -------------------------------------------------------------------------------------------------
@dataclass
class MetricsSummary:
    """What the dashboard shows of a running server (from its /metrics)."""
    requests: int
    by_status: dict
    recent_rps: float | None
    recent_p50_ms: float | None
    recent_p95_ms: float | None
    recent_p99_ms: float | None
    recent_error_ratio: float | None
    recent_client_error_ratio: float | None
    versions: dict
    canary_share: float | None
    fallbacks: dict
    arms: dict
    swaps: int
    state_errors: int
    uptime_s: float | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def metrics(url: str, timeout: float = 2.0) -> MetricsSummary:
    """Scrape /metrics and summarize it (Prometheus text parsed with prometheus-client's parser)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families
    try:
        with _client(timeout) as c:
            r = c.get(url.rstrip("/") + "/metrics")
    except httpx.HTTPError as exc:
        raise ServerUnavailable(f"no model server answers at {url}: {exc}") from None
    if r.status_code != 200:
        raise ServerUnavailable(f"{url}/metrics answered {r.status_code}")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))

    def one(name, **labels):
        for lab, value in samples.get(name, []):
            if all(lab.get(k) == v for k, v in labels.items()):
                return value
        return None

    by_status: dict = {}
    for lab, value in samples.get("retro_http_requests_total", []):
        by_status[lab.get("status")] = by_status.get(lab.get("status"), 0) + int(value)

    def ms(q):
        v = one("retro_recent_request_latency_seconds", quantile=q)
        return None if v is None or v != v else v * 1000

    def plain(v):
        return None if v is None or v != v else v

    versions = {lab["role"]: int(v) for lab, v in samples.get("retro_model_version", []) if v > 0}
    return MetricsSummary(
        requests=sum(by_status.values()), by_status=by_status,
        recent_rps=plain(one("retro_recent_requests_per_second")),
        recent_p50_ms=ms("0.5"), recent_p95_ms=ms("0.95"), recent_p99_ms=ms("0.99"),
        recent_error_ratio=plain(one("retro_recent_error_ratio", **{"class": "5xx"})),
        recent_client_error_ratio=plain(one("retro_recent_error_ratio", **{"class": "4xx"})),
        versions=versions, canary_share=plain(one("retro_canary_share")),
        fallbacks={lab["reason"]: int(v) for lab, v in samples.get("retro_fallbacks_total", [])},
        arms={lab["arm"]: int(v) for lab, v in samples.get("retro_recommendations_total", [])},
        swaps=int(one("retro_state_swaps_total") or 0), state_errors=int(one("retro_state_errors_total") or 0),
        uptime_s=plain(one("retro_uptime_seconds")))
