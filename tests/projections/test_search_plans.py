"""Every filter and sort of `GET /v1/products` is answered from an index that stops after the
page: at a realistic size (100k products, PostgreSQL's own statistics), no plan of any
combination sorts rows it read by scanning the whole table (a Sort over a Seq Scan), nor
scans the whole table at all. A plan that does costs every search the size of the shop."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from eventkeep.projections.database import PostgresDatabase
from eventkeep.projections.products import SORTS, ProductQueries
from eventkeep.projections.readmodels import ReadModels
from tests.conftest_services import POSTGRES_URL, require_env

PRODUCTS = 100_000

# A shop's products: 16 categories, two-word names of 16 adjectives by 18 nouns, prices from
# 1 to 1,000 EUR, created in order; 1 % out of stock, 2 % discontinued.
FILL = """
INSERT INTO {table} (id, version, sku, name, description, category, price_cents, currency,
                     stock, status, created_at, updated_at)
SELECT md5(i::text), 1, 'SKU-' || i, adjective || ' ' || noun || ' ' || i,
       'A ' || adjective || ' ' || noun || ', number ' || i || ' of the range.',
       (ARRAY['peripherals','lighting','furniture','kitchen','audio','outdoor','tools',
              'office','sports','photo','music','home','garden','toys','books','health'])
         [1 + i % 16],
       100 + (i * 7919) % 99900, 'EUR',
       CASE WHEN i % 100 = 0 THEN 0 ELSE 50 END,
       CASE WHEN i % 50 = 1 THEN 'discontinued' ELSE 'active' END,
       to_char(timestamp '2026-01-01' + i * interval '1 minute', 'YYYY-MM-DD"T"HH24:MI:SS'),
       '2026-11-30T00:00:00'
FROM generate_series(1, {count}) AS i,
     LATERAL (SELECT (ARRAY['red','quiet','wireless','ergonomic','compact','heavy','smart',
                            'vintage','solar','modular','waterproof','silent','portable',
                            'premium','classic','tiny'])[1 + i % 16] AS adjective,
                     (ARRAY['keyboard','lamp','chair','kettle','speaker','backpack','monitor',
                            'drill','tent','blender','camera','guitar','watch','desk',
                            'bicycle','printer','pillow','router'])[1 + (i / 16) % 18] AS noun
             ) AS words
"""

FILTERS: dict[str, tuple[Any, ...]] = {
    "q": (None, "lamp", "red wireless"),
    "category": (None, "kitchen"),
    "price": (None, ("1.00", "500.00"), ("200.00", None)),
    "status": (None, "active", "discontinued"),
    "in_stock": (None, True, False),
    "sort": tuple(SORTS),
}


@pytest.fixture(scope="module")
def connection() -> Iterator[psycopg.Connection]:
    with psycopg.connect(require_env(POSTGRES_URL), autocommit=True) as connection:
        yield connection


@pytest.fixture(scope="module")
def products(connection: psycopg.Connection) -> Iterator[ProductQueries]:
    prefix = f"plans{uuid.uuid4().hex[:8]}_"
    models = ReadModels(PostgresDatabase(require_env(POSTGRES_URL)), prefix, names=["products"])
    models.migrate()
    table = models.table("products")
    connection.execute(FILL.format(table=table, count=PRODUCTS))  # type: ignore[arg-type]
    connection.execute(f"ANALYZE {table}")
    try:
        yield ProductQueries(models["products"])
    finally:
        models.drop()
        models.close()


def combinations() -> Iterator[dict[str, Any]]:
    for q, category, price, status, in_stock, sort in itertools.product(*FILTERS.values()):
        min_price, max_price = price or (None, None)
        yield {
            "q": q,
            "category": category,
            "min_price": min_price,
            "max_price": max_price,
            "status": status,
            "in_stock": in_stock,
            "sort": sort,
        }


def plan_of(
    connection: psycopg.Connection, products: ProductQueries, filters: dict[str, Any]
) -> dict[str, Any]:
    statement, params = products.search_statement(**filters)
    row = connection.execute(f"EXPLAIN (FORMAT JSON) {statement}", params).fetchone()
    assert row is not None
    return row[0][0]["Plan"]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def test_no_search_scans_or_sorts_the_whole_table(
    connection: psycopg.Connection, products: ProductQueries
) -> None:
    table = products.model.table()
    bad = []
    for filters in combinations():
        plan = plan_of(connection, products, filters)
        scans = [n for n in nodes(plan) if n["Node Type"] == "Seq Scan"]
        sorted_scans = [
            n
            for n in nodes(plan)
            if n["Node Type"] in ("Sort", "Incremental Sort")
            and any(c["Node Type"] == "Seq Scan" for c in nodes(n))
        ]
        if any(n.get("Relation Name") == table for n in scans) or sorted_scans:
            shown = {k: v for k, v in filters.items() if v is not None}
            bad.append((shown, [n["Node Type"] for n in nodes(plan)]))
    assert not bad, f"{len(bad)} combinations read the whole table, e.g. {bad[:5]}"


def test_a_page_of_a_common_search_stops_after_the_page(
    connection: psycopg.Connection, products: ProductQueries
) -> None:
    """The plain shop page (a category, a sort) walks an index in the page's order and stops
    after the page, never sorting the category. Which index is the planner's choice: the
    (category, sort) one, or for a common category the sort's own, filtered as it walks
    (both seen, depending on the table's statistics)."""
    for sort in SORTS:
        plan = plan_of(connection, products, {"category": "kitchen", "sort": sort})
        assert plan["Node Type"] == "Limit", plan
        assert plan["Plans"][0]["Node Type"] in ("Index Scan", "Index Scan Backward"), plan


def test_a_search_reads_only_the_columns_it_shows(
    connection: psycopg.Connection, products: ProductQueries
) -> None:
    """Not the search vector: it is not shown, and sending and parsing it cost every row of
    every page (a `SELECT *` did)."""
    statement, params = products.search_statement(q="red lamp", category="kitchen")
    row = connection.execute(f"EXPLAIN (VERBOSE, FORMAT JSON) {statement}", params).fetchone()
    assert row is not None
    output = row[0][0]["Plan"]["Output"]
    assert not any(column.endswith(".search") or column == "search" for column in output), output
    assert len(output) == len(products.model.columns), output
