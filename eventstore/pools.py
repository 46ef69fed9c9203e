"""Connection pools that recover at once from a PostgreSQL restart."""

from __future__ import annotations

import threading
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
