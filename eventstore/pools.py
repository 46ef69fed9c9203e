"""Connection pools that recover at once from a PostgreSQL restart."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from psycopg.pq import ConnStatus
from psycopg_pool import ConnectionPool


def check_locally_and_sweep(connection: psycopg.Connection[Any]) -> None:
    """`check_and_sweep` without its round trip (the write path's pool: every load and key
    fetch through it paid one): reads, locally, what the server sent while the connection was
    idle. A server that restarted or a connection that was cut closed the socket, and that is
    read here; a connection found dead is refused and every idle one checked at once, as
    `check_and_sweep` does. (A peer gone silent without closing is found by the query's own
    timeouts, as it would be during the query.)"""
    try:
        if connection.closed or connection.broken:
            raise psycopg.OperationalError("the connection is closed")
        connection.pgconn.consume_input()
        if connection.pgconn.status != ConnStatus.OK:
            raise psycopg.OperationalError("the connection is broken")
    except Exception:
        _sweep(connection)
        raise


def _sweep(connection: psycopg.Connection[Any]) -> None:
    pool = getattr(connection, "_pool", None)
    if pool is not None:
        threading.Thread(target=pool.check, name="pool-sweep", daemon=True).start()


def check_and_sweep(connection: psycopg.Connection[Any]) -> None:
    """A pool's check before it lends a connection (`psycopg_pool`'s own), which, when it
    finds one dead, has every idle connection checked at once: a server restart kills them
    all, and the pool alone would find them out one per back-off step (a second or more each,
    so a pool of ten answered `PoolTimeout` for a while). Pass it as `ConnectionPool(check=…)`.
    """
    try:
        ConnectionPool.check_connection(connection)
    except Exception:
        _sweep(connection)
        raise
