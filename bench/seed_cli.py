"""`eventkeep seed`: loads a shop's worth of history into the configured store, in bulk."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from eventkeep.bench.seed import Seeder, SeedSizes
from eventkeep.bootstrap import build
from eventkeep.commands.ports import ClaimTakenError
from eventkeep.settings import Settings

seed_app = typer.Typer()


@seed_app.command("seed")
def seed(
    users: Annotated[int, typer.Option(min=1, help="Users to register.")] = 100_000,
    products: Annotated[int, typer.Option(min=1, help="Products to create.")] = 100_000,
    orders: Annotated[int, typer.Option(min=0, help="Orders to place (with stock reserved).")] = (
        1_000_000
    ),
    per_save: Annotated[int, typer.Option(min=1, help="Aggregates per append.")] = 500,
    random_seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 42,
) -> None:
    """Write users, products and orders through the event store in bulk (not over HTTP), in
    the mode the environment selects. Zipf-popular products, fixed seed, progress shown.
    A store seeded already is refused (its seeded emails are taken), with nothing written."""
    sizes = SeedSizes(users=users, products=products, orders=orders, per_save=per_save)
    with build(Settings(), role="seed") as system:
        seeder = Seeder(system.bus, sizes, seed=random_seed)
        if seeder.already_seeded():
            _refuse_seeded(seeder)
        try:
            show_progress(seeder, sizes)
        except ClaimTakenError:  # seeded meanwhile by another run
            _refuse_seeded(seeder)


def _refuse_seeded(seeder: Seeder) -> None:
    typer.echo(
        f"eventkeep seed: this store is seeded already ({seeder.email(0)} is registered); "
        "seed an empty one (a new EVENTKEEP_HOME or database).",
        err=True,
    )
    raise typer.Exit(1)


def show_progress(seeder: Seeder, sizes: SeedSizes) -> None:
    """Runs `seeder` with a progress bar per phase, then prints its rate."""
    started = time.perf_counter()
    columns = (TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeRemainingColumn()) as progress:
        phases = (("users", sizes.users), ("products", sizes.products), ("orders", sizes.orders))
        tasks = {phase: progress.add_task(phase, total=total) for phase, total in phases}
        seeder.run(lambda phase, done: progress.advance(tasks[phase], done))
    elapsed = time.perf_counter() - started
    typer.echo(f"{seeder.events:,} events in {elapsed:.1f} s ({seeder.events / elapsed:,.0f}/s)")
