"""`eventkeep serve`'s HTTP protocol: uvicorn's httptools protocol, refusing a request at the
admission limit as soon as its headers are parsed (api/admission.py).

uvicorn makes each request an ASGI task and passes it through the ASGI layers (its proxy
headers, FastAPI's and Starlette's outer middlewares) before the admission middleware can refuse
it, and writes the refusal's head and body with two socket writes: about 40 us of the event
loop per refusal, which under ten times the sustainable load is most of what the process does.
Here a refusal is one prepared write and no task. The answer is the middleware's, byte for byte,
behind the server's own default headers (date, server). What this layer cannot refuse in order
goes on to uvicorn and the middleware, which refuses the same way: a request pipelined behind
one still in flight, an upgrade, `Expect: 100-continue`, a `HEAD` (its answer has no body), or
a percent-encoded path (it might be a probe's, always admitted).

The gate reaches the protocol through the app's lifespan state (`STATE_KEY`: `Refusals`), the
ASGI way for an app to hand something to its server's connections.
"""

from __future__ import annotations

import asyncio

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from eventkeep.api.admission import ALWAYS_ADMITTED, STATUS, AdmissionGate
from eventkeep.metrics import ADMISSION_REFUSED

STATE_KEY = "eventkeep.admission"
_PROBES = frozenset(path.encode() for path in ALWAYS_ADMITTED)


class _Refused:
    """Stands for the request-response cycle of a request refused here: complete, so that the
    parser's body callbacks drop its body and the next request starts at once."""

    response_complete = True
    disconnected = False
    keep_alive = False

    def __init__(self) -> None:
        self.message_event = asyncio.Event()  # nothing waits on it; connection_lost sets it


class Refusals:
    """A gate, and its refusal's bytes, made again only when the server's default headers
    change (uvicorn renews its date header once a second). The app's lifespan yields it."""

    def __init__(self, gate: AdmissionGate) -> None:
        self.gate = gate
        self._for: list[tuple[bytes, bytes]] | None = None
        self._keep_alive = self._close = b""

    def answer(self, default_headers: list[tuple[bytes, bytes]], keep_alive: bool) -> bytes:
        if default_headers is not self._for:
            lines = [STATUS_LINE[STATUS]]
            for name, value in (*default_headers, *self.gate.headers):
                lines += [name, b": ", value, b"\r\n"]
            head = b"".join(lines)
            self._keep_alive = head + b"\r\n" + self.gate.body
            self._close = head + b"connection: close\r\n\r\n" + self.gate.body
            self._for = default_headers
        return self._keep_alive if keep_alive else self._close


class AdmittingHttpToolsProtocol(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        refusals: Refusals | None = self.app_state.get(STATE_KEY)
        if refusals is None or not refusals.gate.full or not self._refusable():
            super().on_headers_complete()
            return
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        self.transport.write(refusals.answer(self.server_state.default_headers, keep_alive))
        ADMISSION_REFUSED.inc()
        self.cycle = _Refused()  # type: ignore[assignment]
        if keep_alive:
            self.on_response_complete()  # as uvicorn does after an answer: keep-alive timer
        else:
            self.transport.close()

    def _refusable(self) -> bool:
        if self.cycle is not None and not self.cycle.response_complete:
            return False  # pipelined behind a request in flight: answers stay in order
        if self.expect_100_continue or self.parser.should_upgrade():
            return False
        if self.parser.get_method() == b"HEAD":
            return False  # answered without a body: uvicorn's cycle knows how
        path = httptools.parse_url(self.url).path
        return b"%" not in path and path not in _PROBES
