"""`eventkeep db`: the versioned schema of the event store (with its claims, idempotency and
data-key tables) and of the API key store, in the mode the settings select.

Every process migrates what it opens when it starts, so `db migrate` is for doing it first, on
purpose (before starting a new release, say); `db status` changes nothing. Read models are not
migrated: they are rebuilt (`eventkeep replay rebuild`). How versions are kept and applied:
`eventstore/migrations.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, cast

import typer
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment
from rich.console import Console
from rich.table import Table

from eventkeep.api.keys import PostgresApiKeyStore, SqliteApiKeyStore
from eventkeep.api.roles_cli import roles
from eventkeep.eventstore.migrations import (
    Migration,
    SchemaStatus,
    SchemaTooNewError,
)
from eventkeep.eventstore.recorder import EventRecorder
from eventkeep.settings import Settings

db_app = typer.Typer(
    help="The database schema of the event store and the key store: versions, migrations.",
    no_args_is_help=True,
)
out = Console()
db_app.command("roles")(roles)  # least-privilege roles and grants (api/roles_cli.py)


class Versioned(Protocol):
    def migrate_schema(self) -> list[Migration]: ...

    def schema_status(self) -> SchemaStatus: ...


@db_app.command("migrate")
def migrate() -> None:
    """Apply the missing schema migrations, each once, in order, in its own transaction.

    Safe to run while eventkeep processes start or run: migrations are serialised (an
    advisory lock on PostgreSQL, the write lock on SQLite). Refuses a schema newer than this
    eventkeep.
    """
    settings = Settings()
    parts = _parts(settings)
    for _, opened in parts:  # opening refuses a newer schema: refuse before changing anything
        with opened():
            pass
    for label, opened in parts:
        with opened() as part:
            applied = part.migrate_schema()
            now = part.schema_status().current
        done = ", ".join(f"{m.version} ({m.name})" for m in applied) or "nothing to apply"
        out.print(f"{label}: version {now}; applied: {done}", highlight=False)


@db_app.command("status")
def status() -> None:
    """Show each part's schema version, the newest this eventkeep knows, and what is pending."""
    settings = Settings()
    table = Table("part", "schema", "version", "latest", "applied at", "pending")
    for label, opened in _parts(settings):
        try:
            with opened() as part:
                found = part.schema_status()
        except SchemaTooNewError as error:
            table.add_row(
                label, error.component, str(error.found), str(error.known), "", "newer than code"
            )
            continue
        table.add_row(
            label,
            found.component,
            str(found.current),
            str(found.latest),
            found.applied_at.isoformat(timespec="seconds") if found.applied_at else "",
            ", ".join(str(m.version) for m in found.pending) or "none",
        )
    out.print(table)


def _parts(
    settings: Settings,
) -> list[tuple[str, Callable[[], AbstractContextManager[Versioned]]]]:
    return [("event store", lambda: _event_store(settings)), ("keys", lambda: _keys(settings))]


@contextmanager
def _event_store(settings: Settings) -> Iterator[Versioned]:
    from eventkeep.bootstrap import shop_env
    from eventkeep.commands.shop import Shop

    # CREATE_TABLE=n: opening changes nothing (a newer schema is still refused).
    env = Environment(Shop.name, {**shop_env(settings), "CREATE_TABLE": "n"})
    factory = InfrastructureFactory.construct(env)
    try:
        yield cast(EventRecorder, factory.application_recorder())
    finally:
        factory.close()


@contextmanager
def _keys(settings: Settings) -> Iterator[Versioned]:
    if settings.postgres_url is None:
        settings.home.mkdir(parents=True, exist_ok=True)
        store: SqliteApiKeyStore | PostgresApiKeyStore = SqliteApiKeyStore(
            settings.home / "api_keys.db", migrate=False
        )
    else:
        store = PostgresApiKeyStore(
            settings.postgres_url.get_secret_value(),
            pool_timeout=settings.pool_timeout,
            migrate=False,
        )
    try:
        yield store
    finally:
        store.close()
