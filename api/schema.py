"""Building blocks of the request and answer bodies: bounded fields, strict objects."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class Body(BaseModel):
    """A request body: unknown fields are refused, so a misspelt field never passes unseen."""

    model_config = ConfigDict(extra="forbid")


Email = Annotated[str, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
PersonName = Annotated[str, Field(min_length=1, max_length=100)]
LastName = Annotated[str, Field(max_length=100)]  # may be empty, as legacy users' are
Reason = Annotated[str, Field(min_length=1, max_length=500)]
Money = Annotated[str, Field(pattern=r"^(0|[1-9][0-9]{0,11})\.[0-9]{2}$", examples=["19.99"])]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", examples=["EUR"])]
Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
ProductName = Annotated[str, Field(min_length=1, max_length=200)]
Description = Annotated[str, Field(max_length=5000)]
Category = Annotated[str, Field(min_length=1, max_length=100)]
Reference = Annotated[str, Field(min_length=1, max_length=200)]
Count = Annotated[int, Field(ge=0, le=1_000_000_000)]
Delta = Annotated[int, Field(ge=-1_000_000_000, le=1_000_000_000)]
Quantity = Annotated[int, Field(ge=1, le=1_000_000)]


class CommandAnswer(BaseModel):
    """What every command answers: the stream, its new version, its last event's position."""

    id: UUID
    version: int
    position: int


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorAnswer(BaseModel):
    error: ErrorDetail


# The error statuses a command can answer, shown in /docs with their one body shape.
COMMAND_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorAnswer} for status in (400, 401, 403, 404, 409, 422, 503)
}
