"""Personal data at rest: encrypted with a key per user; erasing destroys the key, so the
history still replays with the stored bytes unchanged while the personal fields read as null."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import orjson

from eventkeep.api.bootstrap import Wiring
from eventkeep.commands.messages import CommandContext, ErasePersonalData, RegisterUser
from eventkeep.domain.user import User

ADA = RegisterUser("Ada@Example.com", "Ada", "Lovelace")


def send(wiring: Wiring, command: Any) -> Any:
    return wiring.handle(command, CommandContext(actor="test", correlation_id="c"))


def stored(wiring: Wiring, stream_id: UUID) -> list[Any]:
    log = wiring.shop.recorder.select_notifications(1, 1000, decrypt=False)  # type: ignore[call-arg]
    return [e for e in log if e.originator_id == stream_id]


def opened(wiring: Wiring, stream_id: UUID) -> list[dict[str, Any]]:
    log = wiring.shop.recorder.select_notifications(1, 1000)
    return [orjson.loads(e.state) for e in log if e.originator_id == stream_id]


def test_personal_fields_are_stored_encrypted_and_read_in_plaintext(wiring: Wiring) -> None:
    user_id = send(wiring, ADA).id

    raw = stored(wiring, user_id)[0].state
    user = wiring.shop.repository.get(user_id)

    assert b"Ada" not in raw and b"Lovelace" not in raw and b"example" not in raw.lower()
    assert opened(wiring, user_id)[0] == {
        "email": "ada@example.com",  # stored normalised (domain.user)
        "first_name": "Ada",
        "last_name": "Lovelace",
    }
    assert isinstance(user, User)
    assert (user.email, user.first_name, user.last_name) == ("ada@example.com", "Ada", "Lovelace")


def test_erasing_destroys_the_key_and_leaves_the_history_intact(wiring: Wiring) -> None:
    user_id = send(wiring, ADA).id
    before = [(e.state, e.hash) for e in stored(wiring, user_id)]

    send(wiring, ErasePersonalData(user_id))

    after = [(e.state, e.hash) for e in stored(wiring, user_id)]
    assert after[: len(before)] == before  # not a byte of history changed
    assert opened(wiring, user_id)[0] == {"email": None, "first_name": None, "last_name": None}
    user = wiring.shop.repository.get(user_id)
    assert isinstance(user, User)
    assert (user.email, user.first_name, user.last_name) == (None, None, None)
    assert user.version == 2


def test_an_erased_email_can_be_registered_again(wiring: Wiring) -> None:
    first = send(wiring, ADA).id
    send(wiring, ErasePersonalData(first))

    second = send(wiring, ADA).id

    assert second != first
    assert opened(wiring, second)[0]["email"] == "ada@example.com"
