"""The embedded event store: one SQLite file, no services.

Plugged into the `eventsourcing` library as a persistence module
(`PERSISTENCE_MODULE=eventstore.sqlite`, `SQLITE_DBNAME=<file>`). It shares group commit and
the hash chain with the PostgreSQL store: `BEGIN IMMEDIATE` is the write lock, positions are
assigned under it, so the log has the same guarantees in both modes. Subscriptions are woken
in-process after each commit and poll as well. Triggers refuse UPDATE and DELETE on the log.
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar, cast
from uuid import UUID

import orjson
from eventsourcing import sqlite as library_sqlite
from eventsourcing.persistence import (
    ApplicationRecorder,
    IntegrityError,
    ProcessRecorder,
    StoredEvent,
    Tracking,
)
from eventsourcing.sqlite import (
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteRecorder,
    SQLiteTrackingRecorder,
)

from eventkeep.commands.messages import CommandResult
from eventkeep.domain.catalog import ERASING_EVENT
from eventkeep.eventstore.group_commit import Append, BatchPlan, GroupCommitter, StoreState
from eventkeep.eventstore.hashchain import GENESIS
from eventkeep.eventstore.pii import PII_SECRET, PersonalData
from eventkeep.eventstore.records import LoggedEvent, RecordedEvent
from eventkeep.eventstore.subscription import PollingSubscription

E = TypeVar("E", bound=StoredEvent)
R = TypeVar("R", ApplicationRecorder, ProcessRecorder)
EVENT_COLUMNS = (
    "position, stream_id, stream_version, stream_type, event_type, schema_version, "
    "recorded_at, data, metadata, prev_hash, hash"
)


class SQLiteApplicationRecorder(SQLiteRecorder, ApplicationRecorder):
    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"):
        self.events_table_name = events_table_name
        super().__init__(datastore)
        self._subscriptions: weakref.WeakSet[PollingSubscription] = weakref.WeakSet()
        # Set by the factory when the deployment has a secret (PII_SECRET).
        self.personal_data: PersonalData | None = None
        self._committer = GroupCommitter(
            _SQLiteBatchStorage(self),
            is_integrity_error=lambda e: isinstance(e, sqlite3.IntegrityError | IntegrityError),
            after_commit=self._wake_subscriptions,
            name=f"group-commit-{events_table_name}",
        )

    def construct_create_table_statements(self) -> list[str]:
        t = self.events_table_name
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {t} ("
            " position INTEGER PRIMARY KEY,"
            " stream_id TEXT NOT NULL,"
            " stream_version INTEGER NOT NULL,"
            " stream_type TEXT NOT NULL,"
            " event_type TEXT NOT NULL,"
            " schema_version INTEGER NOT NULL,"
            " recorded_at TEXT NOT NULL,"
            " data BLOB NOT NULL,"
            " metadata TEXT NOT NULL,"
            " prev_hash BLOB NOT NULL,"
            " hash BLOB NOT NULL,"
            " UNIQUE (stream_id, stream_version))",
            f"CREATE TABLE IF NOT EXISTS {t}_claims ("
            " scope TEXT NOT NULL, key TEXT NOT NULL, owner TEXT NOT NULL,"
            " PRIMARY KEY (scope, key)) WITHOUT ROWID",
            f"CREATE TABLE IF NOT EXISTS {t}_idempotency ("
            " key TEXT PRIMARY KEY, request_hash TEXT NOT NULL, result TEXT NOT NULL,"
            " recorded_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP) WITHOUT ROWID",
            f"CREATE TABLE IF NOT EXISTS {t}_data_keys ("
            " stream_id TEXT PRIMARY KEY, wrapped BLOB NOT NULL) WITHOUT ROWID",
            f"CREATE TRIGGER IF NOT EXISTS {t}_no_update BEFORE UPDATE ON {t}"
            " BEGIN SELECT RAISE(ABORT, 'eventkeep history is append-only'); END",
            f"CREATE TRIGGER IF NOT EXISTS {t}_no_delete BEFORE DELETE ON {t}"
            " BEGIN SELECT RAISE(ABORT, 'eventkeep history is append-only'); END",
        ]

    # --- writing -------------------------------------------------------------------------

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> list[int]:
        if self.personal_data is not None:
            stored_events = self.personal_data.seal(stored_events)
        append = Append.from_kwargs(stored_events, **kwargs)
        if not (append.events or append.claims or append.idempotency or append.tracking):
            return []
        return self._committer.append(append)

    def _read_tracking(self, cursor: SQLiteCursor, names: list[str]) -> dict[str, int]:
        if names:
            raise IntegrityError("this recorder does not record tracking")
        return {}

    def _write_tracking(self, cursor: SQLiteCursor, tracking: list[Tracking]) -> None:
        """Only the process recorder records tracking."""

    def close(self) -> None:
        self._committer.close()

    def _wake_subscriptions(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.wake()

    # --- reading -------------------------------------------------------------------------

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        query = (
            "SELECT stream_id, stream_version, event_type, data, stream_type, schema_version,"
            f" recorded_at FROM {self.events_table_name} WHERE stream_id = ?"
        )
        params: list[Any] = [str(originator_id)]
        if gt is not None:
            query += " AND stream_version > ?"
            params.append(gt)
        if lte is not None:
            query += " AND stream_version <= ?"
            params.append(lte)
        query += " ORDER BY stream_version DESC" if desc else " ORDER BY stream_version"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(query, params)
            events = [
                RecordedEvent(
                    originator_id=UUID(row["stream_id"]),
                    originator_version=row["stream_version"],
                    topic=row["event_type"],
                    state=row["data"],
                    stream_type=row["stream_type"],
                    schema_version=row["schema_version"],
                    recorded_at=datetime.fromisoformat(row["recorded_at"]),
                )
                for row in cursor.fetchall()
            ]
        return self._opened(events)

    def _opened(self, events: list[E]) -> list[E]:
        return events if self.personal_data is None else self.personal_data.open(events)

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
        decrypt: bool = True,
    ) -> list[LoggedEvent]:
        """The log from `start`; `decrypt=False` gives the stored bytes (hash verification)."""
        query = f"SELECT {EVENT_COLUMNS} FROM {self.events_table_name} WHERE 1"
        params: list[Any] = []
        if start is not None:
            query += " AND position >= ?" if inclusive_of_start else " AND position > ?"
            params.append(start)
        if stop is not None:
            query += " AND position <= ?"
            params.append(stop)
        if topics:
            query += f" AND event_type IN ({','.join('?' * len(topics))})"
            params.extend(topics)
        query += " ORDER BY position LIMIT ?"
        params.append(limit)
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(query, params)
            events = [_logged_event(row) for row in cursor.fetchall()]
        return self._opened(events) if decrypt else events

    def claim_owner(self, scope: str, key: str) -> UUID | None:
        """Who holds a unique claim (None: nobody)."""
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(
                f"SELECT owner FROM {self.events_table_name}_claims WHERE scope = ? AND key = ?",
                (scope, key),
            )
            row = cursor.fetchone()
        return None if row is None else UUID(str(row["owner"]))

    def stream_history(self, stream_id: UUID | str) -> list[LoggedEvent]:
        """One stream's events as logged (positions, metadata, hashes), in version order."""
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(
                f"SELECT {EVENT_COLUMNS} FROM {self.events_table_name} WHERE stream_id = ?"
                " ORDER BY stream_version",
                (str(stream_id),),
            )
            return self._opened([_logged_event(row) for row in cursor.fetchall()])

    def max_notification_id(self) -> int | None:
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(f"SELECT max(position) FROM {self.events_table_name}")
            return cursor.fetchone()[0]

    def find_idempotent(self, key: str) -> tuple[str, CommandResult] | None:
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(
                f"SELECT request_hash, result FROM {self.events_table_name}_idempotency"
                " WHERE key = ?",
                (key,),
            )
            row = cursor.fetchone()
        if row is None:
            return None
        result = orjson.loads(row["result"])
        return row["request_hash"], CommandResult(
            id=UUID(result["id"]),
            version=result["version"],
            position=result["position"],
            created=result["created"],
        )

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> PollingSubscription:
        subscription = PollingSubscription(self, gt=gt, topics=topics)
        self._subscriptions.add(subscription)
        return subscription

    def wake_after_commit(self, listener: Any) -> None:
        """Calls `listener.wake()` after each commit of this process (held weakly)."""
        self._subscriptions.add(listener)


def _logged_event(row: sqlite3.Row) -> LoggedEvent:
    return LoggedEvent(
        id=row["position"],
        originator_id=UUID(row["stream_id"]),
        originator_version=row["stream_version"],
        topic=row["event_type"],
        state=row["data"],
        stream_type=row["stream_type"],
        schema_version=row["schema_version"],
        recorded_at=datetime.fromisoformat(row["recorded_at"]),
        metadata=orjson.loads(row["metadata"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


class _SQLiteBatchStorage:
    def __init__(self, recorder: SQLiteApplicationRecorder) -> None:
        self._recorder = recorder

    @contextmanager
    def locked_transaction(self) -> Iterator[_SQLiteBatchTransaction]:
        with self._recorder.datastore.get_connection(commit=True) as connection:
            cursor = connection.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteBatchTransaction(self._recorder, cursor)
            except BaseException:
                connection.rollback()
                raise
            connection.commit()


class _SQLiteBatchTransaction:
    def __init__(self, recorder: SQLiteApplicationRecorder, cursor: SQLiteCursor) -> None:
        self._recorder = recorder
        self._cursor = cursor
        self._table = recorder.events_table_name

    def read_state(self, appends: Sequence[Append]) -> StoreState:
        cursor, t = self._cursor, self._table
        cursor.execute(f"SELECT position, hash FROM {t} ORDER BY position DESC LIMIT 1")
        head = cursor.fetchone()
        taken: set[tuple[str, int]] = set()
        for append in appends:
            for event in append.events:
                cursor.execute(
                    f"SELECT 1 FROM {t} WHERE stream_id = ? AND stream_version = ?",
                    (str(event.originator_id), event.originator_version),
                )
                if cursor.fetchone() is not None:
                    taken.add((str(event.originator_id), event.originator_version))
        owners: dict[tuple[str, str], UUID] = {}
        for claim in (c for a in appends for c in a.claims):
            cursor.execute(
                f"SELECT owner FROM {t}_claims WHERE scope = ? AND key = ?",
                (claim.scope, claim.key),
            )
            row = cursor.fetchone()
            if row is not None:
                owners[(claim.scope, claim.key)] = UUID(row[0])
        used: set[str] = set()
        for append in appends:
            if append.idempotency is not None:
                cursor.execute(
                    f"SELECT 1 FROM {t}_idempotency WHERE key = ?", (append.idempotency.key,)
                )
                if cursor.fetchone() is not None:
                    used.add(append.idempotency.key)
        tracked = sorted({a.tracking.application_name for a in appends if a.tracking})
        return StoreState(
            last_position=head[0] if head else 0,
            last_hash=head[1] if head else GENESIS,
            taken_versions=taken,
            claim_owners=owners,
            used_idempotency_keys=used,
            tracking_max=self._recorder._read_tracking(cursor, tracked),
        )

    def write(self, plan: BatchPlan) -> None:
        cursor, t = self._cursor, self._table
        cursor.executemany(
            f"INSERT INTO {t} ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    row.position,
                    str(row.stream_id),
                    row.stream_version,
                    row.stream_type,
                    row.event_type,
                    row.schema_version,
                    row.recorded_at.isoformat(),
                    row.data,
                    orjson.dumps(row.metadata).decode(),
                    row.prev_hash,
                    row.hash,
                )
                for row in plan.rows
            ],
        )
        cursor.executemany(
            f"DELETE FROM {t}_data_keys WHERE stream_id = ?",
            [(str(row.stream_id),) for row in plan.rows if row.event_type == ERASING_EVENT],
        )
        for (scope, key), owner in plan.claims.items():
            if owner is None:
                cursor.execute(f"DELETE FROM {t}_claims WHERE scope = ? AND key = ?", (scope, key))
            else:
                cursor.execute(
                    f"INSERT INTO {t}_claims (scope, key, owner) VALUES (?, ?, ?)"
                    " ON CONFLICT (scope, key) DO UPDATE SET owner = excluded.owner",
                    (scope, key, str(owner)),
                )
        for record in plan.idempotency:
            result = record.result
            cursor.execute(
                f"INSERT INTO {t}_idempotency (key, request_hash, result) VALUES (?, ?, ?)",
                (
                    record.key,
                    record.request_hash,
                    orjson.dumps(
                        {
                            "id": str(result.id),
                            "version": result.version,
                            "position": result.position,
                            "created": result.created,
                        }
                    ).decode(),
                ),
            )
        self._recorder._write_tracking(cursor, plan.tracking)


class SQLiteProcessRecorder(SQLiteTrackingRecorder, SQLiteApplicationRecorder, ProcessRecorder):
    """Events and the tracking of what was processed, in one group-commit transaction."""

    def __init__(self, datastore: SQLiteDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)

    def _read_tracking(self, cursor: SQLiteCursor, names: list[str]) -> dict[str, int]:
        found = {}
        for name in names:
            cursor.execute(self.select_max_tracking_id_statement, (name,))
            (value,) = cursor.fetchone()
            if value is not None:
                found[name] = value
        return found

    def _write_tracking(self, cursor: SQLiteCursor, tracking: list[Tracking]) -> None:
        for record in tracking:
            self._insert_tracking(cursor, record)


class SQLiteDataKeys:
    """The wrapped data keys of `eventstore.pii`, in `<events>_data_keys`."""

    def __init__(self, recorder: SQLiteApplicationRecorder) -> None:
        self._recorder = recorder
        self._table = f"{recorder.events_table_name}_data_keys"

    def fetch(self, stream_ids: Iterable[str]) -> dict[str, bytes]:
        ids = list(stream_ids)
        with self._recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(
                f"SELECT stream_id, wrapped FROM {self._table}"
                f" WHERE stream_id IN ({','.join('?' * len(ids))})",
                ids,
            )
            return {row["stream_id"]: row["wrapped"] for row in cursor.fetchall()}

    def add_missing(self, wrapped: dict[str, bytes]) -> None:
        with self._recorder.datastore.transaction(commit=True) as cursor:
            cursor.executemany(
                f"INSERT INTO {self._table} (stream_id, wrapped) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                list(wrapped.items()),
            )


class SQLiteFactory(library_sqlite.SQLiteFactory):
    """The library's factory, making this module's recorders and closing their committers."""

    application_recorder_class = SQLiteApplicationRecorder
    process_recorder_class = SQLiteProcessRecorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self._made: list[SQLiteApplicationRecorder] = []

    def application_recorder(self) -> ApplicationRecorder:
        return self._keep(super().application_recorder())

    def process_recorder(self) -> ProcessRecorder:
        return self._keep(super().process_recorder())

    def _keep(self, made: R) -> R:
        recorder = cast(SQLiteApplicationRecorder, made)
        if secret := self.env.get(PII_SECRET):
            recorder.personal_data = PersonalData(secret.encode(), SQLiteDataKeys(recorder))
        self._made.append(recorder)
        return made

    def close(self) -> None:
        for recorder in self._made:
            recorder.close()
        super().close()


Factory = SQLiteFactory
