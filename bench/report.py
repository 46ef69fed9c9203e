"""Latency histograms and the printed/JSON report: every figure beside its raw baseline."""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

# The `--publish` option of every `eventkeep bench` command.
Publish = Annotated[
    Path | None,
    typer.Option(help="Also copy the PNG plots here (docs/images: the ones the docs show)."),
]


class Histogram:
    """Latencies in microseconds, kept exactly (benchmarks record at most a few 100k)."""

    def __init__(self) -> None:
        self._samples: list[float] = []

    def record(self, seconds: float) -> None:
        self._samples.append(seconds * 1e6)

    def merge(self, other: Histogram) -> None:
        self._samples.extend(other._samples)

    def percentiles(self) -> dict[str, float]:
        samples = sorted(self._samples)
        if not samples:
            return {}

        def at(q: float) -> float:
            return round(samples[min(len(samples) - 1, int(q * len(samples)))] / 1000, 3)

        return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99), "p99.9_ms": at(0.999)}


@dataclass
class Figure:
    id: str
    what: str
    value: float
    unit: str
    baseline_id: str | None = None
    baseline_value: float | None = None
    target: str = ""
    passed: bool | None = None
    latency: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.baseline_value:
            return None
        return round(self.value / self.baseline_value, 3)


class Report:
    def __init__(self) -> None:
        self.figures: list[Figure] = []
        self.console = Console()

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        verdict = {True: "[green]PASS[/]", False: "[red]MISS[/]", None: ""}[figure.passed]
        ratio = f" = {figure.ratio}× {figure.baseline_id}" if figure.ratio is not None else ""
        latency = " ".join(f"{k}={v}" for k, v in figure.latency.items())
        self.console.print(
            f"{figure.id:4} {figure.what}: [bold]{figure.value:,.1f}[/] {figure.unit}{ratio}"
            f" {latency} {figure.target} {verdict}"
        )
        return figure

    def table(self) -> Table:
        table = Table(title="eventkeep benchmarks")
        for column in ("id", "what", "value", "baseline", "ratio", "latency", "target", ""):
            table.add_column(column)
        for f in self.figures:
            baseline = f"{f.baseline_id} {f.baseline_value:,.0f}" if f.baseline_value else ""
            table.add_row(
                f.id,
                f.what,
                f"{f.value:,.1f} {f.unit}",
                baseline,
                "" if f.ratio is None else f"{f.ratio}×",
                " ".join(f"{k}={v}" for k, v in f.latency.items()),
                f.target,
                {True: "PASS", False: "MISS", None: ""}[f.passed],
            )
        return table

    def save(self, directory: Path, publish: Path | None = None, command: str = "") -> Path:
        """Writes the JSON and, next to it, a PNG per workload group (bench/plot.py); with
        `publish`, copies the PNGs there too as `<command>-<group>.png` (stable names, for the
        plots docs/performance.md shows). Answers the JSON's path."""
        from eventkeep.bench import plot  # matplotlib loads only when a run saves

        directory.mkdir(parents=True, exist_ok=True)
        stem = f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
        path = directory / f"{stem}.json"
        payload = {
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "figures": [asdict(f) | {"ratio": f.ratio} for f in self.figures],
        }
        path.write_text(json.dumps(payload, indent=2))
        for group, figures in plot.groups(self.figures).items():
            png = plot.plot(group, figures, directory / f"{stem}-{group}.png")
            self.console.print(f"plot: {png}")
            if publish is not None:
                publish.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(png, publish / f"{command or 'bench'}-{group}.png")
        return path
