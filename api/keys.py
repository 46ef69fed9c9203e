"""API keys and their roles, stored hashed, in SQLite (embedded) or PostgreSQL (distributed).

A key reads `ek_<id>_<secret>`. Only sha256(secret) is stored: the secret carries 256 random
bits, so an unsalted hash cannot be reversed and lookups stay a primary-key read by id.
Verified keys are remembered for a few seconds so that authentication does not cost a query
per request. The table is versioned like the event store's (`eventstore.migrations`): a store
migrates it when it opens (or, with `migrate=False`, refuses a newer schema and changes nothing).
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import logging
import re
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from eventkeep.api.credentials import (
    CREDENTIAL_TABLES,
    LOGIN_FAILURE_TIMES_POSTGRES,
    LOGIN_FAILURE_TIMES_SQLITE,
)
from eventkeep.api.webhook_tables import WEBHOOK_TABLES
from eventkeep.eventstore.migrations import (
    Migration,
    PostgresSchemaDatabase,
    Schema,
    SchemaDatabase,
    SchemaStatus,
    SQLiteSchemaDatabase,
    check,
    migrate,
    quote_identifier,
    sqlite_connection,
    status,
)
from eventkeep.eventstore.pools import check_and_sweep

log = logging.getLogger(__name__)


class Role(StrEnum):
    client = "client"
    analyst = "analyst"
    auditor = "auditor"
    admin = "admin"
    # Never a key's: a customer's access token (api/accounts.py) acts as this role.
    customer = "customer"


@dataclass(frozen=True)
class ApiKey:
    id: str
    role: Role
    name: str
    created_at: datetime
    revoked: bool


@dataclass(frozen=True)
class IssuedKey:
    """A new key: `secret_key` is shown once and never stored."""

    key: ApiKey
    secret_key: str


_KEY_PATTERN = re.compile(r"ek_(?P<id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})")
_CACHE_LIMIT = 10_000

# Portable SQL (SQLite >= 3.35 and PostgreSQL); `%s` placeholders, rewritten for sqlite3.
_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('client', 'analyst', 'auditor', 'admin')),
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT FALSE
)"""
KEY_STORE_SCHEMA = Schema(
    "api_keys",
    (
        Migration(1, "api keys, stored hashed", postgres=(_CREATE_TABLE,), sqlite=(_CREATE_TABLE,)),
        Migration(
            2,
            "customers' credentials, sessions, refresh tokens and login failures",
            postgres=CREDENTIAL_TABLES,
            sqlite=CREDENTIAL_TABLES,
        ),
        Migration(
            3,
            "webhook subscriptions and their deliveries",
            postgres=WEBHOOK_TABLES,
            sqlite=WEBHOOK_TABLES,
        ),
        Migration(
            4,
            "login failures' last time, deliveries by time (both pruned)",
            postgres=LOGIN_FAILURE_TIMES_POSTGRES,
            sqlite=LOGIN_FAILURE_TIMES_SQLITE,
        ),
    ),
    anchor=quote_identifier("api_keys"),
)
_COLUMNS = "id, role, name, created_at, revoked"
_INSERT = (
    "INSERT INTO api_keys (id, secret_hash, role, name, created_at, revoked) "
    "VALUES (%s, %s, %s, %s, %s, FALSE)"
)
_SELECT_ONE = f"SELECT {_COLUMNS}, secret_hash FROM api_keys WHERE id = %s"
_SELECT_ALL = f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id"
_REVOKE = "UPDATE api_keys SET revoked = TRUE WHERE id = %s AND NOT revoked RETURNING id"
_REVOKE_NAMED = "UPDATE api_keys SET revoked = TRUE WHERE name = %s AND NOT revoked"

Statement = tuple[str, tuple[Any, ...]]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _row_to_key(row: Sequence[Any]) -> ApiKey:
    key_id, role, name, created_at, revoked = row[:5]
    return ApiKey(key_id, Role(role), name, datetime.fromisoformat(created_at), bool(revoked))


class ApiKeyStore(ABC):
    """Issues, lists, revokes and verifies keys; subclasses only run SQL."""

    def __init__(self, cache_seconds: float = 5.0) -> None:
        self._cache_seconds = cache_seconds
        # sha256(presented) -> (key, trusted until): the time the store was asked, plus TTL.
        self._cache: dict[str, tuple[ApiKey, float]] = {}
        self._cache_lock = threading.Lock()
        # Bumped by every revocation here: a verification that began before it stores nothing.
        self._epoch = 0
        self._refreshing: set[str] = set()
        self._refresher: ThreadPoolExecutor | None = None
        self._closed = False

    def create(self, role: Role, name: str = "") -> IssuedKey:
        return self._issue(role, name, replace_named=False)

    def rotate(self, role: Role, name: str) -> IssuedKey:
        """Issues a key named `name` and revokes the earlier keys of that name, atomically."""
        return self._issue(role, name, replace_named=True)

    def list(self) -> builtins.list[ApiKey]:
        return [_row_to_key(row) for row in self._run([(_SELECT_ALL, ())])]

    def revoke(self, key_id: str) -> bool:
        """Revokes the key; False when there is no such active key."""
        revoked = bool(self._run([(_REVOKE, (key_id,))]))
        self._forget_verified()
        return revoked

    def recently_verified(self, presented: str) -> ApiKey | None:
        """The key, if the store vouched for it within `cache_seconds`; else None (ask
        `verify`). Never touches the store, so it may run on an event loop.

        Past half its trust, a key in use is verified again in the background (one check per
        key at a time) while this keeps answering from memory: requests never wait for the
        trust to be renewed, yet it still ends `cache_seconds` after the store last said the
        key was active, so a revocation elsewhere is refused within that time."""
        cache_key = _sha256(presented)
        with self._cache_lock:
            cached = self._cache.get(cache_key)
            if cached is None:
                return None
            key, until = cached
            left = until - time.monotonic()
            if left <= 0:
                return None
            renew = left < self._cache_seconds / 2 and cache_key not in self._refreshing
            if renew:
                self._refreshing.add(cache_key)
                epoch = self._epoch
        if renew:
            self._renew_in_background(presented, cache_key, epoch)
        return key

    def verify(self, presented: str) -> ApiKey | None:
        """The active key `presented` names, or None for a malformed, unknown or revoked key."""
        if (cached := self.recently_verified(presented)) is not None:
            return cached
        with self._cache_lock:
            epoch = self._epoch
        return self._ask_store(presented, _sha256(presented), epoch)

    def _ask_store(self, presented: str, cache_key: str, epoch: int) -> ApiKey | None:
        """Verifies `presented` against the store and remembers the answer (trusted for
        `cache_seconds` from the moment the store was asked; forgotten when it is no longer
        active), unless a revocation in this process came after `epoch`."""
        match = _KEY_PATTERN.fullmatch(presented)
        if match is None:
            return None
        asked = time.monotonic()
        rows = self._run([(_SELECT_ONE, (match["id"],))])
        key = _row_to_key(rows[0]) if rows else None
        if key is not None and (
            key.revoked or not hmac.compare_digest(rows[0][5], _sha256(match["secret"]))
        ):
            key = None
        with self._cache_lock:
            if self._epoch == epoch:
                if key is None:
                    self._cache.pop(cache_key, None)
                else:
                    if len(self._cache) >= _CACHE_LIMIT:
                        self._cache.clear()
                    self._cache[cache_key] = (key, asked + self._cache_seconds)
        return key

    def _renew_in_background(self, presented: str, cache_key: str, epoch: int) -> None:
        def renew() -> None:
            try:
                self._ask_store(presented, cache_key, epoch)
            except Exception as error:  # the store out of reach: the trust runs out as it is
                log.warning("an API key's verification could not be renewed: %s", error)
            finally:
                with self._cache_lock:
                    self._refreshing.discard(cache_key)

        with self._cache_lock:
            if self._closed:  # the trust runs out, and the next request asks the store
                self._refreshing.discard(cache_key)
                return
            if self._refresher is None:
                self._refresher = ThreadPoolExecutor(1, thread_name_prefix="api-key-renewal")
            self._refresher.submit(renew)

    def close(self) -> None:
        """Stops the background renewals (waiting for one under way); subclasses also
        release what they hold."""
        with self._cache_lock:
            self._closed = True
            refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.shutdown(wait=True, cancel_futures=True)

    def migrate_schema(self) -> builtins.list[Migration]:
        """Applies the key table's missing migrations; returns those applied."""
        with self._schema_database() as database:
            return migrate(database, KEY_STORE_SCHEMA)

    def schema_status(self) -> SchemaStatus:
        with self._schema_database() as database:
            return status(database, KEY_STORE_SCHEMA)

    def _open_schema(self, *, migrating: bool) -> None:
        with self._schema_database() as database:
            if migrating:
                migrate(database, KEY_STORE_SCHEMA)
            else:
                check(database, KEY_STORE_SCHEMA)

    @abstractmethod
    def _schema_database(self) -> AbstractContextManager[SchemaDatabase]:
        """A connection of its own for schema changes."""

    def execute(self, statements: builtins.list[Statement]) -> builtins.list[tuple[Any, ...]]:
        """Runs the statements in one transaction on the key store's database; the last one's
        rows (the customers' credentials live there: api/accounts.py)."""
        return self._run(statements)

    def _issue(self, role: Role, name: str, *, replace_named: bool) -> IssuedKey:
        if Role(role) is Role.customer:
            raise ValueError("customers log in with a password; no API key has their role")
        key = ApiKey(secrets.token_hex(8), Role(role), name, datetime.now(UTC), revoked=False)
        secret = secrets.token_urlsafe(32)
        statements: builtins.list[Statement] = [(_REVOKE_NAMED, (name,))] if replace_named else []
        statements.append(
            (_INSERT, (key.id, _sha256(secret), key.role.value, name, key.created_at.isoformat()))
        )
        self._run(statements)
        if replace_named:
            self._forget_verified()
        return IssuedKey(key, f"ek_{key.id}_{secret}")

    def _forget_verified(self) -> None:
        with self._cache_lock:
            self._epoch += 1
            self._cache.clear()

    @abstractmethod
    def _run(self, statements: builtins.list[Statement]) -> builtins.list[tuple[Any, ...]]:
        """Runs the statements in one transaction; returns the last one's rows."""


class SqliteApiKeyStore(ApiKeyStore):
    def __init__(self, path: Path, cache_seconds: float = 5.0, *, migrate: bool = True) -> None:
        super().__init__(cache_seconds)
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._open_schema(migrating=migrate)

    @contextmanager
    def _schema_database(self) -> Iterator[SchemaDatabase]:
        with closing(sqlite_connection(str(self._path))) as connection:
            yield SQLiteSchemaDatabase(connection)

    def _run(self, statements: list[Statement]) -> list[tuple[Any, ...]]:
        # A connection per call: sqlite3 connections are bound to a thread, and requests
        # arrive on the server's worker threads; opening a local file costs microseconds.
        with closing(sqlite3.connect(self._path, timeout=10)) as connection, connection:
            rows: list[tuple[Any, ...]] = []
            for sql, params in statements:
                rows = connection.execute(sql.replace("%s", "?"), params).fetchall()
            return rows


class PostgresApiKeyStore(ApiKeyStore):
    def __init__(
        self,
        conninfo: str,
        cache_seconds: float = 5.0,
        pool_timeout: float = 5.0,
        *,
        migrate: bool = True,
    ) -> None:
        super().__init__(cache_seconds)
        self._conninfo, self._connect_timeout = conninfo, max(1, round(pool_timeout))
        # Two connections: the cache answers most checks, so only cold keys reach the pool.
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=2,
            timeout=pool_timeout,
            open=True,
            name="eventkeep-api-keys",
            check=check_and_sweep,  # dead connections (a PostgreSQL restart) never lent
        )
        try:
            self._open_schema(migrating=migrate)
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def _schema_database(self) -> Iterator[SchemaDatabase]:
        with psycopg.connect(
            self._conninfo, autocommit=True, connect_timeout=self._connect_timeout
        ) as connection:
            yield PostgresSchemaDatabase(connection)

    def _run(self, statements: list[Statement]) -> list[tuple[Any, ...]]:
        with self._pool.connection() as connection:
            rows: list[tuple[Any, ...]] = []
            for sql, params in statements:
                cursor = connection.execute(sql, params)
                rows = cursor.fetchall() if cursor.description else []
            return rows

    def close(self) -> None:
        super().close()
        self._pool.close()
