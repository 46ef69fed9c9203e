"""Operator endpoints: liveness and readiness without a key; Prometheus metrics with an admin
key (they tell who calls what, how often)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from eventkeep.api.auth import requires
from eventkeep.api.errors import ApiError
from eventkeep.api.keys import Role
from eventkeep.api.schema import COMMAND_ERRORS

logger = logging.getLogger(__name__)
router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up; says nothing about the store."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> dict[str, str]:
    """The event store answers a cheap query (its last position)."""
    try:
        request.app.state.wiring.shop.recorder.max_notification_id()
    except Exception as error:
        logger.warning("not ready: %s", error)
        raise ApiError("STORE_UNAVAILABLE", "The event store cannot be reached.") from None
    return {"status": "ready"}


@router.get(
    "/metrics",
    dependencies=[Depends(requires(Role.admin))],
    responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
        **{status: COMMAND_ERRORS[status] for status in (401, 403, 429)},
    },
)
def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
