"""The Product aggregate: catalogue data, price and the available stock.

`stock` is what can still be ordered: a reservation takes from it, a release gives back, an
adjustment adds its delta; it never goes below zero.
"""

from __future__ import annotations

from decimal import Decimal

from eventsourcing.domain import Aggregate, event

from eventkeep.domain.bounds import (
    MAX_LINES,
    MAX_PRICE,
    MAX_QUANTITY,
    MAX_STOCK,
    MAX_STOCK_DELTA,
    plain_text,
    whole_number,
)
from eventkeep.domain.errors import InvalidInput, ProductNotActive, StockInsufficient
from eventkeep.domain.money import format_amount, parse_amount, parse_currency


def _price(value: str | Decimal) -> str:
    return format_amount(parse_amount(value, field="price", maximum=MAX_PRICE))


class Product(Aggregate):
    # Snapshot schema: v1 state kept the price in cents, like the v1 events; v2 a Decimal.
    class_version = 2

    @staticmethod
    def upcast_v1_v2(state: dict[str, object]) -> None:
        cents = state.pop("price_cents")
        state["price"] = (Decimal(str(cents)) / 100).quantize(Decimal("0.01"))
        state["currency"] = "USD"

    class ProductCreated(Aggregate.Created):
        sku: str
        name: str
        description: str
        category: str
        price: str
        currency: str
        stock: int
        class_version = 2

    class ProductRenamed(Aggregate.Event):
        name: str
        description: str

    class ProductPriceChanged(Aggregate.Event):
        price: str
        currency: str
        class_version = 2

    class ProductStockAdjusted(Aggregate.Event):
        delta: int
        reason: str

    class ProductStockReserved(Aggregate.Event):
        order_id: str
        quantity: int

    class ProductStockReleased(Aggregate.Event):
        order_id: str
        quantity: int

    class ProductDiscontinued(Aggregate.Event):
        pass

    @event(ProductCreated)
    def __init__(
        self,
        sku: str,
        name: str,
        description: str,
        category: str,
        price: str,
        currency: str,
        stock: int,
    ) -> None:
        self.sku = sku
        self.name = name
        self.description = description
        self.category = category
        self.price = Decimal(price)
        self.currency = currency
        self.stock = stock
        self.active = True

    @classmethod
    def create(
        cls,
        sku: str,
        name: str,
        description: str,
        category: str,
        price: str | Decimal,
        currency: str,
        stock: int,
    ) -> Product:
        whole_number(stock, "stock", low=0, high=MAX_STOCK)
        return cls(
            plain_text(sku, "sku"),
            plain_text(name, "name"),
            plain_text(description, "description", multiline=True),
            plain_text(category, "category"),
            _price(price),
            parse_currency(currency),
            stock,
        )

    def rename(self, name: str, description: str) -> None:
        self._require_active()
        self._renamed(
            plain_text(name, "name"), plain_text(description, "description", multiline=True)
        )

    def change_price(self, price: str | Decimal, currency: str) -> None:
        self._require_active()
        self._price_changed(_price(price), parse_currency(currency))

    def adjust_stock(self, delta: int, reason: str) -> None:
        whole_number(delta, "delta", low=-MAX_STOCK_DELTA, high=MAX_STOCK_DELTA)
        plain_text(reason, "reason", multiline=True)
        if self.stock + delta > MAX_STOCK:
            raise InvalidInput(
                f"stock would exceed {MAX_STOCK}",
                field="delta",
                available=self.stock,
                delta=delta,
            )
        if self.stock + delta < 0:
            raise StockInsufficient(
                "stock cannot go below zero",
                product_id=str(self.id),
                available=self.stock,
                delta=delta,
            )
        self._stock_adjusted(delta, reason)

    def reserve(self, order_id: str, quantity: int) -> None:
        self._require_active()
        whole_number(quantity, "quantity", low=1, high=MAX_QUANTITY * MAX_LINES)
        if quantity > self.stock:
            raise StockInsufficient(
                "not enough stock",
                product_id=str(self.id),
                requested=quantity,
                available=self.stock,
            )
        self._stock_reserved(order_id, quantity)

    def release(self, order_id: str, quantity: int) -> None:
        self._stock_released(order_id, quantity)

    def discontinue(self) -> None:
        self._require_active()
        self._discontinued()

    def _require_active(self) -> None:
        if not self.active:
            raise ProductNotActive("the product is discontinued", product_id=str(self.id))

    @event(ProductRenamed)
    def _renamed(self, name: str, description: str) -> None:
        self.name = name
        self.description = description

    @event(ProductPriceChanged)
    def _price_changed(self, price: str, currency: str) -> None:
        self.price = Decimal(price)
        self.currency = currency

    @event(ProductStockAdjusted)
    def _stock_adjusted(self, delta: int, reason: str) -> None:
        self.stock += delta

    @event(ProductStockReserved)
    def _stock_reserved(self, order_id: str, quantity: int) -> None:
        self.stock -= quantity

    @event(ProductStockReleased)
    def _stock_released(self, order_id: str, quantity: int) -> None:
        self.stock += quantity

    @event(ProductDiscontinued)
    def _discontinued(self) -> None:
        self.active = False
