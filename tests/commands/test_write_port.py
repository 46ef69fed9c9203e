"""The write port's promises, kept alike by the in-memory store and the real ones: one save
is one all-or-nothing append answering its last position; a stale aggregate is refused with
nothing written; claims have one owner; an idempotency key keeps its answer, completed with
the append's position. And nothing reaches a real store as an unchecked keyword."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest
from eventsourcing.domain import Aggregate

from eventkeep.bootstrap import build
from eventkeep.commands.messages import CommandResult
from eventkeep.commands.ports import (
    ClaimTakenError,
    EventMetadata,
    IdempotencyKeyUsedError,
    IdempotencyRecord,
    StreamChangedError,
    UniqueClaim,
    decode_result,
    encode_result,
)
from eventkeep.domain.product import Product
from tests.api.conftest import embedded_settings
from tests.commands.shopping import Writer

META = EventMetadata(actor="test", correlation_id="c-1")


def product() -> Product:
    return Product.create("SKU-1", "Lamp", "A lamp", "home", "10.00", "EUR", 5)


def test_a_save_answers_the_position_of_its_last_event(writer: Writer) -> None:
    before = writer.count()
    lamp = product()
    lamp.adjust_stock(3, "delivery")

    position = writer.store.save([lamp], metadata=META)

    assert position == before + 2 == writer.count()
    loaded = writer.store.load(lamp.id)
    assert isinstance(loaded, Product) and loaded.stock == 8 and loaded.version == 2


def test_an_unknown_stream_loads_as_none(writer: Writer) -> None:
    assert writer.store.load(uuid4()) is None


def test_a_stale_aggregate_is_refused_with_nothing_written(writer: Writer) -> None:
    lamp = product()
    writer.store.save([lamp], metadata=META)
    first, second = writer.store.load(lamp.id), writer.store.load(lamp.id)
    assert isinstance(first, Product) and isinstance(second, Product)
    first.adjust_stock(1, "a")
    second.adjust_stock(2, "b")
    other = product()
    writer.store.save([first], metadata=META)
    events = writer.count()

    with pytest.raises(StreamChangedError):
        writer.store.save([second, other], metadata=META)

    assert writer.count() == events
    assert writer.store.load(other.id) is None


def test_a_claim_has_one_owner_until_released(writer: Writer) -> None:
    alice, bob = product(), product()
    writer.store.save([alice], metadata=META, claims=[UniqueClaim("s", "k", alice.id)])
    assert writer.store.claim_owner("s", "k") == alice.id

    with pytest.raises(ClaimTakenError):
        writer.store.save([bob], metadata=META, claims=[UniqueClaim("s", "k", bob.id)])
    assert writer.store.load(bob.id) is None

    again = writer.store.load(alice.id)
    assert isinstance(again, Aggregate)
    writer.store.save([again], metadata=META, claims=[UniqueClaim("s", "k", None)])
    assert writer.store.claim_owner("s", "k") is None


def test_an_idempotency_record_keeps_its_answer_with_the_position(writer: Writer) -> None:
    lamp = product()
    answer = CommandResult(lamp.id, 1, 0, created=True)
    record = IdempotencyRecord("actor:key", "hash", answer)

    position = writer.store.save([lamp], metadata=META, idempotency=record)

    stored = writer.store.stored_answer("actor:key")
    completed = CommandResult(lamp.id, 1, position, created=True)
    assert stored == IdempotencyRecord("actor:key", "hash", completed)
    with pytest.raises(IdempotencyKeyUsedError):
        writer.store.save([product()], metadata=META, idempotency=record)
    assert writer.store.stored_answer("another") is None


def test_the_answer_encoding_round_trips() -> None:
    answer = CommandResult(uuid4(), 7, 1234, created=False)
    assert decode_result(encode_result(answer)) == answer


def test_a_misspelt_keyword_is_refused_by_the_store(tmp_path: Path) -> None:
    with build(embedded_settings(tmp_path / "home"), role="test") as system:
        lamp = product()
        events = [system.shop.mapper.to_stored_event(e) for e in lamp.collect_events()]
        claim = [UniqueClaim("s", "k", lamp.id)]
        with pytest.raises(TypeError, match="claim"):
            system.shop.recorder.insert_events(events, claim=claim)
        assert system.recorder.max_notification_id() is None
