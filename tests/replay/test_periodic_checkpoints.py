"""Periodic signed checkpoints (issue 10 item 2, "periodically"): a long-running process signs
the chain's head by itself — the active relay in the distributed mode, `serve` in the embedded
one — once the interval has passed and the log has grown; each verifies against the key and
every checkpoint, and a truncated history stops them (nothing signed, the verification gauge
at 0)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from eventsourcing.persistence import StoredEvent

from eventkeep.api.bootstrap import wire
from eventkeep.bootstrap import Eventkeep, build, checkpoint_file
from eventkeep.commands.messages import CommandContext, CreateProduct
from eventkeep.eventstore.checkpoints import Checkpoint
from eventkeep.eventstore.group_commit import Append
from eventkeep.metrics import AUDIT_VERIFY_OK, CHAIN_CHECKPOINT_POSITION
from eventkeep.replay import audit
from eventkeep.replay.checkpointer import PeriodicCheckpoints
from tests.api.conftest import SHOP_TABLES, distributed_settings, embedded_settings
from tests.conftest_services import KAFKA_BOOTSTRAP, require_env
from tests.eventstore.stores import drop_postgres_tables
from tests.replay.test_tamper_evidence import EVENTS, Owner, system  # noqa: F401 (fixture)

CONTEXT = CommandContext(actor="test", correlation_id="checkpoints")
INTERVAL = 0.2


def add_products(built: Eventkeep, count: int) -> int:
    for _ in range(count):
        sku = f"C-{uuid.uuid4().hex[:8]}"
        product = CreateProduct(
            sku=sku, name=sku, description="", category="c", price="1.00", currency="EUR", stock=1
        )
        built.bus.handle(product, CONTEXT)
    return built.recorder.max_notification_id() or 0


def wait_for_checkpoint(built: Eventkeep, position: int, seconds: float = 60) -> Checkpoint:
    """The newest checkpoint once it covers `position` (a bound against a hang: the interval
    is 0.2 s)."""
    file = checkpoint_file(built.settings)
    deadline = time.monotonic() + seconds
    while True:
        written = file.read()
        if written and written[-1].position >= position:
            return written[-1]
        assert time.monotonic() < deadline, f"no checkpoint up to {position}: {written}"
        time.sleep(0.05)


def embedded(home: Path) -> Iterator[Eventkeep]:
    wiring = wire(embedded_settings(home).model_copy(update={"checkpoint_interval": INTERVAL}))
    assert wiring.built is not None
    yield wiring.built
    wiring.close()


def distributed(home: Path) -> Iterator[Eventkeep]:
    """`eventkeep relay`'s wiring: a relay, and the checkpoints while it is active."""
    drop_postgres_tables(*SHOP_TABLES)
    unique = uuid.uuid4().hex[:10]
    settings = distributed_settings(home).model_copy(
        update={
            "kafka_bootstrap": require_env(KAFKA_BOOTSTRAP),
            "topic_prefix": f"t{unique}",
            "topic_partitions": 1,
            "checkpoint_interval": INTERVAL,
        }
    )
    with build(settings, role="test") as writer, build(settings, role="relay") as relaying:
        relay = relaying.relay()
        assert relaying.start_checkpoints(active=relay.is_active.is_set) is not None
        thread = threading.Thread(target=relay.run, daemon=True)
        thread.start()
        yield writer
        relay.stop()
        thread.join(30)
    drop_postgres_tables(*SHOP_TABLES)


PROCESSES: dict[str, Callable[[Path], Iterator[Eventkeep]]] = {
    "embedded": embedded,
    "distributed": distributed,
}


@pytest.fixture(params=sorted(PROCESSES))
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Eventkeep]:
    yield from PROCESSES[request.param](tmp_path / "home")


def test_a_running_process_signs_checkpoints_that_verify(running: Eventkeep) -> None:
    head = add_products(running, 3)
    first = wait_for_checkpoint(running, head)
    assert first.position == head and first.valid
    head = add_products(running, 2)
    second = wait_for_checkpoint(running, head)
    assert second.position == head
    file = checkpoint_file(running.settings)
    assert [c.unkeyed_until for c in file.read()] == [0] * len(file.read())
    verdict = audit.verify_against(running.recorder, file)
    assert verdict.intact and verdict.last_position == head


def test_a_periodic_checkpoint_verifies_only_what_is_new_and_stops_at_a_truncation(
    system: Eventkeep,  # noqa: F811 (the fixture)
) -> None:
    file = checkpoint_file(system.settings)
    audit.checkpoint(system.recorder, file)  # the operator's first, at position EVENTS
    periodic = PeriodicCheckpoints(system.recorder, file, interval=3600, events=2)
    assert CHAIN_CHECKPOINT_POSITION._value.get() == EVENTS
    assert not periodic.due()  # the log has not grown
    for _ in range(2):
        event = StoredEvent(uuid.uuid4(), 1, "Tested", b'{"total": "10.00"}')
        system.recorder.append(Append(events=[event], metadata={"actor": "test"}))
    assert periodic.due()  # grown by `events`, long before the interval
    extended = periodic.take()
    assert extended is not None and extended.position == EVENTS + 2
    assert CHAIN_CHECKPOINT_POSITION._value.get() == EVENTS + 2
    owner = Owner(
        "embedded" if system.settings.postgres_url is None else "distributed", system.settings.home
    )
    try:
        owner.execute("DELETE FROM {TABLE} WHERE position > %s", (7,))
    finally:
        owner.close()
    assert periodic.take() is None  # the tail under the checkpoint is gone: nothing signed
    assert AUDIT_VERIFY_OK._value.get() == 0
    assert len(file.read()) == 2
