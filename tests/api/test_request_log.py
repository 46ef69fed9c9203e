"""The request log line (`api/metrics.py`) in a process set up by `eventkeep.logs.configure`:
written straight to its one handler (no `LogRecord`, no handler chain, no copy of the record
in the formatter), with the text the logging module would write, redacted alike; any other
set-up gets the records as before."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from fastapi import FastAPI
from fastapi.testclient import TestClient

from eventkeep.api.keys import Role
from eventkeep.api.redaction import SECRET_VARIABLES
from eventkeep.logs import FORMATS, configure, info_line

ACCESS = logging.getLogger("eventkeep.request")
SECRET = "a-deployment-secret-of-some-length"
KEY_LIKE = "ek_0123456789abcdef_TheSecretPartOfAKey"
FIELDS = {
    "correlation_id": KEY_LIKE,  # a client may send a key as its correlation id
    "actor": "0123456789abcdef",
    "method": "POST",
    "route": "/v1/products/{product_id}/stock",
    "status": 200,
    "duration_ms": 1.25,
}
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z")


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """`configure` for the test (the deployment secret in the environment), undone after."""
    monkeypatch.setenv(SECRET_VARIABLES[0], SECRET)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield lambda log_format: configure("INFO", log_format)
    root.handlers[:] = handlers
    root.setLevel(level)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def made_records(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the loggers a record is made for from now on."""
    made: list[str] = []
    make = logging.Logger.makeRecord

    def counted(self: logging.Logger, name: str, *args: Any, **kwargs: Any) -> logging.LogRecord:
        made.append(name)
        return make(self, name, *args, **kwargs)

    monkeypatch.setattr(logging.Logger, "makeRecord", counted)
    return made


@pytest.mark.parametrize("log_format", FORMATS)
def test_the_direct_line_is_the_line_the_logging_module_writes(
    log_format: str, configured: Callable[[str], None], capsys: pytest.CaptureFixture[str]
) -> None:
    configured(log_format)
    capsys.readouterr()
    with structlog.contextvars.bound_contextvars(bound="by the code", actor="bound first"):
        ACCESS.info("request", extra=FIELDS)
        info_line(ACCESS, "request", dict(FIELDS))
    logged, direct = capsys.readouterr().err.splitlines()

    assert _STAMP.sub("T", direct) == _STAMP.sub("T", logged)
    assert KEY_LIKE not in direct and "ek_0123456789abcdef_[redacted]" in direct
    if log_format == "json":
        assert list(json.loads(direct)) == list(json.loads(logged))  # the same order


def test_the_direct_line_masks_the_deployment_secret(
    configured: Callable[[str], None], capsys: pytest.CaptureFixture[str]
) -> None:
    configured("json")
    capsys.readouterr()
    info_line(ACCESS, "request", FIELDS | {"route": f"/x/{SECRET}"})
    line = capsys.readouterr().err
    assert SECRET not in line and "/x/[redacted]" in line


def test_a_request_is_logged_without_a_log_record(
    app: FastAPI,
    bearer: Callable[[Role], dict[str, str]],
    configured: Callable[[str], None],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with TestClient(app) as client:
        configured("json")
        made = made_records(monkeypatch)
        capsys.readouterr()
        headers = bearer(Role.admin) | {"X-Correlation-ID": "trace-7"}
        assert client.get("/healthz", headers=headers).status_code == 200
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    [line] = [line for line in lines if line["event"] == "request"]
    assert (line["correlation_id"], line["route"], line["status"]) == ("trace-7", "/healthz", 200)
    assert {"timestamp", "level", "logger", "actor", "method", "duration_ms"} <= set(line)
    assert "eventkeep.request" not in made


def test_a_handler_or_filter_added_gets_the_records_as_before(
    configured: Callable[[str], None], capsys: pytest.CaptureFixture[str]
) -> None:
    configured("json")
    records = Records()
    ACCESS.addHandler(records)
    try:
        info_line(ACCESS, "request", dict(FIELDS))
    finally:
        ACCESS.removeHandler(records)
    [record] = records.records
    assert record.route == FIELDS["route"]  # type: ignore[attr-defined]
    assert "request" in capsys.readouterr().err  # and the root's handler wrote it too

    dropped: list[str] = []

    def drop(record: logging.LogRecord) -> bool:
        dropped.append(record.getMessage())
        return False

    ACCESS.addFilter(drop)
    try:
        info_line(ACCESS, "request", dict(FIELDS))
    finally:
        ACCESS.removeFilter(drop)
    assert dropped == ["request"] and capsys.readouterr().err == ""
