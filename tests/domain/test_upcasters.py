"""The upcaster chain: each legacy (v1) event becomes its current (v2) form as the event catalog
says, current events pass unchanged, and `upcast` never touches the envelope it is given."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventkeep.domain.upcasters import CURRENT_SCHEMA_VERSIONS, upcast

PRODUCT_ID = "6f1c4a52-1a3c-4a53-9b5e-0d7c1f4d2b11"
OTHER_PRODUCT_ID = "0a7f0a64-26c5-4f8b-9b55-3b8b1e0ac0f2"


def envelope(event_type: str, schema_version: int, data: dict[str, Any]) -> dict[str, Any]:
    """A stored event as every reader sees it before upcasting."""
    return {
        "position": 7,
        "stream_id": "3b2b8f7e-5a0e-4d76-9e0e-8a9b1b8e5c44",
        "stream_type": "Test",
        "stream_version": 1,
        "event_type": event_type,
        "schema_version": schema_version,
        "recorded_at": "2024-01-02T03:04:05Z",
        "data": data,
        "metadata": {"actor": "test", "correlation_id": "c", "causation_id": None},
    }


def upcast_data(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    upcast_envelope = upcast(envelope(event_type, 1, data))
    assert upcast_envelope["schema_version"] == CURRENT_SCHEMA_VERSIONS[event_type]
    return upcast_envelope["data"]


# --- UserRegistered v1 → v2 -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("full_name", "first_name", "last_name"),
    [
        ("Ada Lovelace", "Ada", "Lovelace"),
        ("Ada King Lovelace", "Ada", "King Lovelace"),  # split at the FIRST space only
        ("Plato", "Plato", ""),
        ("", "", ""),
    ],
)
def test_user_registered_full_name_splits_at_the_first_space(
    full_name: str, first_name: str, last_name: str
) -> None:
    data = upcast_data("UserRegistered", {"email": "ada@example.com", "full_name": full_name})
    assert data == {"email": "ada@example.com", "first_name": first_name, "last_name": last_name}


def test_user_registered_erased_name_stays_erased() -> None:
    data = upcast_data("UserRegistered", {"email": None, "full_name": None})
    assert data == {"email": None, "first_name": None, "last_name": None}


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=30))
def test_user_registered_split_keeps_the_name(full_name: str) -> None:
    data = upcast_data("UserRegistered", {"email": "a@b.cd", "full_name": full_name})
    joined = f"{data['first_name']} {data['last_name']}" if " " in full_name else full_name
    assert joined == full_name
    assert " " not in data["first_name"]


# --- ProductCreated / ProductPriceChanged v1 → v2 -------------------------------------------


def test_product_created_price_cents_becomes_a_usd_decimal_string() -> None:
    legacy = {
        "sku": "KB-01",
        "name": "Keyboard",
        "description": "Mechanical",
        "category": "peripherals",
        "price_cents": 4990,
        "stock": 3,
    }
    data = upcast_data("ProductCreated", legacy)
    assert data == {
        "sku": "KB-01",
        "name": "Keyboard",
        "description": "Mechanical",
        "category": "peripherals",
        "price": "49.90",
        "currency": "USD",
        "stock": 3,
    }


@pytest.mark.parametrize(
    ("cents", "price"), [(0, "0.00"), (5, "0.05"), (100, "1.00"), (1999, "19.99")]
)
def test_product_price_changed_price_cents_becomes_a_usd_decimal_string(
    cents: int, price: str
) -> None:
    data = upcast_data("ProductPriceChanged", {"price_cents": cents})
    assert data == {"price": price, "currency": "USD"}


# --- OrderPlaced v1 → v2 --------------------------------------------------------------------


def test_order_placed_lines_and_total_become_quantity_unit_price_total_currency() -> None:
    legacy = {
        "user_id": "u-1",
        "lines": [
            {"product_id": PRODUCT_ID, "qty": 2, "price_cents": 4990},
            {"product_id": OTHER_PRODUCT_ID, "qty": 1, "price_cents": 5},
        ],
        "total_cents": 9985,
    }
    data = upcast_data("OrderPlaced", legacy)
    assert data == {
        "user_id": "u-1",
        "lines": [
            {"product_id": PRODUCT_ID, "quantity": 2, "unit_price": "49.90"},
            {"product_id": OTHER_PRODUCT_ID, "quantity": 1, "unit_price": "0.05"},
        ],
        "total": "99.85",
        "currency": "USD",
    }


# --- upcast as a whole ----------------------------------------------------------------------

CURRENT_EVENTS = [
    ("UserRegistered", 2, {"email": "a@b.cd", "first_name": "A", "last_name": "B"}),
    ("ProductCreated", 2, {"sku": "S", "price": "1.00", "currency": "EUR", "stock": 1}),
    ("ProductPriceChanged", 2, {"price": "2.50", "currency": "EUR"}),
    (
        "OrderPlaced",
        2,
        {
            "user_id": "u",
            "lines": [{"product_id": PRODUCT_ID, "quantity": 1, "unit_price": "1.00"}],
            "total": "1.00",
            "currency": "EUR",
        },
    ),
    ("UserEmailChanged", 1, {"email": "x@y.zz"}),
    ("ProductStockAdjusted", 1, {"delta": -2, "reason": "damaged"}),
    ("OrderCancelled", 2, {"user_id": "u", "reason": "changed mind"}),
]


@pytest.mark.parametrize(("event_type", "version", "data"), CURRENT_EVENTS)
def test_current_envelopes_pass_unchanged(
    event_type: str, version: int, data: dict[str, Any]
) -> None:
    current = envelope(event_type, version, data)
    assert upcast(current) == current


# --- OrderCancelled v1 → v2 -----------------------------------------------------------------


def test_order_cancelled_v1_names_no_user_and_keeps_its_reason() -> None:
    # Written before the reason was sealed under the user's key: it stays as written.
    assert upcast_data("OrderCancelled", {"reason": "changed mind"}) == {
        "user_id": None,
        "reason": "changed mind",
    }


LEGACY_EVENTS = [
    ("UserRegistered", {"email": "a@b.cd", "full_name": "Ada Lovelace"}),
    ("UserRegistered", {"email": None, "full_name": None}),
    ("ProductCreated", {"sku": "S", "price_cents": 100, "stock": 1}),
    ("ProductPriceChanged", {"price_cents": 250}),
    (
        "OrderPlaced",
        {
            "user_id": "u",
            "lines": [{"product_id": PRODUCT_ID, "qty": 1, "price_cents": 100}],
            "total_cents": 100,
        },
    ),
    ("OrderCancelled", {"reason": "changed mind"}),
]


@pytest.mark.parametrize(("event_type", "data"), LEGACY_EVENTS)
def test_upcast_does_not_mutate_its_input(event_type: str, data: dict[str, Any]) -> None:
    legacy = envelope(event_type, 1, data)
    before = copy.deepcopy(legacy)

    upcast_envelope = upcast(legacy)

    assert legacy == before
    assert upcast_envelope is not legacy
    # Everything but the version and the data is carried over as it was.
    rest = {k: v for k, v in upcast_envelope.items() if k not in ("schema_version", "data")}
    assert rest == {k: v for k, v in before.items() if k not in ("schema_version", "data")}


@pytest.mark.parametrize(("event_type", "data"), LEGACY_EVENTS)
def test_upcasting_twice_changes_nothing_more(event_type: str, data: dict[str, Any]) -> None:
    once = upcast(envelope(event_type, 1, data))
    assert upcast(once) == once


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_cents_become_a_two_place_decimal_string_that_parses_back(cents: int) -> None:
    data = upcast_data("ProductPriceChanged", {"price_cents": cents})
    price = data["price"]
    whole, _, places = price.partition(".")
    assert whole.isdigit() and len(places) == 2 and places.isdigit()
    assert Decimal(price) * 100 == cents
