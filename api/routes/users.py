"""User commands (translated into commands, nothing more) and user queries."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query

from eventkeep.api.dispatch import AdminCommand, ClientCommand, IfMatch
from eventkeep.api.reads import OrderReads, UserReads, found, page
from eventkeep.api.schema import (
    COMMAND_ERRORS,
    Body,
    CommandAnswer,
    Email,
    LastName,
    PersonName,
    Reason,
)
from eventkeep.commands.messages import (
    ChangeUserEmail,
    DeactivateUser,
    ErasePersonalData,
    ReactivateUser,
    RegisterUser,
)
from eventkeep.domain.user import normalize_email

router = APIRouter(prefix="/v1/users", tags=["users"], responses=COMMAND_ERRORS)


class RegisterUserBody(Body):
    email: Email
    first_name: PersonName
    last_name: LastName


class ChangeEmailBody(Body):
    email: Email


class DeactivateBody(Body):
    reason: Reason


@router.post("", status_code=201)
def register_user(body: RegisterUserBody, send: ClientCommand) -> CommandAnswer:
    return send(RegisterUser(**body.model_dump()))


@router.post("/{user_id}/email")
def change_email(
    user_id: UUID, body: ChangeEmailBody, version: IfMatch, send: ClientCommand
) -> CommandAnswer:
    return send(ChangeUserEmail(user_id, body.email, expected_version=version))


@router.post("/{user_id}/deactivate")
def deactivate_user(
    user_id: UUID, body: DeactivateBody, version: IfMatch, send: ClientCommand
) -> CommandAnswer:
    return send(DeactivateUser(user_id, body.reason, expected_version=version))


@router.post("/{user_id}/reactivate")
def reactivate_user(user_id: UUID, version: IfMatch, send: ClientCommand) -> CommandAnswer:
    return send(ReactivateUser(user_id, expected_version=version))


@router.delete("/{user_id}/personal-data")
def erase_personal_data(user_id: UUID, version: IfMatch, send: AdminCommand) -> CommandAnswer:
    """Crypto-shredding: destroys the user's data key; history stays, PII reads as erased."""
    return send(ErasePersonalData(user_id, expected_version=version))


@router.get("/{user_id}")
async def get_user(user_id: UUID, users: UserReads) -> dict[str, Any]:
    return found(await users.get_async(str(user_id)), "user", user_id)


@router.get("")
def find_user(email: Annotated[Email, Query()], users: UserReads) -> dict[str, Any]:
    """The user with this email (case-insensitive)."""
    return found(users.by_email(normalize_email(email)), "user with email", email)


OrderStatus = Literal["placed", "paid", "shipped", "delivered", "cancelled"]


@router.get("/{user_id}/orders")
def orders_of_user(
    user_id: UUID,
    orders: OrderReads,
    status: OrderStatus | None = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """The user's orders, newest first, a page at a time (`next_cursor` for the next)."""
    return page(lambda: orders.of_user(str(user_id), status=status, cursor=cursor, limit=limit))
