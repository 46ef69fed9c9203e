"""List cursors: the last row's sort value and id, as URL-safe base64 JSON.

A cursor comes back from the client, so decoding trusts nothing: it must be a list of exactly
two values whose types and ranges fit the sort column (a 64-bit integer for cents, short text
without control characters otherwise) and the id column; anything else is InvalidCursor (400),
never a database error.
"""

from __future__ import annotations

import base64
import binascii
import unicodedata
from typing import Any

import orjson

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TEXT = 1000  # longer than any name or time the read models sort by
MAX_ID = 100
INTEGER_COLUMNS = frozenset({"price_cents", "total_cents", "stock", "version"})


class InvalidCursor(ValueError):
    pass


def encode_cursor(value: Any, row_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([value, row_id])).decode().rstrip("=")


def decode_cursor(cursor: str, column: str) -> tuple[Any, str]:
    """The (sort value, id) a cursor of a page sorted by `column` holds."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = orjson.loads(raw)
    except (ValueError, binascii.Error):
        raise InvalidCursor("the cursor is not one this API gave") from None
    if not (isinstance(values, list) and len(values) == 2):
        raise InvalidCursor("the cursor is not one this API gave")
    value, row_id = values
    if column in INTEGER_COLUMNS:
        if not _integer(value):
            raise InvalidCursor(f"the cursor's {column} is not a 64-bit integer")
    elif not _text(value, MAX_TEXT):
        raise InvalidCursor(f"the cursor's {column} is not text this API gives")
    if not _text(row_id, MAX_ID):
        raise InvalidCursor("the cursor's id is not one this API gives")
    return value, row_id


def _integer(value: object) -> bool:
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return INT64_MIN <= value <= INT64_MAX


def _text(value: object, longest: int) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= longest
        and not any(unicodedata.category(char) in ("Cc", "Cs") for char in value)
    )
