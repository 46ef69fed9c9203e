"""A served app, the relay and the projectors keep what they built at startup out of the
garbage collector's full passes (eventkeep/heap.py).

A full collection stops the event loop while it walks every object the process holds; with
the app, its models and the libraries that was about 140k objects and 100-500 ms on the
benchmark machine, a stall of every connection of the worker at once (R1's p99 tail, seen
with `gc.callbacks` beside an event-loop lag probe). `eventkeep serve` builds each worker's app
with `serving=True` (`api.app.serve_app`)."""

from __future__ import annotations

import gc
import signal
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from eventkeep.api import cli
from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring
from eventkeep.settings import Settings


@pytest.fixture
def unfrozen_afterwards() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session collects as before


def walked_by_the_collector(*objects: object) -> list[object]:
    """Those of `objects` a full collection would walk (frozen ones are in no generation)."""
    tracked = {id(o) for o in gc.get_objects()}
    return [o for o in objects if id(o) in tracked]


@pytest.mark.usefixtures("unfrozen_afterwards")
def test_a_served_app_leaves_its_startup_heap_out_of_full_collections(wiring: Wiring) -> None:
    app = create_app(wiring, serving=True)
    assert walked_by_the_collector(app, app.router, wiring.queries) != []  # before it starts
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert walked_by_the_collector(app, app.router, wiring.queries) == []
        made_since = [object()]  # what requests make is collected as usual
        assert walked_by_the_collector(made_since) == [made_since]


class _Worker:
    """Notes which of `held` a full collection would walk while it runs."""

    def __init__(self, held: list[object]) -> None:
        self.held = held
        self.walked: list[object] | None = None

    def run(self) -> None:
        self.walked = walked_by_the_collector(self.held, [object()])

    def stop(self) -> None:
        pass


@pytest.mark.usefixtures("unfrozen_afterwards")
def test_the_relay_and_projectors_leave_their_startup_heap_out_of_full_collections() -> None:
    """`eventkeep relay|project` run their worker through `_run_until_signalled`: a full
    collection in the relay held back every event in flight while it walked the startup heap
    (~7 a minute at 1,000 commands/s, 60 ms of CPU each)."""
    startup = [object()]
    worker = _Worker(startup)
    handlers = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT)}
    try:
        cli._run_until_signalled(worker, Settings(postgres_url=None, claim_secret=None))
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    assert worker.walked is not None
    assert startup not in worker.walked  # built before: frozen
    assert len(worker.walked) == 1  # made while running: collected as usual
