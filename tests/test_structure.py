"""The dependency rules of the package, checked on the source: entry points (the command line,
the HTTP app, the composition root) sit at the top; nothing below them imports them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder -> the eventkeep modules none of its files may import (lazily either)
FORBIDDEN = {
    "domain": ("eventkeep.api", "eventkeep.bootstrap"),
    "commands": ("eventkeep.api", "eventkeep.bootstrap"),
    "eventstore": ("eventkeep.api", "eventkeep.bootstrap"),
    "projections": ("eventkeep.api", "eventkeep.bootstrap"),
    "replay": ("eventkeep.api",),
    "bench": ("eventkeep.api",),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)]
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_the_entry_points(folder: str) -> None:
    breaches = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in sorted((REPO / folder).rglob("*.py"))
        for line, module in imported_modules(path)
        if any(module == top or module.startswith(top + ".") for top in FORBIDDEN[folder])
    ]
    assert breaches == []


def test_the_rule_sees_an_import_of_the_api(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from eventkeep.api.keys import Role\n")
    assert (2, "eventkeep.api.keys") in imported_modules(module)


def test_the_help_loads_neither_the_benchmarks_nor_kafka_nor_redis() -> None:
    script = (
        "import json, sys\n"
        "from eventkeep.api.cli import app\n"
        "try:\n"
        "    app(['--help'], prog_name='eventkeep')\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('kafka', 'redis')\n"
        "          or m.startswith('eventkeep.bench')]\n"
        "print(json.dumps(sorted(loaded)))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "serve" in run.stdout  # the help was printed
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []


WIRED_ONLY_BY_THE_ROOT = {
    "Shop", "CommandBus", "ApplicationWriteStore", "LogFeed", "Relay", "KafkaProjector"
}  # fmt: skip
ROOT = REPO / "eventkeep" / "bootstrap.py"
PACKAGE = ["eventkeep", *FORBIDDEN]


def constructed(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        (node.lineno, node.func.id)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in WIRED_ONLY_BY_THE_ROOT
    ]


def test_only_the_composition_root_builds_the_application() -> None:
    elsewhere = [
        f"{path.relative_to(REPO)}:{line} builds {name}"
        for folder in [*PACKAGE, "api"]
        for path in sorted((REPO / folder).rglob("*.py"))
        if path != ROOT
        for line, name in constructed(path)
    ]
    assert elsewhere == []
