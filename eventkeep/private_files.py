"""Files only their owner can read: everything under EVENTKEEP_HOME (the event store, the read
models with every user's personal data, the key store, the secret, their -wal and -shm files),
exports and the bootstrap admin key.

Every `eventkeep` command starts with the umask 0o077, so whatever it creates — SQLite files
and their journals included — is 0600 (folders 0700); `restrict` also narrows what an older
version left readable to others.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
FILE_MODE = 0o600
FOLDER_MODE = 0o700


def private_umask() -> None:
    os.umask(PRIVATE_UMASK)


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
