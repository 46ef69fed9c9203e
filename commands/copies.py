"""Copies of aggregates that a command may change without touching the original: the write
path's cache hands them out (`eventstore.aggregate_cache`), and a decision awaited on the event
loop takes one of each aggregate read for it (`CommandBus.handle_async`)."""

from __future__ import annotations

from copy import deepcopy
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

A = TypeVar("A")
# Values nobody can change in place: a copy may share them.
_IMMUTABLE = (str, int, float, bool, bytes, Decimal, UUID, datetime, date, time, type(None))
# The same, looked up by exact type first: one set lookup instead of an `isinstance` against
# eleven classes for each attribute of each aggregate a command loads.
_IMMUTABLE_TYPES = frozenset(_IMMUTABLE)


def private_copy(aggregate: A) -> A:
    """A copy sharing nothing mutable with `aggregate` (its own pending-events list, its own
    containers), like `deepcopy` but without walking immutable values (a generic `deepcopy`
    of the whole aggregate was half of a command's CPU time)."""
    clone: Any = object.__new__(type(aggregate))
    clone.__dict__.update(
        {
            name: value
            if type(value) in _IMMUTABLE_TYPES or isinstance(value, _IMMUTABLE)
            else deepcopy(value)
            for name, value in vars(aggregate).items()
        }
    )
    return clone
