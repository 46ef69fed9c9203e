"""Refused Kafka messages kept for the operator (projections/feed_refusals.py), in both
databases: stored once however often a message is read again, the newest first, and bounded:
the oldest go beyond the limit. (The projector's refusals end to end, a forged message
written straight to the topic: tests/projections/test_kafka_pipeline.py.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventkeep.projections.feed_refusals import RefusedMessage
from eventkeep.projections.readmodels import ReadModels
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
        with opened.db.transaction() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {opened.table('feed_refused')}")
        opened.drop()
    opened.close()


def message(offset: int, key: bytes | None = b"k") -> RefusedMessage:
    return RefusedMessage("p.Product", 1, offset, key, "no MAC")


def test_refusals_are_kept_once_newest_first_and_bounded(models: ReadModels) -> None:
    assert models.refused() == []  # no table yet: nothing refused
    models.record_refused([message(1), message(2, None)], keep=3)
    models.record_refused([message(2, None)], keep=3)  # read again after a restart
    assert [(r["offset"], r["key"]) for r in models.refused()] == [(2, None), (1, "k")]
    models.record_refused([message(3, b"\xff" + b"x" * 500)], keep=3)
    models.record_refused([message(4)], keep=3)
    rows = models.refused()
    assert [r["offset"] for r in rows] == [4, 3, 2]  # the oldest went
    assert rows[1]["key"] == "\ufffd" + "x" * 199  # as text, bounded
    assert rows[0] | {"refused_at": None} == {
        "topic": "p.Product",
        "partition": 1,
        "offset": 4,
        "key": "k",
        "reason": "no MAC",
        "refused_at": None,
    }
