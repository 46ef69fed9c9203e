"""HTTP commands wait for their commit without holding a worker thread (issue 13 item 2): a
process answers many commands at once on its event loop, and the group committer's batches
grow with them. Shown by giving the app a single worker thread and holding the store's write
lock meanwhile: every command still reaches the committer's queue, and they commit in one
batch. Both modes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import anyio.to_thread
import httpx
import psycopg
from fastapi import FastAPI
from prometheus_client import REGISTRY

from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from eventkeep.commands.messages import CommandContext, CreateProduct
from tests.conftest_services import POSTGRES_URL, require_env

IN_FLIGHT = 32


def batches_over(appends: int) -> float:
    """Batches committed so far with more than `appends` appends (this process)."""
    total = REGISTRY.get_sample_value("eventkeep_group_commit_batch_appends_count") or 0.0
    small = REGISTRY.get_sample_value(
        "eventkeep_group_commit_batch_appends_bucket", {"le": f"{float(appends)}"}
    )
    return total - (small or 0.0)


def products(wiring: Wiring, count: int) -> list[UUID]:
    context = CommandContext(actor="test", correlation_id="c")
    create = CreateProduct("KB-01", "Keyboard", "", "peripherals", "49.90", "EUR", 100)
    return [wiring.handle(create, context).id for _ in range(count)]


@contextmanager
def write_lock_held(wiring: Wiring, home: Path) -> Iterator[None]:
    """The store's write lock, held by another connection: the committer's next batch waits
    for it, and what is submitted meanwhile stays queued."""
    recorder: Any = wiring.shop.recorder
    if recorder.sql.has_append_function:  # PostgreSQL: the log's advisory lock
        with psycopg.connect(require_env(POSTGRES_URL), autocommit=True) as connection:
            lock = f"eventkeep append {recorder._events}"
            connection.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock,))
            yield
        return
    connection = sqlite3.connect(home / "events.db", timeout=30)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield
    finally:
        connection.rollback()
        connection.close()


def queued(wiring: Wiring) -> int:
    return cast(Any, wiring.shop.recorder)._committer._queue.qsize()


def test_commands_in_flight_share_batches_with_one_worker_thread(
    wiring: Wiring, app: FastAPI, bearer: Callable[[Role], dict[str, str]], tmp_path: Path
) -> None:
    ids = products(wiring, IN_FLIGHT)  # in the write path's memory: decided on the loop
    headers = bearer(Role.client)
    before = batches_over(2)

    async def send_all() -> list[httpx.Response]:
        # One worker thread: a command that held it while waiting for its commit would be
        # the only one in flight, and nothing would be queued behind the held lock.
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            with write_lock_held(wiring, tmp_path / "home"):
                sent = [
                    asyncio.ensure_future(
                        client.post(
                            f"/v1/products/{product}/stock",
                            json={"delta": -1, "reason": "sold"},
                            headers=headers,
                            timeout=60,
                        )
                    )
                    for product in ids
                ]
                # The first batch waits for the lock; every other command queues behind it.
                deadline = time.monotonic() + 15
                while queued(wiring) < IN_FLIGHT - 1 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
            return await asyncio.gather(*sent)

    answers = asyncio.run(send_all())

    assert [a.status_code for a in answers] == [200] * IN_FLIGHT, answers[0].text
    assert {a.json()["version"] for a in answers} == {2}
    assert batches_over(2) > before  # the queued commands went in one batch


def test_sigterm_answers_the_commands_in_flight_and_stops(tmp_path: Path) -> None:
    """A real `eventkeep serve` (embedded) told to stop while commands await their commit:
    it answers them, shuts down gracefully within its bound, and every command it
    acknowledged is stored."""
    home = tmp_path / "home"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTKEEP_")}
    env |= {"EVENTKEEP_HOME": str(home), "EVENTKEEP_RATE_LIMIT": "0"}
    made = subprocess.run(
        ["eventkeep", "keys", "create", "--role", "client", "--name", "t"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}
    base = f"http://127.0.0.1:{port}"
    with (tmp_path / "serve.log").open("w") as log:
        server = subprocess.Popen(
            ["eventkeep", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        body = {"sku": "KB-01", "name": "Keyboard", "category": "peripherals",
                "price": "49.90", "currency": "EUR", "stock": 1000}  # fmt: skip
        ids = [
            httpx.post(f"{base}/v1/products", json=body, headers=headers, timeout=30).json()["id"]
            for _ in range(IN_FLIGHT)
        ]  # one each: no command waits for another's stream

        async def adjust_and_stop() -> list[Any]:
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
                sent = [
                    asyncio.ensure_future(
                        client.post(
                            f"/v1/products/{product}/stock",
                            json={"delta": -1, "reason": "sold"},
                        )
                    )
                    for product in ids
                ]
                await asyncio.wait(sent, return_when=asyncio.FIRST_COMPLETED)
                server.send_signal(signal.SIGTERM)  # the others are in flight or not sent yet
                return await asyncio.gather(*sent, return_exceptions=True)

        answers = asyncio.run(adjust_and_stop())
        # uvicorn ends its graceful shutdown by raising the signal it caught again.
        assert server.wait(30) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
    assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()
    statuses = [a.status_code for a in answers if isinstance(a, httpx.Response)]
    assert set(statuses) <= {200, 503}, statuses  # stored, or refused while stopping
    with contextlib.closing(sqlite3.connect(home / "events.db")) as store:
        [(stored,)] = store.execute(
            "SELECT count(*) FROM stored_events WHERE event_type = 'ProductStockAdjusted'"
        ).fetchall()
    assert stored >= statuses.count(200) >= 1
