"""infra/services' WAL archiving and WAL stream, on a PostgreSQL of its own (another state folder
and port, never the shared one): the settings it promises, a segment reaching the archive, a
base backup taken with `eventkeep backup create`, and with EVENTKEEP_PG_WAL_STREAM=sync a
synchronous pg_receivewal that `down` stops."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from eventkeep.eventstore.backup_cli import backup_app
from tests.ops.cluster import REPO, free_port

SERVICES = REPO / "infra" / "services"


class Services:
    """`infra/services … postgres` with a state folder and port of the test's own."""

    def __init__(self, stream: str = "off") -> None:
        self.state = Path(tempfile.mkdtemp(prefix="eventkeep-services-"))
        os.chmod(self.state, 0o755)  # the postgres user goes in
        self.env = {
            **os.environ,
            "EVENTKEEP_STATE_DIR": str(self.state),
            "EVENTKEEP_PG_PORT": str(free_port()),
            "EVENTKEEP_PG_WAL_STREAM": stream,
        }
        self.exported: dict[str, str] = {}

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [str(SERVICES), *args], env=self.env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def up(self) -> None:
        for line in self.run("up", "postgres").splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            self.exported[name] = shlex.split(value)[0] if value else value  # may be quoted

    def close(self) -> None:
        self.run("down", "postgres")
        shutil.rmtree(self.state, ignore_errors=True)

    def setting(self, connection: psycopg.Connection[tuple[object, ...]], name: str) -> str:
        row = connection.execute(f"SHOW {name}").fetchone()
        assert row is not None
        return str(row[0])


@pytest.fixture
def archiving() -> Iterator[Services]:
    services = Services()
    services.up()
    yield services
    services.close()


def test_up_archives_wal_and_a_base_backup_can_be_taken(archiving: Services) -> None:
    url = archiving.exported["EVENTKEEP_POSTGRES_URL"]
    archive = Path(archiving.exported["EVENTKEEP_WAL_ARCHIVE"])
    with psycopg.connect(url, autocommit=True) as connection:
        assert archiving.setting(connection, "archive_mode") == "on"
        assert archiving.setting(connection, "archive_timeout") == "1min"
        assert archiving.setting(connection, "wal_level") == "replica"
        connection.execute("CREATE TABLE archived (x int)")
        row = connection.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    assert row is not None
    deadline = time.monotonic() + 30
    while not (archive / str(row[0])).exists():
        assert time.monotonic() < deadline, f"{row[0]} not archived: {os.listdir(archive)}"
        time.sleep(0.2)
    assert not list(archive.glob("*.tmp"))

    env = {**archiving.exported, "EVENTKEEP_BACKUP_DIR": str(archiving.state / "backups")}
    created = CliRunner().invoke(backup_app, ["create"], env=env)
    assert created.exit_code == 0, created.output
    assert "Warning" not in created.output  # the server archives: later times are reachable
    listed = CliRunner().invoke(backup_app, ["list"], env=env)
    assert created.output.strip().splitlines()[-1] in listed.output


def test_a_synchronous_stream_acknowledges_commits_and_stops_with_the_server() -> None:
    services = Services(stream="sync")
    try:
        services.up()
        url = services.exported["EVENTKEEP_POSTGRES_URL"]
        stream = Path(services.exported["EVENTKEEP_WAL_STREAM"])
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("CREATE TABLE streamed (x int)")
            connection.execute("INSERT INTO streamed VALUES (1)")
            row = connection.execute(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                ("eventkeep_wal_stream",),
            ).fetchone()
        assert row == ("sync",)
        assert list(stream.glob("*.partial"))
        pid_file = services.state / "postgres" / "pg_receivewal.pid"
        pid = int(pid_file.read_text())
    finally:
        services.close()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
        assert time.monotonic() < deadline, "pg_receivewal still runs after down"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"
