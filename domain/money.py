"""Money as the catalog stores it: a string with exactly two decimal places, plus a currency.

Arithmetic uses `Decimal`; events only ever hold the two-place string.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from eventkeep.domain.errors import InvalidInput

CENT = Decimal("0.01")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def parse_amount(
    value: str | Decimal | int, *, field: str = "price", maximum: Decimal | None = None
) -> Decimal:
    """A non-negative amount with at most two decimal places (and at most `maximum`)."""
    if isinstance(value, bool | float):  # True is 1 and floats are inexact: neither is money
        raise InvalidInput(f"{field} must be a decimal string", field=field)
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise InvalidInput(f"{field} is not a number", field=field, value=str(value)) from None
    if not amount.is_finite() or amount < 0:
        raise InvalidInput(f"{field} must be a finite amount ≥ 0", field=field, value=str(value))
    if amount != amount.quantize(CENT):
        raise InvalidInput(f"{field} has more than 2 decimal places", field=field)
    if maximum is not None and amount > maximum:
        raise InvalidInput(f"{field} must be at most {maximum}", field=field, value=str(value))
    return amount.quantize(CENT)


def format_amount(amount: Decimal) -> str:
    return str(amount.quantize(CENT, rounding=ROUND_HALF_EVEN))


def parse_currency(value: str) -> str:
    if not isinstance(value, str) or not _CURRENCY.match(value):
        raise InvalidInput("currency must be an ISO 4217 code", field="currency", value=value)
    return value
