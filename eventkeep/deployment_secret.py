"""The deployment secret and the keys derived from it.

One secret per deployment (EVENTKEEP_CLAIM_SECRET; the embedded mode makes one into
HOME/secret) must hold at least 32 random bytes: a shorter or plainly repetitive value is
refused with a message that says how to make one. It is never used as a key itself: HKDF
(SHA-256) derives one key per use, each under its own label, so that knowing one derived key
tells nothing about the other:

| label | key of |
| --- | --- |
| `eventkeep email claims v1` | the HMAC that stores an email's uniqueness claim without plaintext |
| `eventkeep data keys` | the AES-GCM key that wraps each user's data key (eventstore/pii.py) |
| `eventkeep kafka feed` | the HMAC that signs each Kafka message (eventstore/feed_mac.py) |
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_BYTES = 32
MIN_DISTINCT = 16  # 32 bytes of a random token have far more; "aaaa…" or "abab…" do not
EMAIL_CLAIMS = b"eventkeep email claims v1"
DATA_KEY_WRAPPING = b"eventkeep data keys"  # the label eventstore/pii.py derives under
HOW_TO_MAKE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class WeakSecret(ValueError):
    pass


def check(secret: str, name: str = "EVENTKEEP_CLAIM_SECRET") -> str:
    """`secret` when it can hold 32 random bytes; else WeakSecret saying how to make one."""
    size = len(secret.encode())
    if size < MIN_BYTES:
        raise WeakSecret(
            f"{name} must be at least {MIN_BYTES} random bytes (it has {size}); "
            f"make one with: {HOW_TO_MAKE}"
        )
    if len(set(secret)) < MIN_DISTINCT:
        raise WeakSecret(
            f"{name} is not random enough ({len(set(secret))} distinct characters); "
            f"make one with: {HOW_TO_MAKE}"
        )
    return secret


def derive(secret: bytes, label: bytes) -> bytes:
    """The 32-byte key for `label`."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=label).derive(secret)


def email_claim_key(secret: bytes) -> bytes:
    return derive(secret, EMAIL_CLAIMS)
