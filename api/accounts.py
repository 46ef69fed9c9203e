"""Customers' own accounts: passwords, login, access and refresh tokens.

Keys with roles stay for backends, analysts and auditors; a customer logs in with the email
and password of their user and gets a short-lived access token (`ekc_…`, sent as
`Authorization: Bearer`) and a refresh token (`ekr_…`). With an access token a request acts as
the `customer` role for that one user (`api/auth.py`): the routes that admit customers answer
only that user's own data (others: 404), every other route refuses (403).

Credentials live in tables of the API's key store (`api/keys.py`, migration 2), never in the
event log, Kafka, exports or logs: `customer_credentials` (the argon2id hash of each user's
password, and nothing else about them), `customer_sessions` (a login's family of refresh
tokens; logout or a reused refresh token revokes it, and with it its access tokens) and
`customer_refresh_tokens` (sha256 of each refresh token; a used one is spent). A user's erasure
deletes their rows. `login_failures` counts failed logins per account — an HMAC of the
normalised email, so unknown and known emails lock alike — and locks it after
`LOCK_AFTER` failures in a row for `LOCK_SECONDS`; a row whose account is not locked and
failed last more than EVENTKEEP_LOGIN_FAILURE_RETENTION ago is pruned (`prune_failures`, run by
the webhook dispatcher's leader, `api/webhooks.py`).

Access tokens are `ekc_<payload>.<HMAC-SHA256>`, the key derived with HKDF from the deployment
secret (`eventkeep.deployment_secret.derive`, its own label): `{"sub": user id, "sid":
session, "exp": unix time}`. Their session is checked like an API key (remembered for a few
seconds), so a logout reaches other processes within EVENTKEEP_KEY_CACHE_SECONDS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from eventkeep.api.auth import authenticated
from eventkeep.api.errors import ApiError
from eventkeep.api.keys import ApiKey, ApiKeyStore, Role
from eventkeep.api.ratelimit import RateLimiter
from eventkeep.deployment_secret import derive
from eventkeep.domain.user import normalize_email

ACCESS_SECONDS = 300
REFRESH_SECONDS = 30 * 24 * 3600
LOCK_AFTER = 5  # failed logins in a row
LOCK_SECONDS = 900
ACCESS_PREFIX = "ekc_"
REFRESH_PREFIX = "ekr_"

# argon2id (the library's default type) with its RFC 9106 "low memory" parameters.
_hasher = PasswordHasher()
# Unknown emails are checked against this, so that they take as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int = ACCESS_SECONDS
    token_type: str = "Bearer"


class LoginRefused(Exception):
    """Wrong email or password (one answer for both), or a locked account (`retry_after`)."""

    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("refused")
        self.retry_after = retry_after


class TokenRefused(Exception):
    """A refresh token that is unknown, expired, spent or revoked."""


def _now() -> datetime:
    return datetime.now(UTC)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def customer_key(user_id: str) -> ApiKey:
    """The principal a customer's access token authenticates: the `customer` role, its id
    the user's (an event's actor reads `user:<id>`), its name the user id."""
    return ApiKey(f"user:{user_id}", Role.customer, user_id, _now(), revoked=False)


# Declared on the routes that admit customers, so that the OpenAPI description shows the
# scheme there (api/auth.py `authenticated` verifies it).
customer_token = HTTPBearer(
    scheme_name="CustomerToken",
    auto_error=False,
    description="A customer's access token (`ekc_…`) from `POST /v1/auth/login`.",
)


# Routes a customer's token may call (the OpenAPI description shows its scheme on them).
CUSTOMERS = [Depends(customer_token)]
# The key (or customer) of the request, as its role check answered it.
Caller = Annotated[ApiKey, Depends(authenticated)]


def accounts_of(request: Request) -> Accounts:
    accounts = getattr(request.app.state.wiring, "accounts", None)
    if accounts is None:
        raise ApiError("NOT_FOUND", "Customers' accounts are not set up in this wiring.")
    assert isinstance(accounts, Accounts)
    return accounts


def own(key: ApiKey, user_id: object, what: str = "user", shown_id: object = None) -> None:
    """A customer asking about another user's data is answered as if it did not exist."""
    if key.role is Role.customer and key.name != str(user_id):
        shown = user_id if shown_id is None else shown_id
        raise ApiError("NOT_FOUND", f"No {what} {shown}.", {"id": str(shown)})


class Accounts:
    """Passwords, logins and tokens over the key store's database."""

    def __init__(
        self,
        keys: ApiKeyStore,
        secret: bytes,
        login_limiter: RateLimiter,
        *,
        cache_seconds: float = 5.0,
    ) -> None:
        self._keys = keys
        self._signing_key = derive(secret, b"eventkeep customer access tokens v1")
        self._account_key = derive(secret, b"eventkeep login failures v1")
        self.login_limiter = login_limiter
        self._cache_seconds = cache_seconds
        self._sessions: dict[str, float] = {}  # session id -> trusted until (monotonic)
        self._lock = threading.Lock()

    # --- passwords --------------------------------------------------------------------------

    def set_password(self, user_id: str, password: str) -> None:
        hashed = _hasher.hash(password)
        self._keys.execute(
            [
                ("DELETE FROM customer_credentials WHERE user_id = %s", (user_id,)),
                (
                    "INSERT INTO customer_credentials (user_id, password_hash, changed_at)"
                    " VALUES (%s, %s, %s)",
                    (user_id, hashed, _now().isoformat()),
                ),
            ]
        )

    def forget(self, user_id: str) -> None:
        """A user's erasure: their password, sessions and refresh tokens go."""
        self._keys.execute(
            [
                ("DELETE FROM customer_credentials WHERE user_id = %s", (user_id,)),
                ("DELETE FROM customer_refresh_tokens WHERE user_id = %s", (user_id,)),
                ("DELETE FROM customer_sessions WHERE user_id = %s", (user_id,)),
            ]
        )
        with self._lock:
            self._sessions.clear()

    # --- login ------------------------------------------------------------------------------

    def account(self, email: str) -> str:
        """The login-failure row's key of an email: no email is stored."""
        return hmac.new(self._account_key, normalize_email(email).encode(), "sha256").hexdigest()

    def authenticate(self, email: str, password: str, user_id: str | None) -> Tokens:
        """Tokens for the user with `email` (`user_id`, None when no user has it) if the
        password is theirs. Unknown users and wrong passwords are refused alike, after the
        same work (an argon2 verification); a locked account is refused before it."""
        account = self.account(email)
        locked = self._locked_for(account)
        if locked is not None:
            raise LoginRefused(retry_after=locked)
        stored = self._password_hash(user_id) if user_id is not None else None
        try:
            ok = _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or user_id is None:
            self._failed(account)
            raise LoginRefused()
        self._keys.execute([("DELETE FROM login_failures WHERE account = %s", (account,))])
        if stored is not None and _hasher.check_needs_rehash(stored):
            self.set_password(user_id, password)
        session = secrets.token_hex(16)
        refresh = self._refresh_token(user_id, session)
        self._keys.execute(
            [
                (
                    "INSERT INTO customer_sessions (id, user_id, created_at, revoked)"
                    " VALUES (%s, %s, %s, FALSE)",
                    (session, user_id, _now().isoformat()),
                ),
                refresh[1],
            ]
        )
        return Tokens(self._access_token(user_id, session), refresh[0])

    def _password_hash(self, user_id: str) -> str | None:
        rows = self._keys.execute(
            [("SELECT password_hash FROM customer_credentials WHERE user_id = %s", (user_id,))]
        )
        return str(rows[0][0]) if rows else None

    def _locked_for(self, account: str) -> float | None:
        rows = self._keys.execute(
            [("SELECT locked_until FROM login_failures WHERE account = %s", (account,))]
        )
        if not rows or rows[0][0] is None:
            return None
        left = (datetime.fromisoformat(rows[0][0]) - _now()).total_seconds()
        return left if left > 0 else None

    def _failed(self, account: str) -> None:
        rows = self._keys.execute(
            [
                (
                    "INSERT INTO login_failures (account, failures, locked_until, last_failed_at)"
                    " VALUES (%s, 1, NULL, %s) ON CONFLICT (account) DO UPDATE"
                    " SET failures = login_failures.failures + 1,"
                    " last_failed_at = EXCLUDED.last_failed_at RETURNING failures",
                    (account, _now().isoformat()),
                )
            ]
        )
        if rows and int(rows[0][0]) >= LOCK_AFTER:
            until = (_now() + timedelta(seconds=LOCK_SECONDS)).isoformat()
            self._keys.execute(
                [
                    (
                        "UPDATE login_failures SET failures = 0, locked_until = %s"
                        " WHERE account = %s",
                        (until, account),
                    )
                ]
            )

    def prune_failures(self, retention: float) -> int:
        """Drops the failure rows of accounts that are not locked and failed last more than
        `retention` seconds ago (their count starts afresh); returns how many."""
        now = _now()
        rows = self._keys.execute(
            [
                (
                    "DELETE FROM login_failures WHERE (locked_until IS NULL OR locked_until < %s)"
                    " AND (last_failed_at IS NULL OR last_failed_at < %s) RETURNING account",
                    (now.isoformat(), (now - timedelta(seconds=retention)).isoformat()),
                )
            ]
        )
        return len(rows)

    # --- tokens -----------------------------------------------------------------------------

    def _access_token(self, user_id: str, session: str) -> str:
        payload = _b64(
            orjson.dumps({"sub": user_id, "sid": session, "exp": int(time.time()) + ACCESS_SECONDS})
        )
        signature = _b64(hmac.new(self._signing_key, payload.encode(), "sha256").digest())
        return f"{ACCESS_PREFIX}{payload}.{signature}"

    def _refresh_token(self, user_id: str, session: str) -> tuple[str, tuple[str, tuple[Any, ...]]]:
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        expires = (_now() + timedelta(seconds=REFRESH_SECONDS)).isoformat()
        insert = (
            "INSERT INTO customer_refresh_tokens"
            " (id, session_id, user_id, token_hash, expires_at, used)"
            " VALUES (%s, %s, %s, %s, %s, FALSE)",
            (token_id, session, user_id, _sha256(secret), expires),
        )
        return f"{REFRESH_PREFIX}{token_id}_{secret}", insert

    def verify_access(self, presented: str) -> ApiKey | None:
        """The customer an access token stands for, or None (bad signature, expired, or its
        session revoked)."""
        claims = self._claims(presented)
        if claims is None:
            return None
        session = claims["sid"]
        with self._lock:
            trusted = self._sessions.get(session, 0.0) > time.monotonic()
        if not trusted:
            rows = self._keys.execute(
                [("SELECT revoked FROM customer_sessions WHERE id = %s", (session,))]
            )
            if not rows or bool(rows[0][0]):
                return None
            with self._lock:
                if len(self._sessions) > 10_000:
                    self._sessions.clear()
                self._sessions[session] = time.monotonic() + self._cache_seconds
        return customer_key(claims["sub"])

    def recently_verified(self, presented: str) -> ApiKey | None:
        """As `verify_access`, from memory only (None: ask `verify_access`)."""
        claims = self._claims(presented)
        if claims is None:
            return None
        with self._lock:
            trusted = self._sessions.get(claims["sid"], 0.0) > time.monotonic()
        return customer_key(claims["sub"]) if trusted else None

    def _claims(self, presented: str) -> dict[str, Any] | None:
        if not presented.startswith(ACCESS_PREFIX) or len(presented) > 1000:
            return None
        payload, _, signature = presented.removeprefix(ACCESS_PREFIX).partition(".")
        expected = _b64(hmac.new(self._signing_key, payload.encode(), "sha256").digest())
        if not hmac.compare_digest(signature, expected):
            return None
        try:
            claims = orjson.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int):
            return None
        if claims["exp"] <= time.time():
            return None
        return claims

    def refresh(self, presented: str) -> Tokens:
        """New tokens for a refresh token, which is spent; a spent one presented again
        revokes its whole session (a thief and the owner both lose it)."""
        token_id, _, secret = presented.removeprefix(REFRESH_PREFIX).partition("_")
        if not presented.startswith(REFRESH_PREFIX) or not token_id or not secret:
            raise TokenRefused()
        rows = self._keys.execute(
            [
                (
                    "SELECT session_id, user_id, token_hash, expires_at, used"
                    " FROM customer_refresh_tokens WHERE id = %s",
                    (token_id,),
                )
            ]
        )
        if not rows or not hmac.compare_digest(str(rows[0][2]), _sha256(secret)):
            raise TokenRefused()
        session, user_id, _, expires, used = rows[0]
        if bool(used):
            self.revoke(session)
            raise TokenRefused()
        spent = self._keys.execute(
            [
                (
                    "UPDATE customer_refresh_tokens SET used = TRUE"
                    " WHERE id = %s AND NOT used RETURNING id",
                    (token_id,),
                )
            ]
        )
        if not spent:  # spent by a concurrent refresh: a reuse
            self.revoke(session)
            raise TokenRefused()
        revoked = self._keys.execute(
            [("SELECT revoked FROM customer_sessions WHERE id = %s", (session,))]
        )
        if not revoked or bool(revoked[0][0]) or datetime.fromisoformat(expires) <= _now():
            raise TokenRefused()
        token, insert = self._refresh_token(user_id, session)
        self._keys.execute([insert])
        return Tokens(self._access_token(user_id, session), token)

    def revoke(self, session: str) -> None:
        self._keys.execute(
            [("UPDATE customer_sessions SET revoked = TRUE WHERE id = %s", (session,))]
        )
        with self._lock:
            self._sessions.pop(session, None)

    def session_of(self, presented: str) -> str | None:
        claims = self._claims(presented)
        return None if claims is None else str(claims["sid"])
