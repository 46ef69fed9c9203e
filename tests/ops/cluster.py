"""A PostgreSQL cluster of a test's own (initdb into a temporary folder, a free port, WAL
archiving with infra/postgres/wal-archiving.conf): what a drill may kill, destroy and restore
without touching the shared server of infra/services."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[2]
ARCHIVING_CONF = REPO / "infra" / "postgres" / "wal-archiving.conf"
PG_BIN = Path(
    os.environ.get("EVENTKEEP_PG_BIN")
    or max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name))
)
PASSWORD = "drill"
# pg_receivewal's replication slot and application name, as infra/services names them.
STREAM = "eventkeep_wal_stream"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _owner() -> pwd.struct_passwd | None:
    return pwd.getpwnam("postgres") if os.geteuid() == 0 else None


def as_postgres(*command: str | Path) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its programs as `postgres`."""
    args = [str(part) for part in command]
    return ["runuser", "-u", "postgres", "--", *args] if _owner() is not None else args


def chown_postgres(path: Path) -> None:
    owner = _owner()
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)


@dataclass
class Cluster:
    """One server: its data directory, log, WAL archive and port under `base`."""

    base: Path
    port: int
    archive_timeout: int
    receiver: subprocess.Popen[bytes] | None = None  # pg_receivewal, when streaming

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def archive(self) -> Path:
        return self.base / "wal-archive"

    @property
    def stream(self) -> Path:
        return self.base / "wal-stream"

    @property
    def sockets(self) -> Path:
        return self.base / "run"

    @property
    def log(self) -> Path:
        return self.base / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://eventkeep:{PASSWORD}@127.0.0.1:{self.port}/eventkeep"

    @classmethod
    def create(cls, archive_timeout: int, *, synchronous_stream: bool = False) -> Cluster:
        # /tmp itself, not pytest's tmp_path: the postgres user must be able to reach it.
        base = Path(tempfile.mkdtemp(prefix="eventkeep-drill-"))
        os.chmod(base, 0o711)
        cluster = cls(base, free_port(), archive_timeout)
        for folder in (cluster.data, cluster.archive, cluster.sockets):
            folder.mkdir(mode=0o700)
            chown_postgres(folder)
        cluster.log.touch(mode=0o600)
        chown_postgres(cluster.log)
        cluster._run(
            PG_BIN / "initdb", "-D", cluster.data, "-U", "postgres", "-E", "UTF8",
            "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions",
        )  # fmt: skip
        conf = cluster.data / "postgresql.conf"
        archiving = ARCHIVING_CONF.read_text().replace("@ARCHIVE@", str(cluster.archive))
        with conf.open("a") as file:
            file.write(
                f"listen_addresses = '127.0.0.1'\nport = {cluster.port}\n"
                f"unix_socket_directories = '{cluster.sockets}'\n"
                "max_connections = 50\nshared_buffers = 64MB\n"
                f"{archiving}\n"
                # The shipped file's archive_timeout, shortened to keep the drill short.
                f"archive_timeout = {archive_timeout}\n"
            )
        cluster.start()
        cluster.psql(
            f"CREATE ROLE eventkeep LOGIN SUPERUSER PASSWORD '{PASSWORD}'",
            "CREATE DATABASE eventkeep OWNER eventkeep",
        )
        if synchronous_stream:
            cluster.start_stream()
        return cluster

    def start_stream(self) -> None:
        """pg_receivewal --synchronous into `stream` through a replication slot, then made the
        synchronous standby: a commit is acknowledged only once the stream has flushed it (what
        infra/services does with EVENTKEEP_PG_WAL_STREAM=sync)."""
        self.stream.mkdir(mode=0o700, exist_ok=True)
        chown_postgres(self.stream)
        conninfo = f"host={self.sockets} port={self.port} user=postgres application_name={STREAM}"
        receivewal = PG_BIN / "pg_receivewal"
        self._run(receivewal, "--create-slot", "--if-not-exists", "--slot", STREAM, "-d", conninfo)
        owner = _owner()
        log = (self.base / "pg_receivewal.log").open("ab")
        self.receiver = subprocess.Popen(
            [str(receivewal), "-D", str(self.stream), "--slot", STREAM, "--synchronous",
             "-d", conninfo],
            cwd="/", stdout=log, stderr=log,
            user=owner.pw_uid if owner else None, group=owner.pw_gid if owner else None,
            extra_groups=[] if owner else None,
        )  # fmt: skip
        self._wait_replication("streaming", "state")
        self.psql(f"ALTER SYSTEM SET synchronous_standby_names = '{STREAM}'")
        self.psql("SELECT pg_reload_conf()")
        self._wait_replication("sync", "sync_state")

    def _wait_replication(self, wanted: str, column: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with psycopg.connect(
                host=str(self.sockets), port=self.port, user="postgres", dbname="postgres"
            ) as connection:
                row = connection.execute(
                    f"SELECT {column} FROM pg_stat_replication WHERE application_name = %s",
                    (STREAM,),
                ).fetchone()
            if row is not None and row[0] == wanted:
                return
            time.sleep(0.1)
        raise RuntimeError(f"pg_receivewal did not reach {column} = {wanted}")

    def kill_stream(self) -> None:
        if self.receiver is not None:
            self.receiver.kill()
            self.receiver.wait(10)

    def _run(self, *command: str | Path) -> None:
        done = subprocess.run(as_postgres(*command), cwd="/", capture_output=True, text=True)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{command[0]} failed: {done.stdout}{done.stderr}\n{log}")

    def start(self) -> None:
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "120", "start")
        # As infra/services does: a checkpointer that started with the server ignores
        # archive_timeout until it is woken once (PostgreSQL 15).
        self.psql("SELECT pg_reload_conf()")

    def psql(self, *statements: str) -> None:
        with psycopg.connect(
            host=str(self.sockets), port=self.port, user="postgres", dbname="postgres",
            autocommit=True,
        ) as connection:  # fmt: skip
            for statement in statements:
                connection.execute(statement)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        """kill -9 of the postmaster and every backend (as a lost machine would be)."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        listed = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        children = [int(child) for child in listed.stdout.split()]
        os.kill(pid, signal.SIGKILL)  # first: a postmaster that saw its children die restarts them
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def stop(self) -> None:
        if self.postmaster_pid() is None:
            return
        subprocess.run(
            as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"),
            cwd="/", capture_output=True, check=False,
        )  # fmt: skip

    def destroy(self) -> None:
        self.kill_stream()
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
