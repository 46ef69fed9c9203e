"""Who may hold `WS /v1/stream` and for how long: only the roles that may read personal data
(an analyst key and a customer's token are refused with 4403), a revoked key's stream closes
within 5 s, a closed socket leaves nothing polling the log, a key's open streams are capped
(4429), and a real `eventkeep serve` stops at once on SIGTERM with streams open."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn
import websockets
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import ApiKeyStore, Role
from eventkeep.api.routes.stream import POLL_INTERVAL
from eventkeep.eventstore.log_follower import commit_signal
from tests.api.shopping import USER, register
from tests.api.test_secrets_on_the_host import Server

NEVER = "/v1/stream?types=NoSuchEvent"


def closing_code(client: TestClient, path: str, **headers: str) -> int:
    with (
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect(path, headers=headers) as socket,
    ):
        socket.receive_text()
    return closed.value.code


def test_an_analyst_key_is_refused_and_a_client_key_reads_personal_data(
    client: TestClient, bearer: Callable[[Role], dict[str, str]]
) -> None:
    register(client, "ada@example.com")
    assert closing_code(client, "/v1/stream", **bearer(Role.analyst)) == 4403
    for role in (Role.client, Role.auditor, Role.admin):
        with client.websocket_connect("/v1/stream", headers=bearer(role)) as socket:
            assert socket.receive_json()["data"]["email"] == "ada@example.com"


def test_a_customer_token_is_refused(client: TestClient, wiring: Wiring) -> None:
    assert wiring.accounts is not None
    password = "correct horse battery staple"
    user = {**USER, "email": "cust@example.com", "password": password}
    registered = client.post("/v1/users", json=user)
    assert registered.status_code == 201, registered.text
    # What POST /v1/auth/login answers once the users read model knows the email.
    token = wiring.accounts.authenticate(user["email"], password, registered.json()["id"])
    assert closing_code(client, "/v1/stream", authorization=f"Bearer {token.access_token}") == 4403


def test_a_revoked_keys_stream_closes_within_5_seconds(
    client: TestClient, keys: ApiKeyStore
) -> None:
    issued = keys.create(Role.client, "to revoke")
    headers = {"authorization": f"Bearer {issued.secret_key}"}
    with client.websocket_connect(NEVER, headers=headers) as socket:
        time.sleep(0.5)
        keys.revoke(issued.key.id)
        revoked = time.monotonic()
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
        assert time.monotonic() - revoked < 5
    assert closed.value.code == 4401


@pytest.fixture
def served(app: FastAPI) -> Iterator[tuple[str, uvicorn.Server]]:
    """The app behind a real uvicorn in a thread of this process (its log follower's waiters
    can then be counted)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"ws://127.0.0.1:{port}", server
    server.should_exit = True
    thread.join(10)


def test_200_closed_sockets_leave_nothing_polling_the_log(
    served: tuple[str, uvicorn.Server],
    app: FastAPI,
    wiring: Wiring,
    bearer: Callable[[Role], dict[str, str]],
) -> None:
    base, _ = served
    wiring.max_streams_per_key = 1000
    headers = bearer(Role.client)
    signal = commit_signal(wiring.shop.recorder)

    async def open_and_close() -> None:
        for _ in range(200):
            async with websockets.connect(base + NEVER, additional_headers=headers):
                pass

    asyncio.run(open_and_close())
    # A handler that did not notice its client leave would wait for a commit (or poll) forever.
    deadline = time.monotonic() + 3
    while signal._loops and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(POLL_INTERVAL * 1.5)
    assert not signal._loops
    assert not sum(getattr(app.state, "open_streams", {}).values())


def test_a_keys_open_streams_are_capped(
    client: TestClient, wiring: Wiring, bearer: Callable[[Role], dict[str, str]]
) -> None:
    wiring.max_streams_per_key = 2
    headers = bearer(Role.client)
    with (
        client.websocket_connect(NEVER, headers=headers),
        client.websocket_connect(NEVER, headers=headers),
    ):
        assert closing_code(client, NEVER, **headers) == 4429
        other = bearer(Role.client)  # another key has its own allowance
        with client.websocket_connect("/v1/stream", headers=other):
            pass
    with client.websocket_connect(NEVER, headers=headers):  # closed ones are given back
        pass


def test_serve_stops_at_once_on_sigterm_with_streams_open(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = Server(home)
    try:
        server.wait_ready()
        key = (home / "bootstrap-admin-key").read_text().strip()
        url = f"ws://127.0.0.1:{server.port}{NEVER}"
        opened = threading.Event()
        codes: list[int | None] = []

        async def hold() -> None:
            sockets = [
                await websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"})
                for _ in range(5)
            ]
            opened.set()
            for socket in sockets:
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(socket.recv(), 30)
                codes.append(socket.close_code)

        holder = threading.Thread(target=asyncio.run, args=(hold(),))
        holder.start()
        assert opened.wait(15)
        time.sleep(0.5)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 3
        holder.join(10)
        assert len(codes) == 5
    finally:
        if server.process.poll() is None:
            server.process.kill()
