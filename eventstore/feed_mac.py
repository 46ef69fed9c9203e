"""The trusted feed (issue 10 item 4): the relay signs every Kafka message it sends with an
HMAC-SHA256 under a key derived from the deployment secret (HKDF, label `FEED_LABEL`), carried
in the `FEED_MAC_HEADER` header; a projector applies only messages whose MAC verifies. The MAC
covers the topic, the key, the value and every other header, so a message written to the
topics by anyone without the secret — an event, or a watermark meant to move positions — or
an altered one, is rejected. A watermark also names its partition in its value: copied to
another partition it no longer verifies."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

FEED_LABEL = b"eventkeep kafka feed"
FEED_MAC_HEADER = "ek-mac"

Headers = Sequence[tuple[str, bytes]]


def _signed(topic: str, key: bytes | None, value: bytes, headers: Headers) -> bytes:
    parts = [topic.encode(), key or b"", value]
    for name, header in sorted(h for h in headers if h[0] != FEED_MAC_HEADER):
        parts += [name.encode(), header]
    return b"".join(len(part).to_bytes(8, "big") + part for part in parts)


def sign(secret: bytes, topic: str, key: bytes | None, value: bytes, headers: Headers) -> bytes:
    """The MAC header's value for a message."""
    return hmac.new(secret, _signed(topic, key, value, headers), hashlib.sha256).digest()


def refusal(
    secret: bytes, topic: str, key: bytes | None, value: bytes, headers: Headers
) -> str | None:
    """Why the message must be refused, or None when its MAC verifies."""
    macs = [h for name, h in headers if name == FEED_MAC_HEADER]
    if not macs:
        return "no MAC"
    if len(macs) > 1:
        return "several MAC headers"
    if not hmac.compare_digest(macs[0], sign(secret, topic, key, value, headers)):
        return "MAC does not verify (forged or altered)"
    return None
