"""Analyst queries: daily sales, and how far each projection has got."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request

from eventkeep.api.errors import ApiError
from eventkeep.api.reads import AllReads, SalesReads
from eventkeep.api.schema import COMMAND_ERRORS

router = APIRouter(prefix="/v1", tags=["analyst"], responses=COMMAND_ERRORS)


@router.get("/stats/sales")
def sales(
    daily_sales: SalesReads,
    start: Annotated[date, Query(alias="from", description="First day (UTC), inclusive.")],
    end: Annotated[date, Query(alias="to", description="Last day (UTC), inclusive.")],
    product_id: UUID | None = None,
) -> dict[str, Any]:
    """Units and revenue per day, product and currency; a sale counts on the day it is paid,
    and a paid order cancelled is taken back on the day it is cancelled."""
    if end < start:
        raise ApiError(
            "VALIDATION_FAILED", "`to` is before `from`.", {"from": str(start), "to": str(end)}
        )
    items = daily_sales.sales(
        start=start.isoformat(),
        end=end.isoformat(),
        product_id=None if product_id is None else str(product_id),
    )
    return {"items": items}


@router.get("/projections")
def projections(reads: AllReads, request: Request) -> dict[str, Any]:
    """Each projection's position, the log's head, the lag between them (in events), and the
    generation of its tables (how many rebuilds were swapped in; 0: never)."""
    head = request.app.state.wiring.shop.recorder.max_notification_id() or 0
    return {"projections": reads.status(head)}
