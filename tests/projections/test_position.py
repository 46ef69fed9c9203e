"""`ReadModels.position()` in both databases: the smallest over the read models of each one's
log position or smallest Kafka partition watermark, whichever is further (`position_of`),
and 0 while any read model has heard of nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventkeep.projections.readmodels import LOG, ReadModels, position_of
from tests.conftest_services import POSTGRES_URL, require_env


@pytest.fixture(params=["embedded", "distributed"])
def models(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReadModels]:
    if request.param == "embedded":
        opened = ReadModels.open(sqlite_path=tmp_path / "readmodels.db")
    else:
        prefix = f"t{uuid.uuid4().hex[:8]}_"
        opened = ReadModels.open(postgres_url=require_env(POSTGRES_URL), prefix=prefix)
    opened.migrate()
    yield opened
    if request.param == "distributed":
        opened.drop()
    opened.close()


def record(models: ReadModels, name: str, progress: dict[str, int]) -> None:
    with models.db.transaction() as cursor:
        ReadModels(models.db, models.prefix, [name]).record_progress(cursor, progress)


def test_the_position_is_the_least_any_read_model_has_applied(models: ReadModels) -> None:
    first, *others = models.names
    assert models.position() == 0
    record(models, first, {LOG: 40})
    assert models.position() == 0  # the others have applied nothing yet
    assert models.position(first) == 40
    for name in others:  # a Kafka feed: the smallest partition watermark counts
        record(models, name, {"watermark:p.User:0": 70, "watermark:p.User:1": 55, "offset:x": 9})
    assert models.position() == 40
    record(models, first, {"watermark:p.User:0": 90, "watermark:p.User:1": 60})
    assert models.position(first) == 60  # its watermarks are further than its log position
    assert models.position() == 55
    for name in models.names:
        assert models.position(name) == position_of(models.progress(name))


def feed_progress(partitions: int, value: int) -> dict[str, int]:
    """A Kafka feed's batch over `partitions` partitions: offset, watermark, cached each."""
    return {
        f"{kind}:p.Product:{p}": value
        for p in range(partitions)
        for kind in ("offset", "watermark", "cached")
    }


def progress_rows(models: ReadModels) -> int:
    with models.db.reading() as cursor:
        cursor.execute(f"SELECT count(*) AS n FROM {models.table('progress')}")
        return int(cursor.fetchone()["n"])


def test_a_feed_round_keeps_each_partition_once_not_once_per_read_model(
    models: ReadModels,
) -> None:
    """A watermark round over 18 partitions upserted 3 x 18 rows for each of the 4 read
    models (~220); once per feed it is 3 x 18, whatever the number of read models."""
    before = progress_rows(models)
    models.apply([], feed_progress(18, 7))
    assert progress_rows(models) - before <= 3 * 18 + len(models.names)  # + GENERATION
    assert models.position() == 7
    for name in models.names:  # every read model the feed feeds has the feed's progress
        assert models.progress(name) | feed_progress(18, 7) == models.progress(name)
        assert models.position(name) == position_of(models.progress(name)) == 7


def test_a_feed_moves_only_the_read_models_it_feeds(models: ReadModels) -> None:
    """A projector started before a read model was registered does not feed it: that read
    model's position stays where its own progress says, whatever the feed reaches."""
    first, *others = models.names
    fed = ReadModels(models.db, models.prefix, others)
    fed.apply([], feed_progress(3, 50))
    record(models, first, {LOG: 20})
    assert models.position(first) == 20
    assert models.position() == 20
    assert all(models.position(name) == 50 for name in others)
    assert position_of(models.progress(first)) == 20
    assert "watermark:p.Product:0" not in models.progress(first)


def test_feed_progress_kept_per_read_model_by_a_release_before_is_taken_over(
    models: ReadModels,
) -> None:
    """Rows of the former layout (the feed's keys once per read model) become the feed's row,
    the least value of each key, when the projector seeds its keys; a position never rises
    in the move."""
    with models.db.transaction() as cursor:
        models.db.insert_rows(
            cursor,
            models.table("progress"),
            ("projection", "key", "value"),
            [
                (name, key, value + offset)
                for offset, name in enumerate(models.names)
                for key, value in (("watermark:p.User:0", 30), ("offset:p.User:0", 5))
            ],
            "",
        )
    assert models.position() == 30
    models.seed_progress(["watermark:p.User:0", "watermark:p.User:1"])
    assert models.position() == 0  # partition 1, not heard from yet, counts
    models.apply([], {"watermark:p.User:1": 40})
    assert models.position() == 30
    for name in models.names:
        assert models.progress(name)["offset:p.User:0"] == 5
    with models.db.reading() as cursor:
        cursor.execute(f"SELECT projection, key FROM {models.table('progress')}")
        rows = [(row["projection"], row["key"]) for row in cursor.fetchall()]
    assert {p for p, key in rows if key.startswith(("watermark:", "offset:"))} == {models.feed}
