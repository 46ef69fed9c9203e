"""The distributed event store: PostgreSQL through psycopg 3 and psycopg-pool.

Plugged into the `eventsourcing` library as a persistence module
(`PERSISTENCE_MODULE=eventstore.postgres`). Writes go through group commit (see
`eventstore.group_commit`): concurrent appends share one `LOCK TABLE … IN EXCLUSIVE MODE`, one
transaction and one fsync, and positions are assigned under that lock, so position order is
commit order and tailing readers never skip an event. Reads take no lock.

Tables (prefix = the application's name, e.g. `shop_`):
`<prefix>events` the global log (append-only: a trigger refuses UPDATE, DELETE and TRUNCATE),
`<prefix>events_claims` unique keys (emails), `<prefix>events_idempotency` command answers,
`<prefix>events_data_keys` the wrapped per-user keys of personal data (`eventstore.pii`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast
from uuid import UUID

import orjson
import psycopg
import psycopg.errors
from eventsourcing import postgres as library_postgres
from eventsourcing.persistence import (
    ApplicationRecorder,
    IntegrityError,
    ProcessRecorder,
    StoredEvent,
    Tracking,
)
from eventsourcing.postgres import PostgresDatastore, PostgresRecorder, PostgresTrackingRecorder
from psycopg.sql import SQL, Composed, Identifier
from psycopg.types.json import set_json_loads

from eventkeep.commands.messages import CommandResult
from eventkeep.domain.catalog import ERASING_EVENT
from eventkeep.eventstore.group_commit import Append, BatchPlan, GroupCommitter, StoreState
from eventkeep.eventstore.hashchain import GENESIS
from eventkeep.eventstore.pii import PII_SECRET, PersonalData
from eventkeep.eventstore.records import LoggedEvent, RecordedEvent
from eventkeep.eventstore.subscription import PollingSubscription

E = TypeVar("E", bound=StoredEvent)
R = TypeVar("R", ApplicationRecorder, ProcessRecorder)
# jsonb (metadata) parsed by orjson: several times faster than the standard library's.
set_json_loads(orjson.loads)

EVENT_COLUMNS = (
    "position, stream_id, stream_version, stream_type, event_type, schema_version, "
    "recorded_at, data, metadata, prev_hash, hash"
)


class PostgresApplicationRecorder(PostgresRecorder, ApplicationRecorder):
    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore)
        self.check_identifier_length(events_table_name + "_idempotency")
        self.events_table_name = events_table_name
        self.channel_name = events_table_name.replace(".", "_")
        schema = Identifier(datastore.schema)
        self._events = Composed([schema, SQL("."), Identifier(events_table_name)])
        self._claims = Composed([schema, SQL("."), Identifier(events_table_name + "_claims")])
        self._idempotency = Composed(
            [schema, SQL("."), Identifier(events_table_name + "_idempotency")]
        )
        self._data_keys = Composed([schema, SQL("."), Identifier(events_table_name + "_data_keys")])
        # Set by the factory when the deployment has a secret (PII_SECRET).
        self.personal_data: PersonalData | None = None
        self.sql_create_statements.extend(self._schema_statements())
        self._committer = GroupCommitter(
            _PostgresBatchStorage(self),
            is_integrity_error=lambda e: isinstance(
                e, psycopg.errors.IntegrityError | IntegrityError
            ),
            name=f"group-commit-{events_table_name}",
        )

    def _schema_statements(self) -> list[Composed]:
        names = {
            "events": self._events,
            "claims": self._claims,
            "idempotency": self._idempotency,
            "data_keys": self._data_keys,
            "refuse": Composed(
                [Identifier(self.datastore.schema), SQL(".eventkeep_refuse_change")]
            ),
            "append_only": Identifier(self.events_table_name + "_append_only"),
            "no_truncate": Identifier(self.events_table_name + "_no_truncate"),
        }
        statements = [
            # Several processes may start at once: serialise schema creation.
            "SELECT pg_advisory_xact_lock(hashtext('eventkeep schema'))",
            "CREATE TABLE IF NOT EXISTS {events} ("
            " position bigint PRIMARY KEY,"
            " stream_id uuid NOT NULL,"
            " stream_version bigint NOT NULL,"
            " stream_type text NOT NULL,"
            " event_type text NOT NULL,"
            " schema_version int NOT NULL,"
            " recorded_at timestamptz NOT NULL,"
            " data bytea NOT NULL,"
            " metadata jsonb NOT NULL,"
            " prev_hash bytea NOT NULL,"
            " hash bytea NOT NULL,"
            " UNIQUE (stream_id, stream_version))",
            "CREATE TABLE IF NOT EXISTS {claims} ("
            " scope text NOT NULL, key text NOT NULL, owner uuid NOT NULL,"
            " PRIMARY KEY (scope, key))",
            "CREATE TABLE IF NOT EXISTS {idempotency} ("
            " key text PRIMARY KEY, request_hash text NOT NULL, result jsonb NOT NULL,"
            " recorded_at timestamptz NOT NULL DEFAULT now())",
            "CREATE TABLE IF NOT EXISTS {data_keys} ("
            " stream_id uuid PRIMARY KEY, wrapped bytea NOT NULL)",
            "CREATE OR REPLACE FUNCTION {refuse}() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'eventkeep history is append-only: % on % refused',"
            " TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege'; END $$",
            "CREATE OR REPLACE TRIGGER {append_only} BEFORE UPDATE OR DELETE ON {events}"
            " FOR EACH ROW EXECUTE FUNCTION {refuse}()",
            "CREATE OR REPLACE TRIGGER {no_truncate} BEFORE TRUNCATE ON {events}"
            " FOR EACH STATEMENT EXECUTE FUNCTION {refuse}()",
        ]
        return [SQL(statement).format(**names) for statement in statements]

    # --- writing -------------------------------------------------------------------------

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> list[int]:
        if self.personal_data is not None:
            stored_events = self.personal_data.seal(stored_events)
        append = Append.from_kwargs(stored_events, **kwargs)
        if not (append.events or append.claims or append.idempotency or append.tracking):
            return []
        return self._committer.append(append)

    def _read_tracking(self, cursor: psycopg.Cursor[Any], names: list[str]) -> dict[str, int]:
        if names:
            raise IntegrityError("this recorder does not record tracking")
        return {}

    def _write_tracking(self, cursor: psycopg.Cursor[Any], tracking: list[Tracking]) -> None:
        """Only the process recorder records tracking."""

    def close(self) -> None:
        self._committer.close()

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
        query = SQL(
            "SELECT stream_id, stream_version, event_type, data, stream_type, schema_version,"
            " recorded_at FROM {events} WHERE stream_id = %s"
        ).format(events=self._events)
        params: list[Any] = [originator_id]
        if gt is not None:
            query += SQL(" AND stream_version > %s")
            params.append(gt)
        if lte is not None:
            query += SQL(" AND stream_version <= %s")
            params.append(lte)
        query += SQL(" ORDER BY stream_version DESC" if desc else " ORDER BY stream_version")
        if limit is not None:
            query += SQL(" LIMIT %s")
            params.append(limit)
        with self.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(query, params, prepare=True)
            events = [
                RecordedEvent(
                    originator_id=row["stream_id"],
                    originator_version=row["stream_version"],
                    topic=row["event_type"],
                    state=bytes(row["data"]),
                    stream_type=row["stream_type"],
                    schema_version=row["schema_version"],
                    recorded_at=row["recorded_at"],
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
        query = SQL("SELECT " + EVENT_COLUMNS + " FROM {events} WHERE true").format(
            events=self._events
        )
        params: list[Any] = []
        if start is not None:
            query += SQL(" AND position >= %s" if inclusive_of_start else " AND position > %s")
            params.append(start)
        if stop is not None:
            query += SQL(" AND position <= %s")
            params.append(stop)
        if topics:
            query += SQL(" AND event_type = ANY(%s)")
            params.append(list(topics))
        query += SQL(" ORDER BY position LIMIT %s")
        params.append(limit)
        with self.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(query, params, prepare=True)
            events = [_logged_event(row) for row in cursor.fetchall()]
        return self._opened(events) if decrypt else events

    def claim_owner(self, scope: str, key: str) -> UUID | None:
        """Who holds a unique claim (None: nobody)."""
        query = SQL("SELECT owner FROM {claims} WHERE scope = %s AND key = %s").format(
            claims=self._claims
        )
        with self.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(query, (scope, key))
            row = cursor.fetchone()
        return None if row is None else UUID(str(row["owner"]))

    def stream_history(self, stream_id: UUID | str) -> list[LoggedEvent]:
        """One stream's events as logged (positions, metadata, hashes), in version order."""
        query = SQL(
            "SELECT "
            + EVENT_COLUMNS
            + " FROM {events} WHERE stream_id = %s ORDER BY stream_version"
        ).format(events=self._events)
        with self.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(query, (stream_id,))
            return self._opened([_logged_event(row) for row in cursor.fetchall()])

    def max_notification_id(self) -> int | None:
        with self.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(
                SQL("SELECT max(position) AS max FROM {events}").format(events=self._events)
            )
            row = cursor.fetchone()
            return None if row is None else row["max"]

    def find_idempotent(self, key: str) -> tuple[str, CommandResult] | None:
        with self.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(
                SQL("SELECT request_hash, result FROM {table} WHERE key = %s").format(
                    table=self._idempotency
                ),
                (key,),
                prepare=True,
            )
            row = cursor.fetchone()
        if row is None:
            return None
        result = row["result"]
        return row["request_hash"], CommandResult(
            id=UUID(result["id"]),
            version=result["version"],
            position=result["position"],
            created=result["created"],
        )

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> PostgresSubscription:
        return PostgresSubscription(self, gt=gt, topics=topics)


def _logged_event(row: dict[str, Any]) -> LoggedEvent:
    return LoggedEvent(
        id=row["position"],
        originator_id=row["stream_id"],
        originator_version=row["stream_version"],
        topic=row["event_type"],
        state=bytes(row["data"]),
        stream_type=row["stream_type"],
        schema_version=row["schema_version"],
        recorded_at=row["recorded_at"],
        metadata=row["metadata"],
        prev_hash=bytes(row["prev_hash"]),
        hash=bytes(row["hash"]),
    )


class _PostgresBatchStorage:
    """Group commit's PostgreSQL half, on a connection of its own."""

    def __init__(self, recorder: PostgresApplicationRecorder) -> None:
        self._recorder = recorder
        self._connection: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed:
            pool = self._recorder.datastore.pool
            kwargs = {k: v for k, v in pool.kwargs.items() if k != "row_factory"}
            self._connection = psycopg.connect(pool.conninfo, **kwargs)
        return self._connection

    @contextmanager
    def locked_transaction(self) -> Iterator[_PostgresBatchTransaction]:
        # Pipeline mode: the lock and all reads go in one round trip, the writes and the
        # commit in a second one. Binary parameters avoid escaping every array element.
        connection = self._connect()
        try:
            with connection.pipeline(), connection.transaction():
                connection.execute(
                    SQL("LOCK TABLE {events} IN EXCLUSIVE MODE").format(
                        events=self._recorder._events
                    )
                )
                yield _PostgresBatchTransaction(self._recorder, connection)
        except psycopg.OperationalError:
            connection.close()
            raise


class _PostgresBatchTransaction:
    def __init__(self, recorder: PostgresApplicationRecorder, connection: psycopg.Connection[Any]):
        self._recorder = recorder
        self._connection = connection

    def _query(self, query: Composed, params: Any = None) -> psycopg.Cursor[Any]:
        cursor = self._connection.cursor(binary=True)
        cursor.execute(query, params, prepare=True)
        return cursor

    def read_state(self, appends: Sequence[Append]) -> StoreState:
        r = self._recorder
        head = self._query(
            SQL("SELECT position, hash FROM {events} ORDER BY position DESC LIMIT 1").format(
                events=r._events
            )
        )
        taken = self._query(
            SQL(
                "SELECT e.stream_id, e.stream_version FROM {events} e"
                " JOIN unnest(%b::uuid[], %b::bigint[]) AS k(id, v)"
                " ON e.stream_id = k.id AND e.stream_version = k.v"
            ).format(events=r._events),
            (
                [e.originator_id for a in appends for e in a.events],
                [e.originator_version for a in appends for e in a.events],
            ),
        )
        claims = [c for a in appends for c in a.claims]
        owners = claims and self._query(
            SQL(
                "SELECT scope, key, owner FROM {claims}"
                " WHERE (scope, key) IN (SELECT * FROM unnest(%b::text[], %b::text[]))"
            ).format(claims=r._claims),
            ([c.scope for c in claims], [c.key for c in claims]),
        )
        keys = [a.idempotency.key for a in appends if a.idempotency is not None]
        used = keys and self._query(
            SQL("SELECT key FROM {table} WHERE key = ANY(%b::text[])").format(table=r._idempotency),
            (keys,),
        )
        tracked = sorted({a.tracking.application_name for a in appends if a.tracking})
        last = head.fetchone()
        return StoreState(
            last_position=last[0] if last else 0,
            last_hash=bytes(last[1]) if last else GENESIS,
            taken_versions={(str(stream), version) for stream, version in taken.fetchall()},
            claim_owners={(s, k): o for s, k, o in owners.fetchall()} if owners else {},
            used_idempotency_keys={key for (key,) in used.fetchall()} if used else set(),
            tracking_max=r._read_tracking(self._connection.cursor(), tracked),
        )

    def write(self, plan: BatchPlan) -> None:
        r, cursor = self._recorder, self._connection.cursor(binary=True)
        if plan.rows:
            rows = plan.rows
            cursor.execute(
                SQL(
                    "INSERT INTO {events} (" + EVENT_COLUMNS + ") SELECT p, s, v, st, et, sv, ra,"
                    " d, m::jsonb, ph, h FROM unnest(%b::bigint[], %b::uuid[], %b::bigint[],"
                    " %b::text[], %b::text[], %b::int[], %b::timestamptz[], %b::bytea[],"
                    " %b::text[], %b::bytea[], %b::bytea[])"
                    " AS t(p, s, v, st, et, sv, ra, d, m, ph, h)"
                ).format(events=r._events),
                (
                    [row.position for row in rows],
                    [row.stream_id for row in rows],
                    [row.stream_version for row in rows],
                    [row.stream_type for row in rows],
                    [row.event_type for row in rows],
                    [row.schema_version for row in rows],
                    [row.recorded_at for row in rows],
                    [row.data for row in rows],
                    [orjson.dumps(row.metadata).decode() for row in rows],
                    [row.prev_hash for row in rows],
                    [row.hash for row in rows],
                ),
            )
            cursor.execute(SQL("NOTIFY {channel}").format(channel=Identifier(r.channel_name)))
            if erased := [row.stream_id for row in rows if row.event_type == ERASING_EVENT]:
                cursor.execute(
                    SQL("DELETE FROM {keys} WHERE stream_id = ANY(%b::uuid[])").format(
                        keys=r._data_keys
                    ),
                    (erased,),
                )
        claimed = [(scope, key, owner) for (scope, key), owner in plan.claims.items() if owner]
        released = [(scope, key) for (scope, key), owner in plan.claims.items() if not owner]
        if claimed:
            cursor.execute(
                SQL(
                    "INSERT INTO {claims} (scope, key, owner)"
                    " SELECT * FROM unnest(%b::text[], %b::text[], %b::uuid[])"
                    " ON CONFLICT (scope, key) DO UPDATE SET owner = EXCLUDED.owner"
                ).format(claims=r._claims),
                tuple(map(list, zip(*claimed, strict=True))),
            )
        if released:
            cursor.execute(
                SQL(
                    "DELETE FROM {claims} WHERE (scope, key) IN"
                    " (SELECT * FROM unnest(%b::text[], %b::text[]))"
                ).format(claims=r._claims),
                tuple(map(list, zip(*released, strict=True))),
            )
        if plan.idempotency:
            cursor.execute(
                SQL(
                    "INSERT INTO {table} (key, request_hash, result)"
                    " SELECT k, h, r::jsonb FROM unnest(%b::text[], %b::text[], %b::text[])"
                    " AS t(k, h, r)"
                ).format(table=r._idempotency),
                (
                    [i.key for i in plan.idempotency],
                    [i.request_hash for i in plan.idempotency],
                    [_result_json(i.result) for i in plan.idempotency],
                ),
            )
        r._write_tracking(cursor, plan.tracking)


def _result_json(result: CommandResult) -> str:
    return orjson.dumps(
        {
            "id": str(result.id),
            "version": result.version,
            "position": result.position,
            "created": result.created,
        }
    ).decode()


class PostgresProcessRecorder(
    PostgresTrackingRecorder, PostgresApplicationRecorder, ProcessRecorder
):
    """Events and the tracking of what was processed, in one group-commit transaction."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
        tracking_table_name: str = "notification_tracking",
    ):
        super().__init__(
            datastore,
            tracking_table_name=tracking_table_name,
            events_table_name=events_table_name,
        )

    def _read_tracking(self, cursor: psycopg.Cursor[Any], names: list[str]) -> dict[str, int]:
        if not names:
            return {}
        cursor.execute(
            SQL(
                "SELECT application_name, max(notification_id) FROM {schema}.{table}"
                " WHERE application_name = ANY(%s) GROUP BY application_name"
            ).format(
                schema=Identifier(self.datastore.schema),
                table=Identifier(self.tracking_table_name),
            ),
            (names,),
        )
        return dict(cursor.fetchall())

    def _write_tracking(self, cursor: psycopg.Cursor[Any], tracking: list[Tracking]) -> None:
        for record in tracking:
            self._insert_tracking(cast(Any, cursor), record)


class PostgresSubscription(PollingSubscription):
    """Polls, and wakes early on the store's NOTIFY."""

    def __init__(
        self,
        recorder: PostgresApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._listener = threading.Thread(target=self._listen, args=(recorder,), daemon=True)
        self._listener.start()

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        try:
            super().__exit__(*args, **kwargs)
        finally:
            self._listener.join()

    def _listen(self, recorder: PostgresApplicationRecorder) -> None:
        try:
            with recorder.datastore.get_connection() as conn:
                conn.execute(SQL("LISTEN {0}").format(Identifier(recorder.channel_name)))
                while not self._has_been_stopped:
                    for _ in conn.notifies(timeout=self.poll_interval, stop_after=1):
                        self.wake()
        except Exception:
            return


class PostgresDataKeys:
    """The wrapped data keys of `eventstore.pii`, in `<events>_data_keys`."""

    def __init__(self, recorder: PostgresApplicationRecorder) -> None:
        self._recorder = recorder

    def fetch(self, stream_ids: Iterable[str]) -> dict[str, bytes]:
        query = SQL("SELECT stream_id, wrapped FROM {keys} WHERE stream_id = ANY(%s::uuid[])")
        with self._recorder.datastore.get_connection() as conn:
            rows = conn.execute(
                query.format(keys=self._recorder._data_keys), (list(stream_ids),), prepare=True
            ).fetchall()
        return {str(row["stream_id"]): bytes(row["wrapped"]) for row in rows}

    def add_missing(self, wrapped: dict[str, bytes]) -> None:
        query = SQL(
            "INSERT INTO {keys} (stream_id, wrapped)"
            " SELECT * FROM unnest(%s::uuid[], %s::bytea[]) ON CONFLICT DO NOTHING"
        )
        with self._recorder.datastore.transaction(commit=True) as cursor:
            cursor.execute(
                query.format(keys=self._recorder._data_keys),
                (list(wrapped), list(wrapped.values())),
            )


class PostgresFactory(library_postgres.PostgresFactory):
    """The library's factory, making this module's recorders and closing their committers."""

    application_recorder_class = PostgresApplicationRecorder
    process_recorder_class = PostgresProcessRecorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self._made: list[PostgresApplicationRecorder] = []

    def application_recorder(self) -> ApplicationRecorder:
        return self._keep(super().application_recorder())

    def process_recorder(self) -> ProcessRecorder:
        return self._keep(super().process_recorder())

    def _keep(self, made: R) -> R:
        recorder = cast(PostgresApplicationRecorder, made)
        if secret := self.env.get(PII_SECRET):
            recorder.personal_data = PersonalData(secret.encode(), PostgresDataKeys(recorder))
        self._made.append(recorder)
        return made

    def close(self) -> None:
        for recorder in self._made:
            recorder.close()
        super().close()


Factory = PostgresFactory
