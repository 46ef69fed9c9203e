"""Structured logs (structlog) for every eventkeep process: one JSON object per line, or a
console rendering for people (`EVENTKEEP_LOG_FORMAT`), from `EVENTKEEP_LOG_LEVEL` up.

Every line goes to stderr (stdout stays the commands' own output: `keys create` prints its key
alone on the last line). Lines written through the standard `logging` module — eventkeep's own
modules, uvicorn, the libraries — are rendered by the same processors as structlog's, so every
line has one shape: `timestamp`, `level`, `logger`, `event`, and what the code bound to it
(`correlation_id`, `actor`, `route`, `status`, `duration_ms` for a request: `api/metrics.py`).
Values bound with `structlog.contextvars` (the request's correlation id and actor) reach every
line written while the request is handled, from any module.

Secrets never reach a line: each line's text passes `api/redaction.redact` (API keys keep
their id, tokens and the deployment secret are masked), after it is rendered.
"""

from __future__ import annotations

import logging
import logging.config
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog
from structlog.typing import Processor

FORMATS = ("json", "console")
_STAMP = structlog.processors.TimeStamper(fmt="iso", utc=True)


def _processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _STAMP,
        structlog.processors.format_exc_info,
    ]


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is written (a test runner swaps it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


class RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """structlog's formatter for standard `logging` records, its output redacted."""

    def __init__(self, log_format: str = "json") -> None:
        renderer: Processor = (
            structlog.dev.ConsoleRenderer(colors=False)
            if log_format == "console"
            else structlog.processors.JSONRenderer()
        )
        super().__init__(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=_processors(),
        )
        from eventkeep.api.redaction import RedactSecrets

        self._renderer = renderer
        self._secrets = RedactSecrets().secrets

    def format(self, record: logging.LogRecord) -> str:
        from eventkeep.api.redaction import redact

        return redact(super().format(record), self._secrets)

    def render(self, event: MutableMapping[str, Any]) -> str:
        """The text of the fields the pre-chain made of a record, as `format` writes it:
        rendered, then redacted."""
        from eventkeep.api.redaction import redact

        return redact(cast(str, self._renderer(None, event["level"], event)), self._secrets)


def info_line(logger: logging.Logger, event: str, fields: dict[str, Any]) -> None:
    """`logger.info(event, extra=fields)` for a line written per request (`api/metrics.py`).

    In a process set up by `configure` the line goes straight to its one handler, with the
    text `logger.info` would give it (the same fields in the same order, rendered and
    redacted by the handler's own formatter) but without the record, the handler chain and
    the formatter's copy of the record and its processors: half the CPU of a line. Any
    other set-up (a handler or a filter added, a test capturing records) takes the logging
    module's path."""
    handler = _sole_handler(logger)
    if handler is None:
        logger.info(event, extra=fields)
        return
    formatter = handler.formatter
    assert isinstance(formatter, RedactingFormatter)
    line = structlog.contextvars.merge_contextvars(None, "info", {"event": event})
    line["level"] = "info"
    line["logger"] = logger.name
    line.update(fields)
    text = formatter.render(_STAMP(None, "info", line)) + handler.terminator
    handler.acquire()
    try:
        handler.stream.write(text)
        handler.flush()
    finally:
        handler.release()


def _sole_handler(logger: logging.Logger) -> StderrHandler | None:
    """The one handler an INFO line of `logger` reaches, when nothing else sees the line
    (no filter, one `StderrHandler` with the structured formatter); else None."""
    if logger.filters or not logger.isEnabledFor(logging.INFO):
        return None
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found.extend(current.handlers)
        if not current.propagate:
            break
        current = current.parent
    if len(found) != 1:
        return None
    handler = found[0]
    if (
        type(handler) is not StderrHandler
        or handler.filters
        or handler.level > logging.INFO
        or type(handler.formatter) is not RedactingFormatter
    ):
        return None
    return handler


def formatter(log_format: str = "json") -> RedactingFormatter:
    """The formatter of every handler; a factory for `logging.config.dictConfig` (uvicorn's
    workers build it there). It also configures structlog, in each process it runs in."""
    _configure_structlog()
    return RedactingFormatter(log_format)


def _configure_structlog() -> None:
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def log_config(level: str = "INFO", log_format: str = "json") -> dict[str, Any]:
    """A `dictConfig` for a process: one stderr handler with the structured formatter, the
    root logger at `level`; uvicorn's loggers pass their lines to it (so they are structured
    too). `eventkeep serve` gives it to uvicorn, which applies it in every worker."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(FORMATS)}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structured": {"()": f"{__name__}.formatter", "log_format": log_format}},
        "handlers": {"stderr": {"class": f"{__name__}.StderrHandler", "formatter": "structured"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            name: {"handlers": [], "level": level, "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        }
        # A library's chatter below WARNING is not the operator's business.
        | {
            name: {"level": "WARNING"}
            for name in ("kafka", "httpx", "httpcore", "asyncio", "multipart")
        },
    }


def configure(level: str = "INFO", log_format: str = "json") -> None:
    """Structured logging for this process (the command line calls it for every command)."""
    logging.config.dictConfig(log_config(level, log_format))


def configure_from_environment() -> None:
    """`configure` from EVENTKEEP_LOG_LEVEL and EVENTKEEP_LOG_FORMAT, read without the whole
    settings (which may be invalid: their error must still be logged, in the same shape)."""
    level = os.environ.get("EVENTKEEP_LOG_LEVEL", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        level = "INFO"
    log_format = os.environ.get("EVENTKEEP_LOG_FORMAT", "json")
    configure(level, log_format if log_format in FORMATS else "json")
