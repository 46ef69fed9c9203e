"""Placing an order reserves its stock in the same append as the order, or writes nothing;
cancelling gives the stock back; payment must equal the total; the status machine holds."""

from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import pytest

from eventkeep.api.bootstrap import Wiring
from eventkeep.commands.messages import (
    AdjustStock,
    CancelOrder,
    DeactivateUser,
    DeliverOrder,
    DiscontinueProduct,
    PayOrder,
    PlaceOrder,
    ShipOrder,
)
from tests.commands.shopping import (
    create_product,
    event_count,
    load,
    order,
    refused,
    register,
    send,
    stock,
)


def test_an_order_and_its_reservations_are_one_append(wiring: Wiring) -> None:
    user_id = register(wiring)
    lamp = create_product(wiring, stock=5, price="10.00")
    desk = create_product(wiring, stock=2, price="90.50")
    events = event_count(wiring)

    placed = send(wiring, order(user_id, (lamp, 2), (desk, 1), (lamp, 1)))

    # OrderPlaced plus one reservation per line, positions contiguous, the order's last.
    assert event_count(wiring) == events + 4
    assert placed.created and placed.version == 1
    assert placed.position == events + 4
    assert (stock(wiring, lamp), stock(wiring, desk)) == (2, 1)
    placed_order = load(wiring, placed.id)
    assert (placed_order.status, placed_order.total, placed_order.currency) == (
        "placed",
        Decimal("120.50"),
        "EUR",
    )


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(((0, 6),), id="one line over stock"),
        pytest.param(((0, 3), (0, 3)), id="two lines of one product over stock"),
        pytest.param(((0, 3), (1, 2)), id="a later line over stock"),
    ],
)
def test_insufficient_stock_writes_no_order_and_no_reservation(
    wiring: Wiring, lines: tuple[tuple[int, int], ...]
) -> None:
    user_id = register(wiring)
    products = [create_product(wiring, stock=5), create_product(wiring, stock=1)]
    command = order(user_id, *((products[i], quantity) for i, quantity in lines))

    assert refused(wiring, command) == "STOCK_INSUFFICIENT"
    assert [stock(wiring, p) for p in products] == [5, 1]


def test_an_order_for_all_the_stock_succeeds(wiring: Wiring) -> None:
    user_id = register(wiring)
    product_id = create_product(wiring, stock=3)
    send(wiring, order(user_id, (product_id, 2), (product_id, 1)))
    assert stock(wiring, product_id) == 0
    assert refused(wiring, order(user_id, (product_id, 1))) == "STOCK_INSUFFICIENT"


def test_orders_are_refused_for_inactive_users_and_products(wiring: Wiring) -> None:
    user_id = register(wiring)
    product_id = create_product(wiring)
    other = create_product(wiring)
    send(wiring, DiscontinueProduct(other))

    assert refused(wiring, order(user_id, (other, 1))) == "PRODUCT_DISCONTINUED"
    assert refused(wiring, order(user_id, (product_id, 0))) == "VALIDATION_FAILED"
    assert refused(wiring, PlaceOrder(user_id, ())) == "VALIDATION_FAILED"
    assert refused(wiring, order(user_id, (uuid4(), 1))) == "NOT_FOUND"
    assert refused(wiring, order(uuid4(), (product_id, 1))) == "NOT_FOUND"
    send(wiring, DeactivateUser(user_id, "asked to"))
    assert refused(wiring, order(user_id, (product_id, 1))) == "USER_NOT_ACTIVE"
    assert stock(wiring, product_id) == 10


def test_lines_in_two_currencies_are_refused(wiring: Wiring) -> None:
    user_id = register(wiring)
    euro = create_product(wiring, currency="EUR")
    dollar = create_product(wiring, currency="USD")
    assert refused(wiring, order(user_id, (euro, 1), (dollar, 1))) == "CURRENCY_MISMATCH"


@pytest.mark.parametrize("paid_first", [False, True])
def test_cancelling_releases_the_stock(wiring: Wiring, paid_first: bool) -> None:
    user_id = register(wiring)
    lamp = create_product(wiring, stock=5, price="10.00")
    desk = create_product(wiring, stock=2, price="20.00")
    order_id = send(wiring, order(user_id, (lamp, 2), (desk, 2), (lamp, 1))).id
    if paid_first:
        send(wiring, PayOrder(order_id, "70.00", "pay-1"))

    cancelled = send(wiring, CancelOrder(order_id, "changed mind"))

    assert (stock(wiring, lamp), stock(wiring, desk)) == (5, 2)
    assert load(wiring, order_id).status == "cancelled"
    assert cancelled.version == (3 if paid_first else 2)
    assert refused(wiring, CancelOrder(order_id, "again")) == "INVALID_STATE_TRANSITION"
    assert (stock(wiring, lamp), stock(wiring, desk)) == (5, 2)


def test_cancelling_releases_stock_even_of_a_discontinued_product(wiring: Wiring) -> None:
    user_id = register(wiring)
    lamp = create_product(wiring, stock=5)
    order_id = send(wiring, order(user_id, (lamp, 4))).id
    send(wiring, DiscontinueProduct(lamp))

    send(wiring, CancelOrder(order_id, "out of range"))

    assert stock(wiring, lamp) == 5


def test_released_stock_can_be_ordered_again(wiring: Wiring) -> None:
    user_id = register(wiring)
    lamp = create_product(wiring, stock=2)
    first = send(wiring, order(user_id, (lamp, 2))).id
    assert refused(wiring, order(user_id, (lamp, 1))) == "STOCK_INSUFFICIENT"
    send(wiring, CancelOrder(first, "changed mind"))
    send(wiring, order(user_id, (lamp, 2)))
    assert stock(wiring, lamp) == 0


@pytest.mark.parametrize("amount", ["99.79", "99.81", "0.00", "199.60"])
def test_paying_another_amount_than_the_total_is_refused(wiring: Wiring, amount: str) -> None:
    user_id = register(wiring)
    product_id = create_product(wiring, price="49.90")
    order_id = send(wiring, order(user_id, (product_id, 2))).id

    assert refused(wiring, PayOrder(order_id, amount, "pay-1")) == "PAYMENT_AMOUNT_MISMATCH"
    assert load(wiring, order_id).status == "placed"


@pytest.mark.parametrize("amount", ["-99.80", "abc", "99.800001", "NaN"])
def test_a_malformed_amount_is_refused(wiring: Wiring, amount: str) -> None:
    user_id = register(wiring)
    product_id = create_product(wiring, price="49.90")
    order_id = send(wiring, order(user_id, (product_id, 2))).id
    assert refused(wiring, PayOrder(order_id, amount, "pay-1")) == "VALIDATION_FAILED"


def test_the_total_written_with_fewer_places_is_the_total(wiring: Wiring) -> None:
    user_id = register(wiring)
    product_id = create_product(wiring, price="49.90")
    order_id = send(wiring, order(user_id, (product_id, 2))).id
    assert send(wiring, PayOrder(order_id, "99.8", "pay-1")).version == 2


def test_an_order_goes_placed_paid_shipped_delivered(wiring: Wiring) -> None:
    user_id = register(wiring)
    product_id = create_product(wiring, stock=3, price="49.90")
    order_id = send(wiring, order(user_id, (product_id, 1))).id

    assert refused(wiring, ShipOrder(order_id, "T-1")) == "INVALID_STATE_TRANSITION"
    assert refused(wiring, DeliverOrder(order_id)) == "INVALID_STATE_TRANSITION"
    versions = [
        send(wiring, PayOrder(order_id, "49.90", "pay-1")).version,
        send(wiring, ShipOrder(order_id, "T-1")).version,
        send(wiring, DeliverOrder(order_id)).version,
    ]

    assert versions == [2, 3, 4]
    assert load(wiring, order_id).status == "delivered"
    assert refused(wiring, PayOrder(order_id, "49.90", "pay-2")) == "INVALID_STATE_TRANSITION"
    assert refused(wiring, CancelOrder(order_id, "late")) == "INVALID_STATE_TRANSITION"
    assert stock(wiring, product_id) == 2


def test_a_shipped_order_cannot_be_cancelled(wiring: Wiring) -> None:
    user_id = register(wiring)
    product_id = create_product(wiring, stock=3, price="49.90")
    order_id = send(wiring, order(user_id, (product_id, 1))).id
    send(wiring, PayOrder(order_id, "49.90", "pay-1"))
    send(wiring, ShipOrder(order_id, "T-1"))

    assert refused(wiring, CancelOrder(order_id, "too late")) == "INVALID_STATE_TRANSITION"
    assert stock(wiring, product_id) == 2


def test_stock_adjustments_never_make_stock_negative(wiring: Wiring) -> None:
    user_id = register(wiring)
    product_id = create_product(wiring, stock=3)
    send(wiring, order(user_id, (product_id, 2)))

    assert refused(wiring, AdjustStock(product_id, -2, "damaged")) == "STOCK_INSUFFICIENT"
    send(wiring, AdjustStock(product_id, -1, "damaged"))
    assert stock(wiring, product_id) == 0
