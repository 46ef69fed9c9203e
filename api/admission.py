"""Admission control: a process answers at most `limit` requests at once; one more is refused
at once with 503 OVERLOADED and `Retry-After`, before its key or body is read.

Under ten times the load it can serve, a process then keeps a bounded number of requests (and
their memory) and a bounded latency for those it admits, instead of a queue that grows until
every request times out. Liveness, readiness and metrics are always admitted: an overloaded
process is alive, and its operator must see why.

Two layers share one `AdmissionGate`: `Admission`, the outermost middleware, counts the
requests in flight (and refuses under any ASGI server); under `eventkeep serve` the connection
layer (api/admission_protocol.py) refuses first, as soon as a request's headers are parsed,
before the server makes an ASGI task of it. Under overload most requests are refusals, and
every microsecond a refusal costs is taken from the requests admitted. Refusals are counted by
`eventkeep_admission_refused_total`, not in the per-route request metrics, and carry no
correlation id.
"""

from __future__ import annotations

from http import HTTPStatus

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from eventkeep.metrics import ADMISSION_REFUSED, IN_FLIGHT

ALWAYS_ADMITTED = frozenset({"/healthz", "/readyz", "/metrics"})
RETRY_AFTER_SECONDS = 1
STATUS = HTTPStatus.SERVICE_UNAVAILABLE


class AdmissionGate:
    """The requests one process answers at once, against its limit (0: no limit), and the
    answer a refused one gets. The event loop is one thread: no lock needed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        error = {
            "code": "OVERLOADED",
            "message": "The server is at its limit of requests in flight; retry later.",
            "details": {"max_in_flight": limit},
        }
        self.body = orjson.dumps({"error": error})
        self.headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
            (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
            (b"cache-control", b"no-store"),
        ]

    @property
    def full(self) -> bool:
        return bool(self.limit) and self.in_flight >= self.limit


class Admission:
    def __init__(self, app: ASGIApp, gate: AdmissionGate) -> None:
        self.app = app
        self.gate = gate
        self._start = {"type": "http.response.start", "status": STATUS, "headers": gate.headers}
        self._body = {"type": "http.response.body", "body": gate.body}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ALWAYS_ADMITTED:
            await self.app(scope, receive, send)
            return
        gate = self.gate
        if gate.full:
            ADMISSION_REFUSED.inc()
            await send(self._start)
            await send(self._body)
            return
        gate.in_flight += 1
        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            gate.in_flight -= 1
            IN_FLIGHT.dec()
