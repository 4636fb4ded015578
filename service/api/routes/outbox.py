"""Messages: GET /v1/outbox (what the dev outbox captured instead of sending) and
GET /v1/deliveries (every send step visit per channel, with its status and why).

Lives here: the message views and routes. Not here: sending (`channels`, the send
activity). Recipients leave this module masked, never in clear.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from sqlmodel import col, select

from channels import policies
from engine.database import Delivery, OutboxMessage
from engine.timestamps import as_utc
from service.api.deps import SCOPE_REFUSED, SessionDep, require_read
from service.api.errors import ERROR_RESPONSES, NO_NUL

__all__ = ["DeliveryList", "DeliveryView", "OutboxList", "OutboxView", "router"]


class OutboxView(BaseModel):
    """A message the dev outbox captured instead of sending (recipient masked)."""

    id: int
    journey_id: str
    customer_id: str
    channel: str
    recipient: str | None
    subject: str | None
    body: str
    created_at: datetime
    run_id: str
    step_id: str

    @classmethod
    def of(cls, row: OutboxMessage) -> OutboxView:
        return cls(
            **row.model_dump(
                include={
                    "journey_id",
                    "customer_id",
                    "channel",
                    "subject",
                    "body",
                    "run_id",
                    "step_id",
                }
            ),
            id=row.id or 0,
            recipient=policies.mask(row.channel, row.recipient) if row.recipient else None,
            created_at=as_utc(row.created_at),
        )


class OutboxList(BaseModel):
    messages: list[OutboxView]


class DeliveryView(BaseModel):
    """One send step visit on one channel: its status and why (recipient masked)."""

    id: int
    workflow_id: str
    run_id: str
    step_id: str
    visit: int
    journey_id: str
    customer_id: str
    channel: str | None
    template: str | None
    recipient: str | None
    status: str
    reason: str | None
    attempts: int
    created_at: datetime
    sent_at: datetime | None

    @classmethod
    def of(cls, row: Delivery) -> DeliveryView:
        return cls(
            **row.model_dump(
                exclude={"recipient_hash", "recipient_masked", "created_at", "sent_at"}
            ),
            recipient=row.recipient_masked,
            created_at=as_utc(row.created_at),
            sent_at=as_utc(row.sent_at),
        )


class DeliveryList(BaseModel):
    deliveries: list[DeliveryView]


router = APIRouter(
    prefix="/v1",
    tags=["messages"],
    dependencies=[Depends(require_read)],
    responses={**ERROR_RESPONSES, **SCOPE_REFUSED},
)


@router.get("/outbox", summary="Messages the dev outbox captured, newest first")
def list_outbox(
    session: SessionDep,
    customer: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> OutboxList:
    """What would have been sent with no channel URL set; recipients masked."""
    query = select(OutboxMessage)
    if customer is not None:
        query = query.where(OutboxMessage.customer_id == customer)
    query = query.order_by(col(OutboxMessage.created_at).desc(), col(OutboxMessage.id).desc())
    rows = session.exec(query.limit(limit)).all()
    return OutboxList(messages=[OutboxView.of(row) for row in rows])


@router.get("/deliveries", summary="Delivery records, newest first")
def list_deliveries(
    session: SessionDep,
    customer: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    run_id: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DeliveryList:
    """Each send step visit per channel: `sent`, `captured`, `no_consent`, `suppressed`,
    `failed`... with the reason. Recipients are only ever stored masked."""
    query = select(Delivery)
    if customer is not None:
        query = query.where(Delivery.customer_id == customer)
    if run_id is not None:
        query = query.where(Delivery.run_id == run_id)
    query = query.order_by(col(Delivery.created_at).desc(), col(Delivery.id).desc())
    rows = session.exec(query.limit(limit)).all()
    return DeliveryList(deliveries=[DeliveryView.of(row) for row in rows])
