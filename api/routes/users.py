"""User commands: translate the request into a command, nothing more."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from api.dispatch import AdminCommand, ClientCommand, IfMatch
from api.schema import COMMAND_ERRORS, Body, CommandAnswer, Email, LastName, PersonName, Reason
from commands.messages import (
    ChangeUserEmail,
    DeactivateUser,
    ErasePersonalData,
    ReactivateUser,
    RegisterUser,
)

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
