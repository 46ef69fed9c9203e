"""Product queries over GraphQL at `/v1/graphql` (queries only: commands stay REST).

The same door as `GET /v1/products`: the request's API key, its role and rate limit, and
`X-Min-Position` / `X-Projection-Position` come from the REST dependencies (`api/reads.py`);
the products come from the products read model's queries, never its tables. A query is held
to a depth, a number of tokens and of aliases, and a page size before anything is read: over a
limit it answers a GraphQL error, not a slow scan. Products by id, each product's order count
and its daily sales are loaded in batches (one statement per kind of field and request, however
many products a page holds). `orderCount` and `dailySales` need the analyst role (or admin).
"""

# No `from __future__ import annotations`: strawberry and FastAPI evaluate the annotations.

import datetime
import enum
from collections import defaultdict
from typing import Annotated, Any
from uuid import UUID

import strawberry
from fastapi import Depends, Request
from graphql import GraphQLError
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from strawberry.dataloader import DataLoader
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.fastapi import GraphQLRouter
from strawberry.permission import BasePermission
from strawberry.types import ExecutionContext, Info

from eventkeep.api.accounts import customer_token
from eventkeep.api.auth import authenticated
from eventkeep.api.keys import ApiKey, Role
from eventkeep.api.reads import reader
from eventkeep.api.schema import Category, Money
from eventkeep.projections.cursors import InvalidCursor, encode_cursor
from eventkeep.projections.daily_sales import SalesQueries
from eventkeep.projections.products import SORTS, ProductQueries
from eventkeep.projections.readmodel import to_cents

MAX_DEPTH = 6
MAX_TOKENS = 2000
MAX_ALIASES = 10
MAX_PAGE = 100  # as `limit` of GET /v1/products
MAX_SALES_DAYS = 366

_money = TypeAdapter(Money)
_category = TypeAdapter(Category)


def _error(code: str, message: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code})


# --- the schema --------------------------------------------------------------------------


@strawberry.enum(description="The order of a products page, as `sort` of GET /v1/products.")
class ProductSort(enum.Enum):
    NAME = "name"
    PRICE = "price"
    PRICE_DESC = "-price"
    NEWEST = "newest"


@strawberry.enum
class ProductStatus(enum.Enum):
    ACTIVE = "active"
    DISCONTINUED = "discontinued"


class AnalystsOnly(BasePermission):
    message = "This field needs the analyst role."
    error_extensions = {"code": "FORBIDDEN"}

    def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        key: ApiKey = info.context["key"]
        return key.role in (Role.analyst, Role.admin)


@strawberry.type(description="Units and revenue of a product on one day and currency.")
class DailySale:
    day: datetime.date
    units: int
    revenue: str = strawberry.field(description="A decimal string, as REST's money.")
    currency: str


@strawberry.type
class Product:
    id: strawberry.ID
    version: int
    sku: str
    name: str
    description: str
    category: str
    price: str = strawberry.field(description="A decimal string, as REST's money.")
    currency: str
    stock: int
    status: ProductStatus
    created_at: str

    @strawberry.field(
        permission_classes=[AnalystsOnly],
        description="Orders not cancelled that hold this product (analyst role).",
    )
    async def order_count(self, info: Info) -> int:
        loader: DataLoader[str, int] = info.context["order_counts"]
        return await loader.load(str(self.id))

    @strawberry.field(
        permission_classes=[AnalystsOnly],
        description=f"Sales per day from `start` to `end` (at most {MAX_SALES_DAYS} days;"
        " analyst role).",
    )
    async def daily_sales(
        self, info: Info, start: datetime.date, end: datetime.date
    ) -> list[DailySale]:
        if end < start or (end - start).days >= MAX_SALES_DAYS:
            raise _error(
                "VALIDATION_FAILED", f"`start` to `end` must span 1 to {MAX_SALES_DAYS} days."
            )
        loader: DataLoader[str, list[dict[str, Any]]] = info.context["sales"][(start, end)]
        rows = await loader.load(str(self.id))
        return [
            DailySale(
                day=datetime.date.fromisoformat(row["day"]),
                units=row["units"],
                revenue=row["revenue"],
                currency=row["currency"],
            )
            for row in rows
        ]


def _product(row: dict[str, Any]) -> Product:
    return Product(
        id=strawberry.ID(row["id"]),
        version=row["version"],
        sku=row["sku"],
        name=row["name"],
        description=row["description"],
        category=row["category"],
        price=row["price"],
        currency=row["currency"],
        stock=row["stock"],
        status=ProductStatus(row["status"]),
        created_at=row["created_at"],
    )


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class ProductEdge:
    cursor: str
    node: Product


@strawberry.type(description="A page of products, Relay-style.")
class ProductConnection:
    edges: list[ProductEdge]
    page_info: PageInfo


def _edge_cursor(row: dict[str, Any], sort: ProductSort) -> str:
    column = SORTS[sort.value][0]
    value = to_cents(row["price"]) if column == "price_cents" else row[column]
    return encode_cursor(value, row["id"])


def _money_or_none(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        return _money.validate_python(value)
    except ValidationError:
        raise _error("VALIDATION_FAILED", f"`{name}` is not an amount of money.") from None


@strawberry.type
class Query:
    @strawberry.field(description="A product by id; null when there is none.")
    async def product(self, info: Info, id: strawberry.ID) -> Product | None:
        try:
            product_id = str(UUID(str(id)))
        except ValueError:
            return None
        loader: DataLoader[str, dict[str, Any] | None] = info.context["products_by_id"]
        row = await loader.load(product_id)
        return None if row is None else _product(row)

    @strawberry.field(
        description="Full-text search with filters, a page at a time (as GET /v1/products)."
    )
    async def products(
        self,
        info: Info,
        q: str | None = None,
        category: str | None = None,
        min_price: str | None = None,
        max_price: str | None = None,
        status: ProductStatus | None = None,
        in_stock: bool | None = None,
        sort: ProductSort = ProductSort.NAME,
        first: int = 20,
        after: str | None = None,
    ) -> ProductConnection:
        if not 1 <= first <= MAX_PAGE:
            raise _error("VALIDATION_FAILED", f"`first` must be 1 to {MAX_PAGE}.")
        if q is not None and len(q) > 200:
            raise _error("VALIDATION_FAILED", "`q` is longer than 200 characters.")
        if after is not None and len(after) > 500:
            raise _error("INVALID_CURSOR", "the cursor is not one this API gave")
        if category is not None:
            try:
                category = _category.validate_python(category)
            except ValidationError:
                raise _error("VALIDATION_FAILED", "`category` is not a category.") from None
        products: ProductQueries = info.context["products"]
        low, high = _money_or_none(min_price, "minPrice"), _money_or_none(max_price, "maxPrice")

        def search() -> tuple[list[dict[str, Any]], str | None]:
            return products.search(
                q=q,
                category=category,
                min_price=low,
                max_price=high,
                status=None if status is None else status.value,
                in_stock=in_stock,
                sort=sort.value,
                cursor=after,
                limit=first,
            )

        try:
            rows, next_cursor = await run_in_threadpool(search)
        except InvalidCursor as error:
            raise _error("INVALID_CURSOR", str(error)) from None
        info.context["products_by_id"].prime_many({row["id"]: row for row in rows})
        edges = [ProductEdge(cursor=_edge_cursor(row, sort), node=_product(row)) for row in rows]
        return ProductConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=next_cursor is not None,
                end_cursor=edges[-1].cursor if edges else None,
            ),
        )


class _Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Errors a query earned (a limit, a role, a bad argument) are answered, not logged
        (a client could fill the log); only unexpected ones are."""
        unexpected = [
            error
            for error in errors
            if error.original_error is not None
            and not isinstance(error.original_error, GraphQLError)
        ]
        if unexpected:
            super().process_errors(unexpected, execution_context)


schema = _Schema(
    query=Query,
    extensions=[
        lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
    ],
)


def printed_schema() -> str:
    """The schema in SDL, as docs/graphql.schema holds it."""
    return schema.as_str() + "\n"


# --- the request's context: the REST door's dependencies and the batch loaders ------------


def _loaders(products: ProductQueries, sales: SalesQueries) -> dict[str, Any]:
    async def products_by_id(ids: list[str]) -> list[dict[str, Any] | None]:
        found = await run_in_threadpool(products.by_ids, ids)
        return [found.get(i) for i in ids]

    async def order_counts(ids: list[str]) -> list[int]:
        counts = await run_in_threadpool(sales.order_counts, ids)
        return [counts.get(i, 0) for i in ids]

    class SalesLoaders(dict[tuple[datetime.date, datetime.date], DataLoader[str, Any]]):
        """One loader per (start, end): a request asking two ranges makes two statements."""

        def __missing__(self, span: tuple[datetime.date, datetime.date]) -> DataLoader[str, Any]:
            start, end = (day.isoformat() for day in span)

            async def load(ids: list[str]) -> list[list[dict[str, Any]]]:
                rows = await run_in_threadpool(lambda: sales.of_products(ids, start=start, end=end))
                by_product: dict[str, list[dict[str, Any]]] = defaultdict(list)
                for row in rows:
                    by_product[row["product_id"]].append(row)
                return [by_product.get(i, []) for i in ids]

            self[span] = loader = DataLoader(load_fn=load)
            return loader

    return {
        "products_by_id": DataLoader(load_fn=products_by_id),
        "order_counts": DataLoader(load_fn=order_counts),
        "sales": SalesLoaders(),
    }


# As GET /v1/products (clients and customers), and for analysts too (their fields need a page
# of products to sit on).
GraphQLProductReads = Annotated[
    ProductQueries, Depends(reader(Role.client, "products", Role.analyst, Role.customer))
]


async def _context(
    request: Request,
    products: GraphQLProductReads,
    key: Annotated[ApiKey, Depends(authenticated)],
) -> dict[str, Any]:
    """`reader` checks the key, its role and rate limit, waits for X-Min-Position and sets
    X-Projection-Position, as for GET /v1/products; `authenticated` answers the same key
    again (FastAPI runs a dependency once per request)."""
    sales = request.app.state.wiring.queries.of("daily_sales")
    assert isinstance(sales, SalesQueries)
    return {"key": key, "products": products, **_loaders(products, sales)}


router: GraphQLRouter[dict[str, Any], None] = GraphQLRouter(
    schema,
    path="/v1/graphql",
    context_getter=_context,
    graphql_ide=None,  # no GraphiQL page: the API serves nothing from a CDN
    allow_queries_via_get=False,
    multipart_uploads_enabled=False,
    tags=["graphql"],
    dependencies=[Depends(customer_token)],  # the OpenAPI description shows the scheme
)
