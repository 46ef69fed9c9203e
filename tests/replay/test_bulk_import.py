"""`audit import` writes in bulk (issue 13.1): large transactions under the log's write lock,
keeping every invariant of the normal append — gap-free positions in the file's order, the
hash chain, a data key per user that an erasure destroys, the feed to the read models — and
each transaction whole or not at all, so a failed run leaves whole transactions and running
the file again completes it, while a finished file is never written twice."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import pytest
from fastapi.testclient import TestClient

from eventkeep.api.bootstrap import Wiring
from eventkeep.commands.messages import (
    AdjustStock,
    CommandContext,
    CreateProduct,
    ErasePersonalData,
)
from eventkeep.replay import importer
from eventkeep.replay.audit import verify
from eventkeep.replay.importer import AlreadyImported, ImportRefused, check_file, import_file
from tests.replay.conftest import LEGACY, LEGACY_EXPECTED, email_claim, import_history

LINES = [orjson.loads(line) for line in LEGACY.read_bytes().splitlines() if line.strip()]
EXPECTED: dict[str, Any] = json.loads(LEGACY_EXPECTED.read_text())
BATCH = 100  # events per import transaction here: the legacy history takes nine


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer, "BULK_EVENTS", BATCH)


def logged(wiring: Wiring) -> list[Any]:
    return list(wiring.shop.recorder.select_notifications(1, 100_000, decrypt=False))  # type: ignore[call-arg]


def in_file_order(wiring: Wiring) -> list[tuple[str, int]]:
    """The (stream, version) of each event of the log that came from the file, in order."""
    streams = {line["stream_id"] for line in LINES}
    return [
        (str(e.originator_id), e.originator_version)
        for e in logged(wiring)
        if str(e.originator_id) in streams
    ]


FILE_ORDER = [(line["stream_id"], line["stream_version"]) for line in LINES]


def assert_whole_and_intact(wiring: Wiring, later: int = 0) -> None:
    """Every position from 1 to the head once, the file's events once each in its order
    (then `later` events of its streams, from commands after the import), and the hash
    chain verifies."""
    positions = [e.id for e in logged(wiring)]
    assert positions == list(range(1, len(positions) + 1))
    found = in_file_order(wiring)
    assert found[: len(FILE_ORDER)] == FILE_ORDER and len(found) == len(FILE_ORDER) + later
    verdict = verify(wiring.shop.recorder)
    assert verdict.intact, verdict.altered
    assert verdict.checked == len(positions)


def test_an_import_is_gap_free_in_file_order_and_verifies(wiring: Wiring) -> None:
    assert import_history(wiring, LEGACY, check_first=True) == len(LINES)
    assert_whole_and_intact(wiring)
    # Stored as the file says: ids, versions, times, types (positions the store's own).
    first = logged(wiring)[0]
    assert first.recorded_at.isoformat().startswith(LINES[0]["recorded_at"][:19])


def test_a_file_imported_already_is_not_written_again(wiring: Wiring) -> None:
    import_history(wiring, LEGACY, check_first=True)
    head = wiring.shop.recorder.max_notification_id()
    with pytest.raises(AlreadyImported):
        import_history(wiring, LEGACY, check_first=True)
    with pytest.raises(AlreadyImported):
        import_history(wiring, LEGACY)  # unchecked, too
    assert wiring.shop.recorder.max_notification_id() == head
    assert_whole_and_intact(wiring)


def test_an_imported_user_is_shredded_by_an_erasure(wiring: Wiring) -> None:
    import_history(wiring, LEGACY, check_first=True)
    user = next(line for line in LINES if line["event_type"] == "UserRegistered")
    email = user["data"]["email"].encode()
    user_id = UUID(user["stream_id"])
    [registered] = [
        e for e in logged(wiring) if e.originator_id == user_id and e.originator_version == 1
    ]
    assert email not in registered.state  # sealed under the user's key, as a command seals
    opened = wiring.shop.recorder.select_events(user_id)
    assert orjson.loads(opened[0].state)["email"] == user["data"]["email"]

    wiring.handle(ErasePersonalData(user_id), CommandContext(actor="test", correlation_id="e"))

    opened = wiring.shop.recorder.select_events(user_id)
    assert orjson.loads(opened[0].state)["email"] is None
    assert_whole_and_intact(wiring, later=1)


def test_a_refused_page_leaves_whole_transactions_and_a_rerun_completes(
    wiring: Wiring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page changed after the check is refused mid-import: what is stored is whole
    transactions (the lines of each batch, each with its progress); the file as it was
    checked, run again, resumes after them and ends with every line once."""
    monkeypatch.setattr(importer, "READ_AHEAD", 100)
    path = tmp_path / "history.jsonl"
    original = b"".join(orjson.dumps(line) + b"\n" for line in LINES)
    path.write_bytes(original)
    recorder, claim = wiring.shop.recorder, email_claim(wiring)
    checked = check_file(path, recorder, claim, lambda _: None)
    changed = original.split(b"\n")
    at = changed[649].index(b'"actor":"') + len(b'"actor":"')
    changed[649] = changed[649][:at] + b"X" + changed[649][at + 1 :]  # line 650, same size
    path.write_bytes(b"\n".join(changed))
    assert path.stat().st_size == len(original)
    with pytest.raises(ImportRefused, match="changed since it was checked"):
        import_file(path, recorder, claim, lambda _: None, checked)
    stored = recorder.max_notification_id() or 0
    assert 0 < stored < 600  # the pages before the change, in whole transactions
    progress = recorder.import_progress(checked.digest)
    assert progress is not None and progress.events == stored and not progress.finished
    assert in_file_order(wiring) == FILE_ORDER[: progress.lines]

    path.write_bytes(original)
    again = check_file(path, recorder, claim, lambda _: None)
    assert again.progress == progress and again.count == len(LINES) - progress.lines
    assert import_file(path, recorder, claim, lambda _: None, again) == len(LINES) - stored
    assert_whole_and_intact(wiring)
    with pytest.raises(AlreadyImported):
        check_file(path, recorder, claim, lambda _: None)


def test_a_version_taken_during_the_import_refuses_its_transaction_whole(
    wiring: Wiring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command appends to one of the file's products after its page was checked, before
    the transaction holding that product's next event: the transaction is refused whole,
    naming its first line, and the ones before it stay; run again, the check names the line."""
    recorder = wiring.shop.recorder
    original = recorder.import_batch
    written: list[int] = []

    def racing(appends: list[Any], **progress: Any) -> Any:
        if len(written) == 1:  # the first transaction committed: a command takes a version
            product = next(
                e.originator_id
                for a in appends
                for e in a.events
                if e.stream_type == "Product" and e.originator_version > 1
            )
            context = CommandContext(actor="test", correlation_id="race")
            wiring.handle(AdjustStock(product, 1, "counted"), context)
        written.append(progress["lines"])
        return original(appends, **progress)

    monkeypatch.setattr(recorder, "import_batch", racing)
    with pytest.raises(ImportRefused, match="another writer appended") as refused:
        import_history(wiring, LEGACY, check_first=True)
    assert refused.value.line == written[0] + 1
    assert in_file_order(wiring)[: written[0]] == FILE_ORDER[: written[0]]
    stored = recorder.max_notification_id()
    assert stored == len(in_file_order(wiring)) and stored == written[0] + 1  # and the command's
    monkeypatch.setattr(recorder, "import_batch", original)
    with pytest.raises(ImportRefused, match="breaks its sequence"):
        import_history(wiring, LEGACY, check_first=True)
    assert recorder.max_notification_id() == stored


def test_commands_during_an_import_keep_the_log_gap_free(wiring: Wiring) -> None:
    """Commands appended between (and waiting for) the import's transactions: every
    position once, the file's events in its order, the chain intact."""
    stop = threading.Event()
    made: list[int] = []
    failures: list[BaseException] = []

    def commands() -> None:
        context = CommandContext(actor="test", correlation_id="c")
        while not stop.is_set():
            try:
                sku = f"DURING-{len(made)}"
                product = CreateProduct(sku, "n", "d", "misc", "1.00", "EUR", 1)
                made.append(wiring.handle(product, context).position)
            except BaseException as error:
                failures.append(error)
                return

    thread = threading.Thread(target=commands)
    thread.start()
    try:
        import_history(wiring, LEGACY, check_first=True)
    finally:
        stop.set()
        thread.join(30)
    assert not failures
    assert made
    assert_whole_and_intact(wiring)
    assert len(logged(wiring)) == len(LINES) + len(made)


def test_the_feed_carries_imported_events_to_the_read_models(
    projected: Wiring, client: TestClient
) -> None:
    """No rebuild: the relay (distributed) or the in-process feed (embedded) hands the
    imported events to the live projectors, which end where a rebuild ends."""
    import_history(projected, LEGACY, check_first=True)
    head = projected.shop.recorder.max_notification_id()
    for user_id, want in EXPECTED["users"].items():
        user = client.get(f"/v1/users/{user_id}", headers={"X-Min-Position": str(head)})
        assert user.status_code == 200, user.text
        got = {k: user.json()[k] for k in ("email", "first_name", "last_name")}
        assert got | {"active": user.json()["status"] == "active"} == want, user_id
    for order_id, want in EXPECTED["orders"].items():
        order = client.get(f"/v1/orders/{order_id}", headers={"X-Min-Position": str(head)})
        assert order.status_code == 200, order.text
        assert {k: order.json()[k] for k in want} == want, order_id
