"""Signed checkpoints of the hash chain's head, kept outside the log's tables.

A checkpoint says "at `time` the log ended at `position` with hash `hash`", signed with Ed25519.
They are appended, one JSON object per line, to a file outside the database (settings
`EVENTKEEP_CHECKPOINT_FILE`, default `HOME/chain-checkpoints.jsonl`); copying each line to an
append-only store elsewhere (WORM bucket, a log service) makes them survive the host too.
Verification (`replay.audit.verify`) compares the log with every checkpoint: a truncated tail,
or a rewritten event below a checkpoint, is found even by someone who could recompute the
chain. The first checkpoint also records `unkeyed_until`: the last position of history written
before the chain was keyed, the only events whose unkeyed hashes verification accepts.

The signing key is derived from the chain's HMAC key (its own HKDF label): the database roles
never see either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


@dataclass(frozen=True)
class Checkpoint:
    position: int
    hash: bytes
    time: str  # RFC 3339, UTC
    unkeyed_until: int
    valid: bool = True  # its signature verifies with this deployment's key

    def signed_bytes(self) -> bytes:
        return f"{self.position}|{self.hash.hex()}|{self.time}|{self.unkeyed_until}".encode()


def signing_key(secret: bytes) -> Ed25519PrivateKey:
    seed = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"eventkeep checkpoint signing v1"
    ).derive(secret)
    return Ed25519PrivateKey.from_private_bytes(seed)


class CheckpointFile:
    def __init__(self, path: Path, secret: bytes) -> None:
        self.path = path
        self._key = signing_key(secret)
        self.public_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def read(self) -> list[Checkpoint]:
        """Every checkpoint, in the order written; one whose signature fails is kept with
        `valid=False` (verification reports it)."""
        if not self.path.exists():
            return []
        found = []
        public = self._key.public_key()
        for line in self.path.read_bytes().splitlines():
            if not line.strip():
                continue
            entry = orjson.loads(line)
            checkpoint = Checkpoint(
                position=int(entry["position"]),
                hash=bytes.fromhex(entry["hash"]),
                time=str(entry["time"]),
                unkeyed_until=int(entry.get("unkeyed_until", 0)),
            )
            try:
                public.verify(bytes.fromhex(entry["signature"]), checkpoint.signed_bytes())
            except (InvalidSignature, ValueError):
                checkpoint = Checkpoint(**{**checkpoint.__dict__, "valid": False})
            found.append(checkpoint)
        return found

    def append(self, position: int, hash: bytes, unkeyed_until: int) -> Checkpoint:
        checkpoint = Checkpoint(
            position=position,
            hash=hash,
            time=datetime.now(UTC).isoformat(timespec="seconds"),
            unkeyed_until=unkeyed_until,
        )
        line = orjson.dumps(
            {
                "position": position,
                "hash": hash.hex(),
                "time": checkpoint.time,
                "unkeyed_until": unkeyed_until,
                "public_key": self.public_key.hex(),
                "signature": self._key.sign(checkpoint.signed_bytes()).hex(),
            }
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Appended, never rewritten; 0600 (who may read it may learn the log's size).
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "ab") as file:
            file.write(line + b"\n")
            file.flush()
            os.fsync(file.fileno())
        return checkpoint
