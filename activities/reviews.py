"""Review-task activities: open a task (rendering its title and details), escalate, close."""

from __future__ import annotations

import functools
import uuid
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from engine.database import ReviewTask, session_scope, utcnow
from engine.errors import ErrorType
from engine.messages import OpenReviewInput, ReviewTaskChange
from rules import CompiledTemplate, RenderError, compile_template

__all__ = ["ReviewActivities"]


@functools.lru_cache(maxsize=1024)
def _template(source: str) -> CompiledTemplate:
    return compile_template(source, html=False)


class ReviewActivities:
    """Review tasks in the database."""

    def __init__(self, *, db: Engine) -> None:
        self.db = db

    @activity.defn(name="open_review_task")
    def open_review_task(self, request: OpenReviewInput) -> str:
        """Open (once per step visit) the task; returns its id."""
        try:
            title = _template(request.title).render(
                request.context, timezone=request.timezone, max_length=300
            )
            details = (
                _template(request.details).render(
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
        with session_scope(self.db) as session:
            existing = session.exec(
                select(ReviewTask).where(
                    ReviewTask.run_id == request.run_id,
                    ReviewTask.step_id == request.step_id,
                    ReviewTask.visit == request.visit,
                )
            ).first()
            if existing is not None:
                return existing.id
            case: dict[str, Any] = {
                "event": request.context.get("event"),
                "trigger": request.context.get("trigger"),
                "scores": request.context.get("scores"),
                "vars": request.context.get("vars"),
                "path": [entry.model_dump(mode="json") for entry in request.path],
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
            return task.id

    @activity.defn(name="escalate_review_task")
    def escalate_review_task(self, change: ReviewTaskChange) -> None:
        """Re-queue an open task (once) at its SLA."""
        self._change(change, escalate=True)

    @activity.defn(name="close_review_task")
    def close_review_task(self, change: ReviewTaskChange) -> None:
        """Record the decision (or the expiry) on the task."""
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
            if change.status != "open":
                task.decided_at = utcnow()
            session.add(task)
