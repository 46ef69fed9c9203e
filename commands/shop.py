"""The event-sourced application of the shop; its persistence is chosen by the environment
it is given (the composition root, `eventkeep/bootstrap.py`)."""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.application import Application

from eventkeep.domain.order import Order
from eventkeep.domain.product import Product

# Events between snapshots: loading a hot product replays at most this many events. Users
# are not snapshotted: a snapshot would keep their personal data in plaintext (eventstore.pii).
SNAPSHOT_INTERVAL = 100


class Shop(Application[UUID]):
    name = "Shop"
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {
        Product: SNAPSHOT_INTERVAL,
        Order: SNAPSHOT_INTERVAL,
    }
