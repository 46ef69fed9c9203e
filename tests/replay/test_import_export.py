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
from eventkeep.replay import importer
from eventkeep.replay.audit import export
from eventkeep.replay.importer import ImportRefused, check_file, import_file
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


def checked_then_written(wiring: Wiring, path: Path, between: Callable[[], None]) -> int:
    """What `eventkeep audit import` does, with `between` run after the check."""
    bus = wiring.built.bus if wiring.built is not None else wiring.handle.__self__  # type: ignore[attr-defined]
    recorder = wiring.shop.recorder
    checked = check_file(path, recorder, bus.email_claim, lambda _: None)
    assert checked.count == len(legacy_lines())
    between()
    return import_file(path, recorder, bus.email_claim, lambda _: None, checked)


def same_size_change(path: Path, line: int) -> None:
    """Line `line` (from 1) with another first letter of its actor: the file's size
    unchanged."""
    lines = path.read_bytes().split(b"\n")
    at = lines[line - 1].index(b'"actor":"') + len(b'"actor":"')
    lines[line - 1] = lines[line - 1][:at] + b"X" + lines[line - 1][at + 1 :]
    size = path.stat().st_size
    path.write_bytes(b"\n".join(lines))
    assert path.stat().st_size == size


@pytest.mark.parametrize("case", ["same size, first page", "a line added", "a later page"])
def test_a_file_changed_after_its_check_is_refused_before_the_change_is_written(
    case: str, wiring: Wiring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write compares the file's size, then each page's digest, with the check's: a
    change is refused before any line of its page is written (lines before it, as checked,
    may be)."""
    monkeypatch.setattr(importer, "READ_AHEAD", 100)
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in legacy_lines()))
    edits: dict[str, Callable[[], None]] = {
        "same size, first page": lambda: same_size_change(path, 50),
        "a line added": lambda: path.write_bytes(path.read_bytes() + LEGACY.read_bytes()[:200]),
        "a later page": lambda: same_size_change(path, 450),
    }
    with pytest.raises(ImportRefused, match="changed since it was checked") as refused:
        checked_then_written(wiring, path, edits[case])
    written = wiring.shop.recorder.max_notification_id() or 0
    if case == "a later page":
        assert refused.value.line == 401 and written <= 400  # nothing of the changed page
    else:
        assert written == 0


def test_after_its_check_the_write_still_checks_against_the_store(wiring: Wiring) -> None:
    """Content is checked once; what depends on the store is checked again as it writes:
    an email another user took between the check and the write is refused."""
    first = legacy_lines()[0]

    def taken() -> None:
        wiring.handle(
            RegisterUser(first["data"]["email"], "Someone", "Else"),
            CommandContext(actor="test", correlation_id="c"),
        )

    with pytest.raises(ImportRefused, match="in the store") as refused:
        checked_then_written(wiring, LEGACY, taken)
    assert refused.value.line == 1
    assert wiring.shop.recorder.max_notification_id() == 1
