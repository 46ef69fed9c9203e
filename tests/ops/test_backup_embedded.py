"""`eventkeep backup` in the embedded mode: an online copy of the SQLite files taken while the
server writes, put back into an empty home, holds exactly what was acknowledged before it."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring, wire
from eventkeep.api.keys import Role
from eventkeep.api.settings import Settings
from eventkeep.eventstore.backup_cli import backup_app
from eventkeep.replay import audit
from tests.api.shopping import create_product, register

runner = CliRunner()


def settings(home: Path) -> Settings:
    return Settings(home=home, postgres_url=None, claim_secret=None)


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("EVENTKEEP_POSTGRES_URL", raising=False)
    monkeypatch.setenv("EVENTKEEP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EVENTKEEP_BACKUP_DIR", str(tmp_path / "backups"))
    return tmp_path


@pytest.fixture
def running(environment: Path) -> Iterator[tuple[Wiring, TestClient]]:
    wiring = wire(settings(environment / "home"))
    headers = {"Authorization": f"Bearer {wiring.keys.create(Role.client, 'c').secret_key}"}
    with TestClient(create_app(wiring), headers=headers) as client:
        yield wiring, client
    wiring.close()


def backup(*args: str) -> str:
    done = runner.invoke(backup_app, list(args))
    assert done.exit_code == 0, done.output
    return done.output


def test_a_backup_taken_while_serving_restores_what_was_acknowledged(
    environment: Path, running: tuple[Wiring, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    wiring, client = running
    before = [register(client, f"before{n}@example.com")["id"] for n in range(5)]
    created = create_product(client)
    product, reached = created["id"], {"X-Min-Position": str(created["position"])}
    name = backup("create").strip().splitlines()[-1]
    after = register(client, "after@example.com")["id"]

    folder = environment / "backups" / name
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {path.name for path in folder.iterdir()} >= {"events.db", "readmodels.db", "secret"}
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in folder.iterdir())
    assert name in backup("list")

    # The running home is not empty: a restore into it is refused without --force.
    refused = runner.invoke(backup_app, ["restore", "--to", "latest"])
    assert refused.exit_code == 1
    assert "stop the server" in " ".join(refused.output.split())  # however it wraps

    restored_home = environment / "restored"
    monkeypatch.setenv("EVENTKEEP_HOME", str(restored_home))
    backup("restore", "--to", name)
    monkeypatch.setenv("EVENTKEEP_HOME", str(environment / "home"))
    restored = wire(settings(restored_home))
    try:
        assert audit.verify(restored.shop.recorder).intact
        headers = {"Authorization": f"Bearer {restored.keys.create(Role.client, 'r').secret_key}"}
        with TestClient(create_app(restored), headers=headers) as reader:
            for user_id in before:
                user = reader.get(f"/v1/users/{user_id}", headers=reached)
                assert user.status_code == 200, user.text
                assert user.json()["email"].startswith("before")  # the secret came back too
            assert reader.get(f"/v1/products/{product}").status_code == 200
            assert reader.get(f"/v1/users/{after}").status_code == 404
            # The restored store goes on: new commands take the next positions.
            assert register(reader, "new@example.com")["position"] == (
                wiring.shop.recorder.max_notification_id()
            )
    finally:
        restored.close()


def test_a_time_picks_the_newest_backup_finished_by_then(environment: Path) -> None:
    wiring = wire(settings(environment / "home"))
    wiring.close()
    first = backup("create").strip().splitlines()[-1]
    listing = backup("list")
    finished = next(line.split()[2] for line in listing.splitlines() if line.startswith(first))
    refused = runner.invoke(backup_app, ["restore", "--to", "2000-01-01T00:00:00Z"])
    assert refused.exit_code == 1
    assert "no backup finished by" in refused.output
    no_zone = runner.invoke(backup_app, ["restore", "--to", "2030-01-01T00:00:00"])
    assert no_zone.exit_code == 1
    assert "needs a zone" in no_zone.output
    assert finished.endswith("Z")
    time.sleep(1.1)  # backup folders are named by the second
    second = backup("create").strip().splitlines()[-1]
    pruned = backup("prune", "--keep", "1")
    assert f"Removed backup {first}" in pruned
    assert first not in backup("list")
    assert second in backup("list")
    refused = runner.invoke(backup_app, ["prune", "--keep", "0"])
    assert refused.exit_code != 0
