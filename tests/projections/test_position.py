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
