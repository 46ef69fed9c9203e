"""Auditor endpoints: a stream's history, an entity as of a moment or version, and a walk of
the hash chain."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request

from eventkeep.api.auth import requires
from eventkeep.api.errors import ApiError
from eventkeep.api.keys import Role
from eventkeep.api.schema import COMMAND_ERRORS
from eventkeep.metrics import record_verify
from eventkeep.replay import audit

router = APIRouter(
    prefix="/v1/audit",
    tags=["audit"],
    responses=COMMAND_ERRORS,
    dependencies=[Depends(requires(Role.auditor))],
)


@router.get("/streams/{stream_id}/events")
def stream_events(stream_id: UUID, request: Request) -> dict[str, Any]:
    """Every event of the stream, upcast, with metadata, position and hashes."""
    events = audit.history(request.app.state.wiring.shop, stream_id)
    if not events:
        raise ApiError("NOT_FOUND", f"No stream {stream_id}.", {"id": str(stream_id)})
    return {"items": events}


@router.get("/streams/{stream_id}/state")
def stream_state(
    stream_id: UUID,
    request: Request,
    as_of: Annotated[datetime | None, Query(description="A moment, RFC 3339.")] = None,
    version: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="A stream version.")
    ] = None,
) -> dict[str, Any]:
    """The entity as it was at `as_of` or at `version` (exactly one of them)."""
    if (as_of is None) == (version is None):
        raise ApiError("VALIDATION_FAILED", "Give exactly one of `as_of` and `version`.")
    if as_of is not None and as_of.tzinfo is None:
        raise ApiError("VALIDATION_FAILED", "`as_of` needs a time zone (e.g. Z).")
    state = audit.state_as_of(request.app.state.wiring.shop, stream_id, version=version, at=as_of)
    if state is None:
        raise ApiError(
            "NOT_FOUND", f"Stream {stream_id} did not exist then.", {"id": str(stream_id)}
        )
    return state


@router.post("/verify")
def verify(request: Request) -> dict[str, Any]:
    """Walks the hash chain of the whole log with its key and compares it with every signed
    checkpoint, as `eventkeep audit verify` does; names the first altered or missing event."""
    wiring = request.app.state.wiring
    verdict = audit.verify_against(wiring.shop.recorder, wiring.checkpoints)
    record_verify(verdict.intact)  # eventkeep_audit_verify_ok, for the alert
    return {
        "intact": verdict.intact,
        "checked": verdict.checked,
        "last_position": verdict.last_position,
        "altered": verdict.altered,
    }
