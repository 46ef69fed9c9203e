"""Emails are unique among users, compared case-insensitively; an address is free again once
its user changed to another one or had their personal data erased."""

from __future__ import annotations

import pytest

from eventkeep.api.bootstrap import Wiring
from eventkeep.commands.messages import ChangeUserEmail, ErasePersonalData, RegisterUser
from tests.commands.shopping import load, refused, register, send


@pytest.mark.parametrize(
    "other", ["ada@example.com", "ADA@example.com", "Ada@Example.COM", "  ada@example.com "]
)
def test_a_registered_email_cannot_be_registered_again(wiring: Wiring, other: str) -> None:
    register(wiring, "ada@example.com")
    assert refused(wiring, RegisterUser(other, "Ada", "Clone")) == "EMAIL_TAKEN"


def test_a_registered_email_cannot_be_changed_to(wiring: Wiring) -> None:
    register(wiring, "ada@example.com")
    bob = register(wiring, "bob@example.com")

    assert refused(wiring, ChangeUserEmail(bob, "ADA@example.com")) == "EMAIL_TAKEN"
    assert load(wiring, bob).email == "bob@example.com"


def test_a_user_may_change_the_case_of_their_own_email(wiring: Wiring) -> None:
    ada = register(wiring, "ada@example.com")
    send(wiring, ChangeUserEmail(ada, "Ada@Example.com"))
    assert load(wiring, ada).email == "ada@example.com"  # stored in the normalised form
    assert refused(wiring, RegisterUser("ada@EXAMPLE.com", "A", "B")) == "EMAIL_TAKEN"


def test_changing_an_email_frees_the_old_one_and_takes_the_new_one(wiring: Wiring) -> None:
    ada = register(wiring, "ada@example.com")
    send(wiring, ChangeUserEmail(ada, "ada@lovelace.org"))

    other = register(wiring, "Ada@Example.com")

    assert other != ada
    assert refused(wiring, RegisterUser("ada@LOVELACE.org", "A", "B")) == "EMAIL_TAKEN"


def test_erasing_a_user_frees_their_email(wiring: Wiring) -> None:
    ada = register(wiring, "ada@example.com")
    send(wiring, ErasePersonalData(ada))

    again = register(wiring, "ADA@example.com")

    assert again != ada
    assert refused(wiring, ChangeUserEmail(ada, "x@example.com")) == "PERSONAL_DATA_ERASED"


def test_an_email_freed_by_a_change_can_be_taken_back(wiring: Wiring) -> None:
    ada = register(wiring, "ada@example.com")
    send(wiring, ChangeUserEmail(ada, "ada@lovelace.org"))
    send(wiring, ChangeUserEmail(ada, "ada@example.com"))

    assert refused(wiring, RegisterUser("ada@example.com", "A", "B")) == "EMAIL_TAKEN"
    register(wiring, "ada@lovelace.org")


def test_an_invalid_email_is_refused(wiring: Wiring) -> None:
    assert refused(wiring, RegisterUser("not-an-email", "A", "B")) == "VALIDATION_FAILED"
