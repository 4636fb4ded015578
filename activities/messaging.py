"""The send activity: one send step visit on one channel, effectively once.

Just before the provider call, and again on every retry, it checks the policies in order:
an address, consent, suppression, quiet hours (in the customer's zone, by the attempt's
scheduled time), the frequency cap (a slot reserved atomically across all journeys). Then
it renders the template and delivers through Apprise (`channels.delivery`); with no channel
URL set, the message is captured in the local outbox instead.

Paced: a send with a channel URL takes a token of the channel's bucket (`channels.pacing`,
shared by every worker) just before the provider call. A token due within a second is waited
for here; one further off is not taken, and the attempt ends with a retryable
`ChannelRateLimited` error whose `next_retry_delay` is the time until a token can be had,
plus up to a second of jitter. Such an attempt touches no delivery row (it is no delivery
attempt and no failure in the run's path) and is logged by Temporal as benign; its time
counts toward the channel's `retry: ttl` like any wait before sending. A provider outage
retries with the channel's `retry:` backoff counted in provider calls (the delivery row's
`attempts`), not in activity attempts, so rate-limit waits do not push it to its maximum;
each delay is jittered by +-20% so a backlog does not come back at once.

Effectively once: a delivery row keyed by run, step, visit and channel is written as
`sending` before the provider call and marked `sent` after it; a retry that finds it final
returns the earlier result. The one window left: a worker that dies after the provider
accepted the message and before `sent` was committed leaves the row `sending`, and the
retry sends again (at-least-once, in that window only; see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.runs import upsert_run
from channels import pacing, policies
from channels.delivery import DeliveryError, deliver
from channels.rendering import MissingFormError, RenderedMessage, form_for, render_message
from channels.status_links import make_status_token, status_url
from channels.unsubscribe import make_unsubscribe_token, unsubscribe_url
from engine.audit import Record, append
from engine.conversion_counts import recount
from engine.database import (
    Delivery,
    EventRecord,
    OutboxMessage,
    Profile,
    session_scope,
    utcnow,
)
from engine.environment import MissingVariableError, resolve_env
from engine.errors import ErrorType
from engine.localtime import quiet_hours_end, zone_named
from engine.payloads import (
    ActivityName,
    SendMessageInput,
    SendMessageResult,
    delivered_record,
    send_path_entry,
)
from engine.profiles import customer_from_traits
from engine.timestamps import as_utc
from rules import EvaluationError, RenderError
from rules.cache import cached_expression

__all__ = ["RATE_LIMITED", "MessagingActivities", "address_for"]

log = logging.getLogger("journeys.messaging")

_ADDRESS_FIELD = {"email": "email", "sms": "phone", "push": "push_token"}
_FINAL = {"sent", "captured", "failed", "no_address", "no_consent", "suppressed"}
Kind = Literal["email", "sms", "push", "text"]

RATE_LIMITED = "ChannelRateLimited"
"""`ApplicationError.type` of an attempt that found its channel's bucket empty (retryable)."""
_JITTER = 0.2  # a provider retry's delay is jittered by +-20%
_DEFAULT_RETRY = (5.0, 2.0, 300.0)  # initial s, coefficient, maximum s: the workflow's default


def address_for(channel: str, customer: dict[str, Any]) -> str | None:
    """The customer's address on a channel (None: none known); other channels get the id."""
    field = _ADDRESS_FIELD.get(channel)
    if field is None:
        return str(customer.get("id") or "") or None
    value = customer.get(field)
    return str(value) if value not in (None, "") else None


def _kind(channel: str) -> Kind:
    return channel if channel in ("email", "sms", "push") else "text"  # type: ignore[return-value]


@dataclass(frozen=True)
class _Checked:
    """What an attempt found before any policy with a clock: the request with the real
    profile in its context, the recipient, and an earlier final result or a refusal."""

    request: SendMessageInput
    customer_id: str
    recipient: str | None
    earlier: SendMessageResult | None = None
    refused: tuple[str, str] | None = None


class MessagingActivities:
    """`send_message`, with its database and the unsubscribe-link settings."""

    def __init__(
        self,
        *,
        db: Engine,
        secret_key: str | None = None,
        public_url: str = "http://127.0.0.1:8000",
    ) -> None:
        self.db = db
        self.secret_key = secret_key
        self.public_url = public_url.rstrip("/")

    @activity.defn(name=ActivityName.SEND_MESSAGE)
    def send_message(self, request: SendMessageInput) -> SendMessageResult:
        """Send one step visit on one channel, or say why not (or when to try again)."""
        result = self._send(request)
        if request.finish is not None and result.status in ("sent", "captured"):
            # The run ends with this send: its final row now, not in one more activity,
            # stamped with the server's clock as the run's other path entries are.
            at = _attempt_time()
            entry = send_path_entry(request.step_id, request.template, request.channel, result, at)
            with session_scope(self.db) as session:
                upsert_run(session, delivered_record(request.finish, entry))
            result = result.model_copy(update={"recorded_at": at})
        return result

    # ------------------------------------------------------------------ one channel

    def _send(self, request: SendMessageInput) -> SendMessageResult:
        checked = self._check(request)
        if checked.earlier is not None:
            return checked.earlier
        request, channel, recipient = checked.request, request.channel, checked.recipient
        if checked.refused is not None:
            return self._final(request, channel, recipient, *checked.refused)
        assert recipient is not None
        deferred = self._deferral(request, checked.customer_id, _attempt_time())
        if deferred is not None:
            return deferred
        message = self._render(request, channel)
        url = self._resolve(request.channel_url)
        if url is None:
            return self._capture(request, channel, recipient, message)
        self._pace(channel)
        return self._deliver(request, recipient, message, url, checked.customer_id)

    def _pace(self, channel: str) -> None:
        """Take a token of the channel's bucket: wait for it here if it is due within a
        second, else end the attempt, to be retried when one can be had."""
        pace = pacing.take_token(self.db, channel=channel)
        if pace.granted:
            if pace.wait > 0:
                time.sleep(pace.wait)
            return
        delay = pace.wait + random.uniform(0.0, pacing.MAX_INLINE_WAIT)
        raise ApplicationError(
            f"{channel} is sending at its rate ({pace.per_second:g}/s): "
            f"trying again in {delay:.1f} s",
            type=RATE_LIMITED,
            next_retry_delay=timedelta(seconds=delay),
            category=ApplicationErrorCategory.BENIGN,
        )

    def _check(self, request: SendMessageInput) -> _Checked:
        """Everything this attempt reads, in one transaction: the real addresses (the
        workflow holds masked ones), an earlier attempt's final word, consent and
        suppression."""
        channel = request.channel
        customer_id = str((request.context.get("customer") or {}).get("id") or "")
        with session_scope(self.db) as session:
            profile = session.get(Profile, customer_id)
            real = customer_from_traits(customer_id, dict(profile.traits) if profile else {})
            customer: dict[str, Any] = dict(real.expression_view())
            context = {**request.context, "customer": customer, "profile": dict(real.traits)}
            context.update(_real_events(session, request, customer_id))
            context["run"] = {"status_url": self._status_url(request)}
            request = request.model_copy(update={"context": context})
            earlier = self._delivery(session, request, channel)
            if earlier is not None and earlier.status in _FINAL:
                result = SendMessageResult(
                    status=earlier.status,
                    channel=channel,
                    reason=earlier.reason,
                    delivery_id=str(earlier.id),
                )
                return _Checked(request, customer_id, None, earlier=result)
            recipient = self._recipient(request, customer)
            refused = _refusal(session, customer_id, channel, recipient, dict(real.traits))
        return _Checked(request, customer_id, recipient, refused=refused)

    def _deferral(
        self, request: SendMessageInput, customer_id: str, now: datetime
    ) -> SendMessageResult | None:
        """Quiet hours in force or a full frequency cap: when to try again (None: send)."""
        channel = request.channel
        if request.quiet_start and request.quiet_end:
            zone = zone_named(request.timezone)
            until = quiet_hours_end(now, zone, request.quiet_start, request.quiet_end)
            if until is not None:
                return SendMessageResult(
                    status="quiet",
                    channel=channel,
                    retry_at=until,
                    reason=f"quiet hours {request.quiet_start}-{request.quiet_end} in {zone.key}",
                )
        if request.cap_max and request.cap_per_seconds:
            decision = policies.reserve_cap_slot(
                self.db,
                customer_id=customer_id,
                run_id=request.run_id,
                step_id=request.step_id,
                visit=request.visit,
                max_count=request.cap_max,
                per_seconds=request.cap_per_seconds,
                now=now,
            )
            if not decision.granted:
                return SendMessageResult(
                    status="capped",
                    channel=channel,
                    retry_at=decision.retry_at,
                    reason=f"frequency cap: {decision.used} of {request.cap_max} messages used",
                )
        return None

    def _deliver(
        self,
        request: SendMessageInput,
        recipient: str,
        message: RenderedMessage,
        url: str,
        customer_id: str,
    ) -> SendMessageResult:
        """The provider call, between the `sending` and the final mark of the delivery row."""
        channel = request.channel
        headers = self._headers(channel, customer_id)
        delivery_id, calls = self._mark_sending(request, channel, recipient)
        try:
            asyncio.run(
                deliver(
                    channel=channel,
                    kind=_kind(channel),
                    url=url,
                    recipient=recipient,
                    message=message,
                    headers=headers,
                )
            )
        except DeliveryError as error:
            if error.permanent:
                with session_scope(self.db) as session:
                    policies.suppress(
                        session, channel=channel, address=recipient, reason=error.reason
                    )
                self._release_cap(request)
                return self._final(request, channel, recipient, "failed", error.reason)
            self._mark(request, channel, "retrying", error.reason)
            raise ApplicationError(
                f"{channel} provider unavailable: {error.reason}",
                type=ErrorType.PROVIDER_UNAVAILABLE,
                next_retry_delay=timedelta(seconds=_provider_retry_delay(calls)),
            ) from None
        self._mark(request, channel, "sent", None)
        return SendMessageResult(status="sent", channel=channel, delivery_id=delivery_id)

    # ------------------------------------------------------------------ pieces

    @staticmethod
    def _recipient(request: SendMessageInput, customer: dict[str, Any]) -> str | None:
        """The step's `to:` (evaluated here, against the real profile), else the
        customer's address on the channel."""
        if not request.to_expression:
            return address_for(request.channel, customer)
        try:
            value = cached_expression(request.to_expression).evaluate(
                request.context, timezone=request.timezone
            )
        except EvaluationError:
            value = None
        return str(value) if value not in (None, "") else None

    def _status_url(self, request: SendMessageInput) -> str | None:
        """The run's status page for the customer (`{{ run.status_url }}`); None, which a
        template that prints it refuses, when no secret signs links here."""
        if not self.secret_key:
            return None
        token = make_status_token(run_id=request.run_id, secret=self.secret_key)
        return status_url(self.public_url, token)

    def _render(self, request: SendMessageInput, channel: str) -> RenderedMessage:
        try:
            form_for(request.forms, channel)
            return render_message(
                request.forms, channel, request.context, timezone=request.timezone
            )
        except (RenderError, MissingFormError) as error:
            self._release_cap(request)
            raise ApplicationError(
                f"template '{request.template}' cannot be rendered for {channel}: {getattr(error, 'message', error)}",
                type=ErrorType.TEMPLATE_ERROR,
                non_retryable=True,
            ) from None

    @staticmethod
    def _resolve(channel_url: str | None) -> str | None:
        if not channel_url:
            return None
        try:
            url = resolve_env(channel_url).strip()
        except MissingVariableError:
            return None  # no URL configured: the dev outbox captures the message
        return url or None

    def _headers(self, channel: str, customer_id: str) -> dict[str, str]:
        if channel != "email" or not self.secret_key:
            return {}
        token = make_unsubscribe_token(
            customer_id=customer_id, channel=channel, secret=self.secret_key
        )
        return {
            "List-Unsubscribe": f"<{unsubscribe_url(self.public_url, token)}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }

    def _delivery(
        self, session: Session, request: SendMessageInput, channel: str
    ) -> Delivery | None:
        return session.exec(
            select(Delivery).where(
                Delivery.run_id == request.run_id,
                Delivery.step_id == request.step_id,
                Delivery.visit == request.visit,
                Delivery.channel == channel,
            )
        ).first()

    def _upsert(
        self,
        request: SendMessageInput,
        channel: str,
        recipient: str | None,
        status: str,
        reason: str | None,
    ) -> tuple[str, int]:
        """Write the delivery row: its id, and how many provider calls it has counted."""
        for _ in range(2):  # a concurrent attempt may insert the row first
            try:
                with session_scope(self.db) as session:
                    row = self._delivery(session, request, channel)
                    if row is None:
                        row = Delivery(
                            workflow_id=request.workflow_id,
                            run_id=request.run_id,
                            step_id=request.step_id,
                            visit=request.visit,
                            journey_id=request.journey_id,
                            customer_id=str(
                                (request.context.get("customer") or {}).get("id") or ""
                            ),
                            channel=channel,
                            template=request.template,
                        )
                    if recipient is not None:
                        row.recipient_hash = policies.address_hash(channel, recipient)
                        row.recipient_masked = policies.mask(channel, recipient)
                    row.status = status
                    row.reason = reason
                    if status == "sending":
                        row.attempts += 1
                    session.add(row)
                    if status in ("sent", "captured"):
                        row.sent_at = utcnow()
                        # A send before a conversion is credited with it, however the
                        # two writes are ordered (`engine.conversion_counts`).
                        recount(
                            session.connection(),
                            [request.run_id],
                            session.flush,
                            may_convert=False,
                        )
                    else:
                        session.flush()
                    append(session, [_send_record(row)])  # last: appends take turns
                    return str(row.id), row.attempts
            except IntegrityError:
                continue
        raise ApplicationError("could not record the delivery", type=ErrorType.PROVIDER_UNAVAILABLE)

    def _mark_sending(
        self, request: SendMessageInput, channel: str, recipient: str
    ) -> tuple[str, int]:
        return self._upsert(request, channel, recipient, "sending", None)

    def _mark(
        self, request: SendMessageInput, channel: str, status: str, reason: str | None
    ) -> None:
        self._upsert(request, channel, None, status, reason)

    def _final(
        self,
        request: SendMessageInput,
        channel: str,
        recipient: str | None,
        status: str,
        reason: str,
    ) -> SendMessageResult:
        delivery_id, _ = self._upsert(request, channel, recipient, status, reason)
        return SendMessageResult(
            status=status, channel=channel, reason=reason, delivery_id=delivery_id
        )

    def _release_cap(self, request: SendMessageInput) -> None:
        if request.cap_max:
            policies.release_cap_slot(
                self.db, run_id=request.run_id, step_id=request.step_id, visit=request.visit
            )

    def _capture(
        self, request: SendMessageInput, channel: str, recipient: str, message: RenderedMessage
    ) -> SendMessageResult:
        customer_id = str((request.context.get("customer") or {}).get("id") or "")
        try:
            with session_scope(self.db) as session:
                session.add(
                    OutboxMessage(
                        workflow_id=request.workflow_id,
                        run_id=request.run_id,
                        step_id=request.step_id,
                        visit=request.visit,
                        journey_id=request.journey_id,
                        customer_id=customer_id,
                        channel=channel,
                        recipient=recipient,
                        subject=message.subject or message.title,
                        body=message.html or message.body,
                    )
                )
        except IntegrityError:
            pass  # this visit was captured by an earlier attempt
        delivery_id, _ = self._upsert(
            request, channel, recipient, "captured", "no channel URL set: kept in the outbox"
        )
        return SendMessageResult(status="captured", channel=channel, delivery_id=delivery_id)


_SEND_KINDS = {
    "sending": "send.attempted",
    "sent": "send.sent",
    "captured": "send.sent",
    "no_address": "send.skipped",
    "no_consent": "send.skipped",
    "suppressed": "send.skipped",
    "failed": "send.failed",
    "retrying": "send.failed",
}


def _send_record(row: Delivery) -> Record:
    """The audit entry of a delivery row's new status: no address, no content; the
    policy's or the provider's reason (redacted of secrets and recipients)."""
    return Record(
        kind=_SEND_KINDS.get(row.status, f"send.{row.status}"),
        subject=f"run:{row.run_id}",
        actor="journeys",
        customer=row.customer_id or None,
        details={
            "journey": row.journey_id,
            "step": row.step_id,
            "visit": row.visit,
            "channel": row.channel,
            "template": row.template,
            "status": row.status,
            "reason": row.reason,
            "attempts": row.attempts,
            "delivery": row.id,
        },
    )


def _real_events(session: Session, request: SendMessageInput, customer_id: str) -> dict[str, Any]:
    """`event` and `trigger` with the real properties, read back by message id: the run
    holds them masked, and only those declared or read (`engine.personal`). An event not
    in the events table (a run started by hand) keeps what the run holds."""
    trigger = request.context.get("trigger")
    trigger_id = trigger.get("message_id") if isinstance(trigger, dict) else None
    event_id = request.event_message_id or trigger_id
    wanted = {mid for mid in (trigger_id, event_id) if isinstance(mid, str) and mid}
    if not wanted:
        return {}
    rows = session.exec(
        select(EventRecord).where(
            col(EventRecord.message_id).in_(sorted(wanted)),
            EventRecord.customer_id == customer_id,
        )
    ).all()
    found = {row.message_id: dict(row.properties) for row in rows}
    restored: dict[str, Any] = {}
    if event_id in found:
        restored["event"] = found[event_id]
    if isinstance(trigger, dict) and trigger_id in found:
        restored["trigger"] = {**trigger, "properties": found[trigger_id]}
    return restored


def _refusal(
    session: Session, customer_id: str, channel: str, recipient: str | None, traits: dict[str, Any]
) -> tuple[str, str] | None:
    """Why nothing may be sent to ``recipient`` on ``channel`` (status, reason); None: it may."""
    if recipient is None:
        return ("no_address", f"the profile has no {channel} address")
    allowed, why = policies.consent(
        session, customer_id=customer_id, channel=channel, traits=traits
    )
    if not allowed:
        return ("no_consent", why or "opted out")
    suppressed = policies.is_suppressed(session, channel=channel, address=recipient)
    return ("suppressed", suppressed) if suppressed else None


def _attempt_time() -> datetime:
    """The attempt's scheduled time (the server's clock), so retries re-check the policies."""
    try:
        return as_utc(activity.info().current_attempt_scheduled_time)
    except RuntimeError:  # called outside an activity (tests of the pieces)
        return utcnow()


def _provider_retry_delay(calls: int) -> float:
    """Seconds before retrying after the ``calls``-th provider call failed: the channel's
    `retry:` backoff (the activity's retry policy) by provider calls, jittered by +-20%."""
    initial, coefficient, maximum = _DEFAULT_RETRY
    try:
        policy = activity.info().retry_policy
    except RuntimeError:  # called outside an activity (tests of the pieces)
        policy = None
    if policy is not None:
        initial = policy.initial_interval.total_seconds()
        coefficient = policy.backoff_coefficient
        # Temporal's own default maximum: 100 times the first interval.
        maximum = (policy.maximum_interval or 100 * policy.initial_interval).total_seconds()
    delay = min(initial * coefficient ** max(0, calls - 1), maximum)
    return delay * random.uniform(1.0 - _JITTER, 1.0 + _JITTER)
