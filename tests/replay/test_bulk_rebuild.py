"""The bulk rebuild (folded in memory, loaded with COPY / one prepared INSERT, indexes after)
gives exactly the tables of the event-by-event rebuild, in both modes, over generated shop
histories imported into the real store on top of the legacy (schema v1, upcast) history; and
with bounds so small that rows are written, dropped from memory and read back many times;
whether it loads in this process or (PostgreSQL) in worker processes by stream type. The
log read straight into envelopes is the log as logged."""

from __future__ import annotations

import contextlib
import gc
import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventkeep.api.bootstrap import Wiring
from eventkeep.domain.catalog import stream_type_of
from eventkeep.domain.errors import DomainError
from eventkeep.domain.ordering import cancel_order, place_order, products_of
from eventkeep.domain.product import Product
from eventkeep.domain.upcasters import upcast
from eventkeep.domain.user import User
from eventkeep.eventstore.envelope import to_envelope
from eventkeep.eventstore.mapper import ENVELOPE_ATTRIBUTES
from eventkeep.eventstore.recorder import StoreAddress
from eventkeep.heap import freeze_startup_heap
from eventkeep.projections import bulk, log_feed
from eventkeep.projections.bulk import BulkLoad, upcast_pages
from eventkeep.projections.bulk_workers import can_split, groups, in_workers
from eventkeep.projections.log_feed import LogFeed
from eventkeep.projections.readmodel import Change
from eventkeep.projections.readmodels import ReadModels
from eventkeep.replay.rebuild import rebuild
from tests.api.test_served_heap import unfrozen_afterwards, walked_by_the_collector  # noqa: F401
from tests.eventstore.test_personal_data import CountingKeys
from tests.replay.conftest import LEGACY, import_history

Op = tuple[Any, ...]
N = st.integers(0, 50)  # an index into what exists, taken modulo its size
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("user")),
        st.tuples(st.just("email"), N),
        st.tuples(st.just("product"), st.integers(1, 10_000), st.integers(0, 20)),
        st.tuples(st.just("rename"), N),
        st.tuples(st.just("price"), N, st.integers(1, 10_000)),
        st.tuples(st.just("stock"), N, st.integers(-5, 20)),
        st.tuples(st.just("discontinue"), N),
        st.tuples(st.just("order"), N, st.lists(st.tuples(N, st.integers(1, 3)), max_size=3)),
        st.tuples(st.sampled_from(["pay", "ship", "deliver", "cancel"]), N),
    ),
    min_size=1,
    max_size=60,
)


class History:
    """Runs the operations on the domain's aggregates and keeps their events in the export
    format, on three days (daily sales split by day)."""

    def __init__(self) -> None:
        self.users: list[User] = []
        self.products: list[Product] = []
        self.orders: list[Any] = []
        self.lines: list[dict[str, Any]] = []
        self._clock = itertools.count()

    def run(self, op: Op) -> None:
        kind, *args = op
        with contextlib.suppress(DomainError):  # refused, as a command would be: no event
            self._run(kind, args)

    def _run(self, kind: str, args: list[Any]) -> None:
        pick = lambda items, n: items[n % len(items)] if items else None  # noqa: E731
        if kind == "user":
            user = User.register(f"u{uuid.uuid4().hex[:12]}@example.org", "Ada", "Byron")
            self.users.append(user)
            self._record(user)
        elif kind == "email" and (user := pick(self.users, args[0])):
            user.change_email(f"e{uuid.uuid4().hex[:12]}@example.org")
            self._record(user)
        elif kind == "product":
            price = Decimal(args[0]) / 100
            product = Product.create("SKU", "lamp", "a lamp", "home", str(price), "EUR", args[1])
            self.products.append(product)
            self._record(product)
        elif kind == "rename" and (product := pick(self.products, args[0])):
            product.rename("lamp two", "a better lamp")
            self._record(product)
        elif kind == "price" and (product := pick(self.products, args[0])):
            product.change_price(str(Decimal(args[1]) / 100), "EUR")
            self._record(product)
        elif kind == "stock" and (product := pick(self.products, args[0])):
            product.adjust_stock(args[1], "count")
            self._record(product)
        elif kind == "discontinue" and (product := pick(self.products, args[0])):
            product.discontinue()
            self._record(product)
        elif kind == "order" and (user := pick(self.users, args[0])) and self.products:
            wanted = {pick(self.products, n).id: (pick(self.products, n), q) for n, q in args[1]}
            order, changed = place_order(user, list(wanted.values()))
            self.orders.append(order)
            self._record(order, *changed)
        elif kind in ("pay", "ship", "deliver", "cancel") and (order := pick(self.orders, args[0])):
            if kind == "pay":
                order.pay(str(order.total), "ref")
            elif kind == "ship":
                order.ship("track")
            elif kind == "deliver":
                order.deliver()
            else:
                ids = set(products_of(order))
                cancel_order(order, [p for p in self.products if str(p.id) in ids], "no")
            products = [p for p in self.products if p.pending_events]
            self._record(order, *products)

    def _record(self, *aggregates: Any) -> None:
        for aggregate in aggregates:
            for event in aggregate.collect_events():
                tick = next(self._clock)
                data = {k: v for k, v in vars(event).items() if k not in ENVELOPE_ATTRIBUTES}
                self.lines.append(
                    {
                        "stream_id": str(event.originator_id),
                        "stream_type": stream_type_of(type(event)),
                        "stream_version": event.originator_version,
                        "event_type": type(event).__name__,
                        "schema_version": getattr(type(event), "class_version", 1),
                        "recorded_at": f"2026-11-{1 + tick % 3:02d}T12:00:{tick % 60:02d}Z",
                        "data": orjson.loads(orjson.dumps(data, default=str)),
                        "metadata": {"actor": "test", "correlation_id": None,
                                     "causation_id": None},
                    }
                )  # fmt: skip


@pytest.fixture
def store(wiring: Wiring) -> Iterator[Wiring]:
    """The store of the wiring's mode with the legacy history in it; two sets of read
    models beside the live ones, dropped after."""
    assert import_history(wiring, LEGACY) > 0
    yield wiring
    for prefix in ("bulk_", "rowwise_"):
        ReadModels(wiring.queries.models.db, prefix).drop()


def built_both_ways(wiring: Wiring, **bounds: int) -> tuple[Any, Any]:
    """The bulk rebuild (`bounds`: its row bound, flush size and worker processes) and the
    event-by-event one."""
    db = wiring.queries.models.db
    bulk, rowwise = ReadModels(db, "bulk_"), ReadModels(db, "rowwise_")
    reached = rebuild(wiring.shop.recorder, bulk, batch_size=7, **bounds)
    assert reached == rebuild(wiring.shop.recorder, rowwise, batch_size=7, bulk=False)
    assert reached == wiring.shop.recorder.max_notification_id()
    return (bulk.dump(), quarantined(bulk)), (rowwise.dump(), quarantined(rowwise))


def quarantined(models: ReadModels) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "quarantined_at"} for row in models.quarantine()]


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=OPS,
    rows_bound=st.integers(2, 40),
    flush_events=st.integers(1, 200),
    workers=st.integers(1, 2),
)
def test_the_bulk_rebuild_gives_the_tables_of_the_event_by_event_one(
    store: Wiring, tmp_path_factory: pytest.TempPathFactory, ops: list[Op], rows_bound: int,
    flush_events: int, workers: int,
) -> None:  # fmt: skip
    history = History()
    for op in ops:
        history.run(op)
    if history.lines:
        path: Path = tmp_path_factory.mktemp("history") / "history.jsonl"
        path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in history.lines))
        assert import_history(store, path) == len(history.lines)
    bulk, rowwise = built_both_ways(
        store, rows_bound=rows_bound, flush_events=flush_events, workers=workers
    )
    assert bulk == rowwise
    assert bulk[0]["products"] and bulk[0]["orders"] and bulk[0]["daily_sales"]


@pytest.mark.parametrize("wiring", ["distributed"], indirect=True)  # SQLite: one writer
def test_the_bulk_rebuild_in_worker_processes_gives_the_event_by_event_tables(
    store: Wiring,
) -> None:
    """Two workers (the orders' read models in one, the users' and products' in the other),
    each reading its stream types only, in pages of 7 events, flushing every 50 events, give
    the tables and the quarantine of the event-by-event rebuild."""
    assert store.shop.recorder.address is not None  # the factory says how to open it again
    models = ReadModels(store.queries.models.db, "bulk_")
    assert groups(models, 2) == [("orders", "daily_sales"), ("users", "products")]
    assert can_split(store.shop.recorder, models, 2)
    bulk, rowwise = built_both_ways(store, workers=2, flush_events=50)
    assert bulk == rowwise


def test_the_bulk_paths_open_only_the_personal_fields_their_read_models_read(
    store: Wiring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled order's reason (sealed under its user's key) and a stock adjustment's
    (under the product's) are shown by no read model: rebuilding the orders', sales' and
    products' read models asks the store for no data key at all, and the rows are those of
    the event-by-event rebuild."""
    history = History()
    for op in [("user",), ("product", 990, 5), ("stock", 0, 3), ("order", 0, [(0, 1)])]:
        history.run(op)
    history.run(("cancel", 0))
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in history.lines))
    assert import_history(store, path) == len(history.lines)
    assert {"OrderCancelled", "ProductStockAdjusted"} <= {e["event_type"] for e in history.lines}
    recorder = store.shop.recorder
    head = recorder.max_notification_id() or 0
    deadline = time.monotonic() + 60
    while store.feed is not None and store.queries.models.position() < head:  # its own reads
        assert time.monotonic() < deadline, "the embedded feed never reached the head"
        time.sleep(0.05)
    personal = recorder.personal_data
    assert personal is not None
    table = CountingKeys(personal._keys)
    monkeypatch.setattr(personal, "_keys", table)
    names = ["orders", "daily_sales", "products"]
    db = store.queries.models.db
    bulk, rowwise = ReadModels(db, "bulk_", names), ReadModels(db, "rowwise_", names)
    rebuild(recorder, bulk, batch_size=7, workers=1)
    assert table.asked == []
    rebuild(recorder, rowwise, batch_size=7, bulk=False)
    assert bulk.dump() == rowwise.dump()


def test_the_log_read_straight_into_envelopes_is_the_log_as_logged(
    store: Wiring, tmp_path: Path
) -> None:
    """`select_envelopes` (tuples, times and ids formatted by the database) gives what
    `to_envelope` gives from `LoggedEvent`s: the same positions, times to the microsecond,
    personal fields opened, metadata; after the upcasters, the same envelopes; pages stop
    at `until`."""
    recorder = store.shop.recorder
    register = {
        "stream_id": str(uuid.uuid4()),
        "stream_type": "User",
        "stream_version": 1,
        "event_type": "UserRegistered",
        "schema_version": 2,
        "recorded_at": "2026-11-30T23:59:59+05:30",  # not UTC, no microseconds
        "data": {"email": "ada@example.org", "first_name": "Ada", "last_name": "B"},
        "metadata": {"actor": "t", "correlation_id": "c", "causation_id": None},
    }
    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps(register) + b"\n")
    assert import_history(store, path) == 1
    head = recorder.max_notification_id()
    logged = [to_envelope(e) for e in recorder.select_notifications(1, head + 1)]
    read = [e for after in range(0, head, 100) for e in recorder.select_envelopes(after, 100)]
    assert read == logged
    assert read[-1]["recorded_at"] == "2026-11-30T18:29:59.000000Z"
    assert read[-1]["data"]["email"] == "ada@example.org"  # opened: stored sealed
    assert [upcast(e) for e in read] == [upcast(e) for e in logged]
    assert [e["position"] for e in recorder.select_envelopes(10, 100, until=15)] == [
        11, 12, 13, 14, 15,
    ]  # fmt: skip


@pytest.mark.timeout(120)
@pytest.mark.parametrize("wiring", ["distributed"], indirect=True)
def test_a_worker_that_fails_ends_the_rebuild_with_its_error(store: Wiring) -> None:
    """A worker that cannot read (here: a store with no log table) tells its failure; the
    rebuild raises it, the other worker stopped, instead of waiting."""
    recorder = store.shop.recorder
    address = recorder.address
    assert address is not None
    models = ReadModels(store.queries.models.db, "bulk_")
    try:
        recorder.address = StoreAddress("nosuch", address.env)
        with pytest.raises(RuntimeError, match="bulk worker for"):
            rebuild(recorder, models, workers=2)
    finally:
        recorder.address = address


def test_the_bulk_rebuild_builds_the_indexes_after_the_load(store: Wiring) -> None:
    bulk, rowwise = built_both_ways(store)
    assert bulk == rowwise
    db = store.queries.models.db
    models = ReadModels(db, "bulk_")
    assert all("indexes_pending" not in p for p in models.progress_by_name().values())
    with db.reading() as cursor:
        if db.kind == "postgres":
            cursor.execute(
                "SELECT indexname AS name FROM pg_indexes WHERE tablename = 'bulk_orders'"
            )
        else:
            cursor.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'bulk_orders'")
        names = {row["name"] for row in cursor.fetchall()}
    assert {"bulk_orders_by_user", "bulk_orders_by_user_status"} <= names
    if db.kind == "sqlite":  # the FTS index its triggers keep, filled after the load
        with db.reading() as cursor:
            cursor.execute("SELECT count(*) AS n FROM bulk_products_fts")
            fts = cursor.fetchone()["n"]
        assert fts == len(bulk[0]["products"]) > 0


def test_a_feed_far_behind_catches_up_in_bulk_before_it_follows(
    store: Wiring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read model new to a feed (its tables empty) catches up in big batches read ahead,
    before the feed's first live batch, to the tables a rebuild gives."""
    monkeypatch.setattr(log_feed, "CATCH_UP_BATCH", 50)  # the legacy history is ~850 events
    db = store.queries.models.db
    late = ReadModels(db, "late_")
    late.migrate()
    try:
        feed = LogFeed(store.shop.recorder, late, store.queries.cache)
        batches: list[int] = []
        monkeypatch.setattr(
            late, "apply", lambda events, progress: batches.append(len(events)) or
            ReadModels.apply(late, events, progress),
        )  # fmt: skip
        feed.catch_up()
        head = store.shop.recorder.max_notification_id()
        assert feed.position == late.position() == head
        assert max(batches) == 50 and sum(batches) == head  # in the catch-up's batches
        reference = ReadModels(db, "rowwise_")
        rebuild(store.shop.recorder, reference, bulk=False)
        assert late.dump() == reference.dump()
    finally:
        late.drop()


@pytest.mark.parametrize("wiring", ["distributed"], indirect=True)  # SQLite: one writer
def test_a_catch_up_in_worker_processes_gives_the_tables_and_the_changes_to_forget(
    store: Wiring,
) -> None:
    """A projector far behind (here: read models new to the log) catches up in two worker
    processes by stream type: the tables a rebuild gives, every read model's progress at the
    head, and every changed row handed back for the cache to forget."""
    db = store.queries.models.db
    late = ReadModels(db, "late_")
    late.migrate()
    try:
        heard: list[tuple[list[Change], int]] = []
        head = in_workers(
            "catch_up",
            store.shop.recorder,
            late,
            lambda changes, position: heard.append((changes, position)),
            after=0,
            batch_size=50,
        )
        assert head == store.shop.recorder.max_notification_id()
        assert all(p["log"] == head for p in late.progress_by_name().values())
        assert heard[-1][1] == head
        assert [p for _, p in heard] == sorted(p for _, p in heard)  # never backwards
        reference = ReadModels(db, "rowwise_")
        rebuild(store.shop.recorder, reference, bulk=False)
        tables = late.dump()
        assert tables == reference.dump()
        forgotten = {(c.kind, c.id) for changes, _ in heard for c in changes}
        assert {("product", row["id"]) for row in tables["products"]} <= forgotten
        assert {("order", row["id"]) for row in tables["orders"]} <= forgotten
    finally:
        late.drop()


@pytest.mark.timeout(120)
def test_a_failing_write_ends_the_load_with_its_error_never_a_hang(store: Wiring) -> None:
    """The writer thread's failure (here: a table gone under it) is raised in the folding
    thread at its next step, however many loads wait behind it; the cycle collector, paused
    for the load, runs again after it, with nothing left frozen."""
    models = ReadModels(store.queries.models.db, "bulk_")
    models.drop()
    models.migrate(defer_indexes=True)
    with models.db.transaction() as cursor:
        cursor.execute("DROP TABLE bulk_orders")
    load = BulkLoad(models, rows_bound=2, flush_events=1)
    with pytest.raises(Exception, match="bulk_orders"):
        load.run(upcast_pages(store.shop.recorder, 0, 7), lambda position: None)
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


@pytest.mark.timeout(120)
def test_a_read_back_takes_rows_from_loads_not_yet_written_without_waiting(
    wiring: Wiring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row dropped from memory while the load holding it is not committed yet is read back
    from that load: the fold goes on while the writer is held (it waited for every write
    to commit first, idle a third of a rebuild), up to the writer's queue; once the writer
    goes on, the tables are the event-by-event rebuild's."""
    history = History()
    for op in [("user",), ("email", 0), ("email", 0)]:
        history.run(op)
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in history.lines))
    assert import_history(wiring, path) == 3
    gate = threading.Event()
    write = bulk._Writer._write

    def held_write(self: Any, load: Any) -> None:
        assert gate.wait(60), "the writer was never let go"
        write(self, load)

    monkeypatch.setattr(bulk._Writer, "_write", held_write)
    db = wiring.queries.models.db
    models, rowwise = ReadModels(db, "bulk_", ["users"]), ReadModels(db, "rowwise_", ["users"])
    models.drop()
    models.migrate(defer_indexes=True)
    taken: list[Any] = []

    def pages() -> Iterator[Any]:
        for page in upcast_pages(wiring.shop.recorder, 0, 1):  # one event a page
            taken.append(page)
            yield page

    # Every page flushed, every row dropped after: versions 2 and 3 are read back from the
    # first and second loads, held unwritten; the third load waits for room in the queue.
    load = BulkLoad(models, rows_bound=1, flush_events=1)
    loading = threading.Thread(target=load.run, args=(pages(), lambda position: None))
    loading.start()
    try:
        deadline = time.monotonic() + 30
        while len(taken) < 3:
            folded = [page[0]["position"] for page in taken[:-1]]
            assert time.monotonic() < deadline, f"the fold waited for the writer after {folded}"
            time.sleep(0.05)
    finally:
        gate.set()
        loading.join(60)
    assert not loading.is_alive()
    try:
        rebuild(wiring.shop.recorder, rowwise, bulk=False)
        assert models.dump() == rowwise.dump()
        assert len(models.dump()["users"]) == 1
    finally:
        models.drop()
        rowwise.drop()


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("unfrozen_afterwards")
def test_a_load_leaves_a_workers_frozen_startup_heap_frozen(store: Wiring) -> None:
    """A projector freezes its startup heap (eventkeep/heap.py); a catch-up in it unfreezes
    what the load froze, then freezes the heap again, so the relay's and projectors' full
    collections never walk it again after a catch-up either (P2's tail)."""
    startup = [object()]  # what the worker held before the load
    freeze_startup_heap()
    models = ReadModels(store.queries.models.db, "bulk_")
    models.drop()
    models.migrate(defer_indexes=True)
    BulkLoad(models).run(upcast_pages(store.shop.recorder, 0, 7), lambda position: None)
    assert gc.isenabled()
    assert walked_by_the_collector(startup) == []
    made_since = [object()]
    assert walked_by_the_collector(made_since) == [made_since]
