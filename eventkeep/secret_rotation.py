"""Rotating the deployment secret: every wrapped data key is re-wrapped, and every email claim
re-keyed, under keys derived from the new secret, in one transaction of the event store.

No event is rewritten: the personal fields stay sealed under the same per-user data keys, only
the key that wraps those changes, so the hash chain still verifies and every event reads as
before with the new secret (and no longer with the old one). The email claims are HMACs under
a key derived from the secret, so each owner's current email is read (with the old secret)
before the transaction and its claim stored again under the new key.

Run it with every eventkeep process stopped: a process still holding the old secret would wrap
a new user's key under it. See docs/operations.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eventkeep.deployment_secret import DATA_KEY_WRAPPING, derive, email_claim_key
from eventkeep.domain.user import User, normalize_email

NONCE = 12  # as eventstore/pii.py wraps
EMAIL_SCOPE = "user_email"  # as commands/handlers.py claims


@dataclass(frozen=True)
class Rotated:
    data_keys: int
    email_claims: int


def rotate(shop: Any, old: bytes, new: bytes) -> Rotated:
    """Re-wraps the data keys and re-keys the email claims of `shop`'s store (opened with the
    old secret) under `new`."""
    recorder = shop.recorder
    sql = recorder.sql
    # The owners' current emails, read through the store (which opens them with the old
    # secret) before the write transaction.
    owners = sql.read(f"SELECT key, owner FROM {recorder._claims} WHERE scope = %s", [EMAIL_SCOPE])
    rekeyed: list[tuple[str, str]] = []
    new_claims = email_claim_key(new)
    for row in owners:
        user = shop.repository.get(sql.uuid(row["owner"]))
        if isinstance(user, User) and user.email is not None:
            digest = hmac.new(new_claims, normalize_email(user.email).encode(), hashlib.sha256)
            rekeyed.append((row["key"], digest.hexdigest()))
    old_kek = AESGCM(derive(old, DATA_KEY_WRAPPING))
    new_kek = AESGCM(derive(new, DATA_KEY_WRAPPING))
    with sql.locked_transaction(recorder._events) as batch:
        wrapped = batch.query(f"SELECT stream_id, wrapped FROM {recorder._data_keys}").fetchall()
        for stream_id, sealed in wrapped:
            stream = str(sql.uuid(stream_id))
            key = old_kek.decrypt(bytes(sealed[:NONCE]), bytes(sealed[NONCE:]), stream.encode())
            nonce = os.urandom(NONCE)
            again = nonce + new_kek.encrypt(nonce, key, stream.encode())
            batch.execute(
                f"UPDATE {recorder._data_keys} SET wrapped = %s WHERE stream_id = %s",
                [sql.value(again, "bytea"), sql.value(UUID(stream), "uuid")],
            )
        for old_key, new_key in rekeyed:
            batch.execute(
                f"UPDATE {recorder._claims} SET key = %s WHERE scope = %s AND key = %s",
                [new_key, EMAIL_SCOPE, old_key],
            )
    return Rotated(data_keys=len(wrapped), email_claims=len(rekeyed))


NEW_SECRET_VARIABLE = "EVENTKEEP_NEW_CLAIM_SECRET"


class CannotRotate(Exception):
    """Why the rotation cannot start (one line, for the command line)."""


def rotate_deployment(settings: Any, new_secret: str | None) -> Rotated:
    """Rotates the secret of the deployment `settings` describe. Embedded: `new_secret` (made
    when None) goes to HOME/secret.new first, and replaces HOME/secret once the store has
    committed, so an interruption leaves the secret that matches the store at hand.
    Distributed: `new_secret` is required; the operator sets it in every process after."""
    # Imported here: the composition root imports much, and `eventkeep --help` should not.
    from eventkeep.bootstrap import build
    from eventkeep.deployment_secret import WeakSecret, check
    from eventkeep.private_files import write_private

    if new_secret is None:
        if settings.mode == "distributed":
            raise CannotRotate(
                f"set {NEW_SECRET_VARIABLE} to the new secret (every process must get it after)"
            )
        new_secret = secrets.token_urlsafe(32)
    try:
        check(new_secret, NEW_SECRET_VARIABLE)
    except WeakSecret as weak:
        raise CannotRotate(str(weak)) from None
    old_secret = settings.claim_secret.get_secret_value()
    if new_secret == old_secret:
        raise CannotRotate(f"{NEW_SECRET_VARIABLE} is the secret in use")
    pending = None
    if settings.mode == "embedded":
        pending = write_private(settings.home / "secret.new", new_secret)
    with build(settings, role="keys") as system:
        rotated = rotate(system.shop, old_secret.encode(), new_secret.encode())
    if pending is not None:
        os.replace(pending, settings.home / "secret")
    return rotated
