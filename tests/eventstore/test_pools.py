"""The pools' checks on the real PostgreSQL: a connection whose backend was ended is never
lent by `check_and_sweep`; `check_unless_recent` (the relay's and projectors' loops) lends a
connection checked or given back (`note_given_back`) within the last second as it is, and
checks one idle for longer."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from eventkeep.bootstrap import build
from eventkeep.eventstore import pools
from eventkeep.eventstore.pools import check_unless_recent, note_given_back
from tests.api.conftest import SHOP_TABLES, distributed_settings
from tests.commands.shopping import create_product
from tests.commands.test_cached_aggregates import writer
from tests.eventstore.stores import drop_postgres_tables

pytestmark = pytest.mark.services


def pool_of(
    url: str,
    check: Callable[[psycopg.Connection[Any]], None],
    reset: Callable[[psycopg.Connection[Any]], None] | None = None,
) -> ConnectionPool:
    return ConnectionPool(
        url, min_size=1, max_size=1, timeout=10, check=check, reset=reset, open=True
    )


def backend_of(pool: ConnectionPool) -> int:
    with pool.connection() as connection:
        row = connection.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])


def end(url: str, pid: int) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))


def test_a_connection_checked_within_the_delay_is_lent_unchecked_and_fails_once(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pools, "RECENTLY_CHECKED", 30.0)  # no check between these uses
    with pool_of(postgres_url, check_unless_recent) as pool:
        ended = backend_of(pool)
        end(postgres_url, ended)
        with pytest.raises(psycopg.OperationalError), pool.connection() as connection:
            connection.execute("SELECT 1")  # lent without a ping: the loop's retry follows
        assert backend_of(pool) != ended  # the dead one was dropped, a new one lent


def test_a_connection_idle_past_the_delay_is_checked_before_it_is_lent(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pools, "RECENTLY_CHECKED", 0.2)
    with pool_of(postgres_url, check_unless_recent, note_given_back) as pool:
        ended = backend_of(pool)
        end(postgres_url, ended)
        time.sleep(0.5)  # past the delay: the next checkout checks
        assert backend_of(pool) != ended  # no error: the dead one was never lent


def test_an_api_processs_store_reads_answer_right_after_its_backends_were_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve`'s event-store pool checks a connection only when it was not checked in the
    last second (a ping at every checkout was a round trip per command); a read lent a
    connection ended since (a restart, `pg_terminate_backend`) runs once more on another, the
    pool's idle ones checked first: it answers, it does not fail."""
    monkeypatch.setattr(pools, "RECENTLY_CHECKED", 3600.0)  # checked once, then never again
    drop_postgres_tables(*SHOP_TABLES)
    with build(distributed_settings(tmp_path), role="serve") as system:
        product_id = create_product(writer(system))
        pool = system.recorder.datastore.pool  # type: ignore[attr-defined]
        for _ in range(2 * pool.max_size):  # each pooled connection lent (in turn) and checked
            assert system.recorder.max_notification_id() == 1
        options = {k: v for k, v in pool.kwargs.items() if k != "row_factory"}
        with psycopg.connect(pool.conninfo, **options) as connection:  # as the same role
            ended = connection.execute(
                "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
                " WHERE usename = current_user AND pid <> pg_backend_pid()"
            ).fetchone()
        assert ended is not None and ended[0] >= pool.min_size

        assert system.recorder.max_notification_id() == 1
        product = system.store.load(product_id, fresh=True)  # the cold load's one statement
        assert product is not None and product.version == 1


def test_a_connection_given_back_within_the_delay_is_lent_unchecked(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy loop's connection is pinged only once it sat idle for the delay, not every time
    the delay has passed since its last ping (a round trip in front of a batch each second)."""
    monkeypatch.setattr(pools, "RECENTLY_CHECKED", 4.0)
    with pool_of(postgres_url, check_unless_recent, note_given_back) as pool:
        checked = time.monotonic()
        ended = backend_of(pool)  # its one check
        for _ in range(3):  # used and given back every second
            time.sleep(1.0)
            assert backend_of(pool) == ended
        end(postgres_url, ended)
        # Past the delay since its check, a second and a half after it was given back.
        time.sleep(max(0.0, checked + 4.5 - time.monotonic()))
        with pytest.raises(psycopg.OperationalError), pool.connection() as connection:
            connection.execute("SELECT 1")  # lent without a ping
        assert backend_of(pool) != ended
