"""A minimal stand-in for the write side (`commands.shop`, `commands.handlers`) on popo.

It exists only so the API tests run before the real modules land; it keeps just the rules
those tests observe through HTTP: versions, idempotency, unique emails, stock, order states.
Once the real modules exist, the embedded fixture wires them and this file goes.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, event

from commands import messages as m
from domain.errors import DomainError


class NotFound(DomainError):
    code = "NOT_FOUND"


class VersionConflict(DomainError):
    code = "VERSION_CONFLICT"


class EmailTaken(DomainError):
    code = "EMAIL_TAKEN"


class IdempotencyKeyReused(DomainError):
    code = "IDEMPOTENCY_KEY_REUSED"


class InvalidTransition(DomainError):
    code = "INVALID_STATE_TRANSITION"


class StockInsufficient(DomainError):
    code = "STOCK_INSUFFICIENT"


class PaymentMismatch(DomainError):
    code = "PAYMENT_AMOUNT_MISMATCH"


class Stream(Aggregate):
    """Every stream of the stand-in: a kind and a dict of state."""

    @event("Started")
    def __init__(self, kind: str, state: dict[str, Any]) -> None:
        self.kind = kind
        self.state = state

    @event("Changed")
    def change(self, state: dict[str, Any]) -> None:
        self.state = {**self.state, **state}


class StandInShop(Application):
    env = {"PERSISTENCE_MODULE": "eventsourcing.popo"}


# Order transitions: command → (states it may leave, state it reaches).
_ORDER_MOVES: dict[type[m.Command], tuple[set[str], str]] = {
    m.PayOrder: ({"placed"}, "paid"),
    m.ShipOrder: ({"paid"}, "shipped"),
    m.DeliverOrder: ({"shipped"}, "delivered"),
    m.CancelOrder: ({"placed", "paid"}, "cancelled"),
}


class StandInBus:
    def __init__(self, shop: StandInShop) -> None:
        self.shop = shop
        self._answers: dict[str, tuple[str | None, m.CommandResult]] = {}
        self._emails: dict[str, UUID] = {}
        self._lock = threading.Lock()  # requests arrive on several threads

    def handle(self, command: m.Command, context: m.CommandContext) -> m.CommandResult:
        with self._lock:
            key = context.idempotency_key
            if key is not None and key in self._answers:
                request_hash, result = self._answers[key]
                if request_hash != context.request_hash:
                    raise IdempotencyKeyReused("The idempotency key was used for another request.")
                return result
            result = self._decide(command)
            if key is not None:
                self._answers[key] = (context.request_hash, result)
            return result

    def _decide(self, command: m.Command) -> m.CommandResult:
        match command:
            case m.RegisterUser():
                user = Stream("user", {"active": True})
                self._claim(command.email, user.id)
                return self._save(user, created=True)
            case m.ChangeUserEmail():
                user = self._load("user", command.user_id, command.expected_version)
                self._claim(command.email, user.id)
                user.change({})
                return self._save(user)
            case m.DeactivateUser() | m.ReactivateUser():
                user = self._load("user", command.user_id, command.expected_version)
                active = isinstance(command, m.ReactivateUser)
                if user.state["active"] == active:
                    raise InvalidTransition("The user is already in that state.")
                user.change({"active": active})
                return self._save(user)
            case m.ErasePersonalData():
                user = self._load("user", command.user_id, command.expected_version)
                user.change({"erased": True})
                return self._save(user)
            case m.CreateProduct():
                state = {"price": command.price, "stock": command.stock, "active": True}
                return self._save(Stream("product", state), created=True)
            case m.ChangeProductDetails() | m.ChangeProductPrice() | m.DiscontinueProduct():
                product = self._load("product", command.product_id, command.expected_version)
                price = getattr(command, "price", product.state["price"])
                active = not isinstance(command, m.DiscontinueProduct)
                product.change({"price": price, "active": active})
                return self._save(product)
            case m.AdjustStock():
                product = self._load("product", command.product_id, command.expected_version)
                self._move_stock(product, command.delta)
                return self._save(product)
            case m.PlaceOrder():
                return self._place(command)
            case m.PayOrder() | m.ShipOrder() | m.DeliverOrder() | m.CancelOrder():
                return self._move_order(command)
        raise AssertionError(f"the stand-in does not handle {command}")

    def _place(self, command: m.PlaceOrder) -> m.CommandResult:
        user = self._load("user", command.user_id, None)
        if not user.state["active"]:
            raise DomainError("The user is deactivated.")
        total = Decimal(0)
        products, lines = [], []
        for line in command.lines:
            product = self._load("product", line.product_id, None)
            self._move_stock(product, -line.quantity)
            total += Decimal(product.state["price"]) * line.quantity
            products.append(product)
            lines.append((str(line.product_id), line.quantity))
        order = Stream("order", {"status": "placed", "total": str(total), "lines": lines})
        return self._save(order, *products, created=True)

    def _move_order(self, command: Any) -> m.CommandResult:
        order = self._load("order", command.order_id, command.expected_version)
        sources, target = _ORDER_MOVES[type(command)]
        if order.state["status"] not in sources:
            raise InvalidTransition(f"A {order.state['status']} order cannot become {target}.")
        if isinstance(command, m.PayOrder) and command.amount != order.state["total"]:
            raise PaymentMismatch("The amount must equal the order total.")
        released = []
        if isinstance(command, m.CancelOrder):
            for product_id, quantity in order.state["lines"]:
                product = self._load("product", UUID(product_id), None)
                self._move_stock(product, quantity)
                released.append(product)
        order.change({"status": target})
        return self._save(order, *released)

    def _load(self, kind: str, stream_id: UUID, expected_version: int | None) -> Stream:
        try:
            stream = self.shop.repository.get(stream_id)
        except AggregateNotFoundError:
            stream = None
        if not isinstance(stream, Stream) or stream.kind != kind:
            raise NotFound(f"No {kind} {stream_id}.", id=str(stream_id))
        if expected_version is not None and expected_version != stream.version:
            raise VersionConflict(
                "The stream has moved on.", expected=expected_version, actual=stream.version
            )
        return stream

    def _claim(self, email: str, owner: UUID) -> None:
        holder = self._emails.setdefault(email.lower(), owner)
        if holder != owner:
            raise EmailTaken("The email is taken.")

    @staticmethod
    def _move_stock(product: Stream, delta: int) -> None:
        if not product.state["active"] and delta < 0:
            raise DomainError("The product is discontinued.")
        if product.state["stock"] + delta < 0:
            raise StockInsufficient("Not enough stock.", available=product.state["stock"])
        product.change({"stock": product.state["stock"] + delta})

    def _save(self, main: Stream, *others: Stream, created: bool = False) -> m.CommandResult:
        recordings = self.shop.save(main, *others)
        position = recordings[-1].notification.id
        return m.CommandResult(main.id, main.version, position, created)
