"""The event-sourced application of the shop; its persistence is chosen by the environment
it is given (`api/bootstrap.py`)."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.application import Application


class Shop(Application[UUID]):
    name = "Shop"
