"""Kafka messages a projector refused (their MAC missing or not verifying: forged or altered),
kept for the operator beside the read models (`<prefix>feed_refused`, made by the first one,
owned by the projector's role like the read models, readable by the query role): topic,
partition, offset, key, reason and time; never applied. Bounded: beyond `keep` rows the oldest
go (a flood of forgeries cannot fill the database; `eventkeep_feed_rejected_total` still counts
every one).
`eventkeep replay refused list` shows them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eventkeep.projections.database import Database

KEY_CHARACTERS = 200  # of a message's key, as text: enough to name a stream id, bounded


@dataclass(frozen=True)
class RefusedMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    reason: str

    def row(self, refused_at: str) -> tuple[Any, ...]:
        key = None if self.key is None else self.key.decode(errors="replace")[:KEY_CHARACTERS]
        return (self.topic, self.partition, self.offset, key, self.reason, refused_at)


COLUMNS = ("topic", "topic_partition", "message_offset", "message_key", "reason", "refused_at")


def _create(cursor: Any, table: str) -> None:
    """Made by the first refusal (a rebuild's tables beside the live ones get none)."""
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {table} (topic text NOT NULL, topic_partition bigint NOT NULL,"
        " message_offset bigint NOT NULL, message_key text, reason text NOT NULL,"
        " refused_at text NOT NULL, PRIMARY KEY (topic, topic_partition, message_offset))"
    )


def record(db: Database, table: str, refused: Sequence[RefusedMessage], keep: int) -> None:
    """Stores `refused` (a message read again after a restart is stored once), then drops
    the oldest rows beyond `keep`."""
    if not refused:
        return
    seconds, nanoseconds = divmod(time.time_ns(), 10**9)  # one reading: ordered rows
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanoseconds:09d}Z"
    unique = {(m.topic, m.partition, m.offset): m for m in refused}.values()
    with db.transaction() as cursor:
        if not db.table_exists(cursor, table):
            _create(cursor, table)
        db.insert_rows(
            cursor,
            table,
            COLUMNS,
            [message.row(now) for message in unique],
            "ON CONFLICT (topic, topic_partition, message_offset) DO NOTHING",
        )
        cursor.execute(f"SELECT count(*) AS n FROM {table}")
        row = cursor.fetchone()
        excess = (row["n"] if row else 0) - keep
        if excess > 0:
            cursor.execute(
                f"SELECT topic, topic_partition, message_offset FROM {table}"
                " ORDER BY refused_at, topic, topic_partition, message_offset LIMIT %s",
                (excess,),
            )
            oldest = [tuple(r.values()) for r in cursor.fetchall()]
            cursor.executemany(
                f"DELETE FROM {table} WHERE topic = %s AND topic_partition = %s"
                " AND message_offset = %s",
                oldest,
            )


def listed(db: Database, table: str) -> list[dict[str, Any]]:
    """Every stored refusal, the newest first."""
    with db.reading() as cursor:
        if not db.table_exists(cursor, table):
            return []
        cursor.execute(
            f"SELECT {', '.join(COLUMNS)} FROM {table}"
            " ORDER BY refused_at DESC, topic, topic_partition, message_offset DESC"
        )
        return [
            {
                "topic": r["topic"],
                "partition": r["topic_partition"],
                "offset": r["message_offset"],
                "key": r["message_key"],
                "reason": r["reason"],
                "refused_at": r["refused_at"],
            }
            for r in cursor.fetchall()
        ]
