"""Prometheus metrics and the request log: HTTP requests by route template and status,
commands by type; one structured log line per request.

Each app has its own registry, so that apps built side by side (tests) count apart; the
engine's own metrics are in `eventkeep.metrics`, and `/metrics` answers both.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventkeep.logs import info_line

access = logging.getLogger("eventkeep.request")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "eventkeep_http_requests",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "eventkeep_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.commands = Counter(
            "eventkeep_commands",
            "Commands handled, by type and outcome (ok or the error code).",
            ["command", "outcome"],
            registry=self.registry,
        )


class RequestMetrics:
    """Times and logs every HTTP request; the route label is the template, never the raw
    path, so that ids in paths do not explode the number of series (nor reach the log).

    The log line (INFO, logger `eventkeep.request`) has the correlation id, the actor (the
    API key's id, never the key), the method, route, status and duration in milliseconds."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Each label set's counter and histogram, looked up once (`labels()` validates and
        # locks on every call).
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        # bind/reset rather than `bound_contextvars`: the same, without a generator's
        # context manager per request.
        bound = structlog.contextvars.bind_contextvars(actor=None)
        try:
            await self.app(scope, receive, observe)
        finally:
            structlog.contextvars.reset_contextvars(**bound)
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            labels = (scope["method"], route, str(status))
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = (
                    self.metrics.requests.labels(*labels),
                    self.metrics.latency.labels(*labels),
                )
            series[0].inc()
            series[1].observe(elapsed)
            if access.isEnabledFor(logging.INFO):
                state = scope.get("state", {})
                info_line(
                    access,
                    "request",
                    {
                        "correlation_id": state.get("correlation_id"),
                        "actor": state.get("actor"),
                        "method": scope["method"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                    },
                )
