"""`eventkeep audit …` and `eventkeep replay …` from the command line (embedded mode, where
they need no services): the legacy history imported, verified, rebuilt, exported, queried as
of a moment; a bad file refused with its line; exit codes scripts can rely on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from eventkeep.api import cli
from tests.api.conftest import SHOP_TABLES, TEST_SECRET
from tests.conftest_services import require_env
from tests.eventstore.stores import drop_postgres_tables
from tests.replay.conftest import LEGACY

runner = CliRunner()
PRODUCT = "031db999-5f14-5b7b-b386-1e0e401a9d80"  # a legacy product: v1 price in cents


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("EVENTKEEP_POSTGRES_URL", raising=False)
    monkeypatch.delenv("EVENTKEEP_CLAIM_SECRET", raising=False)
    monkeypatch.setenv("EVENTKEEP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def run(*args: str) -> Any:
    return runner.invoke(cli.app, list(args))


def test_import_verify_rebuild_export_and_as_of(home: Path) -> None:
    imported = run("audit", "import", str(LEGACY))
    assert imported.exit_code == 0, imported.output
    assert "Imported 859 events" in imported.output
    verified = run("audit", "verify")
    assert verified.exit_code == 0 and "Intact: 859 events" in verified.output
    rebuilt = run("replay", "rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    status = run("replay", "status").output
    for name in ("users", "products", "orders", "daily_sales"):
        [row] = [line for line in status.splitlines() if f" {name} " in line]
        assert "859" in row and "none" in row  # at the head, no rebuild left behind

    only = run("replay", "rebuild", "products")
    assert only.exit_code == 0 and "products (generation" in only.output, only.output
    assert "users" not in only.output

    exported = home / "out.jsonl"
    assert run("audit", "export", str(exported), "--upcast").exit_code == 0
    lines = [orjson.loads(line) for line in exported.read_bytes().splitlines()]
    assert len(lines) == 859 and all("price_cents" not in line["data"] for line in lines)

    first = run("audit", "as-of", PRODUCT, "--version", "1")
    assert first.exit_code == 0, first.output
    assert orjson.loads(first.output)["state"]["currency"] == "USD"
    before = run("audit", "as-of", PRODUCT, "--at", "2000-01-01T00:00:00Z")
    assert before.exit_code == 1  # it did not exist then
    assert run("audit", "as-of", PRODUCT, "--at", "yesterday").exit_code == 2
    history = run("audit", "history", PRODUCT)
    assert [orjson.loads(line)["stream_version"] for line in history.output.splitlines()][:2] == [
        1,
        2,
    ]


def test_a_bad_file_is_refused_naming_its_line(home: Path) -> None:
    bad = home / "bad.jsonl"
    bad.write_bytes(LEGACY.read_bytes() + b'{"event_type": "Nope"}\n')
    refused = run("audit", "import", str(bad))
    assert refused.exit_code == 1
    assert "line 860" in refused.output and "nothing written" in refused.output
    assert "Intact: 0 events" in run("audit", "verify").output


def test_unknown_projections_are_refused() -> None:
    assert run("replay", "rebuild", "nonsense").exit_code == 2


def test_a_quarantined_stream_is_listed_and_retried_after_the_fix(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A projection bug on one event in the middle of the history: the rebuild applies
    everything else and quarantines that stream; `replay quarantine list` names it, and
    `retry` applies it once the code is fixed."""
    from eventkeep.projections.products import Products
    from eventkeep.projections.readmodels import ReadModels

    assert run("audit", "import", str(LEGACY)).exit_code == 0
    original = Products.apply_event

    def broken(self: Products, batch: Any, row: Any, event: Any) -> Any:
        if event["stream_id"] == PRODUCT and event["stream_version"] == 2:
            raise ValueError("a bug in the projection")
        return original(self, batch, row, event)

    monkeypatch.setattr(Products, "apply_event", broken)
    rebuilt = run("replay", "rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    listed = run("replay", "quarantine", "list", "--json")
    rows = [orjson.loads(line) for line in listed.output.splitlines()]
    assert rows and {(r["projection"], r["stream_id"]) for r in rows} == {("products", PRODUCT)}
    assert rows[0]["stream_version"] == 2 and "a bug in the projection" in rows[0]["error"]
    assert "products" in run("replay", "quarantine", "list").output

    assert run("replay", "quarantine", "retry").exit_code == 1  # not fixed yet
    monkeypatch.setattr(Products, "apply_event", original)  # the fix
    retried = run("replay", "quarantine", "retry", "--projection", "products")
    assert retried.exit_code == 0, retried.output
    assert "No event is quarantined" in run("replay", "quarantine", "list").output

    live = ReadModels.open(sqlite_path=home / "home" / "readmodels.db")
    fresh = ReadModels.open(sqlite_path=home / "fresh.db")
    try:
        from eventkeep.bootstrap import build
        from eventkeep.replay.rebuild import rebuild
        from eventkeep.settings import Settings

        with build(Settings(), role="replay") as system:
            rebuild(system.recorder, fresh)
        assert live.dump() == fresh.dump()
    finally:
        live.close()
        fresh.close()


def test_import_writes_as_the_writer_role_in_the_distributed_mode(
    monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    """With least-privilege roles (as `infra/services env` sets them, and production), the
    import connects as the writer: the auditor's role may only read (it was refused with
    `permission denied for table shop_events_claims`)."""
    assert require_env("EVENTKEEP_POSTGRES_AUDITOR_URL")  # the roles are in use
    monkeypatch.setenv("EVENTKEEP_POSTGRES_URL", postgres_url)
    monkeypatch.setenv("EVENTKEEP_CLAIM_SECRET", TEST_SECRET)
    drop_postgres_tables(*SHOP_TABLES)
    imported = run("audit", "import", str(LEGACY))
    assert imported.exit_code == 0, imported.output
    assert "Imported 859 events" in imported.output
    verified = run("audit", "verify")  # the auditor's role reads what the writer wrote
    assert verified.exit_code == 0 and "Intact: 859 events" in verified.output
