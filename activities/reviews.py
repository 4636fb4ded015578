"""Review-task activities: open a task (rendering its title and details), escalate, close,
and announce new and escalated tasks on the plan's `ops` channel.

An announcement is best effort and never fails the activity (a task nobody was told about
is still in the queue): it goes through Apprise with the queue name as the recipient (an
ntfy topic, a `{to}` in the URL), or, with no `ops` URL set, into the outbox, and it never
names the customer's addresses. A catalogue without an `ops` channel announces nothing.
It happens once per task: when the row is inserted, and
when it is escalated.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.runs import decision_records
from channels.delivery import DeliveryError, deliver
from channels.rendering import RenderedMessage
from engine.audit import Record, append, digest
from engine.database import OutboxMessage, ReviewTask, session_scope, utcnow
from engine.environment import MissingVariableError, resolve_env
from engine.errors import ErrorType
from engine.payloads import ActivityName, OpenReviewInput, ReviewTaskChange
from engine.run_path import last_path, write_path
from rules import RenderError
from rules.cache import cached_template

__all__ = ["ReviewActivities"]

log = logging.getLogger("journeys.reviews")

CASE_PATH_ENTRIES = 200
"""How much of the run's path a case shows: its recent history (what sent it here), not
every entry of a run that has been going for months."""


def _texts(request: OpenReviewInput) -> tuple[str, str | None]:
    """The task's title and details, rendered against the run's context."""
    try:
        title = cached_template(request.title).render(
            request.context, timezone=request.timezone, max_length=300
        )
        details = (
            cached_template(request.details).render(
                request.context, timezone=request.timezone, max_length=20_000
            )
            if request.details
            else None
        )
    except RenderError as error:
        raise ApplicationError(
            f"review text cannot be rendered: {error.message}",
            type=ErrorType.TEMPLATE_ERROR,
            non_retryable=True,
        ) from None
    return title, details


class ReviewActivities:
    """Review tasks in the database."""

    def __init__(self, *, db: Engine, public_url: str = "http://127.0.0.1:8000") -> None:
        self.db = db
        self.public_url = public_url.rstrip("/")

    @activity.defn(name=ActivityName.OPEN_REVIEW_TASK)
    def open_review_task(self, request: OpenReviewInput) -> str:
        """Open (once per step visit) the task; returns its id. The path entries the
        request carries (those not recorded yet) are written first, so the case's path,
        read back from `run_path`, ends with them."""
        title, details = _texts(request)
        with session_scope(self.db) as session:
            write_path(
                session.connection(),
                run_id=request.run_id,
                start=request.path_start,
                entries=request.path,
            )
            existing = session.exec(
                select(ReviewTask).where(
                    ReviewTask.run_id == request.run_id,
                    ReviewTask.step_id == request.step_id,
                    ReviewTask.visit == request.visit,
                )
            ).first()
            decisions = decision_records(
                run_id=request.run_id,
                customer_id=request.customer_id,
                journey_id=request.journey_id,
                version=None,
                start=request.path_start,
                path=request.path,
            )
            if existing is not None:
                append(session, decisions)
                return existing.id
            case: dict[str, Any] = {
                "event": request.context.get("event"),
                "trigger": request.context.get("trigger"),
                "scores": request.context.get("scores"),
                "vars": request.context.get("vars"),
                "path": last_path(session, request.run_id, CASE_PATH_ENTRIES),
            }
            task = ReviewTask(
                id=uuid.uuid4().hex,
                workflow_id=request.workflow_id,
                run_id=request.run_id,
                journey_id=request.journey_id,
                customer_id=request.customer_id,
                step_id=request.step_id,
                visit=request.visit,
                queue=request.queue,
                title=title.strip(),
                details=details,
                decisions=request.decisions,
                due_at=request.due_at,
                case=case,
            )
            session.add(task)
            session.flush()
            opened = Record(
                kind="review.opened",
                subject=f"review:{task.id}",
                actor="journeys",
                customer=request.customer_id,
                details={
                    "run": request.run_id,
                    "journey": request.journey_id,
                    "step": request.step_id,
                    "visit": request.visit,
                    "queue": request.queue,
                    "due_at": request.due_at,
                },
            )
            append(session, [*decisions, opened])  # last: appends take turns
            task_id = task.id
            announcement = (task.queue, task.title, task.workflow_id, task.run_id, task.journey_id)
        self._announce(request.announce_url, *announcement, task_id=task_id, escalated=False)
        return task_id

    @activity.defn(name=ActivityName.ESCALATE_REVIEW_TASK)
    def escalate_review_task(self, change: ReviewTaskChange) -> None:
        """Re-queue an open task (once) at its SLA, and tell the supervisors' queue."""
        self._change(change, escalate=True)
        with session_scope(self.db) as session:
            task = session.get(ReviewTask, change.task_id)
            if task is None:
                return
            announcement = (task.queue, task.title, task.workflow_id, task.run_id, task.journey_id)
        self._announce(change.announce_url, *announcement, task_id=change.task_id, escalated=True)

    def _announce(
        self,
        url_template: str | None,
        queue: str,
        title: str,
        workflow_id: str,
        run_id: str,
        journey_id: str,
        *,
        task_id: str,
        escalated: bool,
    ) -> None:
        link = f"{self.public_url}/console/reviews/{task_id}"
        heading = ("Escalated: " if escalated else "New review: ") + title
        body = f"{heading}\nQueue: {queue}\n{link}"
        if not url_template:
            return  # the catalogue declares no `ops` channel: nobody asked to be told
        try:
            url = resolve_env(url_template).strip() or None
        except MissingVariableError:
            url = None
        if url is None:
            outbox = OutboxMessage(
                workflow_id=workflow_id,
                run_id=run_id,
                step_id=f"review:{task_id[:12]}:{'escalated' if escalated else 'opened'}",
                visit=1,
                journey_id=journey_id,
                customer_id=f"ops:{queue}",
                channel="ops",
                recipient=queue,
                subject=heading,
                body=body,
            )
            self._keep(outbox)
            return
        try:
            asyncio.run(
                deliver(
                    channel="ops",
                    kind="text",
                    url=url,
                    recipient=queue,
                    message=RenderedMessage(channel="ops", title=heading, body=body),
                )
            )
        except DeliveryError as error:
            log.warning("could not announce review task %s in %s: %s", task_id, queue, error.reason)

    def _keep(self, message: OutboxMessage) -> None:
        """An announcement into the outbox (no `ops` URL set), once."""
        try:
            with session_scope(self.db) as session:
                session.add(message)
        except IntegrityError:
            pass  # announced by an earlier attempt

    @activity.defn(name=ActivityName.CLOSE_REVIEW_TASK)
    def close_review_task(self, change: ReviewTaskChange) -> None:
        """Record the decision, the expiry, or the task's closing because its run ended
        (`closed`, the reason in `note`) on the task."""
        self._change(change, escalate=False)

    def _change(self, change: ReviewTaskChange, *, escalate: bool) -> None:
        with session_scope(self.db) as session:
            task = session.get(ReviewTask, change.task_id)
            if task is None:
                raise ApplicationError(
                    f"review task {change.task_id} does not exist",
                    type=ErrorType.UNKNOWN_REVIEW_TASK,
                    non_retryable=True,
                )
            if change.status == "closed" and task.status == "decided":
                # A reviewer decided just as the run ended: the decision and its note stand.
                return
            task.status = change.status
            if escalate:
                task.escalated = True
                task.queue = change.queue or task.queue
                task.due_at = change.due_at
                task.claimed_by = None
            if change.decision is not None:
                task.decision = change.decision
                task.reviewer = change.reviewer
                task.note = change.note
            elif change.note is not None:
                task.note = change.note  # why the task closed without a decision
            if change.status != "open":
                task.decided_at = utcnow()
            session.add(task)
            if escalate or change.status != "decided":  # a decision: the desk logged it
                session.flush()
                append(session, [_change_record(task, escalate=escalate)])


def _change_record(task: ReviewTask, *, escalate: bool) -> Record:
    """An escalation, an expiry or a closing of ``task`` as an audit entry (the reason
    only as its SHA-256: it may quote the run)."""
    return Record(
        kind="review.escalated" if escalate else f"review.{task.status}",
        subject=f"review:{task.id}",
        actor="journeys",
        customer=task.customer_id,
        details={
            "run": task.run_id,
            "journey": task.journey_id,
            "step": task.step_id,
            "queue": task.queue,
            "status": task.status,
            "note_sha256": digest(task.note),
        },
    )
