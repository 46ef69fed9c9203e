"""The commands of the write side: what a client asks for, before any decision is made.

Field names follow the event catalog of the design contract. Money is a decimal string with
two places (validated by the domain). `expected_version` carries `If-Match`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID


@dataclass(frozen=True)
class Command:
    """Base of every command; `expected_version` fails the command on mismatch (409)."""


@dataclass(frozen=True)
class RegisterUser(Command):
    email: str
    first_name: str
    last_name: str


@dataclass(frozen=True)
class ChangeUserEmail(Command):
    user_id: UUID
    email: str
    expected_version: int | None = None


@dataclass(frozen=True)
class DeactivateUser(Command):
    user_id: UUID
    reason: str
    expected_version: int | None = None


@dataclass(frozen=True)
class ReactivateUser(Command):
    user_id: UUID
    expected_version: int | None = None


@dataclass(frozen=True)
class ErasePersonalData(Command):
    user_id: UUID
    expected_version: int | None = None


@dataclass(frozen=True)
class CreateProduct(Command):
    sku: str
    name: str
    description: str
    category: str
    price: str
    currency: str
    stock: int


@dataclass(frozen=True)
class ChangeProductDetails(Command):
    product_id: UUID
    name: str
    description: str
    expected_version: int | None = None


@dataclass(frozen=True)
class ChangeProductPrice(Command):
    product_id: UUID
    price: str
    currency: str
    expected_version: int | None = None


@dataclass(frozen=True)
class AdjustStock(Command):
    product_id: UUID
    delta: int
    reason: str
    expected_version: int | None = None


@dataclass(frozen=True)
class DiscontinueProduct(Command):
    product_id: UUID
    expected_version: int | None = None


@dataclass(frozen=True)
class OrderLine:
    product_id: UUID
    quantity: int


@dataclass(frozen=True)
class PlaceOrder(Command):
    user_id: UUID
    lines: tuple[OrderLine, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class PayOrder(Command):
    order_id: UUID
    amount: str
    payment_ref: str
    expected_version: int | None = None


@dataclass(frozen=True)
class ShipOrder(Command):
    order_id: UUID
    tracking_number: str
    expected_version: int | None = None


@dataclass(frozen=True)
class DeliverOrder(Command):
    order_id: UUID
    expected_version: int | None = None


@dataclass(frozen=True)
class CancelOrder(Command):
    order_id: UUID
    reason: str
    expected_version: int | None = None


@dataclass(frozen=True)
class CommandContext:
    """Who asks and why: stored as each event's metadata.

    `idempotency_key` with `request_hash` makes a retried command answer what it answered
    the first time, with no new events.
    """

    actor: str
    correlation_id: str
    causation_id: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None


@dataclass(frozen=True)
class CommandResult:
    """What a command answers: the stream, its new version, the last event's global position."""

    id: UUID
    version: int
    position: int
    created: bool = False
