"""Customers' logins: `POST /v1/auth/login`, `/refresh` and `/logout` (api/accounts.py)."""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from eventkeep.api.accounts import (
    REFRESH_PREFIX,
    Caller,
    LoginRefused,
    TokenRefused,
    Tokens,
    accounts_of,
    customer_token,
)
from eventkeep.api.errors import ApiError
from eventkeep.api.keys import Role
from eventkeep.api.schema import COMMAND_ERRORS, Body, Email, Password
from eventkeep.domain.user import normalize_email

router = APIRouter(prefix="/v1/auth", tags=["customers"], responses=COMMAND_ERRORS)


class LoginBody(Body):
    email: Email
    password: Password


class RefreshBody(Body):
    refresh_token: str = Field(min_length=1, max_length=200, pattern=f"^{REFRESH_PREFIX}")


class TokensAnswer(BaseModel):
    access_token: str = Field(description="Send as `Authorization: Bearer <access_token>`.")
    refresh_token: str = Field(description="Once, to `POST /v1/auth/refresh`.")
    token_type: str = "Bearer"
    expires_in: int = Field(description="Seconds the access token is valid.")


def _answer(tokens: Tokens) -> TokensAnswer:
    return TokensAnswer(
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        token_type=tokens.token_type,
        expires_in=tokens.expires_in,
    )


def _too_many(wait: float, message: str) -> ApiError:
    return ApiError(
        "RATE_LIMITED",
        message,
        {"retry_after_seconds": round(wait, 3)},
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )


@router.post("/login")
async def login(body: LoginBody, request: Request) -> TokensAnswer:
    """An access token (short-lived) and a refresh token for the user with this email and
    password. Wrong email and wrong password answer the same 401 after the same work; login
    attempts are limited per address and per account, and an account is locked for a while
    after repeated failures (429 with Retry-After)."""
    accounts = accounts_of(request)
    address = request.client.host if request.client else "unknown"
    account = accounts.account(body.email)
    for limited in (f"login-address:{address}", f"login-account:{account}"):
        wait = await run_in_threadpool(accounts.login_limiter.acquire, limited)
        if wait is not None:
            raise _too_many(wait, "Too many logins from here or for this account; retry later.")
    users = request.app.state.wiring.queries.of("users")
    user = await run_in_threadpool(users.by_email, normalize_email(body.email))
    user_id = user["id"] if user is not None and user.get("status") == "active" else None
    try:
        tokens = await run_in_threadpool(accounts.authenticate, body.email, body.password, user_id)
    except LoginRefused as refused:
        if refused.retry_after is not None:
            raise _too_many(
                refused.retry_after, "Too many failed logins for this account; retry later."
            ) from None
        raise ApiError(
            "UNAUTHENTICATED",
            "The email or password is wrong.",
            headers={"WWW-Authenticate": "Bearer"},
        ) from None
    return _answer(tokens)


@router.post("/refresh")
async def refresh(body: RefreshBody, request: Request) -> TokensAnswer:
    """New tokens for a refresh token, which is then spent: presenting a spent one again
    revokes the whole login (its access and refresh tokens)."""
    try:
        tokens = await run_in_threadpool(accounts_of(request).refresh, body.refresh_token)
    except TokenRefused:
        raise ApiError(
            "UNAUTHENTICATED",
            "The refresh token is unknown, expired, spent or revoked; log in again.",
        ) from None
    return _answer(tokens)


@router.post("/logout", status_code=204, dependencies=[Depends(customer_token)])
async def logout(key: Caller, request: Request) -> None:
    """Revokes the login of the customer's access token: its access and refresh tokens."""
    if key.role is not Role.customer:
        raise ApiError(
            "FORBIDDEN",
            "Only a customer's access token logs out.",
            {"required_role": Role.customer.value, "key_role": key.role.value},
        )
    presented = request.headers["authorization"].partition(" ")[2].strip()
    accounts = accounts_of(request)
    session = accounts.session_of(presented)
    if session is not None:
        await run_in_threadpool(accounts.revoke, session)
