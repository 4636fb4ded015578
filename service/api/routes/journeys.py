"""Journeys: GET /v1/journeys, the active plans and how many runs each version runs.

Lives here: the journey views and the route. Not here: deploying plans (the CLI,
`engine.database.activate_plan`).
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from sqlalchemy import func
from sqlmodel import Session, col, select

from engine.database import Run, active_plans
from engine.plan import Plan
from service.api.deps import SCOPE_REFUSED, SessionDep, require_read
from service.api.errors import ERROR_RESPONSES

__all__ = ["JourneyList", "JourneySummary", "router"]


class JourneySummary(BaseModel):
    id: str
    name: str | None
    version: str
    entry_event: str
    steps: int
    activated_at: datetime | None
    running: dict[str, int] = Field(
        description="Running runs per plan version (older versions keep theirs)."
    )


class JourneyList(BaseModel):
    journeys: list[JourneySummary]


router = APIRouter(
    prefix="/v1/journeys",
    tags=["journeys"],
    dependencies=[Depends(require_read)],
    responses={**ERROR_RESPONSES, **SCOPE_REFUSED},
)


def _running_per_version(session: Session) -> dict[str, dict[str, int]]:
    counts = session.exec(
        select(Run.journey_id, Run.version, func.count())
        .where(Run.status == "running")
        .group_by(col(Run.journey_id), col(Run.version))
    ).all()
    running: dict[str, dict[str, int]] = {}
    for journey_id, version, count in counts:
        running.setdefault(journey_id, {})[version] = int(count)
    return running


@router.get("", summary="Active journeys and their running runs")
def list_journeys(session: SessionDep) -> JourneyList:
    """Each active plan (id, name, version, entry event, steps) and how many runs are
    running on each of its versions."""
    running = _running_per_version(session)
    journeys = []
    for row in sorted(active_plans(session), key=lambda r: r.journey_id):
        plan = Plan.model_validate_json(row.plan_json)
        journeys.append(
            JourneySummary(
                id=plan.journey_id,
                name=plan.name,
                version=plan.version,
                entry_event=plan.entry.event,
                steps=len(plan.steps),
                activated_at=row.activated_at,
                running=running.get(plan.journey_id, {}),
            )
        )
    return JourneyList(journeys=journeys)
