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
from eventkeep.bench.report import Figure, Histogram, Publish, Report
from eventkeep.settings import Settings

bench_app = typer.Typer(help="Benchmarks: each figure beside its raw baseline from the same run.")


def _params(url: str) -> dict[str, str]:
    info = conninfo_to_dict(url)
    defaults = {"host": "127.0.0.1", "port": "5432", "user": "postgres", "password": ""}
    return {
        k: str(info.get(k, defaults.get(k, "")))
        for k in ("dbname", "host", "port", "user", "password")
    }


W1_IN_FLIGHT = 64  # commands awaited at once in W1's context figure (no thread each)
WRITE_WORKLOADS = ("B1", "B2", "B3", "W0", "W2", "G1", "B8", "W1", "W3")


@bench_app.command("write")
def write_path(
    seconds: Annotated[float, typer.Option(help="Seconds per throughput measurement.")] = 5.0,
    tail_events: Annotated[int, typer.Option(help="Events written during G1.")] = 100_000,
    products: Annotated[int, typer.Option(help="Products W1, W3 and B8 adjust.")] = 10_000,
    only: Annotated[
        str,
        typer.Option(help="Comma-separated ids to run (default all: B1,B2,B3,W0,W2,G1,B8,W1,W3)."),
    ] = ",".join(WRITE_WORKLOADS),
    results: Annotated[Path, typer.Option(help="Folder for the JSON result.")] = Path(
        "bench/results"
    ),
    publish: Publish = None,
) -> None:
    """B1, B2, B3, W0, W2, G1, B8, W1 and W3 on the PostgreSQL at EVENTKEEP_POSTGRES_URL (W1
    and W3 drop and refill the shop's tables: run it on a benchmark database). A ratio or
    verdict whose baseline was left out by `--only` is not printed."""
    url = os.environ.get("EVENTKEEP_POSTGRES_URL")
    if not url:
        raise typer.BadParameter("set EVENTKEEP_POSTGRES_URL (see `infra/services env`)")
    wanted = {w.strip().upper() for w in only.split(",") if w.strip()}
    if unknown := wanted - set(WRITE_WORKLOADS):
        raise typer.BadParameter(f"unknown workload(s) {', '.join(sorted(unknown))}")
    params = _params(url)
    report = Report()
    b1_8 = b2 = b3_8 = b8 = None
    if "B1" in wanted:
        for connections in (1, 8):
            b1_8 = report.add(
                Figure(
                    "B1",
                    f"raw INSERT+COMMIT, {connections} connection(s)",
                    baselines.b1_single_row_commits(url, connections, seconds),
                    "commits/s",
                )
            )
    if "B2" in wanted:
        b2 = report.add(
            Figure(
                "B2",
                "raw 100-row INSERT transactions",
                baselines.b2_hundred_row_transactions(url, seconds),
                "rows/s",
            )
        )
    if "B3" in wanted:
        for threads, per_save in ((1, 1), (8, 1), (1, 100)):
            figure = report.add(
                Figure(
                    "B3",
                    f"stock recorder, {per_save} event(s)/save, {threads} thread(s)",
                    baselines.b3_stock_recorder(params, threads, per_save, seconds),
                    "events/s",
                )
            )
            if (threads, per_save) == (8, 1):
                b3_8 = figure
    if "W0" in wanted:
        rate, latency = store_workloads.w_single_event_appends(params, 8, seconds)
        report.add(
            Figure(
                "W0",
                "eventkeep recorder alone, 1-event appends, 8 writers",
                rate,
                "appends/s",
                "B3",
                _value(b3_8),
                latency=latency.percentiles(),
                extra=_ratios(rate, B1_8=b1_8),
            )
        )
    if "W2" in wanted:
        for threads in (1, 8):
            rate = store_workloads.w2_hundred_event_appends(params, threads, seconds)
            report.add(
                Figure(
                    "W2",
                    f"eventkeep 100-event appends, {threads} writer(s)",
                    rate,
                    "events/s",
                    "B2",
                    _value(b2),
                    target="≥ 0.5× B2",
                    passed=None if b2 is None else rate >= 0.5 * b2.value,
                )
            )
    if "G1" in wanted:
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
    if "B8" in wanted:
        rate, latency = baselines.b8_library_application(params, 8, seconds, products)
        b8 = report.add(
            Figure(
                "B8",
                "the library's Application, stock recorder, W1's command, 8 threads",
                rate,
                "commands/s",
                latency=latency.percentiles(),
            )
        )
    settings = Settings().model_copy(update={"rate_limit": 0})
    if wanted & {"W1", "W3"}:
        system, ids = command_workloads.fresh_shop(settings, products)
        try:
            if "W1" in wanted:
                _w1(
                    report,
                    *command_workloads.w1_commands(system.bus, ids, 8, seconds),
                    b1_8,
                    b3_8,
                    b8,
                )
                # Context, not the target's workload: the same commands as the API runs them.
                rate, latency = command_workloads.w1_awaited_commands(
                    system.bus, ids, W1_IN_FLIGHT, seconds
                )
                report.add(
                    Figure(
                        "W1",
                        f"the same commands awaited, {W1_IN_FLIGHT} in flight on one event loop",
                        rate,
                        "commands/s",
                        "B8",
                        _value(b8),
                        latency=latency.percentiles(),
                    )
                )
        finally:
            system.close()
        if "W3" in wanted:
            settings.home.mkdir(parents=True, exist_ok=True)
            http = command_workloads.w3_http_commands(settings, ids, seconds, settings.home)
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
    report.console.print(report.table())
    report.console.print(f"results: {report.save(results, publish, 'write')}")


def _w1(
    report: Report,
    rate: float,
    latency: Histogram,
    b1_8: Figure | None,
    b3_8: Figure | None,
    b8: Figure | None,
) -> None:
    """W1 twice: beside B3 (with the absolute and B1 targets), and beside B8."""
    passed = None
    if b3_8 is not None and b1_8 is not None:
        passed = rate >= 5000 and rate >= 4 * b3_8.value and rate >= 0.3 * b1_8.value
    report.add(
        Figure(
            "W1",
            "commands through the command layer, 1 event each, 8 writers",
            rate,
            "commands/s",
            "B3",
            _value(b3_8),
            target="≥ 5,000/s, ≥ 4× B3, ≥ 0.3× B1(8)",
            passed=passed,
            latency=latency.percentiles(),
            extra=_ratios(rate, B1_8=b1_8, B8=b8),
        )
    )
    report.add(
        Figure(
            "W1",
            "the same commands beside the library's own Application (B8)",
            rate,
            "commands/s",
            "B8",
            _value(b8),
            target="≥ 5× B8",
            passed=None if b8 is None else rate >= 5 * b8.value,
        )
    )


def _value(figure: Figure | None) -> float | None:
    return None if figure is None else figure.value


def _ratios(rate: float, **baselines: Figure | None) -> dict[str, float]:
    return {f"vs_{k}": round(rate / f.value, 3) for k, f in baselines.items() if f and f.value}


bench_app.command("read")(read_path)
bench_app.command("replay")(replay_bench)


@bench_app.command("overload")
def overload_bench(
    seconds: Annotated[float, typer.Option(help="Seconds of each phase.")] = 10.0,
    base_connections: Annotated[
        int, typer.Option(help="wrk connections of the sustained phase.")
    ] = 8,
    factor: Annotated[
        float,
        typer.Option(
            help="Offered rate of the overload phase: this times the sustained (aimed 10 % above, "
            "as runs vary)."
        ),
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
