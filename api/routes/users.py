"""User commands (translated into commands, nothing more) and user queries."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from eventkeep.api.accounts import CUSTOMERS, Caller, accounts_of, own
from eventkeep.api.dispatch import AdminCommand, ClientCommand, IfMatch, OwnCommand
from eventkeep.api.reads import (
    ByIdAnswer,
    OwnOrderReads,
    OwnUserReads,
    PageAnswer,
    UserReads,
    encoded,
    found,
    page,
)
from eventkeep.api.schema import (
    COMMAND_ERRORS,
    Body,
    CommandAnswer,
    Email,
    LastName,
    Password,
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
    # Never part of the command or its event: kept hashed in the key store (api/accounts.py).
    password: Password | None = None


class PasswordBody(Body):
    password: Password


class ChangeEmailBody(Body):
    email: Email


class DeactivateBody(Body):
    reason: Reason


@router.post("", status_code=201)
async def register_user(
    body: RegisterUserBody, send: ClientCommand, request: Request
) -> CommandAnswer:
    """With a `password`, the user can log in (`POST /v1/auth/login`)."""
    answer = await send(RegisterUser(**body.model_dump(exclude={"password"})))
    if body.password is not None:
        await run_in_threadpool(accounts_of(request).set_password, str(answer.id), body.password)
    return answer


@router.post("/{user_id}/password", status_code=204, dependencies=CUSTOMERS)
async def set_password(
    user_id: UUID, body: PasswordBody, users: OwnUserReads, key: Caller, request: Request
) -> None:
    """Sets (or replaces) the user's password; no event is recorded, nothing of it is kept
    but its argon2id hash."""
    own(key, user_id)
    found(await users.get_async(str(user_id)), "user", user_id)
    await run_in_threadpool(accounts_of(request).set_password, str(user_id), body.password)


@router.post("/{user_id}/email", dependencies=CUSTOMERS)
async def change_email(
    user_id: UUID, body: ChangeEmailBody, version: IfMatch, send: OwnCommand, key: Caller
) -> CommandAnswer:
    own(key, user_id)
    return await send(ChangeUserEmail(user_id, body.email, expected_version=version))


@router.post("/{user_id}/deactivate")
async def deactivate_user(
    user_id: UUID, body: DeactivateBody, version: IfMatch, send: ClientCommand
) -> CommandAnswer:
    return await send(DeactivateUser(user_id, body.reason, expected_version=version))


@router.post("/{user_id}/reactivate")
async def reactivate_user(user_id: UUID, version: IfMatch, send: ClientCommand) -> CommandAnswer:
    return await send(ReactivateUser(user_id, expected_version=version))


@router.delete("/{user_id}/personal-data")
async def erase_personal_data(
    user_id: UUID, version: IfMatch, send: AdminCommand, request: Request
) -> CommandAnswer:
    """Crypto-shredding: destroys the user's data key; history stays, PII reads as erased.
    The user's password, sessions and refresh tokens are deleted."""
    answer = await send(ErasePersonalData(user_id, expected_version=version))
    accounts = getattr(request.app.state.wiring, "accounts", None)
    if accounts is not None:
        await run_in_threadpool(accounts.forget, str(user_id))
    return answer


@router.get("/{user_id}", dependencies=CUSTOMERS, response_model=ByIdAnswer)
async def get_user(user_id: UUID, users: OwnUserReads, key: Caller, response: Response) -> Response:
    own(key, user_id)
    return encoded(found(await users.encoded_async(str(user_id)), "user", user_id), response)


@router.get("")
def find_user(email: Annotated[Email, Query()], users: UserReads) -> dict[str, Any]:
    """The user with this email (case-insensitive)."""
    return found(users.by_email(normalize_email(email)), "user with email", email)


OrderStatus = Literal["placed", "paid", "shipped", "delivered", "cancelled"]


@router.get("/{user_id}/orders", dependencies=CUSTOMERS, response_model=PageAnswer)
def orders_of_user(
    user_id: UUID,
    orders: OwnOrderReads,
    key: Caller,
    response: Response,
    status: OrderStatus | None = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    """The user's orders, newest first, a page at a time (`next_cursor` for the next)."""
    own(key, user_id)
    return page(
        lambda: orders.of_user(str(user_id), status=status, cursor=cursor, limit=limit), response
    )
