"""Product commands: translate the request into a command, nothing more."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from api.dispatch import ClientCommand, IfMatch
from api.schema import (
    COMMAND_ERRORS,
    Body,
    Category,
    CommandAnswer,
    Count,
    Currency,
    Delta,
    Description,
    Money,
    ProductName,
    Reason,
    Sku,
)
from commands.messages import (
    AdjustStock,
    ChangeProductDetails,
    ChangeProductPrice,
    CreateProduct,
    DiscontinueProduct,
)

router = APIRouter(prefix="/v1/products", tags=["products"], responses=COMMAND_ERRORS)


class CreateProductBody(Body):
    sku: Sku
    name: ProductName
    description: Description = ""
    category: Category
    price: Money
    currency: Currency
    stock: Count = 0


class DetailsBody(Body):
    name: ProductName
    description: Description


class PriceBody(Body):
    price: Money
    currency: Currency


class StockBody(Body):
    delta: Delta
    reason: Reason


@router.post("", status_code=201)
def create_product(body: CreateProductBody, send: ClientCommand) -> CommandAnswer:
    return send(CreateProduct(**body.model_dump()))


@router.post("/{product_id}/details")
def change_details(
    product_id: UUID, body: DetailsBody, version: IfMatch, send: ClientCommand
) -> CommandAnswer:
    return send(ChangeProductDetails(product_id, body.name, body.description, version))


@router.post("/{product_id}/price")
def change_price(
    product_id: UUID, body: PriceBody, version: IfMatch, send: ClientCommand
) -> CommandAnswer:
    return send(ChangeProductPrice(product_id, body.price, body.currency, version))


@router.post("/{product_id}/stock")
def adjust_stock(
    product_id: UUID, body: StockBody, version: IfMatch, send: ClientCommand
) -> CommandAnswer:
    """Adds `delta` (negative to remove) units to the stock; stock never goes below zero."""
    return send(AdjustStock(product_id, body.delta, body.reason, version))


@router.post("/{product_id}/discontinue")
def discontinue_product(product_id: UUID, version: IfMatch, send: ClientCommand) -> CommandAnswer:
    return send(DiscontinueProduct(product_id, expected_version=version))
