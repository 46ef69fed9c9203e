"""Secrets never reach a log line: a logging filter that masks API keys (`ek_<id>_<secret>`
keeps its id, loses its secret), `access_token=` values and `bearer.` subprotocols in URLs,
and the deployment secret, in every record the server writes (its own handshake lines too,
which `access_log=False` does not cover)."""

from __future__ import annotations

import copy
import logging
import os
import re
from typing import Any

import uvicorn.config

_PATTERNS = (
    (re.compile(r"(ek_[0-9a-f]{16}_)[A-Za-z0-9_-]+"), r"\1[redacted]"),
    (re.compile(r"(access_token=)[^&\s\"']+"), r"\1[redacted]"),
    (re.compile(r"(bearer\.)[^\s,\"']+", re.IGNORECASE), r"\1[redacted]"),
    (re.compile(r"(Bearer )[^\s,\"']+"), r"\1[redacted]"),
)
# What each pattern's match starts with (the third's in lower case: it ignores case, and no
# character but these letters' capitals folds to them). A line without it is not scanned by
# that pattern, which could not change it: most lines hold none, and the four scans were
# most of a request line's redaction.
_SCANS = tuple(
    (literal, bool(pattern.flags & re.IGNORECASE), pattern, replacement)
    for literal, (pattern, replacement) in zip(
        ("ek_", "access_token=", "bearer.", "Bearer "), _PATTERNS, strict=True
    )
)
SECRET_VARIABLES = ("EVENTKEEP_SECRET", "EVENTKEEP_CLAIM_SECRET")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    lowered = text.lower()
    for literal, ignores_case, pattern, replacement in _SCANS:
        if literal in (lowered if ignores_case else text):
            text = pattern.sub(replacement, text)
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text


class RedactSecrets(logging.Filter):
    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.secrets = tuple(
            value for name in SECRET_VARIABLES if len(value := os.environ.get(name, "")) >= 8
        )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        cleaned = redact(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging, every handler filtered; the application's own warnings and errors
    go through the same handler (and filter)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": f"{__name__}.RedactSecrets"}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact"]
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config
