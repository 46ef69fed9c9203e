"""The `eventkeep` command line: serve the API, run the relay and projectors, manage keys; the
`seed`, `bench`, `replay`, `audit` and `backup` commands are loaded only when run (so
`eventkeep --help` imports neither the benchmarks nor Kafka nor Redis).

Every command gets its parts from the composition root (`eventkeep.bootstrap.build`), and runs
inside one error boundary (`EventkeepGroup.invoke`): bad settings, or a service that cannot be
reached, print one line naming the problem and exit 2 — never a traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, Protocol

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

import eventkeep
from eventkeep.api.keys import Role
from eventkeep.bootstrap import SettingsProblem, build
from eventkeep.heap import freeze_startup_heap
from eventkeep.logs import configure as configure_logs
from eventkeep.logs import configure_from_environment as configure_logs_from_environment
from eventkeep.logs import log_config
from eventkeep.metrics import (
    MULTIPROC_VARIABLE,
    LagCollector,
    prepare_multiprocess_dir,
    serve_metrics,
)
from eventkeep.private_files import owner_only, restrict, write_private
from eventkeep.settings import Settings

if TYPE_CHECKING:
    from typer import _click

BOOTSTRAP_KEY_NAME = "bootstrap"
BOOTSTRAP_KEY_FILE = "bootstrap-admin-key"  # under EVENTKEEP_HOME, mode 0600
# The exit status of a command that could not run: bad settings, a service out of reach.
CANNOT_RUN = 2

out = Console()
err = Console(stderr=True)


class Lazy(NamedTuple):
    """A command (or group of commands) imported only when it runs."""

    module: str
    attribute: str
    help: str


LAZY = {
    "seed": Lazy(
        "eventkeep.bench.seed_cli",
        "seed_app",
        "Write users, products and orders through the event store in bulk.",
    ),
    "bench": Lazy(
        "eventkeep.bench.cli",
        "bench_app",
        "Benchmarks: each figure beside its raw baseline from the same run.",
    ),
    "replay": Lazy(
        "eventkeep.replay.cli", "replay_app", "Rebuild projections from the event store."
    ),
    "audit": Lazy(
        "eventkeep.replay.cli", "audit_app", "Read, check, export and import the history."
    ),
    "db": Lazy(
        "eventkeep.api.db_cli",
        "db_app",
        "The database schema of the event store and the key store: versions, migrations.",
    ),
    "backup": Lazy(
        "eventkeep.eventstore.backup_cli",
        "backup_app",
        "Back up and restore the event store, the read models and the keys.",
    ),
}


class EventkeepGroup(TyperGroup):
    """The root group: lazy subcommands, and the command line's one error boundary."""

    _listing = False

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return [*super().list_commands(ctx), *LAZY]

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        lazy = LAZY.get(cmd_name)
        if lazy is None:
            return super().get_command(ctx, cmd_name)
        if self._listing:  # the root's help lists it by its one line, without loading it
            return TyperCommand(name=cmd_name, help=lazy.help)
        loaded = typer.main.get_command(getattr(import_module(lazy.module), lazy.attribute))
        loaded.name = cmd_name
        return loaded

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as error:
            problem = cannot_run(error)
            if problem is None:
                raise
            err.print(f"[red]eventkeep:[/red] {problem}", highlight=False, soft_wrap=True)
            raise typer.Exit(CANNOT_RUN) from None


def cannot_run(error: BaseException) -> str | None:
    """One line naming why a command could not run (bad settings, a service out of reach);
    None when `error` is not such a problem (a bug: its traceback is wanted)."""
    for cause in _causes(error):
        if isinstance(cause, ValidationError):
            return "; ".join(_invalid_setting(problem) for problem in cause.errors())
        if isinstance(cause, SettingsProblem):
            return str(cause)
        kind = type(cause)
        if kind.__name__ == "SchemaTooNewError":  # eventstore.migrations: a newer release's
            return str(cause)
        package = kind.__module__.split(".")[0]
        if package in ("psycopg", "psycopg_pool") and kind.__name__ in (
            "OperationalError",
            "PoolTimeout",
        ):
            return f"cannot reach PostgreSQL at {_postgres()}: {_first_line(cause)}"
        if package == "redis" and kind.__name__ in ("ConnectionError", "TimeoutError"):
            where = os.environ.get("EVENTKEEP_REDIS_URL", "EVENTKEEP_REDIS_URL")
            return f"cannot reach Redis at {_without_password(where)}: {_first_line(cause)}"
        if package == "kafka" and kind.__name__ in (
            "NoBrokersAvailable",
            "KafkaConnectionError",
            "KafkaTimeoutError",
        ):
            where = os.environ.get("EVENTKEEP_KAFKA_BOOTSTRAP", "EVENTKEEP_KAFKA_BOOTSTRAP")
            return f"cannot reach Kafka at {where}: {_first_line(cause)}"
        if isinstance(cause, PermissionError):
            return f"cannot use {cause.filename or 'a file'}: permission denied (EVENTKEEP_HOME?)"
    return None


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _invalid_setting(problem: Any) -> str:
    names = [str(part) for part in problem["loc"]]
    where = f"EVENTKEEP_{names[0].upper()}" if names else "settings"
    return f"invalid {where}: {problem['msg']}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _postgres() -> str:
    url = os.environ.get("EVENTKEEP_POSTGRES_URL")
    if not url:
        return "EVENTKEEP_POSTGRES_URL"
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:
        return "EVENTKEEP_POSTGRES_URL"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def _without_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}://{rest.rsplit('@', 1)[1]}"


def _environment_help() -> str:
    """The settings' environment variables, from the settings' own descriptions."""
    lines = [
        f"* `EVENTKEEP_{name.upper()}`: {field.description}"
        for name, field in Settings.model_fields.items()
    ]
    return "Settings come from the environment:\n\n" + "\n".join(lines)


app = typer.Typer(
    cls=EventkeepGroup,
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
    configure_logs_from_environment()  # structured lines on stderr (eventkeep/logs.py)


def _settings(**overrides: Any) -> Settings:
    """The settings from the environment, with the options given (bad ones: the boundary)."""
    return Settings(**{name: value for name, value in overrides.items() if value is not None})


def _https_files(settings: Settings) -> tuple[str, str] | None:
    """The certificate and key of --certfile/--keyfile (or their settings); None for HTTP.
    Both or neither, each a readable file: checked before anything starts."""
    cert, key = settings.https_certfile, settings.https_keyfile
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise SettingsProblem("HTTPS needs both --certfile and --keyfile (or neither)")
    for path in (cert, key):
        if not os.access(path, os.R_OK) or not path.is_file():
            raise SettingsProblem(f"cannot serve HTTPS: {path} is not a readable file")
    return str(cert), str(key)


def _check_port_free(host: str, port: int) -> None:
    """Binds the port a moment, as the server will, so that a port in use is found before
    anything changes (a second `serve` must leave the running one's bootstrap key alone)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            reason = "in use" if error.errno == errno.EADDRINUSE else (error.strerror or error)
            raise SettingsProblem(
                f"cannot serve on {host}:{port}: {reason} (another eventkeep serve? "
                "choose another with --port or EVENTKEEP_PORT)"
            ) from None


@app.command()
@owner_only  # every file the server makes is its owner's alone (0600/0700)
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
    certfile: Annotated[
        Path | None,
        typer.Option(
            help="Serve HTTPS with this certificate (PEM, with its chain); needs --keyfile. "
            "[env EVENTKEEP_HTTPS_CERTFILE]"
        ),
    ] = None,
    keyfile: Annotated[
        Path | None,
        typer.Option(help="Private key (PEM) of --certfile. [env EVENTKEEP_HTTPS_KEYFILE]"),
    ] = None,
) -> None:
    """Serve the HTTP API (HTTPS with --certfile/--keyfile); stops cleanly on SIGTERM or Ctrl-C.

    In embedded mode it writes a fresh bootstrap admin key (revoking the previous one) to
    EVENTKEEP_HOME/bootstrap-admin-key, mode 0600, and prints that file's path, never the key.
    """
    settings = _settings(host=host, port=port, https_certfile=certfile, https_keyfile=keyfile)
    https = _https_files(settings)
    if settings.mode == "embedded" and workers != 1:
        err.print(
            "[red]The embedded mode runs one process[/red] (its SQLite store and "
            "in-process projectors are not shared); set EVENTKEEP_POSTGRES_URL for more."
        )
        raise typer.Exit(CANNOT_RUN)
    _check_port_free(settings.host, settings.port)
    with build(settings, role="serve") as system:
        system.check()  # a store out of reach: one line here, not a traceback per worker
        base = f"{'https' if https else 'http'}://{settings.host}:{settings.port}"
        out.print(f"eventkeep ({settings.mode} mode) serving on [bold]{base}[/bold]")
        out.print(f"API docs: {base}/docs")
        if settings.mode == "embedded":
            restrict(settings.home)  # what an older version left readable to others
            issued = system.keys.rotate(Role.admin, BOOTSTRAP_KEY_NAME)
            # Never printed: terminals, CI logs and process supervisors keep stdout.
            path = write_private(settings.home / BOOTSTRAP_KEY_FILE, issued.secret_key + "\n")
            out.print("Bootstrap admin key (replaces the previous one) written, mode 0600, to:")
            typer.echo(str(path.resolve()))
    metrics_dir = _multiprocess_metrics(workers)
    # An import string, so that each worker process builds its own app from the environment.
    uvicorn.run(
        "eventkeep.api.app:serve_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        timeout_graceful_shutdown=10,
        access_log=False,  # the app logs each request itself, with its route template
        # httptools, refusing at the admission limit before a request becomes a task.
        http="eventkeep.api.admission_protocol:AdmittingHttpToolsProtocol",
        # Structured lines, INFO and up by default, every line redacted (eventkeep/logs.py).
        log_config=log_config(settings.log_level, settings.log_format),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        ssl_certfile=https[0] if https else None,
        ssl_keyfile=https[1] if https else None,
    )
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _multiprocess_metrics(workers: int) -> Path | None:
    """With several workers, a fresh private folder where each writes its metrics, so that
    `/metrics` answers all of them (eventkeep/metrics.py); None with one worker."""
    if workers == 1:
        os.environ.pop(MULTIPROC_VARIABLE, None)
        return None
    folder = prepare_multiprocess_dir(Path(tempfile.mkdtemp(prefix="eventkeep-metrics-")))
    os.environ[MULTIPROC_VARIABLE] = str(folder)  # the workers inherit it
    return folder


class Worker(Protocol):
    def run(self) -> None: ...

    def stop(self) -> None: ...


def _run_until_signalled(worker: Worker, settings: Settings) -> None:
    """Runs `worker` until SIGTERM or Ctrl-C, which let it finish its batch and stop."""
    configure_logs(settings.log_level, settings.log_format)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: worker.stop())
    # The relay's and projectors' full collections held every event in flight back for as
    # long as they walked the startup heap (P2's tail, eventkeep/heap.py).
    freeze_startup_heap()
    worker.run()


@app.command()
def relay() -> None:
    """Publish the event log to Kafka, in position order, until SIGTERM.

    One relay is active at a time (a PostgreSQL advisory lock); start a second as a standby:
    it takes over when the active one dies. Kafka down: it retries and catches up.
    """
    with build(_settings(), role="relay") as system:
        settings = system.settings
        worker = system.relay()
        out.print(
            f"relay: log -> {settings.kafka_bootstrap} topics {settings.topic_prefix}.* "
            f"({settings.topic_partitions} partitions); waits for the lock if another relay runs"
        )
        recorder = system.recorder
        lag = LagCollector(recorder.max_notification_id, published=lambda: worker.published)
        serve_metrics(settings.metrics_port, settings.metrics_host, [lag])
        # Only the active relay signs the chain's periodic checkpoints: one writer.
        system.start_checkpoints(active=worker.is_active.is_set)
        _run_until_signalled(worker, settings)


@app.command()
def project() -> None:
    """Apply events from Kafka to the read models (a consumer group member) until SIGTERM.

    Start as many as there are partitions; they share them. Each batch is applied with its
    offsets in one transaction, so a restart neither loses nor doubles anything.
    """
    with build(_settings(), role="project") as system:
        settings = system.settings
        worker = system.projector()
        out.print(
            f"projector: {settings.kafka_bootstrap} topics {settings.topic_prefix}.* "
            f"-> read models; group {settings.projector_group}"
        )
        if settings.metrics_port is not None:  # the log's head needs the event store too
            models, recorder = system.read_models, system.recorder
            lag = LagCollector(
                recorder.max_notification_id,
                lambda: {name: models.position(name) for name in models.names},
            )
            serve_metrics(settings.metrics_port, settings.metrics_host, [lag])
        _run_until_signalled(worker, settings)


@keys_app.command("create")
def create_key(
    role: Annotated[
        Role,
        typer.Option(
            help="What the key may do; admin may do everything (customer: no key, a login)."
        ),
    ],
    name: Annotated[str, typer.Option(help="A label, to recognise the key in `keys list`.")] = "",
) -> None:
    """Create an API key; the key itself is printed once, alone on the last line."""
    if role is Role.customer:
        err.print(
            "[red]No API key has the customer role:[/red] a customer logs in with their "
            "user's password (POST /v1/auth/login) and acts with the token it gives. Keys are "
            "for backends: client, analyst, auditor or admin."
        )
        raise typer.Exit(2)
    with build(_settings(), role="keys") as system:
        issued = system.keys.create(role, name)
    out.print(
        f"Created {issued.key.role} key [bold]{issued.key.id}[/bold]. "
        "Keep it now: only its hash is stored."
    )
    typer.echo(issued.secret_key)


@keys_app.command("list")
def list_keys() -> None:
    """List API keys (ids, roles, names; never the secrets)."""
    with build(_settings(), role="keys") as system:
        keys = system.keys.list()
    table = Table("id", "role", "name", "created", "status")
    for key in keys:
        status = "[red]revoked[/red]" if key.revoked else "[green]active[/green]"
        table.add_row(key.id, key.role, key.name, key.created_at.isoformat(), status)
    out.print(table)


@keys_app.command("rotate-secret")
def rotate_secret() -> None:
    """Re-wrap every user's data key and re-key every email claim under a new deployment
    secret; every event stays readable. Stop every other eventkeep process first.

    The new secret comes from EVENTKEEP_NEW_CLAIM_SECRET (at least 32 random bytes). Embedded:
    when unset, a fresh one is made; it replaces HOME/secret once the store has committed.
    Distributed: required; set it as EVENTKEEP_CLAIM_SECRET in every process afterwards.
    """
    from eventkeep.secret_rotation import (
        NEW_SECRET_VARIABLE,
        CannotRotate,
        rotate_deployment,
    )

    settings = _settings()
    try:
        rotated = rotate_deployment(settings, os.environ.get(NEW_SECRET_VARIABLE) or None)
    except CannotRotate as problem:
        err.print(f"[red]Cannot rotate the secret:[/red] {problem}")
        raise typer.Exit(CANNOT_RUN) from None
    out.print(
        f"Re-wrapped {rotated.data_keys} data keys and re-keyed {rotated.email_claims} email "
        "claims under the new secret."
    )
    if settings.mode == "distributed":
        out.print(
            f"Now set EVENTKEEP_CLAIM_SECRET to the value of {NEW_SECRET_VARIABLE} in every "
            "process before starting them again."
        )


@keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The key's id, from `keys list`.")],
) -> None:
    """Revoke an API key; running API processes refuse it within a few seconds."""
    with build(_settings(), role="keys") as system:
        revoked = system.keys.revoke(key_id)
    if not revoked:
        err.print(f"No active key with id {key_id}.")
        raise typer.Exit(1)
    out.print(f"Revoked key {key_id}.")
