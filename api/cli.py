"""The `eventkeep` command line: serve the API, run the relay and projectors, manage keys."""

import logging
import signal
from contextlib import closing
from typing import Annotated, Protocol

import psycopg
import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

import eventkeep
from eventkeep.api.bootstrap import (
    build_key_store,
    build_projector,
    build_read_models,
    build_relay,
    shop_env,
)
from eventkeep.api.settings import Settings
from eventkeep.bench.cli import bench_app
from eventkeep.bench.seed_cli import seed
from eventkeep.eventstore.api_keys import ApiKeyStore, Role
from eventkeep.eventstore.backup_cli import backup_app
from eventkeep.replay.cli import audit_app, replay_app

BOOTSTRAP_KEY_NAME = "bootstrap"


def _environment_help() -> str:
    """The settings' environment variables, from the settings' own descriptions."""
    lines = [
        f"* `EVENTKEEP_{name.upper()}`: {field.description}"
        for name, field in Settings.model_fields.items()
    ]
    return "Settings come from the environment:\n\n" + "\n".join(lines)


app = typer.Typer(
    help="eventkeep: an event-sourced shop engine (CQRS, HTTP API, projections, audit).\n\n"
    "Embedded mode (default) keeps everything in files under EVENTKEEP_HOME; setting "
    "EVENTKEEP_POSTGRES_URL selects the distributed mode.\n\n" + _environment_help(),
    rich_markup_mode="markdown",
    no_args_is_help=True,
)
keys_app = typer.Typer(
    help="Create, list and revoke API keys (stored hashed in the mode's store).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"eventkeep {eventkeep.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """eventkeep: an event-sourced shop engine."""


out = Console()
err = Console(stderr=True)


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**{name: value for name, value in overrides.items() if value is not None})
    except ValidationError as error:
        for problem in error.errors():
            where = ".".join(map(str, problem["loc"])) or "settings"
            err.print(f"[red]Invalid {where}:[/red] {problem['msg']}")
        raise typer.Exit(2) from None


def _key_store(settings: Settings) -> ApiKeyStore:
    try:
        return build_key_store(settings)
    except psycopg.OperationalError as error:
        err.print(f"[red]Cannot reach PostgreSQL:[/red] {error}")
        raise typer.Exit(1) from None


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind. [env EVENTKEEP_HOST, default 127.0.0.1]")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to bind. [env EVENTKEEP_PORT, default 8000]")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="API processes (distributed mode only; embedded is one).")
    ] = 1,
) -> None:
    """Serve the HTTP API; stops cleanly on SIGTERM or Ctrl-C.

    In embedded mode it prints a fresh bootstrap admin key, revoking the previous one.
    """
    settings = _settings(host=host, port=port)
    if settings.mode == "embedded" and workers != 1:
        err.print(
            "[red]The embedded mode runs one process[/red] (its SQLite store and "
            "in-process projectors are not shared); set EVENTKEEP_POSTGRES_URL for more."
        )
        raise typer.Exit(2)
    base = f"http://{settings.host}:{settings.port}"
    out.print(f"eventkeep ({settings.mode} mode) serving on [bold]{base}[/bold]")
    out.print(f"API docs: {base}/docs")
    if settings.mode == "embedded":
        with closing(_key_store(settings)) as store:
            issued = store.rotate(Role.admin, BOOTSTRAP_KEY_NAME)
        out.print("Bootstrap admin key (replaces the previous one):")
        typer.echo(issued.secret_key)
    # An import string, so that each worker process builds its own app from the environment.
    uvicorn.run(
        "eventkeep.api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        timeout_graceful_shutdown=10,
        access_log=False,  # /metrics counts requests; a log line each costs throughput
    )


class Worker(Protocol):
    def run(self) -> None: ...

    def stop(self) -> None: ...


def _run_until_signalled(worker: Worker) -> None:
    """Runs `worker` until SIGTERM or Ctrl-C, which let it finish its batch and stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: worker.stop())
    worker.run()


def _distributed_settings(command: str) -> Settings:
    settings = _settings()
    if settings.mode == "embedded" or settings.kafka_bootstrap is None:
        err.print(
            f"[red]`eventkeep {command}` belongs to the distributed mode[/red]: set "
            "EVENTKEEP_POSTGRES_URL and EVENTKEEP_KAFKA_BOOTSTRAP. (In the embedded mode "
            "`eventkeep serve` projects in-process.)"
        )
        raise typer.Exit(2)
    return settings


@app.command()
def relay() -> None:
    """Publish the event log to Kafka, in position order, until SIGTERM.

    One relay is active at a time (a PostgreSQL advisory lock); start a second as a standby:
    it takes over when the active one dies. Kafka down: it retries and catches up.
    """
    from eventkeep.commands.shop import Shop

    settings = _distributed_settings("relay")
    shop = Shop(env=shop_env(settings))
    out.print(
        f"relay: log -> {settings.kafka_bootstrap} topics {settings.topic_prefix}.* "
        f"({settings.topic_partitions} partitions); waits for the lock if another relay runs"
    )
    try:
        _run_until_signalled(build_relay(settings, shop))
    finally:
        shop.close()


@app.command()
def project() -> None:
    """Apply events from Kafka to the read models (a consumer group member) until SIGTERM.

    Start as many as there are partitions; they share them. Each batch is applied with its
    offsets in one transaction, so a restart neither loses nor doubles anything.
    """
    settings = _distributed_settings("project")
    models = build_read_models(settings)
    out.print(
        f"projector: {settings.kafka_bootstrap} topics {settings.topic_prefix}.* "
        f"-> read models; group {settings.projector_group}"
    )
    try:
        _run_until_signalled(build_projector(settings, models))
    finally:
        models.close()


@keys_app.command("create")
def create_key(
    role: Annotated[Role, typer.Option(help="What the key may do; admin may do everything.")],
    name: Annotated[str, typer.Option(help="A label, to recognise the key in `keys list`.")] = "",
) -> None:
    """Create an API key; the key itself is printed once, alone on the last line."""
    with closing(_key_store(_settings())) as store:
        issued = store.create(role, name)
    out.print(
        f"Created {issued.key.role} key [bold]{issued.key.id}[/bold]. "
        "Keep it now: only its hash is stored."
    )
    typer.echo(issued.secret_key)


@keys_app.command("list")
def list_keys() -> None:
    """List API keys (ids, roles, names; never the secrets)."""
    with closing(_key_store(_settings())) as store:
        keys = store.list()
    table = Table("id", "role", "name", "created", "status")
    for key in keys:
        status = "[red]revoked[/red]" if key.revoked else "[green]active[/green]"
        table.add_row(key.id, key.role, key.name, key.created_at.isoformat(), status)
    out.print(table)


@keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The key's id, from `keys list`.")],
) -> None:
    """Revoke an API key; running API processes refuse it within a few seconds."""
    with closing(_key_store(_settings())) as store:
        revoked = store.revoke(key_id)
    if not revoked:
        err.print(f"No active key with id {key_id}.")
        raise typer.Exit(1)
    out.print(f"Revoked key {key_id}.")


app.command("seed")(seed)
app.add_typer(bench_app, name="bench")
app.add_typer(replay_app, name="replay")
app.add_typer(audit_app, name="audit")
app.add_typer(backup_app, name="backup")
