"""Commands the command-bus tests send again and again, and how they look at the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pytest

from eventkeep.commands.handlers import CommandBus
from eventkeep.commands.messages import (
    Command,
    CommandContext,
    CommandResult,
    CreateProduct,
    OrderLine,
    PlaceOrder,
    RegisterUser,
)
from eventkeep.commands.ports import WriteStore
from eventkeep.domain.errors import DomainError

CONTEXT = CommandContext(actor="test", correlation_id="corr-1")


@dataclass
class Writer:
    """The command bus on one write store, and how a test looks at what it wrote."""

    bus: CommandBus
    store: WriteStore
    count: Callable[[], int]  # events in the log
    history: Callable[[UUID], list[Any]]  # a stream's domain events, in version order

    def handle(self, command: Command, context: CommandContext) -> CommandResult:
        return self.bus.handle(command, context)


def event_count(writer: Writer) -> int:
    return writer.count()


def send(writer: Writer, command: Command, context: CommandContext = CONTEXT) -> CommandResult:
    return writer.handle(command, context)


def refused(writer: Writer, command: Command, context: CommandContext = CONTEXT) -> str:
    """The error code `command` is refused with; asserts that nothing was written."""
    events = event_count(writer)
    with pytest.raises(DomainError) as refusal:
        writer.handle(command, context)
    assert event_count(writer) == events
    return refusal.value.code


def register(writer: Writer, email: str = "ada@example.com") -> UUID:
    return send(writer, RegisterUser(email, "Ada", "Lovelace")).id


def create_product(
    writer: Writer, stock: int = 10, price: str = "49.90", currency: str = "EUR"
) -> UUID:
    command = CreateProduct(
        "KB-01", "Keyboard", "Mechanical", "peripherals", price, currency, stock
    )
    return send(writer, command).id


def order(user_id: UUID, *lines: tuple[UUID, int]) -> PlaceOrder:
    return PlaceOrder(
        user_id, tuple(OrderLine(product_id, quantity) for product_id, quantity in lines)
    )


def load(writer: Writer, stream_id: UUID) -> Any:
    return writer.store.load(stream_id)


def stock(writer: Writer, product_id: UUID) -> int:
    return load(writer, product_id).stock
