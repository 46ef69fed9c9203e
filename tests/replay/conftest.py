"""The shop wired in both modes (see tests/api/conftest.py), and the legacy history."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.application import Application

from api.bootstrap import Wiring
from commands.handlers import CommandBus
from replay.importer import check_file, import_file
from tests.api.conftest import (  # noqa: F401  (fixtures)
    anonymous,
    app,
    bearer,
    client,
    keys,
    projected,
    wiring,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LEGACY = FIXTURES / "legacy-v1.jsonl"
LEGACY_EXPECTED = FIXTURES / "legacy-v1.expected.json"


def stored_version(shop: Application) -> Any:
    def version(stream_id: str) -> int:
        last = shop.recorder.select_events(UUID(stream_id), desc=True, limit=1)
        return last[0].originator_version if last else 0

    return version


def import_history(wired: Wiring, path: Path, *, check_first: bool = False) -> int:
    """What `eventkeep audit import` does, with the wiring's own claim secret."""
    bus: CommandBus = wired.handle.__self__  # type: ignore[attr-defined]
    shop = wired.shop
    if check_first:
        check_file(path, stored_version(shop), lambda _: None)
    return import_file(
        path, shop.recorder.insert_events, stored_version(shop), bus.email_claim, lambda _: None
    )
