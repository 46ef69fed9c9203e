"""`eventkeep bench`: the workloads of docs/performance.md beside their raw baselines."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from psycopg.conninfo import conninfo_to_dict

from eventkeep.bench import baselines, command_workloads, store_workloads
from eventkeep.bench.read_cli import read_path
from eventkeep.bench.replay_cli import replay_bench
from eventkeep.bench.report import Figure, Publish, Report
from eventkeep.settings import Settings

bench_app = typer.Typer(help="Benchmarks: each figure beside its raw baseline from the same run.")


def _params(url: str) -> dict[str, str]:
    info = conninfo_to_dict(url)
    defaults = {"host": "127.0.0.1", "port": "5432", "user": "postgres", "password": ""}
    return {
        k: str(info.get(k, defaults.get(k, "")))
        for k in ("dbname", "host", "port", "user", "password")
    }


@bench_app.command("write")
def write_path(
    seconds: Annotated[float, typer.Option(help="Seconds per throughput measurement.")] = 5.0,
    tail_events: Annotated[int, typer.Option(help="Events written during G1.")] = 100_000,
    results: Annotated[Path, typer.Option(help="Folder for the JSON result.")] = Path(
        "bench/results"
    ),
    publish: Publish = None,
) -> None:
    """B1, B2, B3, W0, W1, W2, W3 and G1 on the PostgreSQL at EVENTKEEP_POSTGRES_URL (W1 and
    W3 drop and refill the shop's tables: run it on a benchmark database)."""
    url = os.environ.get("EVENTKEEP_POSTGRES_URL")
    if not url:
        raise typer.BadParameter("set EVENTKEEP_POSTGRES_URL (see `infra/services env`)")
    params = _params(url)
    report = Report()
    b1_1 = report.add(
        Figure(
            "B1",
            "raw INSERT+COMMIT, 1 connection",
            baselines.b1_single_row_commits(url, 1, seconds),
            "commits/s",
        )
    )
    b1_8 = report.add(
        Figure(
            "B1",
            "raw INSERT+COMMIT, 8 connections",
            baselines.b1_single_row_commits(url, 8, seconds),
            "commits/s",
        )
    )
    b2 = report.add(
        Figure(
            "B2",
            "raw 100-row INSERT transactions",
            baselines.b2_hundred_row_transactions(url, seconds),
            "rows/s",
        )
    )
    report.add(
        Figure(
            "B3",
            "stock recorder, 1 event/save, 1 thread",
            baselines.b3_stock_recorder(params, 1, 1, seconds),
            "events/s",
        )
    )
    b3_8 = report.add(
        Figure(
            "B3",
            "stock recorder, 1 event/save, 8 threads",
            baselines.b3_stock_recorder(params, 8, 1, seconds),
            "events/s",
        )
    )
    report.add(
        Figure(
            "B3",
            "stock recorder, 100 events/save, 1 thread",
            baselines.b3_stock_recorder(params, 1, 100, seconds),
            "events/s",
        )
    )

    rate, latency = store_workloads.w_single_event_appends(params, 8, seconds)
    report.add(
        Figure(
            "W0",
            "eventkeep recorder alone, 1-event appends, 8 writers",
            rate,
            "appends/s",
            "B3",
            b3_8.value,
            latency=latency.percentiles(),
            extra={"vs_B1_8": round(rate / b1_8.value, 3)},
        )
    )
    for threads in (1, 8):
        rate = store_workloads.w2_hundred_event_appends(params, threads, seconds)
        report.add(
            Figure(
                "W2",
                f"eventkeep 100-event appends, {threads} writer(s)",
                rate,
                "events/s",
                "B2",
                b2.value,
                target="≥ 0.5× B2",
                passed=rate >= 0.5 * b2.value,
            )
        )
    outcome = store_workloads.g1_tailing_reader(params, 8, tail_events)
    report.add(
        Figure(
            "G1",
            f"tailing reader, 8 writers, {outcome['written']:,} events: missed",
            outcome["missed"],
            "events",
            target="0 missed, in order",
            passed=outcome["missed"] == 0
            and outcome["out_of_order"] == 0
            and outcome["duplicates"] == 0,
            extra=outcome,
        )
    )
    settings = Settings().model_copy(update={"rate_limit": 0})
    system, products = command_workloads.fresh_shop(settings, 10_000)
    try:
        rate, latency = command_workloads.w1_commands(system.bus, products, 8, seconds)
    finally:
        system.close()
    report.add(
        Figure(
            "W1",
            "commands through the command layer, 1 event each, 8 writers",
            rate,
            "commands/s",
            "B3",
            b3_8.value,
            target="≥ 5,000/s, ≥ 4× B3, ≥ 0.3× B1(8)",
            passed=rate >= 5000 and rate >= 4 * b3_8.value and rate >= 0.3 * b1_8.value,
            latency=latency.percentiles(),
            extra={"vs_B1_8": round(rate / b1_8.value, 3)},
        )
    )
    settings.home.mkdir(parents=True, exist_ok=True)
    http = command_workloads.w3_http_commands(settings, products, seconds, settings.home)
    report.add(
        Figure(
            "W3",
            "HTTP commands, eventkeep serve --workers 2, wrk 32 connections",
            http.rate,
            "commands/s",
            target="≥ 2,000/s, p99 < 50 ms",
            passed=http.rate >= 2000 and http.latency["p99_ms"] < 50,
            latency=http.latency,
        )
    )
    del b1_1
    report.console.print(report.table())
    report.console.print(f"results: {report.save(results, publish, 'write')}")


bench_app.command("read")(read_path)
bench_app.command("replay")(replay_bench)


@bench_app.command("overload")
def overload_bench(
    seconds: Annotated[float, typer.Option(help="Seconds of each phase.")] = 10.0,
    base_connections: Annotated[
        int, typer.Option(help="wrk connections of the sustained phase.")
    ] = 8,
    factor: Annotated[
        float, typer.Option(help="Offered rate of the overload phase: this times the sustained.")
    ] = 10.0,
    overload_connections: Annotated[
        int, typer.Option(help="wrk connections of the overload phase.")
    ] = 512,
    workers: Annotated[int, typer.Option(help="API processes of the server under test.")] = 1,
    max_in_flight: Annotated[
        int | None, typer.Option(help="The server's EVENTKEEP_MAX_IN_FLIGHT (default its own).")
    ] = None,
) -> None:
    """O1: a real `eventkeep serve` (the mode the environment selects) at a load it sustains,
    then at about ten times that rate (wrk, `POST /v1/users`): admitted and refused rates, the
    admitted p99, peak memory, and whether every acknowledged command was stored."""
    from eventkeep.bench.overload import overload

    figures = overload(
        seconds=seconds,
        base_connections=base_connections,
        factor=factor,
        overload_connections=overload_connections,
        workers=workers,
        max_in_flight=max_in_flight,
        home=None,
    )
    typer.echo(json.dumps(figures, indent=2))
