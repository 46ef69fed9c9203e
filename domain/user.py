"""The User aggregate: registration, email changes, (de)activation, erasure of personal data.

Email uniqueness spans users, so the store enforces it (a unique claim saved with the event);
the aggregate validates the address and keeps its own state consistent.
"""

from __future__ import annotations

import re
import unicodedata

from eventsourcing.domain import Aggregate, event

from eventkeep.domain.bounds import plain_text
from eventkeep.domain.errors import (
    InvalidInput,
    PersonalDataErased,
    UserAlreadyActive,
    UserNotActive,
)

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalize_email(email: str) -> str:
    """The one form emails are claimed, stored and looked up in: stripped, NFKC-normalised
    and case-folded (so `\u212a` the Kelvin sign and `K` are the same letter, `ß` and `ss`)."""
    return unicodedata.normalize("NFKC", email.strip()).casefold()


def valid_email(email: str) -> str:
    """The normalised address, when it is one."""
    plain_text(email, "email")
    email = normalize_email(email)
    if not _EMAIL.match(email) or len(email) > 254:
        raise InvalidInput("email is not a valid address", field="email")
    return email


class User(Aggregate):
    class UserRegistered(Aggregate.Created):
        email: str
        first_name: str
        last_name: str
        class_version = 2

    class UserEmailChanged(Aggregate.Event):
        email: str

    class UserDeactivated(Aggregate.Event):
        reason: str

    class UserReactivated(Aggregate.Event):
        pass

    class UserPersonalDataErased(Aggregate.Event):
        pass

    @event(UserRegistered)
    def __init__(self, email: str, first_name: str, last_name: str) -> None:
        self.email: str | None = email
        self.first_name: str | None = first_name
        self.last_name: str | None = last_name
        self.active = True
        self.erased = False

    @classmethod
    def register(cls, email: str, first_name: str, last_name: str) -> User:
        return cls(
            valid_email(email),
            plain_text(first_name, "first_name"),
            plain_text(last_name, "last_name"),
        )

    def change_email(self, email: str) -> None:
        if self.erased:
            raise PersonalDataErased("the user's personal data was erased", user_id=str(self.id))
        self._email_changed(valid_email(email))

    def deactivate(self, reason: str) -> None:
        if self.erased:  # the reason is personal data, sealed with the key erasure deleted
            raise PersonalDataErased("the user's personal data was erased", user_id=str(self.id))
        if not self.active:
            raise UserNotActive("the user is already deactivated", user_id=str(self.id))
        self._deactivated(plain_text(reason, "reason", multiline=True))

    def reactivate(self) -> None:
        if self.active:
            raise UserAlreadyActive("the user is active", user_id=str(self.id))
        self._reactivated()

    def erase_personal_data(self) -> None:
        if self.erased:
            raise PersonalDataErased("already erased", user_id=str(self.id))
        self._erased()

    @event(UserEmailChanged)
    def _email_changed(self, email: str) -> None:
        self.email = email

    @event(UserDeactivated)
    def _deactivated(self, reason: str) -> None:
        self.active = False

    @event(UserReactivated)
    def _reactivated(self) -> None:
        self.active = True

    @event(UserPersonalDataErased)
    def _erased(self) -> None:
        self.email = self.first_name = self.last_name = None
        self.erased = True
