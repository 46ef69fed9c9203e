"""A snapshot comes after its command's commit. When the store cannot take it (here its read
waits for a lock another session holds on the snapshot table and is cancelled, as an operator
or a timeout cancels a statement), the command is still answered as stored, and the stream's
next interval takes the snapshot. Before, the error reached the client (503) for a command
that was stored, and a client retrying without an idempotency key doubled it.

Distributed only: the fault needs a lock on the snapshot table alone, while SQLite has one
write lock for the whole file, which the command's own commit would wait for first."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg

from eventkeep.bootstrap import build
from eventkeep.commands.messages import AdjustStock
from eventkeep.commands.shop import SNAPSHOT_INTERVAL
from tests.api.conftest import SHOP_TABLES, distributed_settings
from tests.commands.shopping import create_product, send
from tests.commands.test_cached_aggregates import stored_stock, writer
from tests.eventstore.stores import drop_postgres_tables, postgres_url


def test_a_snapshot_the_store_cannot_take_leaves_the_command_answered_as_stored(
    tmp_path: Path,
) -> None:
    drop_postgres_tables(*SHOP_TABLES, "shop_snapshots")
    settings = distributed_settings(tmp_path / "home")
    with build(settings, role="test") as system:
        commands = writer(system)
        product_id = create_product(commands, stock=0)  # version 1
        for _ in range(SNAPSHOT_INTERVAL - 2):
            send(commands, AdjustStock(product_id, 1, "delivery"))
        snapshots = system.shop.snapshots
        assert snapshots is not None
        table = snapshots.recorder.events_table_name  # type: ignore[attr-defined]

        answers: list[object] = []
        with psycopg.connect(postgres_url()) as blocker:
            blocker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            command = threading.Thread(
                target=lambda: answers.append(
                    send(commands, AdjustStock(product_id, 1, "the snapshot's turn"))
                )
            )
            command.start()
            pool = snapshots.recorder.datastore.pool  # type: ignore[attr-defined]
            options = {k: v for k, v in pool.kwargs.items() if k != "row_factory"}
            options["autocommit"] = True
            with psycopg.connect(pool.conninfo, **options) as operator:  # as the same role
                deadline = time.monotonic() + 60
                cancelled = 0
                while command.is_alive():  # the library retries a failed read: every try
                    assert time.monotonic() < deadline, "the command was never answered"
                    cancelled += len(
                        operator.execute(
                            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
                            " WHERE wait_event_type = 'Lock' AND query LIKE %s",
                            (f"%{table}%",),
                        ).fetchall()
                    )
                    time.sleep(0.05)
            assert cancelled > 0, "the snapshot never waited for the lock"
            command.join(30)
            blocker.rollback()
        assert not command.is_alive()
        assert [a.version for a in answers] == [SNAPSHOT_INTERVAL]  # type: ignore[attr-defined]

        assert stored_stock(system, product_id) == SNAPSHOT_INTERVAL - 1
        assert list(snapshots.get(product_id)) == []  # the locked table took none
        for _ in range(SNAPSHOT_INTERVAL):
            send(commands, AdjustStock(product_id, 1, "delivery"))
        taken = [s.originator_version for s in snapshots.get(product_id)]
        assert taken == [SNAPSHOT_INTERVAL * 2]  # the next interval's
