"""`eventkeep backup create|list|restore`, in the mode the environment selects."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from eventkeep.eventstore.backup import (
    BackupRefused,
    BackupSettings,
    archiving_problem,
    choose_backup,
    create_postgres_backup,
    create_sqlite_backup,
    list_backups,
    parse_time,
    pg_program,
    prune_backups,
    restore_postgres_backup,
    restore_sqlite_backup,
    start_command,
    start_postgres,
    wait_promoted,
    with_port,
)
from eventkeep.settings import Settings

backup_app = typer.Typer(
    help="Back up and restore. Distributed mode: PostgreSQL base backups (pg_basebackup) plus "
    "the server's WAL archive, restored to the latest archived WAL or a point in time. "
    "Embedded mode: online copies of the SQLite files under EVENTKEEP_HOME.\n\n"
    "Settings: EVENTKEEP_BACKUP_DIR (default HOME/backups), EVENTKEEP_WAL_ARCHIVE (the folder "
    "the server's archive_command fills; infra/services exports it), EVENTKEEP_WAL_STREAM "
    "(pg_receivewal's folder, when WAL is streamed too), EVENTKEEP_PG_BIN.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    """The mode's settings. Backups never use the claim secret: a placeholder keeps Settings
    from demanding one (distributed) or writing a new one into an empty home (embedded), which
    would then stand in the way of the restore."""
    # Backups copy bytes and never use the secret: any strong value will do when none is set.
    unused = secrets.token_urlsafe(32)
    return Settings(claim_secret=os.environ.get("EVENTKEEP_CLAIM_SECRET") or unused)


def _refused(error: BackupRefused) -> typer.Exit:
    err.print(f"[red]Refused:[/red] {error}")
    return typer.Exit(1)


@backup_app.command("create")
def create() -> None:
    """Take a backup now (online: the server keeps serving). Prints the backup's name."""
    settings, backups = _settings(), BackupSettings()
    root = backups.folder(settings.home)
    try:
        if settings.postgres_url is None:
            info = create_sqlite_backup(settings.home, root)
        else:
            url = settings.postgres_url.get_secret_value()
            info = create_postgres_backup(url, root, backups)
    except BackupRefused as error:
        raise _refused(error) from None
    wal = f", WAL from {info.wal_start}" if info.wal_start else ""
    err.print(f"Backup {info.name}: {info.size:,} bytes in {root / info.name}{wal}.")
    if settings.postgres_url is not None:
        problem = archiving_problem(settings.postgres_url.get_secret_value())
        if problem is not None:
            err.print(
                f"[yellow]Warning:[/yellow] {problem} on this server: the backup restores only "
                "to its own end point, not to later times (see docs/operations.md)."
            )
    typer.echo(info.name)


@backup_app.command("list")
def list_() -> None:
    """The backups, oldest first: name, when it finished, size, where its WAL starts."""
    settings, backups = _settings(), BackupSettings()
    root = backups.folder(settings.home)
    rows = [("name", "mode", "finished at", "bytes", "WAL start", "timeline")]
    rows += [
        (
            info.name,
            info.mode,
            info.finished_at,
            str(info.size),
            info.wal_start or "-",
            str(info.timeline or "-"),
        )
        for info in list_backups(root)
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@backup_app.command("restore")
def restore(
    to: Annotated[
        str,
        typer.Option(
            help="'latest' (the newest backup, then every archived WAL segment), a backup's "
            "name, or an RFC 3339 time with its zone (distributed: replay WAL up to it)."
        ),
    ] = "latest",
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Distributed: a fresh (absent or empty) PostgreSQL data directory to restore "
            "into. Required in that mode."
        ),
    ] = None,
    start: Annotated[
        bool, typer.Option(help="Distributed: start the restored server and wait for it.")
    ] = False,
    port: Annotated[
        int | None, typer.Option(help="Distributed: port of the restored server.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Embedded: replace the databases under EVENTKEEP_HOME (stop the server first)."
        ),
    ] = False,
) -> None:
    """Restore a backup.

    Distributed: unpacks the chosen base backup into --data-dir and writes the recovery
    settings (restore_command from EVENTKEEP_WAL_ARCHIVE, then EVENTKEEP_WAL_STREAM when
    set; recovery_target_time for a time; promote at the end); --start starts it and waits
    until recovery is done. Then point EVENTKEEP_POSTGRES_URL at it and run
    `eventkeep audit verify`.

    Embedded: stop the server, then restore; the files go back under EVENTKEEP_HOME.
    """
    settings, backups = _settings(), BackupSettings()
    root = backups.folder(settings.home)
    try:
        info = choose_backup(root, to)
        if settings.postgres_url is None:
            restore_sqlite_backup(info, root, settings.home, force=force)
            out.print(f"Restored {info.name} into {settings.home}.")
            return
        if data_dir is None:
            raise BackupRefused("--data-dir is required in the distributed mode")
        target = None if to in ("latest", info.name) else parse_time(to)
        began = time.monotonic()
        restore_postgres_backup(
            info, root, data_dir, backups.wal_archive, target, port, backups.wal_stream
        )
        log = data_dir.parent / f"{data_dir.name}.log"
        command = " ".join(start_command(pg_program(backups, "pg_ctl"), data_dir, log))
        if target is not None:
            upto = target.isoformat()
        elif backups.wal_archive is None and backups.wal_stream is None:
            upto = "the backup's end (EVENTKEEP_WAL_ARCHIVE is not set: no later WAL)"
        else:
            upto = "the end of the archived (and streamed) WAL"
        out.print(f"Restored base backup {info.name} into {data_dir}; recovery replays to {upto}.")
        if not start:
            out.print(f"Start it with:\n  {command}")
            return
        start_postgres(data_dir, log, backups)
        url = settings.postgres_url.get_secret_value()
        wait_promoted(with_port(url, port) if port is not None else url)
        out.print(
            f"Started and promoted in {time.monotonic() - began:.1f} s (log: {log}). "
            "Check it with `eventkeep audit verify`."
        )
    except BackupRefused as error:
        raise _refused(error) from None


@backup_app.command("prune")
def prune(
    keep: Annotated[int, typer.Option(min=1, help="How many of the newest backups to keep.")] = 2,
) -> None:
    """Remove all but the newest --keep backups and, in the distributed mode, the archived WAL
    that only older backups needed (pg_archivecleanup on EVENTKEEP_WAL_ARCHIVE). Point-in-time
    restores then reach back to the oldest kept backup."""
    settings, backups = _settings(), BackupSettings()
    root = backups.folder(settings.home)
    try:
        removed, first_kept = prune_backups(root, keep, backups.wal_archive, backups)
    except BackupRefused as error:
        raise _refused(error) from None
    for info in removed:
        out.print(f"Removed backup {info.name}.")
    if first_kept is not None:
        out.print(f"WAL archive: kept {first_kept} and later.")
