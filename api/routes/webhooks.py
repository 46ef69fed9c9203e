"""Webhook subscriptions (admin): made, listed, deleted, their deliveries and redelivery
(api/webhooks.py delivers them)."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from eventkeep.api.auth import requires
from eventkeep.api.errors import ApiError
from eventkeep.api.keys import Role
from eventkeep.api.schema import COMMAND_ERRORS, Body
from eventkeep.api.webhooks import UrlRefused, WebhookStore, check_url

router = APIRouter(
    prefix="/v1/webhooks",
    tags=["webhooks"],
    responses=COMMAND_ERRORS,
    dependencies=[Depends(requires(Role.admin))],
)

EventType = Annotated[str, Field(pattern=r"^(\*|[A-Z][A-Za-z]{1,99})$")]


class WebhookBody(Body):
    url: str = Field(min_length=8, max_length=2000, examples=["https://example.com/hooks"])
    event_types: list[EventType] = Field(
        min_length=1, max_length=50, description="Event types (`OrderPlaced`, …), or `*`."
    )
    stream_id: UUID | None = Field(default=None, description="Only this stream's events.")


def _store(request: Request) -> WebhookStore:
    store = getattr(request.app.state.wiring, "webhooks", None)
    if store is None:
        raise ApiError("NOT_FOUND", "Webhooks are not set up in this wiring.")
    assert isinstance(store, WebhookStore)
    return store


def _known(store: WebhookStore, webhook_id: str) -> None:
    if store.get(webhook_id) is None:
        raise ApiError("NOT_FOUND", f"No webhook {webhook_id}.", {"id": webhook_id})


@router.post("", status_code=201)
def create_webhook(body: WebhookBody, request: Request) -> dict[str, Any]:
    """Subscribes the URL to the event types from now on; the answer holds its signing
    `secret` (`whsec_…`), shown this once."""
    wiring = request.app.state.wiring
    try:
        check_url(body.url, wiring.webhook_policy.allowed)
    except UrlRefused as refused:
        raise ApiError(
            "VALIDATION_FAILED",
            "The request is not valid.",
            {"fields": [{"field": "body.url", "message": str(refused)}]},
        ) from None
    head = wiring.shop.recorder.max_notification_id() or 0
    stream = None if body.stream_id is None else str(body.stream_id)
    hook, secret = _store(request).create(body.url, list(body.event_types), stream, head)
    return {**hook.shown(), "secret": secret}


@router.get("")
def list_webhooks(request: Request) -> dict[str, Any]:
    return {"items": [hook.shown() for hook in _store(request).list()]}


@router.delete("/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: str, request: Request) -> Response:
    if not _store(request).delete(webhook_id):
        raise ApiError("NOT_FOUND", f"No webhook {webhook_id}.", {"id": webhook_id})
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries")
async def deliveries(webhook_id: str, request: Request) -> dict[str, Any]:
    """The latest deliveries, newest first; `status` `dead` is the dead-letter list (the
    subscription is paused at it)."""
    store = _store(request)
    await run_in_threadpool(_known, store, webhook_id)
    return {"items": await run_in_threadpool(store.deliveries, webhook_id)}


@router.post("/{webhook_id}/redeliver", status_code=202)
def redeliver(webhook_id: str, request: Request) -> dict[str, Any]:
    """Resumes a paused subscription: its dead-lettered event is delivered again, then what
    followed it."""
    store = _store(request)
    if not store.resume(webhook_id):
        raise ApiError("NOT_FOUND", f"No webhook {webhook_id}.", {"id": webhook_id})
    hook = store.get(webhook_id)
    assert hook is not None
    return hook.shown()
