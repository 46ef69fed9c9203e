"""Tamper evidence that survives database access (issue 10 item 2): the chain is keyed with a
key the database never sees and its head is checkpointed, signed, outside the database. As the
database's owner (PostgreSQL) or the file's owner (SQLite), with the append-only triggers out
of the way, each tampering is found and the first bad event named: a truncated tail, a
rewritten event whose chain was recomputed without the key or with another key, and a removed
event (with or without the later ones renumbered)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent

from eventkeep.bootstrap import Eventkeep, build, checkpoint_file
from eventkeep.eventstore.group_commit import Append
from eventkeep.eventstore.hashchain import GENESIS, recomputed_hash
from eventkeep.replay import audit
from eventkeep.settings import Settings
from tests.api.conftest import SHOP_TABLES, TEST_SECRET
from tests.conftest_services import POSTGRES_URL, require_env
from tests.eventstore.stores import drop_postgres_tables

TABLE = "shop_events"  # distributed; embedded: the library's default, stored_events
EVENTS = 10


class Owner:
    """SQL as the owner of the log's storage, the append-only triggers disabled."""

    def __init__(self, mode: str, home: Path) -> None:
        self.mode = mode
        self.table = TABLE if mode == "distributed" else "stored_events"
        if mode == "embedded":
            self._sqlite = sqlite3.connect(home / "events.db", isolation_level=None)
            for trigger in ("no_update", "no_delete"):
                self._sqlite.execute(f'DROP TRIGGER IF EXISTS "stored_events_{trigger}"')
        else:
            self._pg = psycopg.connect(require_env(POSTGRES_URL), autocommit=True)
            self._pg.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        sql = sql.replace("{TABLE}", self.table)
        if self.mode == "embedded":
            self._sqlite.execute(sql.replace("%s", "?"), params)
        else:
            self._pg.execute(sql, params)  # type: ignore[arg-type]

    def close(self) -> None:
        if self.mode == "embedded":
            self._sqlite.close()
        else:
            self._pg.execute(f"ALTER TABLE {TABLE} ENABLE TRIGGER USER")
            self._pg.close()


@pytest.fixture(params=["embedded", "distributed"])
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Eventkeep]:
    if request.param == "embedded":
        settings = Settings(home=tmp_path, postgres_url=None, claim_secret=None)
    else:
        drop_postgres_tables(*SHOP_TABLES)
        settings = Settings(
            home=tmp_path, postgres_url=require_env(POSTGRES_URL), claim_secret=TEST_SECRET
        )
    with build(settings, role="test") as built:
        recorder = built.recorder
        for _ in range(EVENTS):
            event = StoredEvent(uuid4(), 1, "Tested", b'{"total": "10.00"}')
            recorder.append(Append(events=[event], metadata={"actor": "test"}))
        yield built
    if request.param == "distributed":
        drop_postgres_tables(*SHOP_TABLES)


def _rechain(system: Eventkeep, owner: Owner, start: int, key: bytes | None) -> None:
    """Recomputes the chain from `start` on, as someone who can write the storage would."""
    recorder = system.recorder
    events = recorder.select_notifications(1, EVENTS + 1, decrypt=False)
    prev = GENESIS
    for event in events:
        if event.id >= start:
            fresh = recomputed_hash(replace(event, prev_hash=prev), prev, key)
            owner.execute(
                "UPDATE {TABLE} SET prev_hash = %s, hash = %s WHERE position = %s",
                (prev, fresh, event.id),
            )
            prev = fresh
        else:
            prev = event.hash


def _truncate(system: Eventkeep, owner: Owner) -> None:
    owner.execute("DELETE FROM {TABLE} WHERE position > %s", (7,))


def _rewrite_unkeyed(system: Eventkeep, owner: Owner) -> None:
    owner.execute("UPDATE {TABLE} SET data = %s WHERE position = %s", (b'{"total": "1"}', 5))
    _rechain(system, owner, 5, None)


def _rewrite_other_key(system: Eventkeep, owner: Owner) -> None:
    owner.execute("UPDATE {TABLE} SET data = %s WHERE position = %s", (b'{"total": "1"}', 5))
    _rechain(system, owner, 5, b"k" * 32)


def _remove(system: Eventkeep, owner: Owner) -> None:
    owner.execute("DELETE FROM {TABLE} WHERE position = %s", (5,))


def _remove_and_renumber(system: Eventkeep, owner: Owner) -> None:
    owner.execute("DELETE FROM {TABLE} WHERE position = %s", (5,))
    owner.execute("UPDATE {TABLE} SET position = -position WHERE position > %s", (5,))
    owner.execute("UPDATE {TABLE} SET position = -position - 1 WHERE position < %s", (0,))
    _rechain(system, owner, 5, None)


TAMPERING: dict[str, tuple[Callable[[Eventkeep, Owner], None], int, str]] = {
    "truncated tail": (_truncate, 8, "removed from the tail"),
    "rewritten, chain recomputed without the key": (_rewrite_unkeyed, 5, "without the chain"),
    "rewritten, chain recomputed with another key": (_rewrite_other_key, 5, "does not match"),
    "removed event": (_remove, 5, "position 5 is missing"),
    "removed event, later ones renumbered": (_remove_and_renumber, 5, "without the chain"),
}


def test_an_untouched_log_verifies_against_its_checkpoint(system: Eventkeep) -> None:
    file = checkpoint_file(system.settings)
    verdict, written = audit.checkpoint(system.recorder, file)
    assert verdict.intact and written is not None and written.position == EVENTS
    assert audit.verify(system.recorder, checkpoints=file.read()).intact


@pytest.mark.parametrize("tampering", sorted(TAMPERING))
def test_tampering_by_the_storage_owner_is_found(system: Eventkeep, tampering: str) -> None:
    file = checkpoint_file(system.settings)
    audit.checkpoint(system.recorder, file)
    tamper, first_bad, problem = TAMPERING[tampering]
    owner = Owner(
        "embedded" if system.settings.postgres_url is None else "distributed", system.settings.home
    )
    try:
        tamper(system, owner)
    finally:
        owner.close()
    verdict = audit.verify(system.recorder, checkpoints=file.read())
    assert not verdict.intact
    assert verdict.altered is not None
    assert verdict.altered["position"] == first_bad, verdict.altered
    assert problem in verdict.altered["problem"], verdict.altered


def test_a_forged_checkpoint_is_refused(system: Eventkeep) -> None:
    file = checkpoint_file(system.settings)
    audit.checkpoint(system.recorder, file)
    line = file.path.read_text().replace('"position":10', '"position":9')
    file.path.write_text(line)
    verdict = audit.verify(system.recorder, checkpoints=file.read())
    assert not verdict.intact and verdict.altered is not None
    assert "signature" in verdict.altered["problem"]
