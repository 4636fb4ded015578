"""The goals of stored plan versions, read once per process (a version never changes):
what `engine.conversions` records and `engine.conversion_counts` counts by."""

from __future__ import annotations

import json
import logging
import threading

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Connection, Table, select

from engine.database import PlanVersion
from engine.plan import GoalPlan

__all__ = ["goals_of", "journey_goals", "plan_goals", "remember"]

log = logging.getLogger(__name__)

_PLAN_VERSIONS: Table = PlanVersion.__table__  # type: ignore[attr-defined]
_GOALS: TypeAdapter[tuple[GoalPlan, ...]] = TypeAdapter(tuple[GoalPlan, ...])


_cache_lock = threading.Lock()
_cached: dict[tuple[str, str], tuple[GoalPlan, ...]] = {}


def goals_of(plan_json: str) -> tuple[GoalPlan, ...]:
    """The goals of a stored plan's JSON (none in plans from before goals)."""
    data = json.loads(plan_json)
    return _GOALS.validate_python(data.get("goals") or ()) if isinstance(data, dict) else ()


def plan_goals(connection: Connection, journey_id: str, version: str) -> tuple[GoalPlan, ...]:
    """The goals of one stored plan version (none if it is not stored); read once per
    process, as a version never changes."""
    with _cache_lock:
        found = _cached.get((journey_id, version))
    if found is not None:
        return found
    plan_json = connection.execute(
        select(_PLAN_VERSIONS.c.plan_json).where(
            _PLAN_VERSIONS.c.journey_id == journey_id, _PLAN_VERSIONS.c.version == version
        )
    ).scalar_one_or_none()
    if plan_json is None:
        return ()
    return remember(journey_id, version, plan_json)


def remember(journey_id: str, version: str, plan_json: str) -> tuple[GoalPlan, ...]:
    try:
        goals = goals_of(plan_json)
    except (ValueError, ValidationError):
        log.warning("stored plan %s@%s has unreadable goals; ignoring them", journey_id, version)
        goals = ()
    with _cache_lock:
        _cached[(journey_id, version)] = goals
    return goals


def journey_goals(
    connection: Connection, journey_id: str, version: str | None = None
) -> dict[str, tuple[GoalPlan, ...]]:
    """The goals of each stored version of a journey (of ``version`` only, if given)."""
    statement = select(_PLAN_VERSIONS.c.version).where(_PLAN_VERSIONS.c.journey_id == journey_id)
    if version is not None:
        statement = statement.where(_PLAN_VERSIONS.c.version == version)
    versions = connection.execute(statement).scalars().all()
    return {v: plan_goals(connection, journey_id, v) for v in versions}
