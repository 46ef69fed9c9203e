"""Bounds at the door of the domain: money, counts and text stay within what the read models
store (domain.bounds); a value beyond them is refused with VALIDATION_FAILED naming the field.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from eventkeep.domain.bounds import (
    MAX_ORDER_TOTAL,
    MAX_PRICE,
    MAX_QUANTITY,
    MAX_STOCK,
    MAX_STOCK_DELTA,
    forbidden_character,
)
from eventkeep.domain.errors import InvalidInput
from eventkeep.domain.order import Order
from eventkeep.domain.ordering import cancel_order, place_order
from eventkeep.domain.product import Product
from eventkeep.domain.user import User, normalize_email


def product(price: str = "10.00", stock: int = MAX_STOCK) -> Product:
    return Product.create("SKU-1", "Teapot", "Blue", "kitchen", price, "EUR", stock)


def user() -> User:
    return User.register("ada@example.org", "Ada", "Lovelace")


def refused(call: Callable[[], Any], field: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        call()
    assert caught.value.details["field"] == field, caught.value.details
    return caught.value


def test_the_largest_price_is_accepted_and_one_cent_more_is_not() -> None:
    assert product(str(MAX_PRICE)).price == MAX_PRICE
    refused(lambda: product(str(MAX_PRICE + Decimal("0.01"))), "price")
    refused(lambda: product("999999999999.99"), "price")  # the price the probe found
    item = product()
    refused(lambda: item.change_price(str(MAX_PRICE + Decimal("0.01")), "EUR"), "price")


def test_stock_stays_within_its_bound() -> None:
    refused(lambda: product(stock=MAX_STOCK + 1), "stock")
    item = product(stock=MAX_STOCK - 5)
    item.adjust_stock(5, "delivery")
    assert item.stock == MAX_STOCK
    refused(lambda: item.adjust_stock(1, "delivery"), "delta")
    refused(lambda: item.adjust_stock(-MAX_STOCK_DELTA - 1, "loss"), "delta")


@pytest.mark.parametrize("value", [True, 1.0, "5"])
def test_counts_are_whole_numbers_never_bools_or_strings(value: Any) -> None:
    refused(lambda: product(stock=value), "stock")
    refused(lambda: product().adjust_stock(value, "delivery"), "delta")
    refused(lambda: place_order(user(), [(product(), value)]), "quantity")


def test_an_order_total_beyond_the_bound_is_refused_and_changes_no_product() -> None:
    top = product(str(MAX_PRICE))
    most = int(MAX_ORDER_TOTAL / MAX_PRICE)
    order, _ = place_order(user(), [(top, most)])
    assert order.total == MAX_ORDER_TOTAL
    before = product(str(MAX_PRICE))
    stock = before.stock
    refused(lambda: place_order(user(), [(before, most + 1)]), "lines")
    assert before.stock == stock
    # The probe's order: 100000 units at the top price.
    refused(lambda: place_order(user(), [(product(str(MAX_PRICE)), 100_000)]), "lines")
    refused(lambda: place_order(user(), [(product("0.01"), MAX_QUANTITY + 1)]), "quantity")


def test_the_paid_amount_is_bounded_like_a_total() -> None:
    order, _ = place_order(user(), [(product("1.00"), 1)])
    refused(lambda: order.pay(str(MAX_ORDER_TOTAL + 1), "pay-1"), "amount")


CONTROL = ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\ud800"]


@pytest.mark.parametrize("char", CONTROL)
def test_text_fields_refuse_control_characters_naming_the_field(char: str) -> None:
    bad = f"a{char}b"
    refused(lambda: User.register(f"ada{char}@example.org", "Ada", "L"), "email")
    refused(lambda: User.register("ada@example.org", bad, "L"), "first_name")
    refused(lambda: User.register("ada@example.org", "Ada", bad), "last_name")
    refused(lambda: user().change_email(f"x{char}@example.org"), "email")
    refused(lambda: user().deactivate(bad), "reason")
    refused(lambda: Product.create(bad, "n", "d", "c", "1.00", "EUR", 1), "sku")
    refused(lambda: Product.create("s", bad, "d", "c", "1.00", "EUR", 1), "name")
    refused(lambda: Product.create("s", "n", bad, "c", "1.00", "EUR", 1), "description")
    refused(lambda: Product.create("s", "n", "d", bad, "1.00", "EUR", 1), "category")
    refused(lambda: product().rename(bad, "d"), "name")
    refused(lambda: product().adjust_stock(1, bad), "reason")
    order, products = place_order(user(), [(product("1.00"), 1)])
    refused(lambda: order.pay("1.00", bad), "payment_ref")
    refused(lambda: cancel_order(order, products, bad), "reason")
    order.pay("1.00", "pay-1")
    refused(lambda: order.ship(bad), "tracking_number")


def test_multi_line_fields_keep_line_breaks_and_tabs() -> None:
    item = Product.create("s", "n", "line one\nline two\r\n\tindented", "c", "1.00", "EUR", 1)
    assert "\n" in item.description
    order, products = place_order(user(), [(product("1.00"), 1)])
    cancel_order(order, products, "asked by phone\nsee ticket")
    assert isinstance(order, Order)
    refused(lambda: Product.create("s", "two\nlines", "d", "c", "1.00", "EUR", 1), "name")


def test_emails_are_stored_in_the_one_normalised_form() -> None:
    kelvin = "\u212aelvin@example.org"  # KELVIN SIGN, which NFKC makes a K
    assert normalize_email(kelvin) == "kelvin@example.org"
    assert normalize_email(" Straße@Example.ORG ") == "strasse@example.org"
    assert normalize_email("ａｄａ@example.org") == "ada@example.org"  # fullwidth
    assert User.register(kelvin, "K", "").email == "kelvin@example.org"


@pytest.mark.parametrize("multiline", [False, True])
def test_every_character_is_forbidden_exactly_when_unicode_calls_it_control_or_surrogate(
    multiline: bool,
) -> None:
    """The compiled character class agrees with `unicodedata.category` on every code point
    (tab and line breaks allowed in multi-line text), and names the first one in a text."""
    allowed = "\t\n\r" if multiline else ""
    for code in range(0x110000):
        char = chr(code)
        expected = unicodedata.category(char) in ("Cc", "Cs") and char not in allowed
        assert (forbidden_character(char, multiline=multiline) == char) is expected, hex(code)
    assert forbidden_character("ok\x01then\x02", multiline=multiline) == "\x01"
