"""Both modes answer every search alike: the same products, in the same order, paged the same
way, whichever way a search finds its page (the walk in the page's order, or its matches first
when the walk finds too few: `SearchPlan`). The shop is small and its pages short (5 rows, a
walk of 300) so that both ways are taken, over words and categories that rarely or never meet,
a word whose products lie at the end of the name order, and the rare states."""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventkeep.bench.seed import ADJECTIVES, CATEGORIES, NOUNS
from eventkeep.projections.database import PostgresDatabase, SqliteDatabase
from eventkeep.projections.products import SORTS, ProductQueries
from eventkeep.projections.readmodels import ReadModels
from tests.conftest_services import POSTGRES_URL, require_env

PRODUCTS = 3_000
LIMIT = 5


def shop() -> list[tuple[Any, ...]]:
    """The rows of a shop: Zipf-like categories; 'solar' products only in 'garden', 'vintage'
    ones never there; 'tiny' products' names sort last (`zz`) and no other product says
    'solar' or 'tiny'; 1 % out of stock, 2 % discontinued."""
    rng = random.Random(7)
    rows = []
    for i in range(PRODUCTS):
        adjective, noun = rng.choice(ADJECTIVES), rng.choice(NOUNS)
        category = rng.choices(CATEGORIES, weights=[1 / (r + 1) for r in range(16)])[0]
        if adjective == "solar":
            category = "garden"
        elif adjective == "vintage" and category == "garden":
            category = "home"
        name = f"{'zz ' if adjective == 'tiny' else ''}{adjective.title()} {noun} {i}"
        said = [w for w in ADJECTIVES + NOUNS if w not in ("solar", "tiny")]
        words = " ".join(rng.choices(said, k=4))
        rows.append(
            (
                str(uuid.UUID(int=rng.getrandbits(128))),
                1,
                f"SKU-{i}",
                name,
                f"A {adjective} {noun}: {words}.",
                category,
                rng.randint(100, 50_000),
                "EUR",
                0 if i % 100 == 0 else 5,
                "discontinued" if i % 50 == 1 else "active",
                f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}",
                "2026-11-30T00:00:00",
            )
        )
    return rows


def load(models: ReadModels, rows: list[tuple[Any, ...]]) -> ProductQueries:
    models.migrate()
    model = models["products"]
    with models.db.transaction() as cursor:
        models.db.insert_rows(cursor, model.table(), model.columns, rows, "")
    return ProductQueries(model)


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProductQueries, ...]]:
    rows = shop()
    path = Path(tmp_path_factory.mktemp("modes")) / "read.db"
    embedded = ReadModels(SqliteDatabase(path), names=["products"])
    prefix = f"modes{uuid.uuid4().hex[:8]}_"
    distributed = ReadModels(
        PostgresDatabase(require_env(POSTGRES_URL)), prefix, names=["products"]
    )
    try:
        yield load(embedded, rows), load(distributed, rows)
    finally:
        distributed.drop()
        distributed.close()
        embedded.close()


SEARCHES: dict[str, tuple[Any, ...]] = {
    "q": (None, "lamp", "red wireless", "solar", "vintage", "tiny", "zebra"),
    "category": (None, "garden", "peripherals"),
    "price": (None, ("10.00", "12.00"), ("1.00", "300.00")),
    "state": (None, {"status": "discontinued"}, {"in_stock": False}, {"in_stock": True}),
    "sort": tuple(SORTS),
}


def searches() -> Iterator[dict[str, Any]]:
    for q, category, price, state, sort in itertools.product(*SEARCHES.values()):
        min_price, max_price = price or (None, None)
        yield {
            "q": q,
            "category": category,
            "min_price": min_price,
            "max_price": max_price,
            "sort": sort,
            "limit": LIMIT,
            **(state or {}),
        }


def pages(products: ProductQueries, filters: dict[str, Any], most: int) -> list[Any]:
    """Up to `most` pages of a search, following its cursors."""
    answer = []
    cursor = None
    for _ in range(most):
        rows, cursor = products.search(**filters, cursor=cursor)
        answer.append(rows)
        if cursor is None:
            break
    return answer


def test_both_modes_give_the_same_pages(both: tuple[ProductQueries, ProductQueries]) -> None:
    embedded, distributed = both
    differ = []
    walked = fell_back = 0
    for filters in searches():
        shown = {k: v for k, v in filters.items() if v is not None}
        expected = pages(distributed, filters, 2)
        if pages(embedded, filters, 2) != expected:
            differ.append(shown)
        first = expected[0]
        if distributed.search_plan(**filters).matches is not None:
            # Which way the first page came (a full page found by the walk, or not).
            walked += len(first) == LIMIT
            fell_back += len(first) < LIMIT
    assert not differ, f"{len(differ)} searches differ between the modes, e.g. {differ[:5]}"
    assert walked > 100 and fell_back > 100, (walked, fell_back)


def test_both_modes_page_through_a_search_to_its_end(
    both: tuple[ProductQueries, ProductQueries],
) -> None:
    """'tiny' products come last by name: the first page finds them first (the walk from the
    start finds none), the next ones walk on from the cursor."""
    embedded, distributed = both
    filters = {"q": "tiny", "sort": "name", "limit": LIMIT}
    expected = pages(distributed, filters, 1000)
    tiny = sum(1 for row in shop() if row[3].startswith("zz Tiny"))
    assert sum(len(page) for page in expected) == tiny > LIMIT * 5
    assert pages(embedded, filters, 1000) == expected
