"""The send activity: render the message and hand it to a channel, once per step visit.

Until a channel URL is configured (channels/ delivers through Apprise), messages go to the
local outbox table, so a new user sees what would have been sent. The outbox row is keyed by
run, step and visit, so a retried activity finds the earlier result instead of sending again.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from channels.rendering import MissingFormError, render_message
from engine.database import OutboxMessage, session_scope
from engine.errors import ErrorType
from engine.messages import SendMessageInput, SendMessageResult
from rules import RenderError

__all__ = ["MessagingActivities", "address_for"]

_ADDRESS_FIELD = {"email": "email", "sms": "phone", "push": "push_token"}


def address_for(channel: str, customer: dict[str, object]) -> str | None:
    """The customer's address on a channel (None: none known)."""
    field = _ADDRESS_FIELD.get(channel)
    if field is None:
        return str(customer.get("id") or "") or None
    value = customer.get(field)
    return str(value) if value not in (None, "") else None


class MessagingActivities:
    """`send_message`, with its database."""

    def __init__(self, *, db: Engine) -> None:
        self.db = db

    @activity.defn(name="send_message")
    def send_message(self, request: SendMessageInput) -> SendMessageResult:
        """Send on the first channel with an address, or record why nothing was sent."""
        with session_scope(self.db) as session:
            earlier = session.exec(
                select(OutboxMessage).where(
                    OutboxMessage.run_id == request.run_id,
                    OutboxMessage.step_id == request.step_id,
                    OutboxMessage.visit == request.visit,
                )
            ).first()
            if earlier is not None:
                return SendMessageResult(
                    status="captured", channel=earlier.channel, delivery_id=str(earlier.id)
                )
        customer = request.context.get("customer") or {}
        tried: list[str] = []
        for channel in request.channels:
            recipient = request.to or address_for(channel, customer)
            if recipient is None:
                tried.append(f"{channel}: no address")
                continue
            try:
                message = render_message(
                    request.forms, channel, request.context, timezone=request.timezone
                )
            except (RenderError, MissingFormError) as error:
                raise ApplicationError(
                    f"template '{request.template}' cannot be rendered for {channel}: {getattr(error, 'message', error)}",
                    type=ErrorType.TEMPLATE_ERROR,
                    non_retryable=True,
                ) from None
            row = OutboxMessage(
                workflow_id=request.workflow_id,
                run_id=request.run_id,
                step_id=request.step_id,
                visit=request.visit,
                journey_id=request.journey_id,
                customer_id=str(customer.get("id") or ""),
                channel=channel,
                recipient=recipient,
                subject=message.subject or message.title,
                body=message.html or message.body,
            )
            try:
                with session_scope(self.db) as session:
                    session.add(row)
                    session.flush()
                    delivery_id = str(row.id)
            except IntegrityError:
                delivery_id = None  # a concurrent attempt of this same visit stored it
            return SendMessageResult(status="captured", channel=channel, delivery_id=delivery_id)
        return SendMessageResult(status="skipped", reason="; ".join(tried) or "no channel")
