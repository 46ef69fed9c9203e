"""Import refuses a bad file whole, naming the line and the reason; export gives back what was
imported, as recorded or upcast."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventkeep.api.bootstrap import Wiring
from eventkeep.commands.messages import CommandContext, RegisterUser
from eventkeep.domain.upcasters import CURRENT_SCHEMA_VERSIONS
from eventkeep.replay.audit import export
from eventkeep.replay.importer import ImportRefused
from tests.replay.conftest import LEGACY, import_history

Edit = Callable[[list[dict[str, Any]]], None]


def legacy_lines() -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in LEGACY.read_bytes().splitlines() if line.strip()]


def change(index: int, **fields: Any) -> Edit:
    def edit(lines: list[dict[str, Any]]) -> None:
        lines[index] = lines[index] | fields

    return edit


def change_data(index: int, **fields: Any) -> Edit:
    def edit(lines: list[dict[str, Any]]) -> None:
        lines[index]["data"] = lines[index]["data"] | fields

    return edit


def first(event_type: str) -> int:
    return next(i for i, line in enumerate(legacy_lines()) if line["event_type"] == event_type)


BAD_FILES: dict[str, tuple[Edit, str]] = {
    "unknown event type": (change(10, event_type="UserTeleported"), "unknown event type"),
    "version gap": (change(first("OrderPaid"), stream_version=7), "breaks its sequence"),
    "bad money": (
        change(
            first("ProductPriceChanged"),
            schema_version=2,
            data={"price": "12.5", "currency": "EUR"},
        ),
        "bad money",
    ),
    "wrong data shape": (change_data(first("ProductCreated"), price_cents="ten"), "does not fit"),
    "future schema": (change(3, schema_version=9), "no schema version 9"),
    "no time zone": (change(5, recorded_at="2023-01-02T09:53:55"), "time zone"),
    "no metadata": (change(7, metadata={"actor": "x"}), "metadata needs"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_line_refuses_the_file_and_writes_nothing(
    case: str, wiring: Wiring, tmp_path: Path
) -> None:
    edit, reason = BAD_FILES[case]
    lines = legacy_lines()
    edit(lines)
    bad = next(i for i, (a, b) in enumerate(zip(lines, legacy_lines(), strict=True)) if a != b)
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    with pytest.raises(ImportRefused) as refused:
        import_history(wiring, path, check_first=True)
    assert refused.value.line == bad + 1
    assert reason in refused.value.reason
    assert not wiring.shop.recorder.max_notification_id()


def test_not_json_is_refused_with_its_line(wiring: Wiring, tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_bytes(LEGACY.read_bytes() + b"{not json\n")
    with pytest.raises(ImportRefused, match="not JSON") as refused:
        import_history(wiring, path, check_first=True)
    assert refused.value.line == len(legacy_lines()) + 1
    assert not wiring.shop.recorder.max_notification_id()


def test_export_gives_back_the_imported_history(wiring: Wiring) -> None:
    import_history(wiring, LEGACY)
    recorded = io.BytesIO()
    assert export(wiring.shop.recorder, recorded) == len(legacy_lines())
    exported = [orjson.loads(line) for line in recorded.getvalue().splitlines()]
    for got, want in zip(exported, legacy_lines(), strict=True):
        assert {k: v for k, v in got.items() if k not in ("hash", "prev_hash")} == want
        assert len(got["hash"]) == 64

    upcast = io.BytesIO()
    export(wiring.shop.recorder, upcast, upcasting=True)
    for line in upcast.getvalue().splitlines():
        event = orjson.loads(line)
        assert event["schema_version"] == CURRENT_SCHEMA_VERSIONS.get(event["event_type"], 1)
        assert "full_name" not in event["data"] and "price_cents" not in event["data"]


def test_an_email_already_in_the_store_is_refused(wiring: Wiring) -> None:
    first = legacy_lines()[0]
    wiring.handle(
        RegisterUser(first["data"]["email"].upper(), "Someone", "Else"),
        CommandContext(actor="test", correlation_id="c"),
    )
    with pytest.raises(ImportRefused, match="in the store") as refused:
        import_history(wiring, LEGACY, check_first=True)
    assert refused.value.line == 1
    assert wiring.shop.recorder.max_notification_id() == 1
