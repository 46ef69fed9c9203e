"""Connection pools that recover at once from a PostgreSQL restart."""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool


def check_and_sweep(connection: psycopg.Connection[Any]) -> None:
    """A pool's check before it lends a connection (`psycopg_pool`'s own), which, when it
    finds one dead, has every idle connection checked at once: a server restart kills them
    all, and the pool alone would find them out one per back-off step (a second or more each,
    so a pool of ten answered `PoolTimeout` for a while). Pass it as `ConnectionPool(check=…)`.
    """
    try:
        ConnectionPool.check_connection(connection)
    except Exception:
        pool = getattr(connection, "_pool", None)
        if pool is not None:
            threading.Thread(target=pool.check, name="pool-sweep", daemon=True).start()
        raise


# A connection found alive (or given back after a statement) this recently is lent without
# another check (`check_unless_recent`).
RECENTLY_CHECKED = 1.0
_checked: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = weakref.WeakKeyDictionary()


def check_unless_recent(connection: psycopg.Connection[Any]) -> None:
    """`check_and_sweep` at most once per `RECENTLY_CHECKED` seconds per connection: for the
    long-running loops (the relay, a projector) whose failed statement is retried anyway, and
    the API's event store, whose reads run once more on another connection when the one lent
    was dead (`PostgresDialect`). The ping at every checkout was a round trip per batch, a
    tenth of the loops' time at a thousand commands a second, and one per command not in the
    API's memory; a connection killed since its last check fails its statement, is dropped by
    the pool, and the retry finds the others checked (idle past the delay, or swept). With
    `note_given_back` as the pool's reset, only a connection idle for the delay is pinged.
    """
    now = time.monotonic()
    if now - _checked.get(connection, -RECENTLY_CHECKED) < RECENTLY_CHECKED:
        return
    check_and_sweep(connection)
    _checked[connection] = now


def note_given_back(connection: psycopg.Connection[Any]) -> None:
    """A pool's reset (`ConnectionPool(reset=…)`), beside `check_unless_recent`: a connection
    given back idle has just answered (the pool drops a broken one before its reset), so it
    counts as checked. Only checking it counted, and each connection of a busy loop was pinged
    every second: one round trip, tens of milliseconds under load, in front of a batch."""
    _checked[connection] = time.monotonic()
