"""The server's Prometheus metrics (prometheus-client, one registry per app so tests can build several).

Counters and a latency histogram the Prometheus way, plus gauges over the last minute (request rate,
latency percentiles, error ratios) computed at scrape time from a window of recent requests, so a reader
without a Prometheus server (the dashboard) gets current numbers from one scrape.
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily

from core.serving.remote import RECENT_WINDOW_SECONDS

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ROLES = ("production", "canary", "shadow")


class RecentWindow:
    """(time, seconds, status) of the requests of the last `seconds`, for the recent-* gauges."""

    def __init__(self, seconds: float = RECENT_WINDOW_SECONDS, max_items: int = 200_000):
        self.seconds = seconds
        self._items: deque = deque(maxlen=max_items)
        self._lock = threading.Lock()
        self.started = time.monotonic()

    def add(self, seconds: float, status: int) -> None:
        self._items.append((time.monotonic(), seconds, status))

    def snapshot(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(window length in seconds, latencies, statuses) of the requests inside the window."""
        now = time.monotonic()
        with self._lock:
            while self._items and self._items[0][0] < now - self.seconds:
                self._items.popleft()
            items = list(self._items)
        span = min(self.seconds, now - self.started)
        if not items:
            return span, np.empty(0), np.empty(0, dtype=int)
        arr = np.array([(s, st) for _, s, st in items])
        return span, arr[:, 0], arr[:, 1].astype(int)

    def collect(self):
        span, latency, status = self.snapshot()
        rate = GaugeMetricFamily("retro_recent_requests_per_second",
                                 f"requests per second over the last {self.seconds:.0f} s (metrics scrapes excluded)")
        rate.add_metric([], len(latency) / span if span > 0 else 0.0)
        yield rate
        q = GaugeMetricFamily("retro_recent_request_latency_seconds",
                              f"request latency percentiles over the last {self.seconds:.0f} s (NaN: no request)",
                              labels=["quantile"])
        for quantile in (0.5, 0.95, 0.99):
            q.add_metric([str(quantile)], float(np.quantile(latency, quantile)) if len(latency) else float("nan"))
        yield q
        err = GaugeMetricFamily("retro_recent_error_ratio",
                                f"share of requests answered 5xx / 4xx over the last {self.seconds:.0f} s",
                                labels=["class"])
        for name, lo in (("5xx", 500), ("4xx", 400)):
            err.add_metric([name], float(((status >= lo) & (status < lo + 100)).mean()) if len(status) else 0.0)
        yield err
        up = GaugeMetricFamily("retro_uptime_seconds", "seconds since the server started")
        up.add_metric([], time.monotonic() - self.started)
        yield up


class ServerMetrics:
    """Every metric of one server app."""

    def __init__(self):
        disable_created_metrics()          # no `*_created` series: they double the text and nobody reads them
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("retro_http_requests", "HTTP requests by route and status", ["path", "status"],
                                registry=r)
        self.latency = Histogram("retro_http_request_duration_seconds", "request latency by route", ["path"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.version = Gauge("retro_model_version", "registry version serving per role (0: none)", ["role"], registry=r)
        self.ranker = Gauge("retro_ranker_version", "production ranker re-ranking production's lists (0: none)",
                            registry=r)
        self.share = Gauge("retro_canary_share", "share of users in an active canary's arm (0: no canary)",
                           registry=r)
        self.fallbacks = Counter("retro_fallbacks", "Top 50 fallbacks served, by reason", ["reason"], registry=r)
        self.arms = Counter("retro_recommendations", "lists served, by release arm", ["arm"], registry=r)
        self.swaps = Counter("retro_state_swaps", "serving states swapped in (start, promotions, rollbacks, releases)",
                             registry=r)
        self.state_errors = Counter("retro_state_errors", "refreshes of the serving state that failed (the old "
                                    "state kept serving)", registry=r)
        self.window = RecentWindow()
        r.register(self.window)
        for role in ROLES:
            self.version.labels(role=role).set(0)

    def track_batches(self, sizes) -> None:
        """Expose the batcher's counts: requests answered in batches and batches run (their ratio is the mean
        batch size under the load)."""
        batches = Gauge("retro_batches", "recommendation batches computed", registry=self.registry)
        batches.set_function(lambda: sizes.batches)
        batched = Gauge("retro_batched_requests", "recommendation requests answered in those batches",
                        registry=self.registry)
        batched.set_function(lambda: sizes.requests)

    def observe(self, path: str, status: int, seconds: float) -> None:
        self.requests.labels(path=path, status=str(status)).inc()
        self.latency.labels(path=path).observe(seconds)
        self.window.add(seconds, status)

    def served(self, rec) -> None:
        self.arms.labels(arm=rec.arm).inc()
        if rec.path.startswith("top50:"):
            self.fallbacks.labels(reason=rec.path.split(":", 1)[1]).inc()

    def swapped(self, state) -> None:
        self.swaps.inc()
        release = state.release
        self.version.labels(role="production").set(state.version or 0)
        self.ranker.set(state.ranker_version or 0)
        for role in ("canary", "shadow"):
            on = release is not None and release["mode"] == role
            self.version.labels(role=role).set(int(release["version"]) if on else 0)
        self.share.set(release["share"] if release is not None and release["mode"] == "canary" else 0)
