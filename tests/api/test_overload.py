"""Overload: a process answers at most its limit of requests at once and refuses the next at
once (503 OVERLOADED, Retry-After) instead of queueing it; the group committer's queue is
bounded, a writer that finds it full is refused (503, Retry-After) after a bounded wait, and
nothing that was acknowledged is lost. Both modes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import anyio.to_thread
from eventsourcing.persistence import StoredEvent
from fastapi.testclient import TestClient

from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from eventkeep.eventstore.group_commit import (
    Append,
    BatchPlan,
    CommitQueueFull,
    GroupCommitter,
    StoreState,
)
from tests.api.shopping import USER, register


def test_requests_past_the_in_flight_limit_are_refused_at_once(wiring: Wiring, bearer: Any) -> None:
    app = create_app(replace(wiring, max_in_flight=2, min_position_wait=3.0))
    with TestClient(app, headers=bearer(Role.client), raise_server_exceptions=False) as client:
        user = register(client)
        # Two queries held in flight: each waits for a position the log never reaches.
        waiting = {"X-Min-Position": str(10**12)}
        with ThreadPoolExecutor(2) as pool:
            held = [
                pool.submit(client.get, f"/v1/users/{user['id']}", headers=waiting)
                for _ in range(2)
            ]
            time.sleep(1.0)
            started = time.monotonic()
            refused = client.get(f"/v1/users/{user['id']}")
            elapsed = time.monotonic() - started
            health = client.get("/healthz")  # probes are always admitted
            assert [f.result().status_code for f in held] == [503, 503]  # PROJECTION_BEHIND
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "OVERLOADED"
        assert refused.headers["Retry-After"] == "1"
        assert elapsed < 1.5  # refused, not queued behind the two (their 3 s wait)
        assert health.status_code == 200
        # Once they are answered, requests are admitted again.
        assert client.get(f"/v1/users/{user['id']}").status_code in (200, 404)


def test_a_commit_refused_by_a_full_queue_answers_503_with_retry_after(
    wiring: Wiring, bearer: Any
) -> None:
    def busy(command: Any, context: Any) -> Any:
        raise CommitQueueFull("the event store is busy")

    app = create_app(replace(wiring, handle=busy))
    with TestClient(app, headers=bearer(Role.client), raise_server_exceptions=False) as client:
        answer = client.post("/v1/users", json=USER)
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "STORE_UNAVAILABLE"
    assert answer.headers["Retry-After"] == "1"


class HeldStorage:
    """The committer's storage half, held inside its transaction until released."""

    has_one_trip = False  # every batch through `locked_transaction`

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.written: list[int] = []
        self.position = 0

    @contextmanager
    def locked_transaction(self) -> Iterator[HeldStorage]:
        self.entered.set()
        self.release.wait(10)
        yield self

    def read_state(self, appends: Sequence[Append]) -> StoreState:
        return StoreState(self.position, b"\0" * 32, set(), {}, set(), {})

    def write(self, plan: BatchPlan) -> None:
        self.written += [row.position for row in plan.rows]
        self.position = max([self.position, *self.written])


def _append(number: int) -> Append:
    event = StoredEvent(originator_id=f"s{number}", originator_version=1, topic="T", state=b"{}")
    return Append(events=[event], metadata={})


def test_the_commit_queue_is_bounded_and_nothing_acknowledged_is_lost() -> None:
    storage = HeldStorage()
    committer = GroupCommitter(
        storage, is_integrity_error=lambda error: False, max_queued=3, queue_wait=0.2
    )
    answers: dict[int, Any] = {}

    def write(number: int) -> None:
        try:
            answers[number] = committer.append(_append(number))
        except CommitQueueFull as refused:
            answers[number] = refused

    first = threading.Thread(target=write, args=(0,))
    first.start()
    assert storage.entered.wait(5)  # the committer holds the first batch
    queued = [threading.Thread(target=write, args=(n,)) for n in (1, 2, 3)]
    for thread in queued:
        thread.start()
    time.sleep(0.1)
    started = time.monotonic()
    write(4)  # the queue is full: refused after the bounded wait
    waited = time.monotonic() - started
    assert isinstance(answers[4], CommitQueueFull)
    assert 0.15 < waited < 3.0  # waited its 0.2 s, then refused: bounded
    storage.release.set()
    for thread in (first, *queued):
        thread.join(5)
    committer.close()
    acknowledged = [answers[n] for n in range(4)]
    assert all(isinstance(positions, list) for positions in acknowledged), acknowledged
    # Every acknowledged append was written, each at the position it was told.
    assert sorted(p for positions in acknowledged for p in positions) == storage.written


def test_a_limit_of_0_admits_everything(wiring: Wiring, bearer: Any) -> None:
    app = create_app(replace(wiring, max_in_flight=0))
    with TestClient(app, headers=bearer(Role.client)) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.get("/healthz"), range(16)))
    assert {answer.status_code for answer in answers} == {200}


def test_liveness_answers_while_every_worker_thread_is_busy(wiring: Wiring) -> None:
    """Sync routes wait for a worker thread; under overload all may be busy. /healthz runs on
    the event loop: a fresh probe once waited 2 s for a thread, and a probe's timeout would
    have had a live process restarted."""
    release = threading.Event()

    def take_every_thread() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1

    with TestClient(create_app(wiring)) as client:
        portal = client.portal
        assert portal is not None
        portal.call(take_every_thread)
        busy = portal.start_task_soon(anyio.to_thread.run_sync, release.wait)
        with ThreadPoolExecutor(1) as pool:
            live = pool.submit(client.get, "/healthz")
            try:
                status = live.result(timeout=10).status_code
            finally:
                release.set()  # before the pool waits for the probe
        busy.result(timeout=10)
    assert status == 200
