"""A served app keeps what it built at startup out of the garbage collector's full passes.

A full collection stops the event loop while it walks every object the process holds; with
the app, its models and the libraries that was about 140k objects and 100-500 ms on the
benchmark machine, a stall of every connection of the worker at once (R1's p99 tail, seen
with `gc.callbacks` beside an event-loop lag probe). `eventkeep serve` builds each worker's app
with `serving=True` (`api.app.serve_app`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring


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
