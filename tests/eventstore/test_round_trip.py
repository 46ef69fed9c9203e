"""Every event of the catalog, at its current schema and (for the three legacy events) at v1,
goes through the store and back unchanged, and every reader sees it through the one upcaster
chain: the log's envelope and the domain event the mapper rebuilds carry the same upcast data.
Both modes; hypothesis draws the data."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventkeep.api.bootstrap import Wiring
from eventkeep.domain.catalog import EVENT_TYPES, stream_type_of
from eventkeep.domain.upcasters import CURRENT_SCHEMA_VERSIONS, upcast
from eventkeep.eventstore.envelope import to_envelope
from eventkeep.eventstore.records import RecordedEvent

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
word = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12)
email = st.builds("{}@{}.org".format, word, word)
cents = st.integers(min_value=0, max_value=10**12)
money = cents.map(lambda c: f"{c // 100}.{c % 100:02d}")
count = st.integers(min_value=0, max_value=10**9)
ids = st.uuids().map(str)
line_v2 = st.fixed_dictionaries(
    {"product_id": ids, "quantity": st.integers(1, 1000), "unit_price": money}
)
line_v1 = st.fixed_dictionaries(
    {"product_id": ids, "qty": st.integers(1, 1000), "price_cents": cents}
)
nothing = st.just({})

DATA: dict[tuple[str, int], st.SearchStrategy[dict[str, Any]]] = {
    ("UserRegistered", 2): st.fixed_dictionaries(
        {"email": email, "first_name": text, "last_name": text}
    ),
    ("UserRegistered", 1): st.fixed_dictionaries({"email": email, "full_name": text}),
    ("UserEmailChanged", 1): st.fixed_dictionaries({"email": email}),
    ("UserDeactivated", 1): st.fixed_dictionaries({"reason": text}),
    ("UserReactivated", 1): nothing,
    ("UserPersonalDataErased", 1): nothing,
    ("ProductCreated", 2): st.fixed_dictionaries(
        {
            "sku": word,
            "name": text,
            "description": text,
            "category": word,
            "price": money,
            "currency": st.sampled_from(["EUR", "USD"]),
            "stock": count,
        }
    ),
    ("ProductCreated", 1): st.fixed_dictionaries(
        {
            "sku": word,
            "name": text,
            "description": text,
            "category": word,
            "price_cents": cents,
            "stock": count,
        }
    ),
    ("ProductRenamed", 1): st.fixed_dictionaries({"name": text, "description": text}),
    ("ProductPriceChanged", 2): st.fixed_dictionaries({"price": money, "currency": st.just("EUR")}),
    ("ProductPriceChanged", 1): st.fixed_dictionaries({"price_cents": cents}),
    ("ProductStockAdjusted", 1): st.fixed_dictionaries(
        {"delta": st.integers(-(10**9), 10**9), "reason": text}
    ),
    ("ProductStockReserved", 1): st.fixed_dictionaries(
        {"order_id": ids, "quantity": st.integers(1, 1000)}
    ),
    ("ProductStockReleased", 1): st.fixed_dictionaries(
        {"order_id": ids, "quantity": st.integers(1, 1000)}
    ),
    ("ProductDiscontinued", 1): nothing,
    ("OrderPlaced", 2): st.fixed_dictionaries(
        {
            "user_id": ids,
            "lines": st.lists(line_v2, min_size=1, max_size=3),
            "total": money,
            "currency": st.just("EUR"),
        }
    ),
    ("OrderPlaced", 1): st.fixed_dictionaries(
        {"user_id": ids, "lines": st.lists(line_v1, min_size=1, max_size=3), "total_cents": cents}
    ),
    ("OrderPaid", 1): st.fixed_dictionaries({"amount": money, "payment_ref": word}),
    ("OrderShipped", 1): st.fixed_dictionaries({"tracking_number": word}),
    ("OrderDelivered", 1): nothing,
    ("OrderCancelled", 2): st.fixed_dictionaries({"user_id": ids, "reason": text}),
    ("OrderCancelled", 1): st.fixed_dictionaries({"reason": text}),
}
EVENTS = st.sampled_from(sorted(DATA)).flatmap(lambda key: st.tuples(st.just(key), DATA[key]))


def test_every_catalog_event_and_version_is_drawn() -> None:
    current = {(name, CURRENT_SCHEMA_VERSIONS.get(name, 1)) for name in EVENT_TYPES}
    assert current <= set(DATA)
    assert {key for key in DATA if key not in current} == {
        ("UserRegistered", 1),
        ("ProductCreated", 1),
        ("ProductPriceChanged", 1),
        ("OrderPlaced", 1),
        ("OrderCancelled", 1),
    }


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(event=EVENTS)
def test_events_go_through_the_store_and_every_reader_upcasts_them_alike(
    wiring: Wiring, event: tuple[tuple[str, int], dict[str, Any]]
) -> None:
    (event_type, schema_version), data = event
    stream_id = uuid.uuid4()
    recorder = wiring.shop.recorder
    [position] = recorder.insert_events(
        [
            RecordedEvent(
                stream_id,
                1,
                event_type,
                orjson.dumps(data),
                stream_type_of(EVENT_TYPES[event_type]),
                schema_version,
                datetime.now(UTC),
            )
        ],
        metadata={"actor": "test", "correlation_id": "c", "causation_id": None},
    )
    expected = upcast({"event_type": event_type, "schema_version": schema_version, "data": data})[
        "data"
    ]

    [logged] = recorder.select_notifications(position, 1)
    assert (logged.topic, logged.schema_version) == (event_type, schema_version)
    assert orjson.loads(logged.state) == data  # stored as recorded, never rewritten
    assert upcast(to_envelope(logged))["data"] == expected

    [stored] = recorder.select_events(stream_id)
    domain_event = wiring.shop.mapper.to_domain_event(stored)
    assert type(domain_event) is EVENT_TYPES[event_type]
    assert {k: v for k, v in vars(domain_event).items() if k in expected} == expected
