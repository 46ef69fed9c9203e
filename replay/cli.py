"""`eventkeep replay …` (rebuilds) and `eventkeep audit …` (history, as-of, verify, export,
import), in the mode the environment selects."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated
from uuid import UUID

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from eventkeep.bootstrap import Eventkeep, Role, build, checkpoint_file
from eventkeep.metrics import record_verify
from eventkeep.private_files import open_private
from eventkeep.replay import audit
from eventkeep.replay.importer import (
    AlreadyImported,
    CheckedFile,
    ImportRefused,
    check_file,
    import_file,
)
from eventkeep.replay.rebuild import PROJECTIONS, Rebuild
from eventkeep.settings import Settings

replay_app = typer.Typer(help="Rebuild projections from the event store.", no_args_is_help=True)
audit_app = typer.Typer(help="Read, check, export and import the history.", no_args_is_help=True)
quarantine_app = typer.Typer(
    help="Events a projection could not apply, set aside with their stream.", no_args_is_help=True
)
replay_app.add_typer(quarantine_app, name="quarantine")
refused_app = typer.Typer(
    help="Kafka messages a projector refused: their MAC was missing or did not verify.",
    no_args_is_help=True,
)
replay_app.add_typer(refused_app, name="refused")
out = Console()
err = Console(stderr=True)


@contextmanager
def _built(role: Role = "audit") -> Iterator[Eventkeep]:
    """eventkeep from the environment's settings (the composition root), closed after."""
    with build(Settings(), role=role) as system:
        system.recorder.max_notification_id()  # out of reach: one line, before any bar
        yield system


def _events_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>10} events/s"),
        TimeRemainingColumn(),
        console=err,
    )


@replay_app.command("rebuild")
def rebuild(
    names: Annotated[
        list[str] | None, typer.Argument(help=f"Projections to rebuild: {', '.join(PROJECTIONS)}.")
    ] = None,
) -> None:
    """Rebuild the named read models (none named: all) from the event store beside the live
    ones, then swap them in; the others are not touched.

    Queries keep answering from the live tables meanwhile; the live projector continues from
    the swap point. Interrupted, it resumes where it stopped when run again.
    """
    unknown = set(names or ()) - set(PROJECTIONS)
    if unknown:
        err.print(f"[red]Unknown projection(s):[/red] {', '.join(sorted(unknown))}")
        raise typer.Exit(2)
    with _built("replay") as system, _events_bar() as bar:
        task = bar.add_task("rebuilding", total=None, rate="")
        started: list[float] = []

        def advance(position: int, head: int) -> None:
            task_state = bar.tasks[task]
            if not started:
                started.append(position)
            elapsed = task_state.elapsed or 0
            rate = (position - started[0]) / elapsed if elapsed > 0 else 0
            bar.update(task, completed=position, total=head, rate=f"{rate:,.0f}")

        generations = Rebuild(system.recorder, system.read_models, names).run(advance)
    rebuilt = ", ".join(f"{name} (generation {g})" for name, g in generations.items())
    out.print(f"Rebuilt and swapped in: {rebuilt}.")


@replay_app.command("status")
def status() -> None:
    """Where each live read model is, and any rebuild of it in progress."""
    with _built("replay") as system:
        states = Rebuild(system.recorder, system.read_models).status()
    table = Table("projection", "position", "head", "lag", "generation", "rebuild")
    for state in states:
        table.add_row(
            state.name,
            str(state.position),
            str(state.head),
            str(state.lag),
            str(state.generation),
            f"at {state.rebuild_position}" if state.rebuilding else "none",
        )
    out.print(table)


@quarantine_app.command("list")
def quarantine_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Every quarantined event: projection, stream, version, position, type and error (the
    later events of a stream wait behind its first)."""
    with _built("replay") as system:
        rows = system.read_models.quarantine()
    if as_json:
        for row in rows:
            typer.echo(orjson.dumps(row).decode())
        return
    table = Table("projection", "stream", "version", "position", "event", "error", "since")
    for row in rows:
        table.add_row(
            row["projection"],
            row["stream_id"],
            str(row["stream_version"]),
            str(row["position"]),
            row["event_type"],
            row["error"],
            row["quarantined_at"],
        )
    out.print(table if rows else "No event is quarantined.")


@refused_app.command("list")
def refused_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Every refused Kafka message kept (EVENTKEEP_FEED_REFUSED_KEEP, the newest first):
    topic, partition, offset, key, reason and when; none of them was applied."""
    with _built("replay") as system:
        rows = system.read_models.refused()
    if as_json:
        for row in rows:
            typer.echo(orjson.dumps(row).decode())
        return
    table = Table("topic", "partition", "offset", "key", "reason", "refused at")
    for row in rows:
        table.add_row(
            row["topic"],
            str(row["partition"]),
            str(row["offset"]),
            row["key"] or "",
            row["reason"],
            row["refused_at"],
        )
    out.print(table if rows else "No Kafka message was refused.")


@quarantine_app.command("retry")
def quarantine_retry(
    projection: Annotated[
        str | None, typer.Option(help=f"Only this projection: {', '.join(PROJECTIONS)}.")
    ] = None,
    stream: Annotated[str | None, typer.Option(help="Only this stream id.")] = None,
) -> None:
    """Apply quarantined streams again, from the event store (after a fix of the projection
    or an upcaster); exit 1 when some event still fails (it is quarantined again)."""
    if projection is not None and projection not in PROJECTIONS:
        err.print(f"[red]Unknown projection:[/red] {projection}")
        raise typer.Exit(2)
    from eventkeep.projections.log_feed import fill_from

    with _built("replay") as system:
        models = system.read_models
        models.fill = fill_from(system.recorder)
        applied, changes = models.retry(projection, stream)
        system.cache.publish(changes)
        left = [
            row
            for row in models.quarantine()
            if projection in (None, row["projection"]) and stream in (None, row["stream_id"])
        ]
    for name, count in applied.items():
        out.print(f"{name}: {count} events applied")
    if left:
        err.print(
            f"[red]{len(left)} events still quarantined[/red] (eventkeep replay quarantine list)"
        )
        raise typer.Exit(1)


@audit_app.command("history")
def history(stream_id: Annotated[UUID, typer.Argument(help="The stream (entity) id.")]) -> None:
    """Every event of a stream, upcast, with metadata and hashes (JSON Lines)."""
    with _built() as system:
        events = audit.history(system.shop, stream_id)
    if not events:
        err.print(f"No stream {stream_id}.")
        raise typer.Exit(1)
    for event in events:
        typer.echo(orjson.dumps(event).decode())


@audit_app.command("as-of")
def as_of(
    stream_id: Annotated[UUID, typer.Argument(help="The stream (entity) id.")],
    at: Annotated[
        str | None, typer.Option(help="A moment, RFC 3339 (e.g. 2024-05-01T12:00:00Z).")
    ] = None,
    version: Annotated[int | None, typer.Option(min=1, help="A stream version.")] = None,
) -> None:
    """The entity's state as it was at a moment or a version (JSON)."""
    if (at is None) == (version is None):
        err.print("Give exactly one of --at and --version.")
        raise typer.Exit(2)
    moment = None
    if at is not None:
        try:
            moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            err.print(f"--at {at!r} is not an RFC 3339 time with a zone (e.g. 2024-05-01T12:00Z).")
            raise typer.Exit(2)
    with _built() as system:
        state = audit.state_as_of(system.shop, stream_id, version=version, at=moment)
    if state is None:
        err.print(f"Stream {stream_id} did not exist then.")
        raise typer.Exit(1)
    typer.echo(orjson.dumps(state, option=orjson.OPT_INDENT_2).decode())


@audit_app.command("verify")
def verify(
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            help="Also write the outcome there as Prometheus text (eventkeep_audit_verify_ok, "
            "eventkeep_audit_verify_timestamp_seconds), for node_exporter's textfile collector."
        ),
    ] = None,
) -> None:
    """Walk the hash chain with its key and compare it with every signed checkpoint; exit 0
    when intact, 1 naming the first altered or missing event."""
    with _built() as system, _events_bar() as bar:
        task = bar.add_task("verifying", total=None, rate="")
        verdict = audit.verify_against(
            system.shop.recorder,
            checkpoint_file(system.settings),
            lambda position, head: bar.update(task, completed=position, total=head, rate=""),
        )
    record_verify(verdict.intact, metrics_file)
    if verdict.intact:
        out.print(
            f"[green]Intact:[/green] {verdict.checked:,} events, up to {verdict.last_position}."
        )
        return
    bad = verdict.altered or {}
    out.print(
        f"[red]ALTERED:[/red] position {bad['position']} ({bad['event_type']} of stream "
        f"{bad['stream_id']} v{bad['stream_version']}): {bad['problem']}"
    )
    typer.echo(orjson.dumps(bad).decode())
    raise typer.Exit(1)


@audit_app.command("checkpoint")
def checkpoint() -> None:
    """Verify the chain, then sign its head (position, hash, time) into the checkpoint file
    (EVENTKEEP_CHECKPOINT_FILE); the first run adopts history hashed before the chain was
    keyed. Exit 1, writing nothing, when the chain is not intact."""
    with _built() as system:
        file = checkpoint_file(system.settings)
        verdict, written = audit.checkpoint(system.shop.recorder, file)
    if written is None:
        bad = verdict.altered or {}
        out.print(f"[red]ALTERED:[/red] position {bad['position']}: {bad['problem']}")
        typer.echo(orjson.dumps(bad).decode())
        raise typer.Exit(1)
    out.print(
        f"Checkpoint: position {written.position}, hash {written.hash.hex()[:16]}…, "
        f"{written.time} → {file.path}"
    )


@audit_app.command("export")
def export(
    file: Annotated[Path, typer.Argument(help="JSON Lines file to write ('-': stdout).")],
    upcast: Annotated[bool, typer.Option(help="Current schema versions, not as recorded.")] = False,
) -> None:
    """The whole history in position order, as recorded (or upcast), with hashes."""
    with _built() as system:
        recorder = system.shop.recorder
        head = recorder.max_notification_id() or 0
        if str(file) == "-":
            count = audit.export(recorder, sys.stdout.buffer, upcasting=upcast)
        else:
            # 0600: the history holds personal data (sealed) and who did what.
            with open_private(file) as target, _events_bar() as bar:
                task = bar.add_task("exporting", total=head, rate="")
                started = time.perf_counter()

                def advance(position: int) -> None:
                    elapsed = time.perf_counter() - started
                    rate = position / elapsed if elapsed > 0 else 0
                    total = max(head, position)
                    bar.update(task, completed=position, total=total, rate=f"{rate:,.0f}")

                count = audit.export(recorder, target, upcasting=upcast, advance=advance)
                # Done: the bar ends full, with the rate of the whole export.
                elapsed = time.perf_counter() - started
                rate = count / elapsed if elapsed > 0 else 0
                done = max(head, bar.tasks[task].completed, 1)
                bar.update(task, completed=done, total=done, rate=f"{rate:,.0f}")
    err.print(f"Exported {count:,} events.")


@audit_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON Lines file.")],
) -> None:
    """Import history in the export format, keeping ids, versions, times, metadata and stored
    schema versions. Every line is checked first: a bad one refuses the file, naming the line
    and the reason, and nothing is written. Then it is written in large transactions; a run
    that failed resumes where it stopped when run again, and a file imported already is not
    written again."""
    size = file.stat().st_size
    with _built("import") as system:  # the writer's role: the auditor's may only read
        shop, bus = system.shop, system.bus
        bytes_bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
        )
        checked: CheckedFile | None = None
        try:
            with bytes_bar as bar:
                checking = bar.add_task("checking", total=size)
                checked = check_file(
                    file,
                    shop.recorder,
                    bus.email_claim,
                    lambda d: bar.update(checking, completed=d),
                )
                writing = bar.add_task("importing", total=size)
                import_file(
                    file,
                    shop.recorder,
                    bus.email_claim,
                    lambda d: bar.update(writing, completed=d),
                    checked,
                )
        except AlreadyImported as done:
            out.print(f"{file}: {done}.")
            return
        except ImportRefused as refused:
            # Refused by the check: nothing written. While writing (the file changed since
            # its check, or the store since): the transactions before it are kept.
            kept = "nothing written" if checked is None else "the lines before it are written"
            err.print(f"[red]Refused {file}[/red], {kept}: {refused}")
            raise typer.Exit(1) from None
    resumed = checked.progress
    after = f" (resumed after line {resumed.lines:,} of an earlier run)" if resumed else ""
    out.print(f"Imported {checked.count:,} events from {file}{after}.")
