"""The largest values the domain accepts, chosen so that every read-model column holds them.

Money is kept in the read models as 64-bit integer cents (`price_cents`, `total_cents`,
`revenue_cents`: at most 9,223,372,036,854,775,807) and counts as 64-bit integers (`stock`,
`units`). With the bounds below:

* a product's price is at most 1,000,000.00 (10^8 cents);
* an order's total — the sum of its lines, each quantity x price — is at most
  10,000,000.00 (10^9 cents), so no line total exceeds it either;
* a line's quantity is at most 1,000,000 and an order has at most 100 lines;
* stock is at most 1,000,000,000 (plus what open orders hold, given back when they are
  cancelled); one adjustment moves it by at most 1,000,000,000;
* a day's revenue of one product in one currency grows by at most one order total per paid
  order: it overflows only after 9.2 x 10^9 orders are paid in one day (over 100,000 a
  second for 24 hours), far beyond what the event store appends.

Text refuses control characters (NUL and the rest of Unicode's Cc category) and lone
surrogates, which PostgreSQL cannot store and JSON cannot carry; multi-line fields (a
description, a reason) may hold line breaks and tabs.
"""

from __future__ import annotations

import re
from decimal import Decimal

from eventkeep.domain.errors import InvalidInput

MAX_PRICE = Decimal("1000000.00")
MAX_ORDER_TOTAL = Decimal("10000000.00")
MAX_QUANTITY = 1_000_000
MAX_LINES = 100
MAX_STOCK = 1_000_000_000
MAX_STOCK_DELTA = 1_000_000_000
INT64_MAX = 2**63 - 1

# Unicode's control characters (category Cc: U+0000-U+001F, U+007F-U+009F, fixed by its
# stability policy) and surrogates (Cs), as one compiled class: a scan in C, where a
# `unicodedata.category` call per character took a fifth of an import (cProfile).
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_FORBIDDEN_MULTILINE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def forbidden_character(value: str, *, multiline: bool = False) -> str | None:
    """The first character `value` may not hold (a control character or a lone surrogate;
    tab and line breaks allowed when `multiline`), or None."""
    found = (_FORBIDDEN_MULTILINE if multiline else _FORBIDDEN).search(value)
    return None if found is None else found.group()


def plain_text(value: str, field: str, *, multiline: bool = False) -> str:
    """`value` when it is a string free of control characters; else InvalidInput naming
    `field`."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be text", field=field)
    char = forbidden_character(value, multiline=multiline)
    if char is not None:
        raise InvalidInput(
            f"{field} holds a control character (U+{ord(char):04X})",
            field=field,
            character=f"U+{ord(char):04X}",
        )
    return value


def whole_number(value: object, field: str, *, low: int, high: int) -> int:
    """`value` when it is an int (not a bool) within [low, high]; else InvalidInput."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{field} must be a whole number", field=field)
    if not low <= value <= high:
        raise InvalidInput(f"{field} must be between {low} and {high}", field=field, value=value)
    return value
