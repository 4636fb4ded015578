"""Runs: GET /v1/runs (the runs table, filtered, also by split arm via `run_arms`) and
GET /v1/runs/{run_id} (one run with a page of its recorded path, from `run_path`, and,
when the workflow answers its `state` query, its live state and the entries it has not
recorded yet).

Lives here: the run views and routes, and `temporal_ui_url` (the console links the same
page). Not here: how runs are recorded (the workflow's activities, `service.router`).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlmodel import col
from temporalio.client import Client

from engine.database import Run, RunArm, session_scope
from engine.payloads import QUERY_STATE
from engine.run_path import RUN_COLUMNS, PathPage, path_length, read_path_page, run_without_path
from engine.settings import RuntimeSettings
from service.api.deps import (
    SCOPE_REFUSED,
    DatabaseDep,
    SessionDep,
    SettingsDep,
    TemporalClientDep,
    require_read,
)
from service.api.errors import ERROR_RESPONSES, NO_NUL, problem, responses

__all__ = ["LiveRunState", "RunDetail", "RunList", "RunSummary", "router", "temporal_ui_url"]

log = logging.getLogger(__name__)

TEMPORAL_QUERY_TIMEOUT_SECONDS = 3.0
PATH_PAGE_DEFAULT = 1000
PATH_PAGE_MAX = 5000


class RunSummary(BaseModel):
    """A run as the runs table records it."""

    run_id: str
    workflow_id: str
    journey_id: str
    version: str
    customer_id: str
    key: str | None
    status: str
    step: str | None
    outcome: str | None
    holdout: bool
    trigger_message_id: str | None
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None

    @classmethod
    def from_row(cls, row: Run) -> RunSummary:
        return cls.model_validate(row.model_dump(exclude={"path"}))


class RunList(BaseModel):
    runs: list[RunSummary]


class LiveRunState(BaseModel):
    """What the running workflow says about itself (its `state` query)."""

    model_config = ConfigDict(extra="ignore")

    status: str | None = None
    outcome: str | None = None
    current_step: str | None = None
    waiting_for: str | None = None
    path: list[dict[str, Any]] = Field(
        default_factory=list, description="The entries the run has not recorded yet."
    )
    path_start: int | None = Field(
        default=None,
        description="The position of `path`'s first entry in the run's whole path "
        "(null: a worker that does not say).",
    )
    vars: dict[str, Any] = Field(default_factory=dict)
    scores: dict[str, Any] = Field(default_factory=dict)
    pending_events: int | None = Field(
        default=None, description="Events the run holds queued, not taken by a wait yet."
    )
    generation: int | None = Field(
        default=None, description="How many times the run has continued as new."
    )
    steps: int | None = Field(
        default=None, description="Steps taken, across generations (bounded by `max_steps`)."
    )


class RunDetail(RunSummary):
    """One run: the stored row, a page of its path, and its live state when reachable."""

    current_run_id: str | None = Field(
        default=None,
        description="Temporal's run id of the generation now running (`run_id` is the "
        "first generation's, the run's id across continue-as-new).",
    )
    path: list[dict[str, Any]] = Field(
        description="The path's entries after position `path_after`, in order, at most "
        "`path_limit`: the recorded ones, then (on the page that reaches the end) those "
        "the running workflow has not recorded yet."
    )
    path_total: int = Field(description="How many entries of the path are recorded.")
    path_next: int | None = Field(
        default=None,
        description="The `path_after` of the next page; null: this page reaches the end.",
    )
    live: LiveRunState | None = Field(
        default=None, description="Null when the workflow could not be queried."
    )
    temporal_ui: str | None = Field(default=None, description="The run in Temporal's Web UI.")


def temporal_ui_url(settings: RuntimeSettings, run: Run) -> str:
    """The history page, in Temporal's Web UI, of the run's generation now running."""
    run_id = run.current_run_id or run.run_id
    return (
        f"{settings.temporal_ui}/namespaces/{quote(settings.temporal_namespace)}"
        f"/workflows/{quote(run.workflow_id, safe='')}/{quote(run_id, safe='')}/history"
    )


router = APIRouter(
    prefix="/v1/runs",
    tags=["runs"],
    dependencies=[Depends(require_read)],
    responses={**ERROR_RESPONSES, **SCOPE_REFUSED},
)


@router.get(
    "",
    summary="List runs, newest first",
    response_model=RunList,
)
def list_runs(
    session: SessionDep,
    customer: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    journey: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    run_status: Annotated[
        Literal["running", "completed", "exited", "expired", "failed"] | None,
        Query(alias="status"),
    ] = None,
    split: Annotated[
        str | None,
        Query(
            max_length=100,
            pattern=NO_NUL,
            description="A split step's id: only runs that passed it (with `arm`: in that arm).",
        ),
    ] = None,
    arm: Annotated[
        str | None,
        Query(max_length=100, pattern=NO_NUL, description="An arm of `split`; needs `split`."),
    ] = None,
    holdout: Annotated[
        bool | None, Query(description="true: only held-out runs; false: only the others.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> RunList | JSONResponse:
    """Runs from the runs table, filtered by customer id, journey id, status, the arm a
    split put them in, and whether the journey's holdout kept them out."""
    if arm is not None and split is None:
        return problem("arm", "needs split: the id of the split step the arm belongs to")
    # The row's columns but its legacy JSON path: a list never shows a path.
    query = select(*RUN_COLUMNS)
    if customer is not None:
        query = query.where(col(Run.customer_id) == customer)
    if journey is not None:
        query = query.where(col(Run.journey_id) == journey)
    if run_status is not None:
        query = query.where(col(Run.status) == run_status)
    if split is not None:
        # A join, not a subquery: each run has at most one row per split in `run_arms`.
        query = query.join(RunArm, col(RunArm.run_id) == col(Run.run_id)).where(
            col(RunArm.step_id) == split
        )
        if arm is not None:
            query = query.where(col(RunArm.arm) == arm)
    if holdout is not None:
        query = query.where(col(Run.holdout) == holdout)
    query = query.order_by(col(Run.started_at).desc(), col(Run.run_id)).limit(limit)
    rows = session.connection().execute(query).mappings().all()
    return RunList(runs=[RunSummary.model_validate(dict(row)) for row in rows])


@router.get(
    "/{run_id}",
    summary="One run, a page of its path, and its live state",
    responses=responses(404, _404="No such run."),
)
async def get_run(
    run_id: Annotated[
        str, Path(min_length=1, max_length=100, pattern=NO_NUL, description="Temporal run id")
    ],
    db: DatabaseDep,
    settings: SettingsDep,
    client: TemporalClientDep,
    path_after: Annotated[
        int,
        Query(
            ge=-1,
            le=2**31 - 1,
            description="Path entries after this position (0-based); -1: from the first.",
        ),
    ] = -1,
    path_limit: Annotated[
        int,
        Query(ge=1, le=PATH_PAGE_MAX, description="At most this many path entries."),
    ] = PATH_PAGE_DEFAULT,
) -> RunDetail:
    """The stored row and a page of the run's path and, when the workflow answers its
    `state` query, its current step, variables and scores.

    A run's path can be long (a run that goes on for months): it comes in pages.
    `path` holds the entries after position `path_after` (default -1: from the first),
    at most `path_limit` (1 to 5000, default 1000) of them; `path_total` is how many
    entries are recorded; `path_next`, when not null, is the `path_after` that asks for
    the next page. The page that reaches the end of the recorded path also has the
    entries the running workflow has not recorded yet (from its `state` query), after
    the recorded ones."""

    def load() -> tuple[Run | None, PathPage, int]:
        with session_scope(db) as session:
            row = run_without_path(session, run_id)
            if row is None:
                return None, PathPage(entries=[], first=None, next_after=None), 0
            page = read_path_page(session, run_id, after=path_after, limit=path_limit)
            return row, page, path_length(session, run_id)

    row, page, total = await asyncio.to_thread(load)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run with id {run_id!r}")
    live = await _live_state(client, row)
    path, path_next = list(page.entries), page.next_after
    if path_next is None and live is not None:
        path, path_next = _with_live_tail(
            path, live, after=max(path_after, total - 1), room=path_limit - len(path)
        )
    return RunDetail(
        **RunSummary.from_row(row).model_dump(),
        current_run_id=row.current_run_id,
        path=path,
        path_total=total,
        path_next=path_next,
        temporal_ui=temporal_ui_url(settings, row),
        live=live,
    )


def _with_live_tail(
    path: list[dict[str, Any]], live: LiveRunState, *, after: int, room: int
) -> tuple[list[dict[str, Any]], int | None]:
    """``path`` (which reaches the end of what is recorded) followed by the live entries
    at positions after ``after``, as many as there is ``room`` for, and the ``path_after``
    of the page after (None: none). A live state that does not say where its entries
    start cannot be placed: nothing is added."""
    if live.path_start is None or not live.path:
        return path, None
    tail = [
        (position, entry)
        for position, entry in enumerate(live.path, live.path_start)
        if position > after
    ]
    shown = tail[: max(room, 0)]
    path = path + [entry for _, entry in shown]
    if len(shown) < len(tail):
        return path, (shown[-1][0] if shown else after)
    return path, None


async def _live_state(client: Client | None, row: Run) -> LiveRunState | None:
    if client is None:
        return None
    try:
        # The generation now running: an older one, continued as new, answers no query.
        handle = client.get_workflow_handle(
            row.workflow_id, run_id=row.current_run_id or row.run_id
        )
        answer = await asyncio.wait_for(
            handle.query(
                QUERY_STATE, rpc_timeout=timedelta(seconds=TEMPORAL_QUERY_TIMEOUT_SECONDS)
            ),
            TEMPORAL_QUERY_TIMEOUT_SECONDS + 1,
        )
        return LiveRunState.model_validate(answer)
    except Exception as error:
        # Closed long ago, no worker, Temporal down: the row alone still answers.
        log.info("state query for %s failed: %s", row.workflow_id, type(error).__name__)
        return None
