"""PNG plots of a benchmark run: one per workload group, its throughput and its latency
percentiles beside the baselines it is judged against (docs/performance.md shows them).

A group is a workload id (R1, W3, P2, …) with every figure of that id and the figures of the
baselines they name; baselines no workload names share one group of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # (after the backend is chosen)

if TYPE_CHECKING:
    from eventkeep.bench.report import Figure

PERCENTILES = ("p50_ms", "p95_ms", "p99_ms", "p99.9_ms")
# Units that say "a rate": plotted as throughput; the rest (ms p99, ratios) are latencies or ratios.
RATE_UNITS = ("/s",)


def groups(figures: Sequence[Figure]) -> dict[str, list[Figure]]:
    """Workload id -> its figures and its baselines' figures, in the run's order."""
    by_id: dict[str, list[Figure]] = {}
    for figure in figures:
        by_id.setdefault(figure.id, []).append(figure)
    answer: dict[str, list[Figure]] = {}
    named: set[str] = set()
    for workload, own in by_id.items():
        if workload.startswith("B"):
            continue
        baselines = {f.baseline_id for f in own if f.baseline_id} - {workload}
        named |= baselines
        answer[workload] = [f for b in sorted(baselines) for f in by_id.get(b, [])] + own
    alone = [f for f in figures if f.id.startswith("B") and f.id not in named]
    if alone:
        answer["baselines"] = alone
    return answer


def plot(group: str, figures: Sequence[Figure], path: Path) -> Path:
    """Two panels: throughput bars, and latency percentiles (log scale) per figure."""
    rates = [f for f in figures if f.unit.endswith(RATE_UNITS)]
    timed = [f for f in figures if f.latency]
    panels = [p for p in (rates, timed) if p]
    if not panels:
        panels = [list(figures)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    column = 0
    if rates:
        ax = axes[0][column]
        labels = [_label(f) for f in rates]
        colours = ["#9e9e9e" if f.id.startswith("B") else _verdict(f) for f in rates]
        bars = ax.barh(labels, [f.value for f in rates], color=colours)
        ax.bar_label(bars, [f"{f.value:,.0f} {f.unit}" for f in rates], fontsize=7, padding=2)
        ax.invert_yaxis()
        ax.set_title(f"{group}: throughput (grey: baselines)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.margins(x=0.35)
        column += 1
    if timed:
        ax = axes[0][column]
        width = 0.8 / len(timed)
        for i, f in enumerate(timed):
            marks = [p for p in PERCENTILES if p in f.latency]
            xs = [PERCENTILES.index(p) + i * width for p in marks]
            ax.bar(xs, [max(f.latency[p], 0.001) for p in marks], width, label=_label(f))
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(PERCENTILES))])
        ax.set_xticklabels([p.removesuffix("_ms") for p in PERCENTILES])
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(f"{group}: latency percentiles", fontsize=9)
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=7)
        column += 1
    if column == 0:  # only ratios and the like: show them as numbers
        ax = axes[0][0]
        ax.barh([_label(f) for f in figures], [f.value for f in figures])
        ax.set_title(group, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(figure: Figure) -> str:
    what = figure.what if len(figure.what) <= 48 else figure.what[:47] + "…"
    return f"{figure.id} {what}"


def _verdict(figure: Figure) -> str:
    return {True: "#2e7d32", False: "#c62828", None: "#1565c0"}[figure.passed]
