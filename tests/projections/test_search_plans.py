"""Every filter and sort of `GET /v1/products` is answered from an index that stops after the
page: at a realistic size (100k products, PostgreSQL's own statistics), no plan of any
combination sorts rows it read by scanning the whole table (a Sort over a Seq Scan), nor
scans the whole table at all; and run (EXPLAIN ANALYZE), no search reads more rows than its
page's share of the walk (`WALK_PER_ROW`) and, when that finds too few, its matches
(`SearchPlan`). A plan that does costs every search the size of the shop, or of a category.

The shop below is the planner's worst case: each adjective is in one category only (so a word
and another category never meet, which the planner, taking them as independent, cannot
know), and names start with their adjective (so a word's products lie together in the name
order, far from its start)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from eventkeep.projections.database import PostgresDatabase
from eventkeep.projections.products import SORTS, WALK_PER_ROW, ProductQueries, SearchPlan
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
    # 'red' is a peripheral only and its names sort after half the shop's; 'zebra' is in no
    # product; 'lamp' and 'red wireless' (never both) as a shop's visitors type them.
    "q": (None, "lamp", "red wireless", "red", "zebra"),
    "category": (None, "kitchen"),
    "price": (None, ("1.00", "500.00"), ("200.00", None), ("10.00", "10.50")),
    "status": (None, "active", "discontinued"),
    "in_stock": (None, True, False),
    "sort": tuple(SORTS),
}
PAGE = 21  # the default page of 20 and the row that says whether there is another


@pytest.fixture(scope="module")
def products() -> Iterator[ProductQueries]:
    prefix = f"plans{uuid.uuid4().hex[:8]}_"
    models = ReadModels(PostgresDatabase(require_env(POSTGRES_URL)), prefix, names=["products"])
    models.migrate()
    table = models.table("products")
    with psycopg.connect(require_env(POSTGRES_URL), autocommit=True) as connection:
        connection.execute(FILL.format(table=table, count=PRODUCTS))  # type: ignore[arg-type]
        connection.execute(f"VACUUM ANALYZE {table}")
    try:
        yield ProductQueries(models["products"])
    finally:
        models.drop()
        models.close()


@pytest.fixture
def cursor(products: ProductQueries) -> Iterator[Any]:
    """A cursor of the read models' own pool, planning as `search` plans."""
    with products.model.db.reading(custom_plans=True) as cursor:
        yield cursor


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


def explained(cursor: Any, statement: tuple[str, list[Any]], how: str = "") -> dict[str, Any]:
    sql, params = statement
    cursor.execute(f"EXPLAIN ({how}FORMAT JSON) {sql}", params)
    return cursor.fetchone()["QUERY PLAN"][0]


def taken(cursor: Any, plan: SearchPlan) -> list[tuple[str, list[Any]]]:
    """The statements `search` runs: the walk, and its matches when the walk fills no page."""
    cursor.execute(*plan.walk)
    if plan.matches is None or len(cursor.fetchall()) > plan.limit:
        return [plan.walk]
    return [plan.walk, plan.matches]


def run(cursor: Any, plan: SearchPlan) -> list[dict[str, Any]]:
    """The statements `search` runs, run and explained."""
    return [explained(cursor, s, "ANALYZE, BUFFERS, ") for s in taken(cursor, plan)]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def rows_read(plan: dict[str, Any], table: str) -> int:
    """The products' rows the plan's scans read, those their filters dropped included."""
    return sum(
        round(
            (
                node["Actual Rows"]
                + node.get("Rows Removed by Filter", 0)
                + node.get("Rows Removed by Index Recheck", 0)
            )
            * node["Actual Loops"]
        )
        for node in nodes(plan)
        if node.get("Relation Name") == table
    )


def matches(cursor: Any, products: ProductQueries, filters: dict[str, Any]) -> int:
    sql, params = products.search_plan(**filters, limit=PRODUCTS).matches or ("", [])
    cursor.execute(sql, params)
    return len(cursor.fetchall())


def test_no_search_scans_or_sorts_the_whole_table(cursor: Any, products: ProductQueries) -> None:
    table = products.model.table()
    bad = []
    for filters in combinations():
        for statement in taken(cursor, products.search_plan(**filters)):
            plan = explained(cursor, statement)["Plan"]
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


def test_no_search_reads_more_than_its_walk_and_its_matches(
    cursor: Any, products: ProductQueries
) -> None:
    """Run, each combination reads at most `WALK_PER_ROW` rows per row of its page in the
    page's order, then (when those held too few) its matches through their indexes, and its
    page's rows by id; within a factor 2, as a plan may reach them through an index that
    holds a few more (the matches of a word, some not in stock; a rare state's rows of any
    price when the walk wanted a range). Never the rest of its category or of the shop, as
    the planner alone walked them for a word and a category that never meet, or a word
    whose products lie far in the order."""
    table = products.model.table()
    walk = WALK_PER_ROW * PAGE + 2 * PAGE  # and each statement's page read by id
    bad = []
    for filters in combinations():
        read = sum(
            rows_read(p["Plan"], table) for p in run(cursor, products.search_plan(**filters))
        )
        if read > 2 * walk and read > 2 * (walk + matches(cursor, products, filters)):
            bad.append(({k: v for k, v in filters.items() if v is not None}, read))
    assert not bad, f"{len(bad)} combinations read more, e.g. {bad[:5]}"


@pytest.mark.parametrize(
    "filters",
    [
        {"q": "wireless", "category": "office", "sort": "name"},  # never meet
        {"q": "wireless", "category": "office", "sort": "price"},
        {"q": "zebra", "sort": "newest"},  # no product
        {"q": "lamp", "category": "kitchen", "in_stock": False, "sort": "-price"},  # never
    ],
)
def test_a_search_with_no_match_reads_little(
    cursor: Any, products: ProductQueries, filters: dict[str, Any]
) -> None:
    """The worst searches of the planner alone: it walked the category's (or the shop's)
    rows in order for a match that is nowhere (6,250 rows for 'wireless' in 'office')."""
    read = sum(
        rows_read(p["Plan"], products.model.table())
        for p in run(cursor, products.search_plan(**filters))
    )
    assert matches(cursor, products, filters) == 0
    assert read <= WALK_PER_ROW * PAGE, read


def test_a_page_of_a_common_search_stops_after_the_page(
    cursor: Any, products: ProductQueries
) -> None:
    """The plain shop page (a category, a sort) walks an index in the page's order and stops
    after the page, never sorting the category. Which index is the planner's choice: the
    (category, sort) one, or for a common category the sort's own, filtered as it walks
    (both seen, depending on the table's statistics)."""
    for sort in SORTS:
        plan = products.search_plan(category="kitchen", sort=sort)
        assert plan.matches is None  # no filter besides the index's own: the walk is exact
        walk = explained(cursor, plan.walk)["Plan"]
        assert walk["Node Type"] == "Limit", walk
        assert walk["Plans"][0]["Node Type"] in ("Index Scan", "Index Scan Backward"), walk


def test_a_search_reads_only_the_columns_it_shows(cursor: Any, products: ProductQueries) -> None:
    """Not the search vector: it is not shown, and sending and parsing it cost every row of
    every page (a `SELECT *` did)."""
    plan = products.search_plan(q="red lamp", category="kitchen")
    for statement in (plan.walk, plan.matches or plan.walk):
        output = explained(cursor, statement, "VERBOSE, ")["Plan"]["Output"]
        assert not any(column.endswith(".search") for column in output), output
        assert len(output) == len(products.model.columns), output


def test_searches_are_planned_for_their_own_values(products: ProductQueries) -> None:
    """Never prepared: psycopg prepares a statement run five times on a connection, and
    PostgreSQL then plans it once for any values, a plan that sorted every match of a common
    word (35 ms at 100k products against 0.5 ms planned for the word)."""
    for word in ("lamp", "chair", "kettle", "desk", "tent", "drill", "watch", "router") * 2:
        products.search(q=word, category="kitchen", sort="price")
    with products.model.db.reading() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row["statement"] for row in cursor.fetchall()]
    assert not [s for s in prepared if products.model.table() in s], prepared
