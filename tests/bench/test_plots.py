"""Each benchmark run writes a PNG per workload group next to its JSON (bench/plot.py)."""

from __future__ import annotations

from pathlib import Path

from eventkeep.bench.plot import groups
from eventkeep.bench.report import Figure, Report

LATENCY = {"p50_ms": 0.8, "p95_ms": 2.0, "p99_ms": 3.5, "p99.9_ms": 9.0}


def run() -> Report:
    report = Report()
    b7 = report.add(Figure("B7", "bare route", 14_000, "req/s", latency=LATENCY))
    report.add(Figure("B5", "raw PK SELECT", 14_000, "q/s", latency=LATENCY))
    report.add(Figure("R1", "by id", 3_500, "req/s", "B7", b7.value, passed=True, latency=LATENCY))
    report.add(Figure("S1", "p99 ratio", 1.2, "×", passed=True))
    report.add(Figure("P2", "embedded", 12.0, "ms p99", passed=True, latency=LATENCY))
    return report


def test_a_workload_is_plotted_beside_the_baselines_it_names() -> None:
    grouped = groups(run().figures)
    assert [f.id for f in grouped["R1"]] == ["B7", "R1"]
    assert [f.id for f in grouped["baselines"]] == ["B5"]  # named by no workload
    assert set(grouped) == {"R1", "S1", "P2", "baselines"}


def test_saving_a_run_writes_a_png_per_group_beside_the_json(tmp_path: Path) -> None:
    saved = run().save(tmp_path / "results", tmp_path / "docs", "read")
    pngs = sorted(p.name.removeprefix(saved.stem + "-") for p in saved.parent.glob("*.png"))
    assert pngs == ["P2.png", "R1.png", "S1.png", "baselines.png"]
    for png in saved.parent.glob("*.png"):
        assert png.read_bytes().startswith(b"\x89PNG")
    published = sorted(p.name for p in (tmp_path / "docs").iterdir())
    assert published == ["read-P2.png", "read-R1.png", "read-S1.png", "read-baselines.png"]
