"""A retried command (same idempotency key, same request) answers what it answered the first
time and records nothing new; the same key with another request is refused; and `If-Match`
(expected_version) on another version than the stream's is refused with nothing written."""

from __future__ import annotations

from dataclasses import replace

from eventkeep.api.bootstrap import Wiring
from eventkeep.commands.messages import (
    ChangeUserEmail,
    CommandContext,
    DeactivateUser,
    PayOrder,
    RegisterUser,
)
from tests.commands.shopping import (
    CONTEXT,
    create_product,
    event_count,
    load,
    order,
    refused,
    register,
    send,
    stock,
)


def keyed(key: str, request_hash: str) -> CommandContext:
    return replace(CONTEXT, idempotency_key=key, request_hash=request_hash)


def test_a_retried_registration_answers_the_same_and_records_nothing(wiring: Wiring) -> None:
    command = RegisterUser("ada@example.com", "Ada", "Lovelace")
    first = send(wiring, command, keyed("k-1", "h-1"))
    events = event_count(wiring)

    again = send(wiring, command, keyed("k-1", "h-1"))

    assert again == first
    assert first.created and first.version == 1 and first.position == events
    assert event_count(wiring) == events


def test_a_retried_order_reserves_stock_once(wiring: Wiring) -> None:
    user_id = register(wiring)
    product_id = create_product(wiring, stock=5)
    command = order(user_id, (product_id, 2))
    first = send(wiring, command, keyed("order-1", "h"))
    events = event_count(wiring)

    assert send(wiring, command, keyed("order-1", "h")) == first
    assert event_count(wiring) == events
    assert stock(wiring, product_id) == 3


def test_a_retried_command_answers_the_same_even_after_later_changes(wiring: Wiring) -> None:
    user_id = register(wiring)
    command = ChangeUserEmail(user_id, "ada@lovelace.org")
    first = send(wiring, command, keyed("email-1", "h"))
    send(wiring, DeactivateUser(user_id, "asked to"))
    events = event_count(wiring)

    assert send(wiring, command, keyed("email-1", "h")) == first
    assert event_count(wiring) == events
    assert load(wiring, user_id).version == 3


def test_the_same_key_with_another_request_is_refused(wiring: Wiring) -> None:
    send(wiring, RegisterUser("ada@example.com", "Ada", "Lovelace"), keyed("k-1", "h-1"))

    other = RegisterUser("bob@example.com", "Bob", "Builder")
    assert refused(wiring, other, keyed("k-1", "h-2")) == "IDEMPOTENCY_KEY_REUSED"
    # Even the very same command, when it claims to be another request.
    same = RegisterUser("ada@example.com", "Ada", "Lovelace")
    assert refused(wiring, same, keyed("k-1", "h-2")) == "IDEMPOTENCY_KEY_REUSED"


def test_a_refused_command_does_not_use_up_its_key(wiring: Wiring) -> None:
    user_id = register(wiring)
    product_id = create_product(wiring, stock=1)
    order_id = send(wiring, order(user_id, (product_id, 1))).id

    pay = PayOrder(order_id, "1.00", "pay-1")
    assert refused(wiring, pay, keyed("pay-1", "h")) == "PAYMENT_AMOUNT_MISMATCH"
    paid = send(wiring, replace(pay, amount="49.90"), keyed("pay-1", "h"))

    assert paid.version == 2 and load(wiring, order_id).status == "paid"


def test_the_current_expected_version_passes(wiring: Wiring) -> None:
    user_id = register(wiring)
    result = send(wiring, ChangeUserEmail(user_id, "ada@lovelace.org", expected_version=1))
    assert (result.id, result.version) == (user_id, 2)


def test_another_expected_version_is_a_conflict_and_writes_nothing(wiring: Wiring) -> None:
    user_id = register(wiring)
    send(wiring, ChangeUserEmail(user_id, "ada@lovelace.org"))

    for stale in (0, 1, 3, 7):
        command = DeactivateUser(user_id, "asked to", expected_version=stale)
        assert refused(wiring, command) == "VERSION_CONFLICT"
    assert load(wiring, user_id).active
    # The email claim of a refused change is not written either.
    stale_change = ChangeUserEmail(user_id, "new@example.com", expected_version=1)
    assert refused(wiring, stale_change) == "VERSION_CONFLICT"
    register(wiring, "new@example.com")
