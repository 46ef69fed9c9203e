"""Domain errors: each carries a stable machine-readable code the API puts in its error body."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A command broke an invariant. `code` is stable (e.g. STOCK_INSUFFICIENT)."""

    code = "DOMAIN_RULE_BROKEN"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
