"""The disaster-recovery drill, on a PostgreSQL cluster of its own with the shipped WAL
archiving settings (infra/postgres/wal-archiving.conf, archive_timeout shortened):

commands flow; `eventkeep backup create`; more commands; a pause longer than archive_timeout;
a last burst of commands; the server is killed (-9) and its data directory removed;
`eventkeep backup restore --to latest --start` into the same place; every acknowledged
command is looked up in the restored store; its hash chain verifies (what `eventkeep audit
verify` checks); commands go on.
Then a point-in-time restore (a time between the two batches) into another data directory holds
exactly the first batch.

The guarantee of the shipped settings, asserted here and stated in docs/operations.md: a write
acknowledged more than archive_timeout (+ the copy) before the data directory is lost survives;
the writes of the last archive_timeout may be lost (the current WAL segment is archived only
when it is switched). The drill prints the recovery point (acknowledged writes lost) and the
recovery time (restore command start to a promoted server accepting writes).
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring, wire
from eventkeep.api.keys import Role
from eventkeep.api.settings import Settings
from eventkeep.eventstore.backup import first_wal_file, list_backups
from eventkeep.eventstore.backup_cli import backup_app
from eventkeep.replay import audit
from eventkeep.replay.cli import audit_app
from tests.api.shopping import register
from tests.ops.cluster import Cluster, free_port

ARCHIVE_TIMEOUT = 2  # seconds; the shipped file says 60
SETTLE = ARCHIVE_TIMEOUT * 2 + 2  # archive_timeout, the archiver's copy, and slack
CLAIM_SECRET = "drill-claim-secret-7Hq2Vx9Lm3Rt8Kb1Zw5N"
runner = CliRunner()

Ack = tuple[str, int, int]  # stream id, version, position the command answered


@pytest.fixture(params=["archive", "synchronous-stream"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The shipped settings (WAL archive), and with EVENTKEEP_PG_WAL_STREAM=sync's addition:
    pg_receivewal --synchronous as the synchronous standby."""
    built = Cluster.create(
        archive_timeout=ARCHIVE_TIMEOUT, synchronous_stream=request.param == "synchronous-stream"
    )
    yield built
    built.destroy()


@pytest.fixture
def archiving_cluster() -> Iterator[Cluster]:
    built = Cluster.create(archive_timeout=ARCHIVE_TIMEOUT)
    yield built
    built.destroy()


def settings(url: str, home: Path) -> Settings:
    return Settings(
        home=home, postgres_url=url, claim_secret=CLAIM_SECRET, redis_url=None, kafka_bootstrap=None
    )


def environment(url: str, cluster: Cluster, backups: Path) -> dict[str, str]:
    env = {
        "EVENTKEEP_POSTGRES_URL": url,
        "EVENTKEEP_CLAIM_SECRET": CLAIM_SECRET,
        "EVENTKEEP_BACKUP_DIR": str(backups),
        "EVENTKEEP_WAL_ARCHIVE": str(cluster.archive),
        # The test's home (chain key, checkpoints), not a `.eventkeep` of the working folder.
        "EVENTKEEP_HOME": str(backups.parent / "home"),
    }
    if cluster.receiver is not None:
        env["EVENTKEEP_WAL_STREAM"] = str(cluster.stream)
    return env


def invoke(app: Any, args: list[str], env: dict[str, str]) -> str:
    done = runner.invoke(app, args, env=env)
    assert done.exit_code == 0, done.output
    return done.output


def commands(client: TestClient, batch: str, count: int) -> list[Ack]:
    acks = []
    for n in range(count):
        body = register(client, f"{batch}-{n}@example.com")
        acks.append((body["id"], body["version"], body["position"]))
    return acks


def stored(url: str, home: Path) -> dict[int, tuple[str, int]]:
    """position -> (stream id, version) of every event the store at `url` holds, after checking
    its hash chain as `eventkeep audit verify` does."""
    wiring = wire(settings(url, home))
    try:
        verdict = audit.verify(wiring.shop.recorder)
        assert verdict.intact, verdict.altered
        lines = io.BytesIO()
        audit.export(wiring.shop.recorder, lines)
    finally:
        wiring.close()
    events = [orjson.loads(line) for line in lines.getvalue().splitlines()]
    return {event["position"]: (event["stream_id"], event["stream_version"]) for event in events}


def lost(acks: list[Ack], store: dict[int, tuple[str, int]]) -> list[Ack]:
    return [ack for ack in acks if store.get(ack[2]) != (ack[0], ack[1])]


def client_of(wiring: Wiring) -> TestClient:
    key = wiring.keys.create(Role.client, "drill").secret_key
    return TestClient(create_app(wiring), headers={"Authorization": f"Bearer {key}"})


def test_drill_restore_to_latest_and_to_a_point_in_time(cluster: Cluster, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    env = environment(cluster.url, cluster, backups)
    wiring = wire(settings(cluster.url, tmp_path / "home"))
    with client_of(wiring) as client:
        first = commands(client, "first", 40)
        name = invoke(backup_app, ["create"], env).strip().splitlines()[-1]
        time.sleep(1.1)  # recovery_target_time has the server clock's resolution
        between = datetime.now(UTC)
        time.sleep(1.1)
        second = commands(client, "second", 60)
        time.sleep(SETTLE)
        tail_began = time.monotonic()
        tail = commands(client, "tail", 30)
        cluster.kill()
        tail_seconds = time.monotonic() - tail_began
    # The stream's copy lives on (another machine, in production); its writer is gone too.
    streamed = cluster.receiver is not None
    cluster.kill_stream()
    wiring.close()
    shutil.rmtree(cluster.data)
    mode = "synchronous WAL stream + archive" if streamed else "WAL archive"
    print(f"\ndrill ({mode}): {len(first) + len(second) + len(tail)} commands acknowledged; "
          f"server killed, data directory removed; restoring {name}")  # fmt: skip

    began = time.monotonic()
    restore = ["restore", "--to", "latest", "--data-dir", str(cluster.data), "--start"]
    invoke(backup_app, [*restore, "--port", str(cluster.port)], env)
    recovery_time = time.monotonic() - began

    store = stored(cluster.url, tmp_path / "home")
    tail_lost = lost(tail, store)
    print(
        f"drill: recovery time {recovery_time:.1f} s (restore start to a promoted server); "
        f"recovery point: {len(tail_lost)} of the {len(tail)} writes acknowledged in the last "
        f"{tail_seconds:.1f} s before the loss (archive_timeout {ARCHIVE_TIMEOUT} s) lost; "
        f"{len(lost(first + second, store))} of the {len(first) + len(second)} older ones"
    )
    assert lost(first, store) == []
    assert lost(second, store) == []
    if streamed:
        assert tail_lost == []  # RPO 0: nothing acknowledged is lost
    # What was lost is the log's end, never a hole: positions stay contiguous.
    assert sorted(store) == list(range(1, len(store) + 1))
    assert "Intact" in invoke(audit_app, ["verify"], env)  # `eventkeep audit verify`

    restored = wire(settings(cluster.url, tmp_path / "home"))
    with client_of(restored) as client:
        after = commands(client, "after", 3)
    restored.close()
    assert [position for _, _, position in after] == [len(store) + n for n in (1, 2, 3)]

    # Point in time: a fresh data directory, replaying the archive up to `between`.
    pitr = cluster.base / "pitr"  # where the postgres user may go (tmp_path is root's only)
    pitr.mkdir(mode=0o711)
    port = free_port()
    pitr_url = cluster.url.replace(f":{cluster.port}/", f":{port}/")
    restore = ["restore", "--to", between.isoformat(), "--data-dir", str(pitr / "data")]
    try:
        invoke(backup_app, [*restore, "--start", "--port", str(port)], env)
        store = stored(pitr_url, tmp_path / "home")
        assert lost(first, store) == []
        assert len(store) == len(first)
    finally:
        Cluster(pitr, port, ARCHIVE_TIMEOUT).stop()


def test_restore_refuses_a_data_directory_that_is_not_empty(
    archiving_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = archiving_cluster
    env = environment(cluster.url, cluster, tmp_path / "backups")
    invoke(backup_app, ["create"], env)
    refused = runner.invoke(backup_app, ["restore", "--data-dir", str(cluster.data)], env=env)
    assert refused.exit_code == 1
    assert "not empty" in refused.output
    missing = runner.invoke(backup_app, ["restore"], env=env)
    assert missing.exit_code == 1
    assert "--data-dir is required" in missing.output


def test_prune_keeps_the_newest_backups_and_the_wal_they_need(
    archiving_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = archiving_cluster
    env = environment(cluster.url, cluster, tmp_path / "backups")
    names = []
    for _ in range(3):
        names.append(invoke(backup_app, ["create"], env).strip().splitlines()[-1])
        time.sleep(1.1)  # backup folders are named by the second
    kept = next(info for info in list_backups(tmp_path / "backups") if info.name == names[1])
    with psycopg.connect(cluster.url, autocommit=True) as connection:
        row = connection.execute("SELECT pg_walfile_name(%s::pg_lsn)", (kept.wal_start,))
        needed = row.fetchone()
    assert needed is not None
    assert first_wal_file(kept) == needed[0]
    archived_before = sorted(path.name for path in cluster.archive.iterdir())
    assert any(name[:24] < needed[0] for name in archived_before)

    output = invoke(backup_app, ["prune", "--keep", "2"], env)
    assert f"Removed backup {names[0]}" in output
    assert [info.name for info in list_backups(tmp_path / "backups")] == names[1:]
    archived = sorted(path.name for path in cluster.archive.iterdir())
    assert archived and all(name[8:24] >= needed[0][8:] for name in archived if len(name) >= 24)
    assert needed[0] in archived
