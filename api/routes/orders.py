"""Order commands (translated into commands, nothing more) and order queries."""

from __future__ import annotations

from uuid import UUID

import orjson
from fastapi import APIRouter, Response
from pydantic import Field

from eventkeep.api.accounts import CUSTOMERS, Caller, own
from eventkeep.api.dispatch import ClientCommand, IfMatch, OwnCommand
from eventkeep.api.keys import Role
from eventkeep.api.reads import ByIdAnswer, OwnOrderReads, encoded, found
from eventkeep.api.schema import (
    COMMAND_ERRORS,
    Amount,
    Body,
    CommandAnswer,
    Quantity,
    Reason,
    Reference,
)
from eventkeep.commands.messages import (
    CancelOrder,
    DeliverOrder,
    OrderLine,
    PayOrder,
    PlaceOrder,
    ShipOrder,
)

router = APIRouter(prefix="/v1/orders", tags=["orders"], responses=COMMAND_ERRORS)


class LineBody(Body):
    product_id: UUID
    quantity: Quantity


class PlaceOrderBody(Body):
    """Prices are not sent: the order takes each product's current price."""

    user_id: UUID
    lines: list[LineBody] = Field(min_length=1, max_length=100)


class PayBody(Body):
    amount: Amount
    payment_ref: Reference


class ShipBody(Body):
    tracking_number: Reference


class CancelBody(Body):
    reason: Reason


@router.post("", status_code=201, dependencies=CUSTOMERS)
async def place_order(body: PlaceOrderBody, send: OwnCommand, key: Caller) -> CommandAnswer:
    """A customer places orders for themselves only (another user_id: 404)."""
    own(key, body.user_id)
    lines = tuple(OrderLine(line.product_id, line.quantity) for line in body.lines)
    return await send(PlaceOrder(body.user_id, lines))


@router.post("/{order_id}/pay")
async def pay_order(
    order_id: UUID, body: PayBody, version: IfMatch, send: ClientCommand
) -> CommandAnswer:
    return await send(PayOrder(order_id, body.amount, body.payment_ref, version))


@router.post("/{order_id}/ship")
async def ship_order(
    order_id: UUID, body: ShipBody, version: IfMatch, send: ClientCommand
) -> CommandAnswer:
    return await send(ShipOrder(order_id, body.tracking_number, version))


@router.post("/{order_id}/deliver")
async def deliver_order(order_id: UUID, version: IfMatch, send: ClientCommand) -> CommandAnswer:
    return await send(DeliverOrder(order_id, expected_version=version))


@router.post("/{order_id}/cancel")
async def cancel_order(
    order_id: UUID, body: CancelBody, version: IfMatch, send: ClientCommand
) -> CommandAnswer:
    return await send(CancelOrder(order_id, body.reason, version))


@router.get("/{order_id}", dependencies=CUSTOMERS, response_model=ByIdAnswer)
async def get_order(
    order_id: UUID, orders: OwnOrderReads, key: Caller, response: Response
) -> Response:
    body = found(await orders.encoded_async(str(order_id)), "order", order_id)
    if key.role is Role.customer:  # only a customer's answer depends on whose order it is
        own(key, orjson.loads(body)["user_id"], "order", order_id)
    return encoded(body, response)
