"""At the admission limit, `eventkeep serve`'s connections refuse a request as soon as its
headers are parsed (api/admission_protocol.py): the app never sees it, the answer is the
admission middleware's (503 OVERLOADED, Retry-After), the refused request's body is dropped
and the connection serves its next request, pipelined requests are answered in order, an
HTTP/1.0 client's connection is closed, and probes are still admitted. A real uvicorn with
the real app, in both modes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace

import httpx
import orjson
import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from eventkeep.api.admission import AdmissionGate
from eventkeep.api.admission_protocol import AdmittingHttpToolsProtocol
from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from tests.api.shopping import USER

LIMIT = 2
HELD_SECONDS = 4.0  # how long a held request waits for a position the log never reaches


class Seen:
    """The app, counting the HTTP requests that reach it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


@dataclass
class Served:
    port: int
    seen: Seen
    key: str

    def raw(self, request: bytes, *, until_closed: bool = False) -> bytes:
        """Sends `request` on a new connection; what came back within a second (or, with
        `until_closed`, until the server closed the connection)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as connection:
            connection.sendall(request)
            return read(connection, until_closed=until_closed)


def read(connection: socket.socket, *, until_closed: bool = False, answers: int = 1) -> bytes:
    received = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        connection.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return received
        received += chunk
        if not until_closed and complete(received) >= answers:
            return received
    return received


def complete(received: bytes) -> int:
    """How many whole answers with a content-length `received` holds."""
    count = 0
    while b"\r\n\r\n" in received:
        head, _, rest = received.partition(b"\r\n\r\n")
        length = int(dict(parse_head(head)[1]).get("content-length", "0"))
        if len(rest) < length:
            break
        received, count = rest[length:], count + 1
    return count


def parse_head(head: bytes) -> tuple[int, list[tuple[str, str]]]:
    status_line, *lines = head.decode().split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines]
    return int(status_line.split()[1]), [(name.lower(), value) for name, value in headers]


def answers_of(received: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    found = []
    while b"\r\n\r\n" in received:
        head, _, rest = received.partition(b"\r\n\r\n")
        status, headers = parse_head(head)
        length = int(dict(headers).get("content-length", "0"))
        found.append((status, dict(headers), rest[:length]))
        received = rest[length:]
    return found


def request(served: Served, method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {served.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


@pytest.fixture
def served(
    wiring: Wiring, bearer: Callable[[Role], dict[str, str]]
) -> Iterator[tuple[Served, Wiring]]:
    limited = replace(wiring, max_in_flight=LIMIT, min_position_wait=HELD_SECONDS)
    seen = Seen(create_app(limited))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        seen, port=port, http=AdmittingHttpToolsProtocol, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    key = bearer(Role.client)["Authorization"].removeprefix("Bearer ")
    yield Served(port, seen, key), limited
    server.should_exit = True
    thread.join(10)


@contextmanager
def held_at_limit(server: Served) -> Iterator[Served]:
    """LIMIT requests held in flight: each waits for a position the log never reaches, then
    answers 503 PROJECTION_BEHIND."""
    base = f"http://127.0.0.1:{server.port}"
    auth = {"Authorization": f"Bearer {server.key}", "X-Min-Position": str(10**12)}
    user = "/v1/users/00000000-0000-4000-8000-000000000000"
    before = server.seen.paths.count(user)
    with ThreadPoolExecutor(LIMIT) as pool:
        held = [pool.submit(httpx.get, base + user, headers=auth, timeout=30) for _ in range(LIMIT)]
        deadline = time.monotonic() + 10
        while server.seen.paths.count(user) < before + LIMIT and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.seen.paths.count(user) == before + LIMIT
        yield server
        assert [f.result().status_code for f in held] == [503] * LIMIT


@pytest.fixture
def full(served: tuple[Served, Wiring]) -> Iterator[Served]:
    with held_at_limit(served[0]) as server:
        yield server


def test_a_refused_request_never_reaches_the_app_and_gets_the_middlewares_answer(
    full: Served,
) -> None:
    seen_before = len(full.seen.paths)

    [(status, headers, body)] = answers_of(full.raw(request(full, "GET", "/v1/projections")))

    assert len(full.seen.paths) == seen_before  # refused before it became an ASGI call
    # The admission middleware's answer (what any other server gets), behind uvicorn's date.
    gate = AdmissionGate(LIMIT)
    assert status == 503 and body == gate.body and "date" in headers
    for name, value in gate.headers:
        assert headers[name.decode()] == value.decode()
    assert orjson.loads(body)["error"]["code"] == "OVERLOADED"
    assert "connection" not in headers  # kept alive


def test_the_refused_body_is_dropped_and_the_connection_serves_the_next_request(
    served: tuple[Served, Wiring],
) -> None:
    server, wiring = served
    refused_user = {**USER, "email": "refused@example.com"}
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        with held_at_limit(server):
            connection.sendall(request(server, "POST", "/v1/users", orjson.dumps(refused_user)))
            [(status, _, body)] = answers_of(read(connection))
            assert status == 503 and b"OVERLOADED" in body
        # Released: the same connection, its next request parsed where the body ended.
        connection.sendall(request(server, "POST", "/v1/users", orjson.dumps(USER)))
        [(status, _, body)] = answers_of(read(connection))
    assert status == 201, body
    log = wiring.shop.recorder.select_notifications(1, 100)
    emails = [orjson.loads(event.state).get("email") for event in log]
    assert "refused@example.com" not in emails  # nothing of the refused command written


def test_pipelined_requests_are_answered_in_order(full: Served) -> None:
    two = request(full, "GET", "/v1/projections") + request(full, "GET", "/healthz")
    with socket.create_connection(("127.0.0.1", full.port), timeout=10) as connection:
        connection.sendall(two)
        received = read(connection, answers=2)
    [(first, _, first_body), (second, _, second_body)] = answers_of(received)
    assert (first, second) == (503, 200), (first_body, second_body)
    assert b"OVERLOADED" in first_body


def test_an_http_1_0_client_is_refused_and_its_connection_closed(full: Served) -> None:
    head = f"GET /v1/projections HTTP/1.0\r\nAuthorization: Bearer {full.key}\r\n\r\n"

    received = full.raw(head.encode(), until_closed=True)  # returns once the server closed it

    [(status, headers, _)] = answers_of(received)
    assert status == 503 and headers["connection"] == "close"


def test_a_head_request_is_refused_without_a_body_and_the_connection_goes_on(
    full: Served,
) -> None:
    """A HEAD's answer has no body: one written anyway would be read as the next answer."""
    head = f"HEAD /v1/projections HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {full.key}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", full.port), timeout=10) as connection:
        connection.sendall(head.encode() + request(full, "GET", "/healthz"))
        received = b""
        deadline = time.monotonic() + 10
        while received.count(b"HTTP/1.1 ") < 2 and time.monotonic() < deadline:
            received += connection.recv(65536)
    first, _, rest = received.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 503"), received
    assert rest.startswith(b"HTTP/1.1 200"), received  # no body between the two answers


def test_probes_are_admitted_at_the_limit(full: Served) -> None:
    for probe in ("/healthz", "/readyz"):
        [(status, _, _)] = answers_of(full.raw(request(full, "GET", probe)))
        assert status == 200, probe
