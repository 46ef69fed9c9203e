"""The Order aggregate: its lines and total, and the status machine

    placed → paid → shipped → delivered,   placed | paid → cancelled.

Placing and cancelling touch products too (reserve, release): see `domain.ordering`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from eventsourcing.domain import Aggregate, event

from eventkeep.domain.bounds import MAX_ORDER_TOTAL, plain_text
from eventkeep.domain.errors import InvalidTransition, PaymentMismatch
from eventkeep.domain.money import parse_amount

PLACED, PAID, SHIPPED, DELIVERED, CANCELLED = "placed", "paid", "shipped", "delivered", "cancelled"


class Order(Aggregate):
    class OrderPlaced(Aggregate.Created):
        user_id: str
        lines: list[dict[str, Any]]
        total: str
        currency: str
        class_version = 2

    class OrderPaid(Aggregate.Event):
        amount: str
        payment_ref: str

    class OrderShipped(Aggregate.Event):
        tracking_number: str

    class OrderDelivered(Aggregate.Event):
        pass

    class OrderCancelled(Aggregate.Event):
        # The ordering user: the reason is sealed under that user's data key (catalog).
        user_id: str | None
        reason: str | None
        class_version = 2

    @event(OrderPlaced)
    def __init__(self, user_id: str, lines: list[dict[str, Any]], total: str, currency: str):
        self.user_id = user_id
        self.lines = lines
        self.total = Decimal(total)
        self.currency = currency
        self.status = PLACED

    def pay(self, amount: str, payment_ref: str) -> None:
        self._require(PAID, PLACED)
        plain_text(payment_ref, "payment_ref")
        paid = parse_amount(amount, field="amount", maximum=MAX_ORDER_TOTAL)
        if paid != self.total:
            raise PaymentMismatch(
                "the amount must equal the order total",
                order_id=str(self.id),
                amount=str(paid),
                total=str(self.total),
            )
        self._paid(str(paid), payment_ref)

    def ship(self, tracking_number: str) -> None:
        self._require(SHIPPED, PAID)
        self._shipped(plain_text(tracking_number, "tracking_number"))

    def deliver(self) -> None:
        self._require(DELIVERED, SHIPPED)
        self._delivered()

    def cancel(self, reason: str) -> None:
        self._require(CANCELLED, PLACED, PAID)
        self._cancelled(self.user_id, plain_text(reason, "reason", multiline=True))

    def _require(self, target: str, *allowed: str) -> None:
        if self.status not in allowed:
            raise InvalidTransition(
                f"an order that is {self.status} cannot become {target}",
                order_id=str(self.id),
                status=self.status,
                requested=target,
            )

    @event(OrderPaid)
    def _paid(self, amount: str, payment_ref: str) -> None:
        self.status = PAID

    @event(OrderShipped)
    def _shipped(self, tracking_number: str) -> None:
        self.status = SHIPPED

    @event(OrderDelivered)
    def _delivered(self) -> None:
        self.status = DELIVERED

    @event(OrderCancelled)
    def _cancelled(self, user_id: str | None, reason: str | None) -> None:
        self.status = CANCELLED
