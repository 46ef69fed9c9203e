"""Files only their owner can read: everything under EVENTKEEP_HOME (the event store, the read
models with every user's personal data, the key store, the secret, their -wal and -shm files),
exports and the bootstrap admin key.

`eventkeep serve` runs with the umask 0o077 (`owner_only`), so whatever it creates — SQLite
files and their journals included — is 0600 (folders 0700); at its start `restrict` narrows what
another command or an older version left readable to others. SQLite gives a database's `-wal`
and `-shm` files the mode of the database file. Exports are opened 0600 (`open_private`).
The umask is the server's alone, and put back when it returns: other commands (`backup
restore`, say) make folders another user (PostgreSQL's) must enter.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, ParamSpec, TypeVar

PRIVATE_UMASK = 0o077
FILE_MODE = 0o600
FOLDER_MODE = 0o700


P = ParamSpec("P")
T = TypeVar("T")


def owner_only(command: Callable[P, T]) -> Callable[P, T]:
    """`command` run with the umask 0o077, the previous umask put back when it returns."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        previous = os.umask(PRIVATE_UMASK)
        try:
            return command(*args, **kwargs)
        finally:
            os.umask(previous)

    return run


def open_private(path: Path) -> IO[bytes]:
    """`path` opened for writing (truncated), readable and writable by its owner alone."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return os.fdopen(fd, "wb")


def restrict(home: Path) -> None:
    """`home` 0700, every folder beneath it 0700 and every file 0600."""
    home.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
    home.chmod(FOLDER_MODE)
    for folder, folders, files in os.walk(home):
        for name in folders:
            (Path(folder) / name).chmod(FOLDER_MODE)
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                path.chmod(FILE_MODE)


def write_private(path: Path, text: str) -> Path:
    """Writes `text` to `path`, readable and writable by its owner alone (0600), replacing
    what was there."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return path


def is_private(path: Path) -> bool:
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode & 0o077 == 0
