"""Decisions that span aggregates: placing an order reserves stock on every product in the
same decision; cancelling gives it back. Pure: the caller loads and saves."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from eventkeep.domain.bounds import MAX_LINES, MAX_ORDER_TOTAL, MAX_QUANTITY, whole_number
from eventkeep.domain.errors import CurrencyMismatch, InvalidInput, StockInsufficient, UserNotActive
from eventkeep.domain.money import format_amount
from eventkeep.domain.order import Order
from eventkeep.domain.product import Product
from eventkeep.domain.user import User


def place_order(user: User, lines: Sequence[tuple[Product, int]]) -> tuple[Order, list[Product]]:
    """A new order at the products' current prices, with its stock reserved; answers the
    order and each product it changed (once, however many lines name it)."""
    if not lines:
        raise InvalidInput("an order needs at least one line", field="lines")
    if len(lines) > MAX_LINES:
        raise InvalidInput(f"an order has at most {MAX_LINES} lines", field="lines")
    if not user.active:
        raise UserNotActive("the user is deactivated", user_id=str(user.id))
    currencies = {product.currency for product, _ in lines}
    if len(currencies) > 1:
        raise CurrencyMismatch("all lines must be in one currency", currencies=sorted(currencies))
    wanted: dict[object, int] = {}
    for product, quantity in lines:
        whole_number(quantity, "quantity", low=1, high=MAX_QUANTITY)
        product._require_active()
        wanted[product.id] = wanted.get(product.id, 0) + quantity
    # Every product checked for all its lines before anything is reserved: a refused order
    # leaves every product as it was.
    for product, _ in lines:
        if wanted[product.id] > product.stock:
            raise StockInsufficient(
                "not enough stock",
                product_id=str(product.id),
                requested=wanted[product.id],
                available=product.stock,
            )
    total = sum((product.price * quantity for product, quantity in lines), Decimal("0"))
    if total > MAX_ORDER_TOTAL:
        # The read models keep totals and a day's revenue as 64-bit cents (domain.bounds).
        raise InvalidInput(
            f"an order's total is at most {MAX_ORDER_TOTAL}",
            field="lines",
            total=format_amount(total),
            maximum=str(MAX_ORDER_TOTAL),
        )
    order = Order(
        user_id=str(user.id),
        lines=[
            {
                "product_id": str(product.id),
                "quantity": quantity,
                "unit_price": format_amount(product.price),
            }
            for product, quantity in lines
        ],
        total=format_amount(total),
        currency=currencies.pop(),
    )
    for product, quantity in lines:
        product.reserve(str(order.id), quantity)
    return order, list({product.id: product for product, _ in lines}.values())


def cancel_order(order: Order, products: Sequence[Product], reason: str) -> None:
    """Cancels the order and releases what each of its lines reserved."""
    order.cancel(reason)
    by_id = {str(product.id): product for product in products}
    for line in order.lines:
        by_id[line["product_id"]].release(str(order.id), line["quantity"])


def products_of(order: Order) -> list[str]:
    """The distinct product ids of an order's lines, in line order."""
    return list(dict.fromkeys(line["product_id"] for line in order.lines))
