"""Building blocks of the request and answer bodies: bounded fields, strict objects."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict

from eventkeep.domain.bounds import (
    INT64_MAX,
    MAX_ORDER_TOTAL,
    MAX_PRICE,
    MAX_QUANTITY,
    MAX_STOCK,
    MAX_STOCK_DELTA,
    forbidden_character,
)


class Body(BaseModel):
    """A request body: unknown fields are refused, so a misspelt field never passes unseen."""

    model_config = ConfigDict(extra="forbid")


def _one_line(value: str) -> str:
    char = forbidden_character(value)
    if char is not None:
        raise ValueError(f"holds a control character (U+{ord(char):04X})")
    return value


def _multi_line(value: str) -> str:
    char = forbidden_character(value, multiline=True)
    if char is not None:
        raise ValueError(f"holds a control character (U+{ord(char):04X})")
    return value


# Text: no control characters (NUL and the rest of Unicode's Cc), no lone surrogates; only the
# multi-line fields (a description, a reason) may hold line breaks and tabs (domain.bounds).
OneLine = AfterValidator(_one_line)
MultiLine = AfterValidator(_multi_line)


def _at_most(maximum: object) -> AfterValidator:
    def check(value: str) -> str:
        if Decimal(value) > Decimal(str(maximum)):
            raise ValueError(f"must be at most {maximum}")
        return value

    return AfterValidator(check)


_MONEY = r"^(0|[1-9][0-9]{0,7})\.[0-9]{2}$"

Email = Annotated[str, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"), OneLine]
PersonName = Annotated[str, Field(min_length=1, max_length=100), OneLine]
LastName = Annotated[str, Field(max_length=100), OneLine]  # may be empty, as legacy users' are
Reason = Annotated[str, Field(min_length=1, max_length=500), MultiLine]
# A customer's password (api/accounts.py): hashed with argon2id, never stored or logged.
Password = Annotated[
    str, Field(min_length=8, max_length=200, json_schema_extra={"format": "password"})
]
Price = Annotated[
    str,
    Field(pattern=_MONEY, examples=["19.99"], description=f"At most {MAX_PRICE}."),
    _at_most(MAX_PRICE),
]
Amount = Annotated[
    str,
    Field(pattern=_MONEY, examples=["39.98"], description=f"At most {MAX_ORDER_TOTAL}."),
    _at_most(MAX_ORDER_TOTAL),
]
Money = Price  # the name the routes knew first
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", examples=["EUR"])]
Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
ProductName = Annotated[str, Field(min_length=1, max_length=200), OneLine]
Description = Annotated[str, Field(max_length=5000), MultiLine]
Category = Annotated[str, Field(min_length=1, max_length=100), OneLine]
Reference = Annotated[str, Field(min_length=1, max_length=200), OneLine]
# Strict: `true` and `"5"` are not numbers.
Count = Annotated[int, Strict(), Field(ge=0, le=MAX_STOCK)]
Delta = Annotated[int, Strict(), Field(ge=-MAX_STOCK_DELTA, le=MAX_STOCK_DELTA)]
Quantity = Annotated[int, Strict(), Field(ge=1, le=MAX_QUANTITY)]
# A position or version in a query or header: what a 64-bit column holds.
Position = Annotated[int, Field(ge=0, le=INT64_MAX)]


class CommandAnswer(BaseModel):
    """What every command answers: the stream, its new version, its last event's position."""

    id: UUID
    version: int
    position: int

    def encoded(self) -> bytes:
        """The JSON body FastAPI's response field writes for this answer, byte for byte
        (`tests/api/test_lean_commands.py`), without validating it again (the hot commands'
        short path)."""
        return orjson.dumps({"id": self.id, "version": self.version, "position": self.position})


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorAnswer(BaseModel):
    error: ErrorDetail


# The error statuses a request can answer, shown in /docs with their one body shape: the
# route's own, and those of the door (413 body, 431 headers, 429 rate limit).
COMMAND_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorAnswer} for status in (400, 401, 403, 404, 409, 413, 422, 429, 431, 503)
}
