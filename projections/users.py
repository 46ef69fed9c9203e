"""Users by id and by email (case-insensitive)."""

from __future__ import annotations

from typing import Any

from eventkeep.projections.readmodel import (
    Envelope,
    ReadModel,
    ReadModelQueries,
    Row,
    applies,
    shown,
)


class Users(ReadModel):
    name = "users"
    stream_type = "User"
    leaves_sealed = frozenset({"UserDeactivated"})  # its reason is not shown
    cache_kind = "user"
    columns = (
        "id", "version", "email", "first_name", "last_name", "status", "registered_at",
        "updated_at",
    )  # fmt: skip

    def schema(self, tag: str) -> list[str]:
        return [
            f"CREATE TABLE {self.table()} (id text PRIMARY KEY, version bigint NOT NULL,"
            " email text, first_name text, last_name text, status text NOT NULL,"
            " registered_at text NOT NULL, updated_at text NOT NULL)",
            f"CREATE INDEX {tag}users_email ON {self.table()} (lower(email))",
        ]

    @applies("UserRegistered")
    def registered(self, _: Row | None, event: Envelope) -> Row:
        data = event["data"]
        return {
            "email": data["email"],
            "first_name": data["first_name"],
            "last_name": data["last_name"],
            "status": "active",
            "registered_at": event["recorded_at"],
        }

    @applies("UserEmailChanged")
    def email_changed(self, row: Row | None, event: Envelope) -> Row | None:
        return None if row is None else row | {"email": event["data"]["email"]}

    @applies("UserDeactivated")
    def deactivated(self, row: Row | None, _: Envelope) -> Row | None:
        return None if row is None else row | {"status": "deactivated"}

    @applies("UserReactivated")
    def reactivated(self, row: Row | None, _: Envelope) -> Row | None:
        return None if row is None else row | {"status": "active"}

    @applies("UserPersonalDataErased")
    def erased(self, row: Row | None, _: Envelope) -> Row | None:
        """Crypto-shredding: the row forgets what the store can no longer open."""
        return None if row is None else row | {"email": None, "first_name": None, "last_name": None}


class UserQueries(ReadModelQueries):
    model: Users

    def by_email(self, email: str) -> dict[str, Any] | None:
        with self.model.db.reading() as cursor:
            cursor.execute(
                f"SELECT * FROM {self.model.table()} WHERE lower(email) = %s", (email.lower(),)
            )
            row = cursor.fetchone()
        return None if row is None else shown(self.model.decoded(row))
