"""The pools' checks on the real PostgreSQL: a connection whose backend was ended is never
lent by `check_and_sweep`; `check_unless_recent` (the relay's and projectors' loops) lends a
connection checked or given back (`note_given_back`) within the last second as it is, and
checks one idle for longer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from eventkeep.eventstore import pools
from eventkeep.eventstore.pools import check_unless_recent, note_given_back

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
