"""Product commands (translated into commands, nothing more) and product queries."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response

from eventkeep.api.accounts import CUSTOMERS
from eventkeep.api.dispatch import ClientCommand, IfMatch
from eventkeep.api.reads import ByIdAnswer, PageAnswer, ProductReads, encoded, found, page
from eventkeep.api.schema import (
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
from eventkeep.commands.messages import (
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
async def create_product(body: CreateProductBody, send: ClientCommand) -> CommandAnswer:
    return await send(CreateProduct(**body.model_dump()))


@router.post("/{product_id}/details")
async def change_details(
    product_id: UUID, body: DetailsBody, version: IfMatch, send: ClientCommand
) -> CommandAnswer:
    return await send(ChangeProductDetails(product_id, body.name, body.description, version))


@router.post("/{product_id}/price")
async def change_price(
    product_id: UUID, body: PriceBody, version: IfMatch, send: ClientCommand
) -> CommandAnswer:
    return await send(ChangeProductPrice(product_id, body.price, body.currency, version))


@router.post("/{product_id}/stock")
async def adjust_stock(
    product_id: UUID, body: StockBody, version: IfMatch, send: ClientCommand
) -> CommandAnswer:
    """Adds `delta` (negative to remove) units to the stock; stock never goes below zero."""
    return await send(AdjustStock(product_id, body.delta, body.reason, version))


@router.post("/{product_id}/discontinue")
async def discontinue_product(
    product_id: UUID, version: IfMatch, send: ClientCommand
) -> CommandAnswer:
    return await send(DiscontinueProduct(product_id, expected_version=version))


@router.get("/{product_id}", dependencies=CUSTOMERS, response_model=ByIdAnswer)
async def get_product(product_id: UUID, products: ProductReads, response: Response) -> Response:
    body = await products.encoded_async(str(product_id))
    return encoded(found(body, "product", product_id), response)


@router.get("", dependencies=CUSTOMERS, response_model=PageAnswer)
def search_products(
    products: ProductReads,
    response: Response,
    q: Annotated[
        str | None, Query(max_length=200, description="Words of name or description.")
    ] = None,
    category: Category | None = None,
    min_price: Money | None = None,
    max_price: Money | None = None,
    status: Literal["active", "discontinued"] | None = None,
    in_stock: Annotated[
        bool | None, Query(description="Only products with stock (or none).")
    ] = None,
    sort: Literal["name", "price", "-price", "newest"] = "name",
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    """Full-text search with filters, a page at a time (`next_cursor` for the next)."""
    return page(
        lambda: products.search(
            q=q,
            category=category,
            min_price=min_price,
            max_price=max_price,
            status=status,
            in_stock=in_stock,
            sort=sort,
            cursor=cursor,
            limit=limit,
        ),
        response,
    )
