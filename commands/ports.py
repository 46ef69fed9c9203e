"""What the write side needs from an event store beyond appending events.

The store implements these atomically with the append (same transaction), so a command either
records its events, claims and idempotency record together, or none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from eventkeep.commands.messages import CommandResult


@dataclass(frozen=True)
class UniqueClaim:
    """Claims `key` within `scope` for `owner`; `owner=None` releases the key.

    `key` is a keyed hash of the normalised value (never plaintext PII).
    """

    scope: str
    key: str
    owner: UUID | None


@dataclass(frozen=True)
class IdempotencyRecord:
    """The answer of a command, stored under its idempotency key.

    The store completes `result.position` with the append's last position.
    """

    key: str
    request_hash: str
    result: CommandResult


class ClaimTakenError(Exception):
    """Another owner holds the key (for example, the email is taken)."""

    def __init__(self, scope: str, key: str) -> None:
        super().__init__(f"{scope} is already claimed")
        self.scope = scope
        self.key = key


class IdempotencyKeyUsedError(Exception):
    """A record under this idempotency key was stored first (a concurrent retry)."""

    def __init__(self, key: str) -> None:
        super().__init__("idempotency key already used")
        self.key = key
