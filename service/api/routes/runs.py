"""Runs: GET /v1/runs (the runs table, filtered, also by split arm via `run_arms`) and GET /v1/runs/{run_id} (one run with
its recorded path and, when the workflow answers its `state` query, its live state).

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
from sqlmodel import col, select
from temporalio.client import Client

from engine.database import Run, RunArm, session_scope
from engine.payloads import QUERY_STATE
from engine.settings import RuntimeSettings
from service.api.deps import (
    DatabaseDep,
    SessionDep,
    SettingsDep,
    TemporalClientDep,
    require_api_key,
)
from service.api.errors import ERROR_RESPONSES, NO_NUL, problem, responses

__all__ = ["LiveRunState", "RunDetail", "RunList", "RunSummary", "router", "temporal_ui_url"]

log = logging.getLogger(__name__)

TEMPORAL_QUERY_TIMEOUT_SECONDS = 3.0


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
    path: list[dict[str, Any]] = Field(default_factory=list)
    vars: dict[str, Any] = Field(default_factory=dict)
    scores: dict[str, Any] = Field(default_factory=dict)


class RunDetail(RunSummary):
    """One run: the stored row, its recorded path, and its live state when reachable."""

    path: list[dict[str, Any]]
    live: LiveRunState | None = Field(
        default=None, description="Null when the workflow could not be queried."
    )
    temporal_ui: str | None = Field(default=None, description="The run in Temporal's Web UI.")


def temporal_ui_url(settings: RuntimeSettings, run: Run) -> str:
    """The run's history page in Temporal's Web UI."""
    return (
        f"{settings.temporal_ui}/namespaces/{quote(settings.temporal_namespace)}"
        f"/workflows/{quote(run.workflow_id, safe='')}/{quote(run.run_id, safe='')}/history"
    )


router = APIRouter(
    prefix="/v1/runs",
    tags=["runs"],
    dependencies=[Depends(require_api_key)],
    responses=ERROR_RESPONSES,
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
    query = select(Run)
    if customer is not None:
        query = query.where(Run.customer_id == customer)
    if journey is not None:
        query = query.where(Run.journey_id == journey)
    if run_status is not None:
        query = query.where(Run.status == run_status)
    if split is not None:
        # A join, not a subquery: each run has at most one row per split in `run_arms`.
        query = query.join(RunArm, col(RunArm.run_id) == col(Run.run_id)).where(
            RunArm.step_id == split
        )
        if arm is not None:
            query = query.where(RunArm.arm == arm)
    if holdout is not None:
        query = query.where(Run.holdout == holdout)
    query = query.order_by(col(Run.started_at).desc(), col(Run.run_id)).limit(limit)
    return RunList(runs=[RunSummary.from_row(row) for row in session.exec(query).all()])


@router.get(
    "/{run_id}",
    summary="One run, with its live state",
    responses=responses(404, _404="No such run."),
)
async def get_run(
    run_id: Annotated[
        str, Path(min_length=1, max_length=100, pattern=NO_NUL, description="Temporal run id")
    ],
    db: DatabaseDep,
    settings: SettingsDep,
    client: TemporalClientDep,
) -> RunDetail:
    """The stored row and, when the workflow answers its `state` query, its current
    step, path, variables and scores."""

    def load() -> Run | None:
        with session_scope(db) as session:
            return session.get(Run, run_id)

    row = await asyncio.to_thread(load)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run with id {run_id!r}")
    return RunDetail(
        **RunSummary.from_row(row).model_dump(),
        path=list(row.path),
        temporal_ui=temporal_ui_url(settings, row),
        live=await _live_state(client, row),
    )


async def _live_state(client: Client | None, row: Run) -> LiveRunState | None:
    if client is None:
        return None
    try:
        handle = client.get_workflow_handle(row.workflow_id, run_id=row.run_id)
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
