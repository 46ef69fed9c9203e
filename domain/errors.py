"""Domain errors: each carries a stable machine-readable code the API puts in its error body.

| code | meaning |
| --- | --- |
| VALIDATION_FAILED | a value is malformed (email, money, currency, quantity, empty order) |
| STOCK_INSUFFICIENT | a reservation or adjustment would make stock negative |
| USER_NOT_ACTIVE | the user is deactivated (cannot order, cannot be deactivated again) |
| USER_ALREADY_ACTIVE | reactivating an active user |
| PRODUCT_DISCONTINUED | the product is discontinued (cannot be ordered or changed) |
| INVALID_STATE_TRANSITION | the order cannot move from its status to the one asked |
| PAYMENT_AMOUNT_MISMATCH | the paid amount differs from the order total |
| CURRENCY_MISMATCH | order lines, or a payment, in different currencies |
| PERSONAL_DATA_ERASED | the user's personal data was erased; it cannot be changed |
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A command broke an invariant. `code` is stable (e.g. STOCK_INSUFFICIENT)."""

    code = "DOMAIN_RULE_BROKEN"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(DomainError):
    code = "VALIDATION_FAILED"


class StockInsufficient(DomainError):
    code = "STOCK_INSUFFICIENT"


class UserNotActive(DomainError):
    code = "USER_NOT_ACTIVE"


class UserAlreadyActive(DomainError):
    code = "USER_ALREADY_ACTIVE"


class ProductNotActive(DomainError):
    """An order or change refused because the product is discontinued (the event of that
    name is `Product.ProductDiscontinued`)."""

    code = "PRODUCT_DISCONTINUED"


class InvalidTransition(DomainError):
    code = "INVALID_STATE_TRANSITION"


class PaymentMismatch(DomainError):
    code = "PAYMENT_AMOUNT_MISMATCH"


class CurrencyMismatch(DomainError):
    code = "CURRENCY_MISMATCH"


class PersonalDataErased(DomainError):
    code = "PERSONAL_DATA_ERASED"
