"""The shop wired in both modes (see tests/api/conftest.py), and the legacy history."""

from __future__ import annotations

from pathlib import Path

from eventkeep.api.bootstrap import Wiring
from eventkeep.commands.handlers import CommandBus
from eventkeep.replay.importer import Claim, check_file, import_file
from tests.api.conftest import (  # noqa: F401  (fixtures)
    anonymous,
    app,
    bearer,
    client,
    feed_settings,
    keys,
    projected,
    wiring,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LEGACY = FIXTURES / "legacy-v1.jsonl"
LEGACY_EXPECTED = FIXTURES / "legacy-v1.expected.json"


def email_claim(wired: Wiring) -> Claim:
    """The claim of an email, with the wiring's own claim secret."""
    # The bus the wiring was built with (its handle may be wrapped, by the circuit breaker).
    bus: CommandBus = (
        wired.built.bus if wired.built is not None else wired.handle.__self__  # type: ignore[attr-defined]
    )
    return bus.email_claim


def import_history(wired: Wiring, path: Path, *, check_first: bool = False) -> int:
    """What `eventkeep audit import` does, with the wiring's own claim secret."""
    recorder, claim = wired.shop.recorder, email_claim(wired)
    checked = check_file(path, recorder, claim, lambda _: None) if check_first else None
    return import_file(path, recorder, claim, lambda _: None, checked)
