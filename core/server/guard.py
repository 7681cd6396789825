"""Slow and idle clients must not hold the server: read timeouts and a connection limit for uvicorn.

uvicorn (0.55) times out only an idle keep-alive connection *after* a response (`timeout_keep_alive`); a
connection that sends half a request line and nothing more is kept for ever, and `limit_concurrency` still
accepts it (it answers 503 only to a complete request). 250 such sockets under a 256-descriptor limit took every
descriptor, and other clients got a connection reset. `GuardedProtocol` is uvicorn's httptools protocol with:

- a **header timeout**: a request's head (request line and headers) must arrive within `header_timeout` seconds
  of the connection opening or of its first byte (a later request on a kept-alive connection), else the
  connection is closed;
- a **body timeout**: the body must be complete within `body_timeout` seconds of the head;
- a **connection limit**: when `max_connections` are open, a new connection evicts the open connection that has
  waited longest for a request (a half-open or idle one — never one whose request is being answered); when none
  can be evicted, the new connection is closed at once. So descriptors never run out, and a client that sends
  its request promptly is served even while the limit is full of slow ones.

`protocol_for(settings)` returns the class configured from the settings (`server_header_timeout`,
`server_body_timeout`, `server_max_connections`), to pass as uvicorn's `http=`.
"""
from __future__ import annotations

import resource
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from core.settings import Settings

RESERVED_DESCRIPTORS = 64     # the stores (SQLite files, WAL, shm per thread), model files, the pipe, the listener


def max_connections(settings: Settings) -> int:
    """`server_max_connections`, or (0: automatic) the soft open-file limit less RESERVED_DESCRIPTORS (≥ 8)."""
    if settings.server_max_connections > 0:
        return int(settings.server_max_connections)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(8, int(soft) - RESERVED_DESCRIPTORS)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body read timeouts and a connection limit (module docstring)."""

    header_timeout = 10.0
    body_timeout = 30.0
    max_connections = 1000

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._read_timer = None
        self._waiting_since = time.monotonic()     # waiting for a request (None while one is being answered)
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._evict_one():
            self.transport.close()
            return
        self._arm(self.header_timeout)

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest for a request; False when every other one is busy."""
        waiting = [c for c in self.connections
                   if c is not self and getattr(c, "_waiting_since", None) is not None
                   and not c.transport.is_closing()]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c._waiting_since)
        oldest._close()
        return True

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._close)

    def _disarm(self) -> None:
        if getattr(self, "_read_timer", None) is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _close(self) -> None:
        self._disarm()
        self._waiting_since = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self._disarm()
        self._waiting_since = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_timer is None:               # a new request on a kept-alive connection
            self._arm(self.header_timeout)

    def on_headers_complete(self) -> None:
        self._waiting_since = None                 # a request is being answered: never evicted
        self._arm(self.body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._waiting_since = time.monotonic()  # idle until the next request (uvicorn's keep-alive timeout)


def protocol_for(settings: Settings) -> type[GuardedProtocol]:
    """GuardedProtocol configured from the settings (a subclass, so servers in one process do not share it)."""
    return type("GuardedProtocol", (GuardedProtocol,), {
        "header_timeout": float(settings.server_header_timeout), "body_timeout": float(settings.server_body_timeout),
        "max_connections": max_connections(settings)})
