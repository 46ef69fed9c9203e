"""Placing an order reserves its stock in the same append as the order, or writes nothing;
cancelling gives the stock back; payment must equal the total; the status machine holds."""

from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import pytest

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
    Writer,
    create_product,
    event_count,
    load,
    order,
    refused,
    register,
    send,
    stock,
)


def test_an_order_and_its_reservations_are_one_append(writer: Writer) -> None:
    user_id = register(writer)
    lamp = create_product(writer, stock=5, price="10.00")
    desk = create_product(writer, stock=2, price="90.50")
    events = event_count(writer)

    placed = send(writer, order(user_id, (lamp, 2), (desk, 1), (lamp, 1)))

    # OrderPlaced plus one reservation per line, positions contiguous, the order's last.
    assert event_count(writer) == events + 4
    assert placed.created and placed.version == 1
    assert placed.position == events + 4
    assert (stock(writer, lamp), stock(writer, desk)) == (2, 1)
    placed_order = load(writer, placed.id)
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
    writer: Writer, lines: tuple[tuple[int, int], ...]
) -> None:
    user_id = register(writer)
    products = [create_product(writer, stock=5), create_product(writer, stock=1)]
    command = order(user_id, *((products[i], quantity) for i, quantity in lines))

    assert refused(writer, command) == "STOCK_INSUFFICIENT"
    assert [stock(writer, p) for p in products] == [5, 1]


def test_an_order_for_all_the_stock_succeeds(writer: Writer) -> None:
    user_id = register(writer)
    product_id = create_product(writer, stock=3)
    send(writer, order(user_id, (product_id, 2), (product_id, 1)))
    assert stock(writer, product_id) == 0
    assert refused(writer, order(user_id, (product_id, 1))) == "STOCK_INSUFFICIENT"


def test_orders_are_refused_for_inactive_users_and_products(writer: Writer) -> None:
    user_id = register(writer)
    product_id = create_product(writer)
    other = create_product(writer)
    send(writer, DiscontinueProduct(other))

    assert refused(writer, order(user_id, (other, 1))) == "PRODUCT_DISCONTINUED"
    assert refused(writer, order(user_id, (product_id, 0))) == "VALIDATION_FAILED"
    assert refused(writer, PlaceOrder(user_id, ())) == "VALIDATION_FAILED"
    assert refused(writer, order(user_id, (uuid4(), 1))) == "NOT_FOUND"
    assert refused(writer, order(uuid4(), (product_id, 1))) == "NOT_FOUND"
    send(writer, DeactivateUser(user_id, "asked to"))
    assert refused(writer, order(user_id, (product_id, 1))) == "USER_NOT_ACTIVE"
    assert stock(writer, product_id) == 10


def test_lines_in_two_currencies_are_refused(writer: Writer) -> None:
    user_id = register(writer)
    euro = create_product(writer, currency="EUR")
    dollar = create_product(writer, currency="USD")
    assert refused(writer, order(user_id, (euro, 1), (dollar, 1))) == "CURRENCY_MISMATCH"


@pytest.mark.parametrize("paid_first", [False, True])
def test_cancelling_releases_the_stock(writer: Writer, paid_first: bool) -> None:
    user_id = register(writer)
    lamp = create_product(writer, stock=5, price="10.00")
    desk = create_product(writer, stock=2, price="20.00")
    order_id = send(writer, order(user_id, (lamp, 2), (desk, 2), (lamp, 1))).id
    if paid_first:
        send(writer, PayOrder(order_id, "70.00", "pay-1"))

    cancelled = send(writer, CancelOrder(order_id, "changed mind"))

    assert (stock(writer, lamp), stock(writer, desk)) == (5, 2)
    assert load(writer, order_id).status == "cancelled"
    assert cancelled.version == (3 if paid_first else 2)
    assert refused(writer, CancelOrder(order_id, "again")) == "INVALID_STATE_TRANSITION"
    assert (stock(writer, lamp), stock(writer, desk)) == (5, 2)


def test_cancelling_releases_stock_even_of_a_discontinued_product(writer: Writer) -> None:
    user_id = register(writer)
    lamp = create_product(writer, stock=5)
    order_id = send(writer, order(user_id, (lamp, 4))).id
    send(writer, DiscontinueProduct(lamp))

    send(writer, CancelOrder(order_id, "out of range"))

    assert stock(writer, lamp) == 5


def test_released_stock_can_be_ordered_again(writer: Writer) -> None:
    user_id = register(writer)
    lamp = create_product(writer, stock=2)
    first = send(writer, order(user_id, (lamp, 2))).id
    assert refused(writer, order(user_id, (lamp, 1))) == "STOCK_INSUFFICIENT"
    send(writer, CancelOrder(first, "changed mind"))
    send(writer, order(user_id, (lamp, 2)))
    assert stock(writer, lamp) == 0


@pytest.mark.parametrize("amount", ["99.79", "99.81", "0.00", "199.60"])
def test_paying_another_amount_than_the_total_is_refused(writer: Writer, amount: str) -> None:
    user_id = register(writer)
    product_id = create_product(writer, price="49.90")
    order_id = send(writer, order(user_id, (product_id, 2))).id

    assert refused(writer, PayOrder(order_id, amount, "pay-1")) == "PAYMENT_AMOUNT_MISMATCH"
    assert load(writer, order_id).status == "placed"


@pytest.mark.parametrize("amount", ["-99.80", "abc", "99.800001", "NaN"])
def test_a_malformed_amount_is_refused(writer: Writer, amount: str) -> None:
    user_id = register(writer)
    product_id = create_product(writer, price="49.90")
    order_id = send(writer, order(user_id, (product_id, 2))).id
    assert refused(writer, PayOrder(order_id, amount, "pay-1")) == "VALIDATION_FAILED"


def test_the_total_written_with_fewer_places_is_the_total(writer: Writer) -> None:
    user_id = register(writer)
    product_id = create_product(writer, price="49.90")
    order_id = send(writer, order(user_id, (product_id, 2))).id
    assert send(writer, PayOrder(order_id, "99.8", "pay-1")).version == 2


def test_an_order_goes_placed_paid_shipped_delivered(writer: Writer) -> None:
    user_id = register(writer)
    product_id = create_product(writer, stock=3, price="49.90")
    order_id = send(writer, order(user_id, (product_id, 1))).id

    assert refused(writer, ShipOrder(order_id, "T-1")) == "INVALID_STATE_TRANSITION"
    assert refused(writer, DeliverOrder(order_id)) == "INVALID_STATE_TRANSITION"
    versions = [
        send(writer, PayOrder(order_id, "49.90", "pay-1")).version,
        send(writer, ShipOrder(order_id, "T-1")).version,
        send(writer, DeliverOrder(order_id)).version,
    ]

    assert versions == [2, 3, 4]
    assert load(writer, order_id).status == "delivered"
    assert refused(writer, PayOrder(order_id, "49.90", "pay-2")) == "INVALID_STATE_TRANSITION"
    assert refused(writer, CancelOrder(order_id, "late")) == "INVALID_STATE_TRANSITION"
    assert stock(writer, product_id) == 2


def test_a_shipped_order_cannot_be_cancelled(writer: Writer) -> None:
    user_id = register(writer)
    product_id = create_product(writer, stock=3, price="49.90")
    order_id = send(writer, order(user_id, (product_id, 1))).id
    send(writer, PayOrder(order_id, "49.90", "pay-1"))
    send(writer, ShipOrder(order_id, "T-1"))

    assert refused(writer, CancelOrder(order_id, "too late")) == "INVALID_STATE_TRANSITION"
    assert stock(writer, product_id) == 2


def test_stock_adjustments_never_make_stock_negative(writer: Writer) -> None:
    user_id = register(writer)
    product_id = create_product(writer, stock=3)
    send(writer, order(user_id, (product_id, 2)))

    assert refused(writer, AdjustStock(product_id, -2, "damaged")) == "STOCK_INSUFFICIENT"
    send(writer, AdjustStock(product_id, -1, "damaged"))
    assert stock(writer, product_id) == 0
