"""Limits before work on a real `eventkeep serve` (uvicorn, embedded, a subprocess): a 30 MB
command without a key is refused at once, without the server reading it, and /healthz stays
fast meanwhile; a 500 KB correlation id is refused (431), never echoed."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.test_secrets_on_the_host import Server

THIRTY_MB = 30 * 1024 * 1024


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    served = Server(tmp_path / "home")
    try:
        served.wait_ready()
        yield served
    finally:
        if served.process.poll() is None:
            served.process.kill()


def _head(port: int, headers: str) -> tuple[bytes, float]:
    """Sends a request head announcing a body, and no body: what the server answers and how
    long it took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(headers.encode())
        answer = connection.recv(65536)
    return answer, time.monotonic() - started


def test_a_30_mb_command_without_a_key_is_refused_without_being_read(server: Server) -> None:
    head = (
        "POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {THIRTY_MB}\r\n\r\n"
    )
    answer, took = _head(server.port, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]  # too large, before the key
    assert took < 3.0  # not waiting for a body that never comes (the socket waits 10 s)
    chunked = (
        "POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    answer, took = _head(server.port, chunked)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]  # no key: nothing is read
    assert took < 3.0  # not waiting for a body that never comes (the socket waits 10 s)


def test_health_stays_fast_while_a_large_body_is_refused(server: Server) -> None:
    with httpx.Client(base_url=server.base, timeout=30) as client:
        try:
            refused = client.post(
                "/v1/users", content=b"x" * THIRTY_MB, headers={"Content-Type": "application/json"}
            )
            assert refused.status_code in (401, 413)
        except httpx.TransportError:
            pass  # the server answered and closed while the client was still sending: refused
        started = time.monotonic()
        assert client.get("/healthz").status_code == 200
        assert time.monotonic() - started < 0.5


def test_a_huge_correlation_id_is_refused_not_echoed(server: Server) -> None:
    huge = "x" * 500_000
    with httpx.Client(base_url=server.base, timeout=30) as client:
        response = client.get("/healthz", headers={"X-Correlation-ID": huge})
        assert response.status_code == 431
        assert response.json()["error"]["code"] == "HEADERS_TOO_LARGE"
        assert huge not in response.headers.get("X-Correlation-ID", "")
        assert len(response.content) < 10_000
        plain = client.get("/healthz", headers={"X-Correlation-ID": "x" * 200})
        assert plain.status_code == 200
        assert plain.headers["X-Correlation-ID"] != "x" * 200
