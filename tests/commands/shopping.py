"""Commands the command-bus tests send again and again, and how they look at the store."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

from eventkeep.api.bootstrap import Wiring
from eventkeep.commands.messages import (
    Command,
    CommandContext,
    CommandResult,
    CreateProduct,
    OrderLine,
    PlaceOrder,
    RegisterUser,
)
from eventkeep.domain.errors import DomainError

CONTEXT = CommandContext(actor="test", correlation_id="corr-1")


def event_count(wiring: Wiring) -> int:
    return wiring.shop.recorder.max_notification_id() or 0


def send(wiring: Wiring, command: Command, context: CommandContext = CONTEXT) -> CommandResult:
    return wiring.handle(command, context)


def refused(wiring: Wiring, command: Command, context: CommandContext = CONTEXT) -> str:
    """The error code `command` is refused with; asserts that nothing was written."""
    events = event_count(wiring)
    with pytest.raises(DomainError) as refusal:
        wiring.handle(command, context)
    assert event_count(wiring) == events
    return refusal.value.code


def register(wiring: Wiring, email: str = "ada@example.com") -> UUID:
    return send(wiring, RegisterUser(email, "Ada", "Lovelace")).id


def create_product(
    wiring: Wiring, stock: int = 10, price: str = "49.90", currency: str = "EUR"
) -> UUID:
    command = CreateProduct(
        "KB-01", "Keyboard", "Mechanical", "peripherals", price, currency, stock
    )
    return send(wiring, command).id


def order(user_id: UUID, *lines: tuple[UUID, int]) -> PlaceOrder:
    return PlaceOrder(
        user_id, tuple(OrderLine(product_id, quantity) for product_id, quantity in lines)
    )


def load(wiring: Wiring, stream_id: UUID) -> Any:
    return wiring.shop.repository.get(stream_id)


def stock(wiring: Wiring, product_id: UUID) -> int:
    return load(wiring, product_id).stock
