"""Errors of the write side that are not domain rules; codes shared with the API's table."""

from __future__ import annotations

from eventkeep.domain.errors import DomainError


class NotFound(DomainError):
    code = "NOT_FOUND"


class VersionConflict(DomainError):
    """`If-Match` named another version, or concurrent writers kept winning."""

    code = "VERSION_CONFLICT"


class EmailTaken(DomainError):
    code = "EMAIL_TAKEN"


class IdempotencyKeyReused(DomainError):
    """The idempotency key was first used with another request."""

    code = "IDEMPOTENCY_KEY_REUSED"
