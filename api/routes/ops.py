"""Operator endpoints: liveness and readiness without a key; Prometheus metrics with an admin
key (they tell who calls what, how often)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from eventkeep.api.auth import requires
from eventkeep.api.errors import ApiError
from eventkeep.api.keys import Role
from eventkeep.api.schema import COMMAND_ERRORS
from eventkeep.metrics import LagCollector, ReplicaLagCollector, scrape_registry

logger = logging.getLogger(__name__)
router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up; says nothing about the store. On the event loop: a liveness probe
    must not wait for a worker thread when they are all busy."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> dict[str, Any]:
    """Each part this process depends on, asked a cheap question: `parts` names each one's
    dependency (postgres, sqlite, redis) and whether it is `up` or `down`. Not ready (503
    STORE_UNAVAILABLE, with the parts) while the event store is down; a cache down leaves the
    process ready (queries read the read models) and says so."""
    wiring = request.app.state.wiring
    store = "sqlite" if wiring.feed is not None else "postgres"
    breaker = wiring.breaker
    parts = {
        "event_store": _part(
            store,
            wiring.shop.recorder.max_notification_id,
            down=breaker is not None and breaker.is_open,
        ),
        "read_models": _part(
            getattr(wiring.queries.models.db, "kind", store),
            wiring.queries.models.progress_by_name,
        ),
    }
    if wiring.cache_ping is not None:
        parts["cache"] = _part("redis", wiring.cache_ping)
    if wiring.replica is not None:  # down: queries read the primary
        parts["read_replica"] = _part("postgres", lambda: None, down=not wiring.replica.health.up)
    if parts["event_store"]["status"] == "down":
        raise ApiError("STORE_UNAVAILABLE", "The event store cannot be reached.", {"parts": parts})
    degraded = any(part["status"] == "down" for part in parts.values())
    return {"status": "degraded" if degraded else "ready", "parts": parts}


def _part(dependency: str, ask: Callable[[], object], *, down: bool = False) -> dict[str, str]:
    if not down:
        try:
            ask()
        except Exception as error:
            logger.warning("not ready: %s (%s): %s", dependency, type(error).__name__, error)
            down = True
    return {"dependency": dependency, "status": "down" if down else "up"}


@router.get(
    "/metrics",
    dependencies=[Depends(requires(Role.admin))],
    responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
        **{status: COMMAND_ERRORS[status] for status in (401, 403, 429)},
    },
)
def metrics(request: Request) -> Response:
    """This process's metrics (all workers' under `serve --workers N`), with the log's head
    and each read model's position and lag read now."""
    wiring = request.app.state.wiring
    queries = wiring.queries
    recorder, breaker = wiring.shop.recorder, wiring.breaker

    def head() -> int | None:
        if breaker is not None:
            breaker.check()  # PostgreSQL just found out of reach: no scrape waits for it
        return recorder.max_notification_id()

    lag = LagCollector(head, lambda: {name: queries.position(name) for name in queries.names})
    live: list[Collector] = [lag]
    if wiring.replica is not None:
        live.append(ReplicaLagCollector(wiring.replica.lag, lambda: wiring.replica.health.up))
    registry = scrape_registry(own=[request.app.state.metrics.registry], live=live)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
