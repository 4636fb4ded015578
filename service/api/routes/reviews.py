"""The review API: the same queue and decisions as the console, for tools and scripts.

Reading needs an API key or a user allowed to see reviews; claiming, releasing and
deciding need a person with the ops or supervisor role, who authenticates with HTTP Basic
``name:password`` (an API key names a system, not a reviewer, so it gets a 403 there).
Console cookies are not accepted here, so no cross-site form can act through this API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine

from engine.database import ReviewTask
from service.api.auth import ApiCaller, missing_scope
from service.api.deps import DatabaseDep, ReviewCallerDep, TemporalClientDep
from service.api.errors import ERROR_RESPONSES, NO_NUL, responses
from service.console.auth import client_address
from service.review_desk import (
    MAX_NOTE_LENGTH,
    TaskFilter,
    claim_task,
    decide_task,
    is_breached,
    list_tasks,
    load_case,
    release_task,
    risk_of,
)
from service.users import Viewer

__all__ = ["DecisionRequest", "ReviewList", "ReviewView", "router"]

TaskId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class ReviewView(BaseModel):
    """A review task as the queue shows it."""

    id: str
    queue: str
    title: str
    status: str
    journey_id: str
    customer_id: str
    run_id: str
    workflow_id: str
    step_id: str
    decisions: list[str]
    claimed_by: str | None
    escalated: bool
    risk: float | None = Field(description="The highest model score when the task opened.")
    sla_breached: bool
    due_at: datetime | None
    created_at: datetime
    decided_at: datetime | None
    decision: str | None
    reviewer: str | None
    note: str | None

    @classmethod
    def of(cls, task: ReviewTask) -> ReviewView:
        return cls(
            **task.model_dump(
                include={
                    "id",
                    "queue",
                    "title",
                    "status",
                    "journey_id",
                    "customer_id",
                    "run_id",
                    "workflow_id",
                    "step_id",
                    "decisions",
                    "claimed_by",
                    "escalated",
                    "due_at",
                    "created_at",
                    "decided_at",
                    "decision",
                    "reviewer",
                    "note",
                }
            ),
            risk=risk_of(task),
            sla_breached=is_breached(task),
        )


class ReviewList(BaseModel):
    reviews: list[ReviewView]


class AuditEntry(BaseModel):
    actor: str
    role: str | None
    action: str
    outcome: str
    decision: str | None
    note: str | None
    reason: str | None
    address: str | None
    at: datetime


class ReviewDetail(ReviewView):
    """One task with why it is here (the run's path, scores, event) and its audit trail."""

    details: str | None
    case: dict[str, Any]
    audit: list[AuditEntry]


class DecisionRequest(BaseModel):
    """A reviewer's decision: one of the task's `decisions`, with a note (required to reject)."""

    model_config = ConfigDict(extra="forbid")

    decision: str = Field(min_length=1, max_length=100, pattern=NO_NUL)
    note: str | None = Field(None, max_length=MAX_NOTE_LENGTH, pattern=NO_NUL)


def _reader(caller: Viewer | ApiCaller) -> None:
    if isinstance(caller, ApiCaller) and not caller.allows("read"):
        raise missing_scope("read")
    if isinstance(caller, Viewer) and not caller.can("view_reviews"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {caller.role!r} may not see reviews")


def _person(caller: Viewer | ApiCaller) -> Viewer:
    if not isinstance(caller, Viewer):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "review tasks are worked by people: authenticate with HTTP Basic as your console "
            "user (ops or supervisor), not with an API key",
        )
    # The role is checked by the review desk, which audits the refusal.
    return caller


router = APIRouter(
    prefix="/v1/reviews",
    tags=["reviews"],
    responses={
        **ERROR_RESPONSES,
        **responses(
            403,
            _403="The caller's role may not do this, an API key tried to act, or the key "
            "lacks the `read` scope.",
        ),
        **responses(404, _404="No such task."),
    },
)


@router.get("", summary="The review queue")
async def get_reviews(
    caller: ReviewCallerDep,
    db: DatabaseDep,
    queue: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    status_: Annotated[
        str | None, Query(alias="status", pattern=r"^(open|deciding|decided|expired|closed)$")
    ] = "open",
    breached: bool | None = None,
    min_risk: Annotated[float | None, Query(ge=0, le=1e9)] = None,
    customer: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> ReviewList:
    """Tasks oldest first; `status` defaults to `open`."""
    _reader(caller)
    flt = TaskFilter(
        queue=queue,
        status=status_,
        breached=breached,
        min_risk=min_risk,
        customer=customer,
        limit=limit,
    )
    tasks = await asyncio.to_thread(list_tasks, db, flt)
    return ReviewList(reviews=[ReviewView.of(task) for task in tasks])


@router.get("/{task_id}", summary="One review task, its case and its audit trail")
async def get_review(task_id: TaskId, caller: ReviewCallerDep, db: DatabaseDep) -> ReviewDetail:
    _reader(caller)
    case = await asyncio.to_thread(load_case, db, task_id)
    return ReviewDetail(
        **ReviewView.of(case.task).model_dump(),
        details=case.task.details,
        case=case.task.case,
        audit=[AuditEntry.model_validate(a.model_dump()) for a in case.audit],
    )


# A refusal of the review desk (`ReviewRefused`) becomes its status and message through
# the app's error handlers (`service.api.errors`).


async def _hold(
    work: Callable[..., ReviewTask],
    task_id: str,
    caller: Viewer | ApiCaller,
    db: Engine,
    request: Request,
) -> ReviewView:
    """Claim or release, as the person calling."""
    viewer = _person(caller)
    address = client_address(request)
    task = await asyncio.to_thread(
        lambda: work(db, task_id=task_id, viewer=viewer, address=address)
    )
    return ReviewView.of(task)


@router.post("/{task_id}/claim", summary="Claim a task (ops, supervisor)")
async def claim_review(
    task_id: TaskId, caller: ReviewCallerDep, db: DatabaseDep, request: Request
) -> ReviewView:
    return await _hold(claim_task, task_id, caller, db, request)


@router.post("/{task_id}/release", summary="Give a claimed task back to its queue")
async def release_review(
    task_id: TaskId, caller: ReviewCallerDep, db: DatabaseDep, request: Request
) -> ReviewView:
    return await _hold(release_task, task_id, caller, db, request)


@router.post(
    "/{task_id}/decision",
    summary="Decide a task (ops, supervisor); taken once",
    responses=responses(409, _409="Decided, expired, or claimed by someone else."),
)
async def decide_review(
    task_id: TaskId,
    body: DecisionRequest,
    caller: ReviewCallerDep,
    db: DatabaseDep,
    client: TemporalClientDep,
    request: Request,
) -> ReviewView:
    viewer = _person(caller)
    task = await decide_task(
        db,
        client,
        task_id=task_id,
        viewer=viewer,
        decision=body.decision,
        note=body.note,
        address=client_address(request),
    )
    return ReviewView.of(task)
