"""Emails are unique among users, compared case-insensitively; an address is free again once
its user changed to another one or had their personal data erased."""

from __future__ import annotations

import pytest

from eventkeep.commands.messages import ChangeUserEmail, ErasePersonalData, RegisterUser
from tests.commands.shopping import Writer, load, refused, register, send


@pytest.mark.parametrize(
    "other", ["ada@example.com", "ADA@example.com", "Ada@Example.COM", "  ada@example.com "]
)
def test_a_registered_email_cannot_be_registered_again(writer: Writer, other: str) -> None:
    register(writer, "ada@example.com")
    assert refused(writer, RegisterUser(other, "Ada", "Clone")) == "EMAIL_TAKEN"


def test_a_registered_email_cannot_be_changed_to(writer: Writer) -> None:
    register(writer, "ada@example.com")
    bob = register(writer, "bob@example.com")

    assert refused(writer, ChangeUserEmail(bob, "ADA@example.com")) == "EMAIL_TAKEN"
    assert load(writer, bob).email == "bob@example.com"


def test_a_user_may_change_the_case_of_their_own_email(writer: Writer) -> None:
    ada = register(writer, "ada@example.com")
    send(writer, ChangeUserEmail(ada, "Ada@Example.com"))
    assert load(writer, ada).email == "ada@example.com"  # stored in the normalised form
    assert refused(writer, RegisterUser("ada@EXAMPLE.com", "A", "B")) == "EMAIL_TAKEN"


def test_changing_an_email_frees_the_old_one_and_takes_the_new_one(writer: Writer) -> None:
    ada = register(writer, "ada@example.com")
    send(writer, ChangeUserEmail(ada, "ada@lovelace.org"))

    other = register(writer, "Ada@Example.com")

    assert other != ada
    assert refused(writer, RegisterUser("ada@LOVELACE.org", "A", "B")) == "EMAIL_TAKEN"


def test_erasing_a_user_frees_their_email(writer: Writer) -> None:
    ada = register(writer, "ada@example.com")
    send(writer, ErasePersonalData(ada))

    again = register(writer, "ADA@example.com")

    assert again != ada
    assert refused(writer, ChangeUserEmail(ada, "x@example.com")) == "PERSONAL_DATA_ERASED"


def test_an_email_freed_by_a_change_can_be_taken_back(writer: Writer) -> None:
    ada = register(writer, "ada@example.com")
    send(writer, ChangeUserEmail(ada, "ada@lovelace.org"))
    send(writer, ChangeUserEmail(ada, "ada@example.com"))

    assert refused(writer, RegisterUser("ada@example.com", "A", "B")) == "EMAIL_TAKEN"
    register(writer, "ada@lovelace.org")


def test_an_invalid_email_is_refused(writer: Writer) -> None:
    assert refused(writer, RegisterUser("not-an-email", "A", "B")) == "VALIDATION_FAILED"
