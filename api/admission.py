"""Admission control: a process answers at most `limit` requests at once; one more is refused
at once with 503 OVERLOADED and `Retry-After`, before its key or body is read.

Under ten times the load it can serve, a process then keeps a bounded number of requests (and
their memory) and a bounded latency for those it admits, instead of a queue that grows until
every request times out. Liveness, readiness and metrics are always admitted: an overloaded
process is alive, and its operator must see why.

It is the outermost layer, and its refusal is made once, ahead of time: under overload a
refusal must cost as little as it can (every millisecond spent refusing is taken from the
requests admitted). Refusals are counted by `eventkeep_admission_refused_total`, not in the
per-route request metrics, and carry no correlation id.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from eventkeep.metrics import ADMISSION_REFUSED, IN_FLIGHT

ALWAYS_ADMITTED = frozenset({"/healthz", "/readyz", "/metrics"})
RETRY_AFTER_SECONDS = 1


class Admission:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit  # 0: no limit
        self.in_flight = 0  # the event loop is one thread: no lock needed
        error = {
            "code": "OVERLOADED",
            "message": "The server is at its limit of requests in flight; retry later.",
            "details": {"max_in_flight": limit},
        }
        self._body = orjson.dumps({"error": error})
        self._start = {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(self._body)).encode()),
                (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
                (b"cache-control", b"no-store"),
            ],
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ALWAYS_ADMITTED:
            await self.app(scope, receive, send)
            return
        if self.limit and self.in_flight >= self.limit:
            ADMISSION_REFUSED.inc()
            await send(self._start)
            await send({"type": "http.response.body", "body": self._body})
            return
        self.in_flight += 1
        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()
