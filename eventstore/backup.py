"""Backups of the event store and everything beside it, with each mode's own tools.

Distributed mode: a base backup of the whole PostgreSQL cluster taken by `pg_basebackup` (tar
format, gzip level 1, the WAL it needs streamed into the backup), plus the WAL segments that the
server's `archive_command` keeps copying into an archive folder (set up by `infra/services`).
A restore unpacks a base backup into a fresh data directory and writes the recovery settings:
PostgreSQL replays the archived WAL up to the latest segment or to a given time, then promotes.
Event store, read models, claims, API keys and relay position all live in the one database, so
they come back from the same moment.

Embedded mode: an online copy of each SQLite file under EVENTKEEP_HOME made with SQLite's backup
API (consistent even while the server writes), read models first and the event log last, so
that a restored log is never behind its read models (the feed catches up; the reverse would
leave read models that claim events the log does not hold).

Every backup is a folder named by its UTC time (mode 0700, files 0600) with `backup.json`
describing it; `list_backups` reads those.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pwd
import shutil
import sqlite3
import subprocess
import tarfile
import time
from contextlib import closing
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Mode = Literal["embedded", "distributed"]
INFO_FILE = "backup.json"
SQLITE_HEADER = b"SQLite format 3\x00"
# SQLite's side files: never copied, the backup API copies what they hold.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


class BackupRefused(Exception):
    """A backup or restore that must not go on; the message says why and what to do."""


class BackupSettings(BaseSettings):
    """Where backups and the WAL archive live (environment, prefix `EVENTKEEP_`)."""

    model_config = SettingsConfigDict(env_prefix="EVENTKEEP_", extra="ignore")

    backup_dir: Path | None = Field(
        default=None,
        description="Folder of the backups (one sub-folder each); default HOME/backups.",
    )
    wal_archive: Path | None = Field(
        default=None,
        description="Folder the PostgreSQL server's archive_command copies WAL segments into "
        "(infra/services: .state/postgres/wal-archive); a restore reads WAL from it.",
    )
    wal_stream: Path | None = Field(
        default=None,
        description="Folder pg_receivewal streams WAL into (infra/services with "
        "EVENTKEEP_PG_WAL_STREAM=sync|async); a restore reads from it after the archive, the "
        "segment still being written (.partial) last.",
    )
    pg_bin: Path | None = Field(
        default=None,
        description="Folder of the PostgreSQL client programs (pg_basebackup, pg_ctl); "
        "default: found on PATH, else the newest /usr/lib/postgresql/*/bin.",
    )

    def folder(self, home: Path) -> Path:
        return self.backup_dir if self.backup_dir is not None else home / "backups"


@dataclass(frozen=True)
class BackupInfo:
    """One backup, as its `backup.json` describes it."""

    name: str
    mode: Mode
    started_at: str  # RFC 3339 UTC
    finished_at: str  # RFC 3339 UTC: a restore to a time after this one may use the backup
    size: int  # bytes on disk
    wal_start: str | None = None  # distributed: the backup's start LSN
    wal_end: str | None = None
    timeline: int | None = None
    files: tuple[str, ...] = ()  # embedded: the files copied

    @property
    def finished(self) -> datetime:
        return datetime.fromisoformat(self.finished_at)


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _new_backup_folder(root: Path, moment: datetime) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    base = moment.strftime("%Y%m%dT%H%M%SZ")
    for suffix in ("", *(f"-{n}" for n in range(2, 100))):
        folder = root / f"{base}{suffix}"
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return folder
    raise BackupRefused(f"too many backups named {base} in {root}")


def _private(folder: Path) -> int:
    """Makes every file under `folder` 0600 and every folder 0700; answers the total size."""
    size = 0
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            os.chmod(path, 0o700)
        else:
            os.chmod(path, 0o600)
            size += path.stat().st_size
    return size


def _write_info(folder: Path, info: BackupInfo) -> None:
    path = folder / INFO_FILE
    path.write_bytes(orjson.dumps(asdict(info), option=orjson.OPT_INDENT_2))
    os.chmod(path, 0o600)


def list_backups(root: Path) -> list[BackupInfo]:
    """The backups under `root`, oldest first; folders without a `backup.json` (a backup that
    did not finish) are left out."""
    found = []
    for info_file in sorted(root.glob(f"*/{INFO_FILE}")) if root.is_dir() else []:
        fields = orjson.loads(info_file.read_bytes())
        fields["files"] = tuple(fields.get("files", ()))
        found.append(BackupInfo(**fields))
    return sorted(found, key=lambda info: info.finished_at)


def choose_backup(root: Path, to: str) -> BackupInfo:
    """`latest`, a backup's name, or an RFC 3339 time: the newest backup finished by then."""
    backups = list_backups(root)
    if not backups:
        raise BackupRefused(f"no backups in {root}")
    if to == "latest":
        return backups[-1]
    for info in backups:
        if info.name == to:
            return info
    target = parse_time(to)
    usable = [info for info in backups if info.finished <= target]
    if not usable:
        raise BackupRefused(
            f"no backup finished by {_stamp(target)}: the oldest finished {backups[0].finished_at}"
        )
    return usable[-1]


WAL_SEGMENT_BYTES = 16 * 1024 * 1024  # PostgreSQL's default (initdb --wal-segsize)


def first_wal_file(info: BackupInfo, segment_bytes: int = WAL_SEGMENT_BYTES) -> str:
    """The name of the WAL segment that holds a base backup's start: the oldest one a restore
    of this backup reads."""
    if info.wal_start is None or info.timeline is None:
        raise BackupRefused(f"{info.name} is not a PostgreSQL base backup")
    high, low = (int(part, 16) for part in info.wal_start.split("/"))
    segment = ((high << 32) | low) // segment_bytes
    per_id = 0x1_0000_0000 // segment_bytes
    return f"{info.timeline:08X}{segment // per_id:08X}{segment % per_id:08X}"


def prune_backups(
    root: Path, keep: int, wal_archive: Path | None, settings: BackupSettings
) -> tuple[list[BackupInfo], str | None]:
    """Removes all but the newest `keep` backups and, when `wal_archive` is given, the archived
    WAL older than what the oldest kept base backup needs (`pg_archivecleanup`). Answers the
    removed backups and the first WAL file kept."""
    if keep < 1:
        raise BackupRefused("keep at least one backup: the WAL archive is useless without one")
    backups = list_backups(root)
    removed, kept = backups[:-keep], backups[-keep:]
    for info in removed:
        shutil.rmtree(root / info.name)
    if wal_archive is None or not kept or kept[0].mode != "distributed":
        return removed, None
    oldest_needed = first_wal_file(kept[0])
    done = subprocess.run(
        [pg_program(settings, "pg_archivecleanup"), str(wal_archive), oldest_needed],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BackupRefused(f"pg_archivecleanup failed: {done.stderr.strip()}")
    # pg_archivecleanup leaves the small backup history files; older ones describe removed
    # backups. (Names compare without their timeline, as pg_archivecleanup compares them.)
    for history in wal_archive.glob("*.backup"):
        if history.name[8:24] < oldest_needed[8:]:
            history.unlink()
    return removed, oldest_needed


def parse_time(text: str) -> datetime:
    """An RFC 3339 time with its zone (a time without one is ambiguous and refused)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise BackupRefused(f"not 'latest', a backup name or an RFC 3339 time: {text!r}") from error
    if moment.tzinfo is None:
        raise BackupRefused(f"the time {text!r} needs a zone (e.g. Z or +02:00)")
    return moment.astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# Embedded mode: SQLite files


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(len(SQLITE_HEADER)) == SQLITE_HEADER


def _read_only(path: Path) -> str:
    """A read-only SQLite URI for `path` (percent-encoded: a '?' or '#' in it stays a name)."""
    return f"{path.resolve().as_uri()}?mode=ro"


def _home_files(home: Path) -> tuple[list[Path], list[Path]]:
    """The SQLite databases (read models first, the event log last) and the other plain files
    (the deployment secret) directly under `home`."""
    databases: list[Path] = []
    others: list[Path] = []
    for path in sorted(home.iterdir()):
        if not path.is_file() or path.name.endswith(SQLITE_SIDE_FILES):
            continue
        (databases if _is_sqlite(path) else others).append(path)
    databases.sort(key=lambda path: path.name == "events.db")
    return databases, others


def create_sqlite_backup(home: Path, root: Path) -> BackupInfo:
    """A consistent online copy of every SQLite file under `home` (and its secret) in a new
    folder under `root`."""
    if not home.is_dir():
        raise BackupRefused(f"{home} does not exist: nothing to back up")
    started = _now()
    folder = _new_backup_folder(root, started)
    databases, others = _home_files(home)
    for source_path in databases:
        target_path = folder / source_path.name
        target_path.touch(mode=0o600)
        with (
            closing(sqlite3.connect(_read_only(source_path), uri=True)) as source,
            closing(sqlite3.connect(target_path)) as target,
        ):
            source.execute("PRAGMA busy_timeout = 10000")
            # All pages in one step: a writer between steps would restart the copy.
            source.backup(target, pages=-1)
    for path in others:
        shutil.copyfile(path, folder / path.name)
    info = BackupInfo(
        name=folder.name,
        mode="embedded",
        started_at=_stamp(started),
        finished_at=_stamp(_now()),
        size=_private(folder),
        files=tuple(path.name for path in [*databases, *others]),
    )
    _write_info(folder, info)
    return info


def restore_sqlite_backup(info: BackupInfo, root: Path, home: Path, *, force: bool) -> None:
    """Puts a backup's files back under `home`. Refuses a home that already holds databases
    unless `force` (the server must be stopped first: a running one keeps its old state in
    memory). Each database is written with the backup API, so a reader never sees half a file."""
    folder = root / info.name
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    existing = [name for name in info.files if (home / name).exists()]
    if existing and not force:
        raise BackupRefused(
            f"{home} already holds {', '.join(existing)}: stop the server, then restore with "
            "--force (it replaces them) or into an empty EVENTKEEP_HOME"
        )
    for name in info.files:
        source_path, target_path = folder / name, home / name
        if not _is_sqlite(source_path):
            shutil.copyfile(source_path, target_path)
            os.chmod(target_path, 0o600)
            continue
        if not target_path.exists():
            target_path.touch(mode=0o600)
        with (
            closing(sqlite3.connect(_read_only(source_path), uri=True)) as source,
            closing(sqlite3.connect(target_path, timeout=10)) as target,
        ):
            source.backup(target, pages=-1)
        os.chmod(target_path, 0o600)


# ---------------------------------------------------------------------------------------------
# Distributed mode: pg_basebackup and WAL archive


def pg_program(settings: BackupSettings, name: str) -> str:
    if settings.pg_bin is not None:
        return str(settings.pg_bin / name)
    found = shutil.which(name)
    if found is not None:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    if not candidates:
        raise BackupRefused(f"{name} not found: install the PostgreSQL client programs")
    return str(candidates[-1])


def _without_password(url: str) -> tuple[str, dict[str, str]]:
    """The connection string without its password, and the environment that passes it (a
    password on a command line shows in `ps`)."""
    params = conninfo_to_dict(url)
    password = params.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{key: str(value) for key, value in params.items()}), env


def create_postgres_backup(url: str, root: Path, settings: BackupSettings) -> BackupInfo:
    """A base backup of the cluster that `url` names, into a new folder under `root`. The role
    needs REPLICATION (or superuser) and pg_hba.conf a `host replication` line for it."""
    started = _now()
    folder = _new_backup_folder(root, started)
    conninfo, env = _without_password(url)
    command = [
        pg_program(settings, "pg_basebackup"),
        f"--dbname={conninfo}",
        f"--pgdata={folder}",
        "--format=tar",
        "--compress=client-gzip:1",
        "--wal-method=stream",
        "--checkpoint=fast",
        f"--label=eventkeep {folder.name}",
        "--no-password",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise BackupRefused(f"pg_basebackup failed: {done.stderr.strip()}")
    manifest = orjson.loads((folder / "backup_manifest").read_bytes())
    wal = manifest["WAL-Ranges"][0]
    info = BackupInfo(
        name=folder.name,
        mode="distributed",
        started_at=_stamp(started),
        finished_at=_stamp(_now()),
        size=_private(folder),
        wal_start=wal["Start-LSN"],
        wal_end=wal["End-LSN"],
        timeline=int(wal["Timeline"]),
    )
    _write_info(folder, info)
    return info


def archiving_problem(url: str) -> str | None:
    """Why the server at `url` does not archive WAL, if it does not: its base backups then
    restore only to their own end point."""
    with psycopg.connect(url, connect_timeout=5, autocommit=True) as connection:
        mode = connection.execute("SHOW archive_mode").fetchone()
        command = connection.execute("SHOW archive_command").fetchone()
        failed = connection.execute(
            "SELECT failed_count, last_failed_wal, last_archived_wal FROM pg_stat_archiver"
        ).fetchone()
    if mode is None or mode[0] == "off":
        return "archive_mode is off"
    if command is None or command[0] in ("", "(disabled)"):
        return "archive_command is empty"
    if failed is not None and failed[0] and (failed[2] is None or failed[1] > failed[2]):
        return f"archiving fails (last failed segment {failed[1]}; see the server log)"
    return None


def _unpack(archive: Path, into: Path) -> None:
    opener = gzip.open if archive.suffix == ".gz" else open
    with opener(archive, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        tar.extractall(into, filter="tar")


def _postgres_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: as root, restored files belong to `postgres`."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as error:
        raise BackupRefused("running as root but there is no 'postgres' user to own") from error


def restore_postgres_backup(
    info: BackupInfo,
    root: Path,
    data_dir: Path,
    wal_archive: Path | None,
    target: datetime | None,
    port: int | None = None,
    wal_stream: Path | None = None,
) -> Path:
    """Unpacks a base backup into the fresh `data_dir` and writes the recovery settings: WAL
    from `wal_archive` (without one, only the WAL inside the backup: its end point), up to
    `target` or to the end of the archive, then promote. Answers the data directory."""
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupRefused(f"{data_dir} is not empty: restore into a fresh data directory")
    for folder_of_wal in (wal_archive, wal_stream):
        if folder_of_wal is not None and not folder_of_wal.is_dir():
            raise BackupRefused(f"the WAL folder {folder_of_wal} does not exist")
    folder = root / info.name
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    base = next(folder.glob("base.tar*"), None)
    if base is None:
        raise BackupRefused(f"{folder} holds no base.tar")
    _unpack(base, data_dir)
    wal_tar = next(folder.glob("pg_wal.tar*"), None)
    if wal_tar is not None:
        (data_dir / "pg_wal").mkdir(mode=0o700, exist_ok=True)
        _unpack(wal_tar, data_dir / "pg_wal")
    settings = [
        "",
        f"# Written by eventkeep backup restore ({info.name}) at {_stamp(_now())}.",
        "recovery_target_action = 'promote'",
        "recovery_target_timeline = 'latest'",
        # The lost server's synchronous standby (a WAL stream) is not attached to this one:
        # waiting for it would hang every commit. Attach a new stream, then set it again.
        "synchronous_standby_names = ''",
    ]
    sources = [f"{_quoted(wal_archive)}/%f"] if wal_archive is not None else []
    if wal_stream is not None:
        # The streamed copy of the segment the server was writing when it was lost: all its
        # acknowledged commits when the stream was synchronous.
        sources += [f"{_quoted(wal_stream)}/%f", f"{_quoted(wal_stream)}/%f.partial"]
    if sources:
        copies = " || ".join(f'cp "{source}" "%p"' for source in sources)
        settings.append(f"restore_command = '{copies}'")
    if target is not None:
        settings.append(f"recovery_target_time = '{target.isoformat()}'")
    if port is not None:
        settings.append(f"port = {port}")
    with (data_dir / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n".join(settings) + "\n")
    (data_dir / "recovery.signal").touch()
    # A backup taken from a running server carries its pid file's absence, but not its
    # socket lock; remove what must not be there.
    (data_dir / "postmaster.pid").unlink(missing_ok=True)
    owner = _postgres_user()
    if owner is not None:
        for path in [data_dir, *data_dir.rglob("*")]:
            os.lchown(path, owner.pw_uid, owner.pw_gid)
    return data_dir


def _quoted(folder: Path) -> str:
    """A folder for a restore_command: absolute, quotes doubled for the configuration file."""
    return str(folder.resolve()).replace("'", "''")


def start_command(pg_ctl: str, data_dir: Path, log: Path) -> list[str]:
    command = [pg_ctl, "-D", str(data_dir), "-l", str(log), "-w", "-t", "600", "start"]
    if _postgres_user() is not None:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def start_postgres(data_dir: Path, log: Path, settings: BackupSettings) -> None:
    """Starts the restored server (as `postgres` when root) and waits until it accepts
    connections; recovery may still be running then (see `wait_promoted`)."""
    owner = _postgres_user()
    if owner is not None and not log.exists():
        log.touch(mode=0o600)
        os.chown(log, owner.pw_uid, owner.pw_gid)
    command = start_command(pg_program(settings, "pg_ctl"), data_dir, log)
    done = subprocess.run(command, cwd="/", capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise BackupRefused(f"pg_ctl start failed: {done.stderr.strip()}\n{tail}")


def wait_promoted(url: str, timeout: float = 600.0) -> None:
    """Waits until the server at `url` has finished recovery and accepts writes."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(url, connect_timeout=2, autocommit=True) as connection:
                row = connection.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    _wake_checkpointer(connection)
                    return
        except psycopg.Error as error:
            last = error
        time.sleep(0.2)
    raise BackupRefused(f"the restored server did not finish recovery in {timeout:.0f} s: {last}")


def _wake_checkpointer(connection: psycopg.Connection[tuple[object, ...]]) -> None:
    """PostgreSQL 15's checkpointer, when it last slept during recovery, applies archive_timeout
    only after a whole checkpoint_timeout; a configuration reload wakes it (needs superuser or
    a grant on pg_reload_conf; without them the first segment switch may come late)."""
    with contextlib.suppress(psycopg.Error):
        connection.execute("SELECT pg_reload_conf()")


def with_port(url: str, port: int) -> str:
    return make_conninfo(url, port=str(port))
