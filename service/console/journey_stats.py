"""The console's journey numbers (issue #19), for those with ``view_stats``: the overview
(``/console/stats``: each active journey's entries over the last 7 days, conversion rate,
a small trend, and alerts: a send step failing above 5%, review tasks past their SLA) and
a journey's page (``/console/journeys/{id}/stats?version=&from=&to=``): the journey map
drawn from the version's plan by `engine.graph.to_svg` with live counts, the funnel and
a per-day trend (Vega-Lite charts), the experiments with their verdicts, the send and
review tables, a version selector and a date range.

The numbers are `engine.stats`'s (`journey_stats`, `funnel`), in the shapes of
`engine.stats_models`; the module is imported when a page is asked for, so the console
starts without it. Charts are Vega-Lite specs built here, put in a ``data-spec``
attribute and drawn by ``/console/static/journey_charts.js`` with the vendored Vega (no
network, no eval: the expression interpreter). The map is server-side SVG, in the page.

Not here: sign-in, the page frame and refusals (`service.console.routes`), the numbers
themselves (`engine.stats`), the map's layout (`engine.graph`).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse
from markupsafe import Markup
from sqlalchemy.engine import Engine
from sqlmodel import col, func, select

from engine.database import PlanVersion, ReviewTask, session_scope
from engine.durations import format_duration
from engine.graph import MapCounts, edges_of, to_svg
from engine.plan import Plan
from engine.stats_models import FunnelStats, JourneyStats
from engine.timestamps import utcnow
from service.api.deps import DatabaseDep
from service.console.journeys import active_plans
from service.console.routes import _page, _refusal, _signed_in

__all__ = ["router"]

PERMISSION = "view_stats"
SEND_FAILURE_ALERT = 0.05
"""A send step whose failed / attempted is above this is an alert on the overview."""
OVERVIEW_DAYS = 7
DEFAULT_DAYS = 30
MAX_TREND_DAYS = 31
"""The journey page's trend shows at most this many days (the range's last ones)."""
FUNNEL_STEPS = 8

router = APIRouter(prefix="/console", include_in_schema=False)


# ----------------------------------------------------------------------------- the numbers


NO_NUMBERS = "The journey numbers are not available: this build has no engine.stats."


def _stats_module() -> Any:
    """`engine.stats`, imported when first needed (the console starts without it)."""
    return importlib.import_module("engine.stats")


def _has_numbers() -> bool:
    try:
        _stats_module()
    except ImportError:
        return False
    return True


async def _call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a numbers function off the event loop (or await it, were it async)."""
    if inspect.iscoroutinefunction(function):
        return await function(*args, **kwargs)
    return await asyncio.to_thread(function, *args, **kwargs)


async def _journey_stats(
    db: Engine, journey_id: str, version: str | None, start: datetime, end: datetime
) -> JourneyStats:
    stats: JourneyStats = await _call(
        _stats_module().journey_stats, db, journey_id, version=version, start=start, end=end
    )
    return stats


async def _funnel(
    db: Engine,
    journey_id: str,
    steps: list[str],
    version: str | None,
    start: datetime,
    end: datetime,
) -> FunnelStats:
    found: FunnelStats = await _call(
        _stats_module().funnel, db, journey_id, steps, version=version, start=start, end=end
    )
    return found


@dataclass(frozen=True)
class Day:
    day: date
    entries: int
    conversions: int


async def _trend(
    db: Engine, journey_id: str, version: str | None, start: datetime, end: datetime
) -> list[Day]:
    """Entries and conversions per day (UTC) over the window's last days."""
    first = max(start, end - timedelta(days=MAX_TREND_DAYS))
    days: list[tuple[datetime, datetime]] = []
    at = datetime(first.year, first.month, first.day, tzinfo=UTC)
    while at < end:
        days.append((max(at, start), min(at + timedelta(days=1), end)))
        at += timedelta(days=1)
    found = await asyncio.gather(
        *(_journey_stats(db, journey_id, version, lo, hi) for lo, hi in days)
    )
    return [
        Day(lo.date(), s.entries, s.conversions.count)
        for (lo, _), s in zip(days, found, strict=True)
    ]


# ----------------------------------------------------------------------------- the plans


def _plan_versions(db: Engine, journey_id: str) -> list[PlanVersion]:
    with session_scope(db) as session:
        return list(
            session.exec(
                select(PlanVersion)
                .where(PlanVersion.journey_id == journey_id)
                .order_by(col(PlanVersion.created_at).desc())
            ).all()
        )


def _overdue_reviews(db: Engine, now: datetime) -> dict[str, dict[str, int]]:
    """Open review tasks past their SLA (``due_at`` before now), per journey and step."""
    with session_scope(db) as session:
        rows = session.exec(
            select(ReviewTask.journey_id, ReviewTask.step_id, func.count())
            .where(ReviewTask.status == "open")
            .where(col(ReviewTask.due_at).is_not(None))
            .where(col(ReviewTask.due_at) < now)
            .group_by(col(ReviewTask.journey_id), col(ReviewTask.step_id))
        ).all()
    found: dict[str, dict[str, int]] = {}
    for journey_id, step_id, count in rows:
        found.setdefault(journey_id, {})[step_id] = int(count)
    return found


# ----------------------------------------------------------------------------- charts


def _funnel_spec(funnel: FunnelStats) -> dict[str, Any]:
    values: list[dict[str, Any]] = [
        {"order": 0, "step": "entered", "reached": funnel.entries, "rate": 1.0},
        *(
            {
                "order": i + 1,
                "step": s.step,
                "reached": s.reached,
                "rate": s.rate_from_entry,
            }
            for i, s in enumerate(funnel.steps)
        ),
    ]
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "description": "Funnel: runs that entered and reached each step in turn",
        "width": 440,
        "height": {"step": 26},
        "data": {"values": values},
        "encoding": {
            "y": {
                "field": "step",
                "type": "nominal",
                "sort": [v["step"] for v in values],
                "title": None,
            },
            "x": {"field": "reached", "type": "quantitative", "title": "runs"},
        },
        "layer": [
            {"mark": {"type": "bar", "color": "#1565c0"}},
            {
                "mark": {"type": "text", "align": "left", "dx": 4},
                "encoding": {"text": {"field": "reached", "type": "quantitative"}},
            },
        ],
    }


def _trend_spec(days: list[Day], *, small: bool = False) -> dict[str, Any]:
    values = [
        {"day": d.day.isoformat(), "series": series, "count": count}
        for d in days
        for series, count in (("entries", d.entries), ("conversions", d.conversions))
    ]
    spec: dict[str, Any] = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "description": "Entries and conversions per day",
        "data": {"values": values},
        "mark": {"type": "line", "point": not small},
        "encoding": {
            "x": {"field": "day", "type": "temporal", "timeUnit": "yearmonthdate", "title": None},
            "y": {"field": "count", "type": "quantitative", "title": "runs"},
            "color": {
                "field": "series",
                "type": "nominal",
                "scale": {"domain": ["entries", "conversions"], "range": ["#1565c0", "#2e7d32"]},
                "title": None,
                "legend": {"orient": "bottom"},
            },
        },
        "width": 480,
        "height": 180,
    }
    if small:
        spec.update(width=140, height=32, padding=2)
        spec["config"] = {"view": {"stroke": None}}
        for channel in ("x", "y"):
            spec["encoding"][channel]["axis"] = None
        spec["encoding"]["color"]["legend"] = None
    return spec


def _spec_attr(spec: dict[str, Any]) -> str:
    return json.dumps(spec, separators=(",", ":"), sort_keys=True)


# ----------------------------------------------------------------------------- pages


@dataclass(frozen=True)
class Alert:
    journey_id: str
    kind: str  # "send" or "review"
    text: str


@dataclass
class OverviewRow:
    journey_id: str
    name: str | None
    version: str
    entries: int
    conversions: int
    rate: float | None
    trend: str
    alerts: list[Alert] = field(default_factory=list)


def _send_alerts(journey_id: str, stats: JourneyStats) -> list[Alert]:
    alerts = []
    for step, channels in sorted(stats.sends.items()):
        for channel, sends in sorted(channels.items()):
            if sends.attempted and sends.failed / sends.attempted > SEND_FAILURE_ALERT:
                share = sends.failed / sends.attempted
                alerts.append(
                    Alert(
                        journey_id,
                        "send",
                        f"{step} on {channel}: {sends.failed} of {sends.attempted} sends "
                        f"failed ({share:.1%})",
                    )
                )
    return alerts


def _review_alerts(journey_id: str, overdue: dict[str, int]) -> list[Alert]:
    return [
        Alert(
            journey_id,
            "review",
            f"{step}: {count} review task{'s' if count != 1 else ''} past the SLA, still open",
        )
        for step, count in sorted(overdue.items())
    ]


@router.get("/stats", response_class=HTMLResponse)
async def overview_page(request: Request, db: DatabaseDep) -> Response:
    viewer = await _signed_in(request, PERMISSION)
    if isinstance(viewer, Response):
        return viewer
    if not _has_numbers():
        return _refusal(request, viewer, 503, NO_NUMBERS)
    now = utcnow()
    start = now - timedelta(days=OVERVIEW_DAYS)
    plans = await asyncio.to_thread(active_plans, db)
    overdue = await asyncio.to_thread(_overdue_reviews, db, now)
    rows = []
    for plan in plans:
        stats = await _journey_stats(db, plan.journey_id, None, start, now)
        days = await _trend(db, plan.journey_id, None, start, now)
        rows.append(
            OverviewRow(
                journey_id=plan.journey_id,
                name=plan.name,
                version=plan.version,
                entries=stats.entries,
                conversions=stats.conversions.count,
                rate=stats.conversions.rate,
                trend=_spec_attr(_trend_spec(days, small=True)),
                alerts=_send_alerts(plan.journey_id, stats)
                + _review_alerts(plan.journey_id, overdue.get(plan.journey_id, {})),
            )
        )
    return _page(
        request,
        "stats_overview.html",
        viewer=viewer,
        rows=rows,
        alerts=[a for row in rows for a in row.alerts],
        days=OVERVIEW_DAYS,
        threshold=SEND_FAILURE_ALERT,
    )


def _parse_day(text: str | None) -> date | None:
    if not text:
        return None
    return date.fromisoformat(text.strip()[:10])


def _main_path(plan: Plan, stats: JourneyStats) -> list[str]:
    """The funnel's default steps: from the start, each time the way most runs took
    (the plan's first way when none is counted), until the end or a step seen before."""
    taken: dict[tuple[str, str], int] = {}
    for edge in stats.edges:
        taken[(edge.source, edge.target)] = taken.get((edge.source, edge.target), 0) + edge.count
    ways: dict[str, list[str]] = {}
    for way in edges_of(plan):
        ways.setdefault(way.source, []).append(way.target)
    path: list[str] = []
    step = plan.start
    while step in plan.steps and step not in path and len(path) < FUNNEL_STEPS:
        path.append(step)
        options = ways.get(step, [])
        if not options:
            break
        counted = [(taken.get((step, target), 0), -i, target) for i, target in enumerate(options)]
        step = max(counted)[2]
    return path


def _seconds(value: float | None) -> str:
    return format_duration(int(value)) if value is not None else "–"


def _percent(value: float | None, digits: int = 1) -> str:
    return f"{value:.{digits}%}" if value is not None else "–"


def _verdict(experiment: Any) -> str:
    if experiment.winner:
        p = f" (p = {experiment.p_value:.3g})" if experiment.p_value is not None else ""
        return f"{experiment.winner} wins, significant at 95%{p}"
    if experiment.p_value is not None:
        return f"No significant difference yet (p = {experiment.p_value:.3g})"
    return "Not enough data for a test yet"


@router.get("/journeys/{journey_id}/stats", response_class=HTMLResponse)
async def journey_page(
    request: Request,
    db: DatabaseDep,
    journey_id: str,
    version: Annotated[str | None, Query(max_length=32)] = None,
    start_text: Annotated[str | None, Query(alias="from", max_length=32)] = None,
    end_text: Annotated[str | None, Query(alias="to", max_length=32)] = None,
    steps: Annotated[str | None, Query(max_length=2000)] = None,
) -> Response:
    viewer = await _signed_in(request, PERMISSION)
    if isinstance(viewer, Response):
        return viewer
    if not _has_numbers():
        return _refusal(request, viewer, 503, NO_NUMBERS)
    journey_id = journey_id[:100]
    versions = await asyncio.to_thread(_plan_versions, db, journey_id)
    if not versions:
        return _refusal(request, viewer, 404, f"No journey {journey_id!r} was deployed.")
    version = version or None
    if version is not None and version not in {v.version for v in versions}:
        return _refusal(request, viewer, 404, f"Journey {journey_id!r} has no version {version!r}.")
    try:
        first, last = _parse_day(start_text), _parse_day(end_text)
    except ValueError:
        return _refusal(request, viewer, 400, "Dates are written YYYY-MM-DD.")
    today = utcnow().date()
    last = last or today
    first = first or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        return _refusal(request, viewer, 400, "The range's first day is after its last.")
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)

    shown = next(
        (v for v in versions if v.version == version),
        next((v for v in versions if v.active), versions[0]),
    )
    plan = Plan.model_validate_json(shown.plan_json)
    stats = await _journey_stats(db, journey_id, version, start, end)
    wanted = [s for s in (steps or "").split(",") if s in plan.steps] or _main_path(plan, stats)
    funnel = await _funnel(db, journey_id, wanted, version, start, end)
    days = await _trend(db, journey_id, version, start, end)
    map_svg = Markup(to_svg(plan, MapCounts.from_stats(stats)))  # to_svg escapes every text
    return _page(
        request,
        "stats_journey.html",
        viewer=viewer,
        journey_id=journey_id,
        plan=plan,
        versions=versions,
        version=version,
        shown_version=shown.version,
        first=first.isoformat(),
        last=last.isoformat(),
        stats=stats,
        funnel=funnel,
        funnel_spec=_spec_attr(_funnel_spec(funnel)),
        trend_spec=_spec_attr(_trend_spec(days)),
        map_svg=map_svg,
        send_alerts=_send_alerts(journey_id, stats),
        seconds=_seconds,
        percent=_percent,
        verdict=_verdict,
        threshold=SEND_FAILURE_ALERT,
    )
