"""A retried command (same idempotency key, same request) answers what it answered the first
time and records nothing new; the same key with another request is refused; and `If-Match`
(expected_version) on another version than the stream's is refused with nothing written."""

from __future__ import annotations

from dataclasses import replace

from eventkeep.commands.messages import (
    ChangeUserEmail,
    CommandContext,
    DeactivateUser,
    PayOrder,
    RegisterUser,
)
from tests.commands.shopping import (
    CONTEXT,
    Writer,
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


def test_a_retried_registration_answers_the_same_and_records_nothing(writer: Writer) -> None:
    command = RegisterUser("ada@example.com", "Ada", "Lovelace")
    first = send(writer, command, keyed("k-1", "h-1"))
    events = event_count(writer)

    again = send(writer, command, keyed("k-1", "h-1"))

    assert again == first
    assert first.created and first.version == 1 and first.position == events
    assert event_count(writer) == events


def test_a_retried_order_reserves_stock_once(writer: Writer) -> None:
    user_id = register(writer)
    product_id = create_product(writer, stock=5)
    command = order(user_id, (product_id, 2))
    first = send(writer, command, keyed("order-1", "h"))
    events = event_count(writer)

    assert send(writer, command, keyed("order-1", "h")) == first
    assert event_count(writer) == events
    assert stock(writer, product_id) == 3


def test_a_retried_command_answers_the_same_even_after_later_changes(writer: Writer) -> None:
    user_id = register(writer)
    command = ChangeUserEmail(user_id, "ada@lovelace.org")
    first = send(writer, command, keyed("email-1", "h"))
    send(writer, DeactivateUser(user_id, "asked to"))
    events = event_count(writer)

    assert send(writer, command, keyed("email-1", "h")) == first
    assert event_count(writer) == events
    assert load(writer, user_id).version == 3


def test_the_same_key_with_another_request_is_refused(writer: Writer) -> None:
    send(writer, RegisterUser("ada@example.com", "Ada", "Lovelace"), keyed("k-1", "h-1"))

    other = RegisterUser("bob@example.com", "Bob", "Builder")
    assert refused(writer, other, keyed("k-1", "h-2")) == "IDEMPOTENCY_KEY_REUSED"
    # Even the very same command, when it claims to be another request.
    same = RegisterUser("ada@example.com", "Ada", "Lovelace")
    assert refused(writer, same, keyed("k-1", "h-2")) == "IDEMPOTENCY_KEY_REUSED"


def test_a_refused_command_does_not_use_up_its_key(writer: Writer) -> None:
    user_id = register(writer)
    product_id = create_product(writer, stock=1)
    order_id = send(writer, order(user_id, (product_id, 1))).id

    pay = PayOrder(order_id, "1.00", "pay-1")
    assert refused(writer, pay, keyed("pay-1", "h")) == "PAYMENT_AMOUNT_MISMATCH"
    paid = send(writer, replace(pay, amount="49.90"), keyed("pay-1", "h"))

    assert paid.version == 2 and load(writer, order_id).status == "paid"


def test_the_current_expected_version_passes(writer: Writer) -> None:
    user_id = register(writer)
    result = send(writer, ChangeUserEmail(user_id, "ada@lovelace.org", expected_version=1))
    assert (result.id, result.version) == (user_id, 2)


def test_another_expected_version_is_a_conflict_and_writes_nothing(writer: Writer) -> None:
    user_id = register(writer)
    send(writer, ChangeUserEmail(user_id, "ada@lovelace.org"))

    for stale in (0, 1, 3, 7):
        command = DeactivateUser(user_id, "asked to", expected_version=stale)
        assert refused(writer, command) == "VERSION_CONFLICT"
    assert load(writer, user_id).active
    # The email claim of a refused change is not written either.
    stale_change = ChangeUserEmail(user_id, "new@example.com", expected_version=1)
    assert refused(writer, stale_change) == "VERSION_CONFLICT"
    register(writer, "new@example.com")
