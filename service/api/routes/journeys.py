"""Journeys: GET /v1/journeys, the active plans and how many runs each version runs;
GET /v1/journeys/{id}/stats and /funnel, a journey's numbers (issue #19), as JSON or as
CSV (``?format=csv`` or ``Accept: text/csv``: `STATS_CSV_COLUMNS`).

Lives here: the journey views, the routes, the CSV form. Not here: deploying plans (the
CLI, `engine.database.activate_plan`), counting (`engine.stats`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import func
from sqlmodel import Session, col, select

from engine.database import PlanVersion, Run, active_plans
from engine.plan import Plan
from engine.stats import funnel, journey_stats
from engine.stats_models import FunnelStats, JourneyStats
from service.api.deps import SCOPE_REFUSED, SessionDep, require_read
from service.api.errors import ERROR_RESPONSES, NO_NUL, problem, responses

__all__ = [
    "STATS_CSV_COLUMNS",
    "JourneyList",
    "JourneySummary",
    "funnel_csv_rows",
    "router",
    "stats_csv_rows",
]


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


# ----------------------------------------------------------------------------- numbers

STATS_CSV_COLUMNS = ("section", "item", "sub", "metric", "value")
"""The CSV form of a journey's numbers: one number a row, a spreadsheet's pivot away from
any table. ``section`` is journey, totals, outcome, conversions, step, edge, send, review,
experiment or funnel; ``item`` the step (outcome, split, ...) it is about; ``sub`` the
channel, the edge's target or the arm; ``metric`` the number's name (``reached``,
``p50_seconds``, ``skipped:no_consent``, ``decided:approve``, ...). Empty values are
numbers not known (no sample)."""

_CSV_TYPES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}}
}

JourneyId = Annotated[str, Path(max_length=100, pattern=NO_NUL, description="The journey's id.")]
Version = Annotated[
    str | None,
    Query(max_length=32, pattern=NO_NUL, description="One version (default: all versions)."),
]
From = Annotated[
    datetime | None,
    Query(
        alias="from",
        description="Runs that entered at or after this time (ISO 8601; UTC if no offset).",
    ),
]
To = Annotated[
    datetime | None,
    Query(alias="to", description="Runs that entered before this time (ISO 8601)."),
]
Format = Annotated[
    Literal["json", "csv"] | None,
    Query(
        alias="format",
        description="csv: rows of (section, item, sub, metric, value); also Accept: text/csv.",
    ),
]


def _versions(session: Session, journey_id: str) -> list[PlanVersion]:
    """The journey's stored plan versions; 404 naming it when there is none."""
    rows = list(session.exec(select(PlanVersion).where(PlanVersion.journey_id == journey_id)))
    if not rows:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no journey with id {journey_id!r}")
    return rows


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _window_problem(
    rows: list[PlanVersion], version: str | None, start: datetime | None, end: datetime | None
) -> JSONResponse | None:
    if version is not None and version not in {row.version for row in rows}:
        known = ", ".join(sorted(row.version for row in rows))
        return problem("version", f"the journey has no version {version!r} (it has: {known})")
    if start is not None and end is not None and start > end:
        return problem("from", "is after to")
    return None


def _wants_csv(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "csv"
    accept = request.headers.get("accept", "")
    return "text/csv" in accept and "application/json" not in accept


def _csv(rows: Iterator[tuple[Any, ...]], name: str) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(STATS_CSV_COLUMNS)
    for row in rows:
        writer.writerow(["" if value is None else value for value in row])
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'inline; filename="{name}.csv"'},
    )


def stats_csv_rows(stats: JourneyStats) -> Iterator[tuple[Any, ...]]:
    """`STATS_CSV_COLUMNS` rows of a journey's numbers."""
    yield ("journey", stats.journey_id, "", "version", stats.version or "all")
    yield ("journey", stats.journey_id, "", "from", _iso(stats.window_from))
    yield ("journey", stats.journey_id, "", "to", _iso(stats.window_to))
    yield ("totals", "", "", "entries", stats.entries)
    yield ("totals", "", "", "active", stats.active)
    for outcome, count in stats.outcomes.items():
        yield ("outcome", outcome, "", "runs", count)
    conversions = stats.conversions
    yield ("conversions", "", "", "count", conversions.count)
    yield ("conversions", "", "", "rate", conversions.rate)
    yield ("conversions", "", "", "value", conversions.value)
    for step, numbers in stats.steps.items():
        for metric, value in numbers.model_dump().items():
            yield ("step", step, "", metric, value)
    for edge in stats.edges:
        yield ("edge", edge.source, edge.target, "count", edge.count)
    yield from _sends_rows(stats)
    yield from _reviews_rows(stats)
    yield from _experiments_rows(stats)


def _sends_rows(stats: JourneyStats) -> Iterator[tuple[Any, ...]]:
    for step, channels in stats.sends.items():
        for channel, sends in channels.items():
            yield ("send", step, channel, "attempted", sends.attempted)
            yield ("send", step, channel, "sent", sends.sent)
            yield ("send", step, channel, "failed", sends.failed)
            for reason, count in sends.skipped.items():
                yield ("send", step, channel, f"skipped:{reason}", count)


def _reviews_rows(stats: JourneyStats) -> Iterator[tuple[Any, ...]]:
    for step, review in stats.reviews.items():
        yield ("review", step, "", "opened", review.opened)
        for decision, count in review.decided.items():
            yield ("review", step, "", f"decided:{decision}", count)
        yield ("review", step, "", "escalated", review.escalated)
        yield ("review", step, "", "timed_out", review.timed_out)
        yield ("review", step, "", "p50_seconds_to_decision", review.p50_seconds_to_decision)
        yield ("review", step, "", "p90_seconds_to_decision", review.p90_seconds_to_decision)


def _experiments_rows(stats: JourneyStats) -> Iterator[tuple[Any, ...]]:
    for name, experiment in stats.experiments.items():
        for arm, numbers in experiment.arms.items():
            for metric, value in numbers.model_dump().items():
                yield ("experiment", name, arm, metric, value)
        yield ("experiment", name, "", "control_arm", experiment.control)
        yield ("experiment", name, "", "test", experiment.test)
        yield ("experiment", name, "", "p_value", experiment.p_value)
        yield ("experiment", name, "", "winner", experiment.winner)
        yield ("experiment", name, "", "warning", experiment.warning)


def funnel_csv_rows(result: FunnelStats) -> Iterator[tuple[Any, ...]]:
    """`STATS_CSV_COLUMNS` rows of a funnel."""
    yield ("journey", result.journey_id, "", "version", result.version or "all")
    yield ("totals", "", "", "entries", result.entries)
    for number, step in enumerate(result.steps, 1):
        yield ("funnel", step.step, str(number), "reached", step.reached)
        yield ("funnel", step.step, str(number), "rate_from_entry", step.rate_from_entry)
        yield ("funnel", step.step, str(number), "rate_from_previous", step.rate_from_previous)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


@router.get(
    "/{journey_id}/stats",
    summary="A journey's numbers",
    response_model=JourneyStats,
    responses={**_CSV_TYPES, **responses(404, _404="No such journey.")},
)
def stats(
    session: SessionDep,
    request: Request,
    journey_id: JourneyId,
    version: Version = None,
    start: From = None,
    end: To = None,
    fmt: Format = None,
) -> Any:
    """Of the journey's runs (of one version, or all) that entered in [from, to): entries,
    runs active, ends by outcome, conversions; per step the runs that reached it, wait
    there now, left there, and the time spent there (p50, p90); moves between steps; per
    send step and channel the results; per review step the decisions; each split's and
    the holdout's arms (docs/operations.md, "Journey numbers")."""
    rows = _versions(session, journey_id)
    start, end = _utc(start), _utc(end)
    refused = _window_problem(rows, version, start, end)
    if refused is not None:
        return refused
    result = journey_stats(session, journey_id, version=version, start=start, end=end)
    if _wants_csv(request, fmt):
        return _csv(stats_csv_rows(result), f"{journey_id}-stats")
    return result


@router.get(
    "/{journey_id}/funnel",
    summary="A journey's funnel through some of its steps",
    response_model=FunnelStats,
    responses={**_CSV_TYPES, **responses(404, _404="No such journey.")},
)
def journey_funnel(
    session: SessionDep,
    request: Request,
    journey_id: JourneyId,
    steps: Annotated[
        str,
        Query(
            max_length=2000,
            pattern=NO_NUL,
            description="Step ids in order, comma-separated: `steps=offer,clicked,bought`.",
        ),
    ],
    version: Version = None,
    start: From = None,
    end: To = None,
    fmt: Format = None,
) -> Any:
    """Of the runs that entered in [from, to), how many reached the first step, then the
    second after it, and so on, in the order of their paths."""
    rows = _versions(session, journey_id)
    start, end = _utc(start), _utc(end)
    refused = _window_problem(rows, version, start, end)
    if refused is not None:
        return refused
    wanted = [step.strip() for step in steps.split(",") if step.strip()]
    if not wanted:
        return problem("steps", "names no step: give step ids, comma-separated")
    known = {"entry"}
    for row in rows:
        if version is None or row.version == version:
            known.update(Plan.model_validate_json(row.plan_json).steps)
    unknown = [step for step in wanted if step not in known]
    if unknown:
        return problem("steps", f"the journey has no step {unknown[0]!r}")
    result = funnel(session, journey_id, wanted, version=version, start=start, end=end)
    if _wants_csv(request, fmt):
        return _csv(funnel_csv_rows(result), f"{journey_id}-funnel")
    return result
