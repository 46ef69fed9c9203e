"""Operator endpoints, without auth: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from eventkeep.api.errors import ApiError

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


@router.get("/metrics")
def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
