"""Goal conversions (issue #19): recorded as goal events are stored, counted from rows.

A journey's `goals:` (`engine.plan.EventGoalPlan`, `OutcomeGoalPlan`) say what converts
a run. An event goal converts a run of the customer when its event comes within the
goal's ``within`` of the run's entry (any status, holdout runs too: the control group is
measured by the same goal, which gives lift against doing nothing). `ConversionRecorder`
writes that as a `run_conversions` row in the transaction that stores the event
(`service.router.EventRouter.ingest`), the first such event per run and goal; a goal
event stored before its run's row (the same batch as the trigger, or during the start)
is found when the router writes the row (`ConversionRecorder.record_started`). An outcome
goal converts a run that ended with that outcome: the runs table says so, at
``ended_at``, and no row is written.

The window from entry decides whether a run converted, for treated and held-out runs
alike (a window from each send would give treated runs more chances than the control
group, whose runs get no sends). Windows from sends are for attribution: `send_attributed`
counts, per send step and channel, the conversions that came within ``within`` after a
send of that step was sent (`deliveries.sent_at`).

A journey's numbers (`engine.stats`) do not read these rows: what a run counts when it
converts is kept in counters as it happens (`engine.conversion_counts`, called from
`ConversionRecorder.record`). `count_conversions`, `conversions_by_arm` and
`send_attributed` count the same from the rows, with SQL aggregates over indexed rows (the
runs of one journey in a window by their covering index, the conversion rows summed per
run and joined to their runs by key, deliveries by their (run, step, visit, channel) key):
the reference the counters are checked against (tests/unit/test_conversion_counts.py).
`conversions_by_run` gives, for some runs, when each converted. A goal's plan version is
read from `plan_versions` once per process (`engine.goals`). Nothing here knows Temporal.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    and_,
    bindparam,
    case,
    exists,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement, UnaryExpression
from sqlalchemy.sql.operators import custom_op

from engine.conversion_counts import recount
from engine.database import (
    Delivery,
    EventRecord,
    PlanVersion,
    Profile,
    Run,
    RunArm,
    RunConversion,
    dialect_insert,
)
from engine.goals import goals_of, journey_goals, plan_goals, remember
from engine.plan import EventGoalPlan, GoalPlan, OutcomeGoalPlan
from engine.stats_models import Conversions
from engine.timestamps import as_utc
from rules import EvaluationError, ExpressionError, cached_expression

__all__ = [
    "ConversionRecorder",
    "conversions_by_arm",
    "conversions_by_run",
    "count_conversions",
    "goals_of",
    "journey_goals",
    "plan_goals",
    "send_attributed",
]

log = logging.getLogger(__name__)

_RUNS: Table = Run.__table__  # type: ignore[attr-defined]
_CONVERSIONS: Table = RunConversion.__table__  # type: ignore[attr-defined]
_PLAN_VERSIONS: Table = PlanVersion.__table__  # type: ignore[attr-defined]
_DELIVERIES: Table = Delivery.__table__  # type: ignore[attr-defined]
_PROFILES: Table = Profile.__table__  # type: ignore[attr-defined]
_ARMS: Table = RunArm.__table__  # type: ignore[attr-defined]
_EVENTS: Table = EventRecord.__table__  # type: ignore[attr-defined]

_CHUNK = 500  # run ids per IN (...): well under every database's limit of parameters

# ----------------------------------------------------------------------------- recording


@dataclass(frozen=True)
class _Candidate:
    """A run an event may convert."""

    run_id: str
    journey_id: str
    version: str
    started_at: datetime


_INSERT_KEYS = ["run_id", "goal"]


class ConversionRecorder:
    """Writes the event-goal conversions of stored events (`record`), in the caller's
    transaction. One per process (the router's); safe to share between threads.

    It knows which journeys have a goal on which event, over every stored version (runs
    of an older version keep its goals), from the versions stored since its last look:
    an event no goal names costs one indexed read of `plan_versions` and nothing else."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen_id = 0
        # event name -> journey id -> the longest `within` of that event's goals (seconds)
        self._by_event: dict[str, dict[str, int]] = {}

    def record(self, connection: Connection, records: Iterable[EventRecord]) -> int:
        """Record the conversions ``records`` (just stored, in this transaction) make;
        how many rows were written or moved to an earlier event."""
        tracked = [r for r in records if r.type == "track" and r.name]
        if not tracked:
            return 0
        self._refresh(connection)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        traits: dict[str, dict[str, Any]] = {}
        for record in tracked:
            journeys = self._by_event.get(record.name or "")
            if not journeys:
                continue
            for row in self._conversions(connection, record, journeys, traits):
                key = (row["run_id"], row["goal"])
                if key not in rows or row["at"] < rows[key]["at"]:
                    rows[key] = row
        return _write(connection, rows)

    def _refresh(self, connection: Connection) -> None:
        rows = connection.execute(
            select(
                _PLAN_VERSIONS.c.id,
                _PLAN_VERSIONS.c.journey_id,
                _PLAN_VERSIONS.c.version,
                _PLAN_VERSIONS.c.plan_json,
            )
            .where(_PLAN_VERSIONS.c.id > self._seen_id)
            .order_by(_PLAN_VERSIONS.c.id)
        ).all()
        if not rows:
            return
        with self._lock:
            by_event = {event: dict(found) for event, found in self._by_event.items()}
            for row in rows:
                for goal in remember(row.journey_id, row.version, row.plan_json):
                    if isinstance(goal, EventGoalPlan):
                        journeys = by_event.setdefault(goal.event, {})
                        longest = max(journeys.get(row.journey_id, 0), goal.within_seconds)
                        journeys[row.journey_id] = longest
            self._by_event = by_event
            self._seen_id = max(self._seen_id, *(row.id for row in rows))

    def _conversions(
        self,
        connection: Connection,
        record: EventRecord,
        journeys: Mapping[str, int],
        traits: dict[str, dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """The rows ``record`` converts: per run of the customer in those journeys that
        entered at most the goal's `within` before it, each goal on it whose `when` holds."""
        at = as_utc(record.timestamp)
        parameters = {
            "customer_id": record.customer_id,
            "journeys": sorted(journeys),
            "earliest": at - timedelta(seconds=max(journeys.values())),
            "latest": at,
        }
        candidates = [
            _Candidate(run_id, journey_id, version, as_utc(started_at))
            for run_id, journey_id, version, started_at in connection.execute(
                _CANDIDATES, parameters
            )
        ]
        rows: list[dict[str, Any]] = []
        context: dict[str, Any] | None = None
        for run in candidates:
            for goal in plan_goals(connection, run.journey_id, run.version):
                if not isinstance(goal, EventGoalPlan) or goal.event != record.name:
                    continue
                if at > run.started_at + timedelta(seconds=goal.within_seconds):
                    continue
                if context is None:
                    context = _context(connection, record, traits)
                value = _reached(goal, run.journey_id, context)
                if value is not None:
                    rows.append(
                        {
                            "run_id": run.run_id,
                            "goal": goal.key,
                            "at": at,
                            "value": value,
                            "message_id": record.message_id,
                        }
                    )
        return rows

    def record_started(
        self,
        connection: Connection,
        trigger: EventRecord,
        runs: Sequence[tuple[str, str, str]],
    ) -> int:
        """Record the conversions that goal events stored before these runs' rows make:
        ``runs`` (run id, journey, version) were just started by ``trigger`` and their
        rows are written in this transaction. `record` found no run for such an event
        when it was stored: it came in the same batch as the trigger, or while the run
        was being started. A goal event counts from the trigger's time (the run's entry,
        as its source saw it), within the goal's window; the trigger itself never.
        Costs nothing for journeys without event goals. How many rows were written."""
        wanted: list[tuple[str, str, list[EventGoalPlan]]] = []
        for run_id, journey_id, version in runs:
            goals = [
                goal
                for goal in plan_goals(connection, journey_id, version)
                if isinstance(goal, EventGoalPlan)
            ]
            if goals:
                wanted.append((run_id, journey_id, goals))
        if not wanted:
            return 0
        entered = as_utc(trigger.timestamp)
        names = sorted({goal.event for _, _, goals in wanted for goal in goals})
        longest = max(goal.within_seconds for _, _, goals in wanted for goal in goals)
        stored = connection.execute(
            _STORED_GOAL_EVENTS,
            {
                "customer_id": trigger.customer_id,
                "names": names,
                "earliest": entered,
                "latest": entered + timedelta(seconds=longest),
                "trigger": trigger.message_id,
            },
        ).all()
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        traits: dict[str, dict[str, Any]] = {}
        for found in stored:
            record = EventRecord(
                message_id=found.message_id,
                type="track",
                name=found.name,
                customer_id=trigger.customer_id,
                properties=dict(found.properties or {}),
                timestamp=found.timestamp,
            )
            at = as_utc(record.timestamp)
            context: dict[str, Any] | None = None
            for run_id, journey_id, goals in wanted:
                for goal in goals:
                    if goal.event != record.name or at > entered + timedelta(
                        seconds=goal.within_seconds
                    ):
                        continue
                    if context is None:
                        context = _context(connection, record, traits)
                    value = _reached(goal, journey_id, context)
                    key = (run_id, goal.key)
                    if value is not None and (key not in rows or at < rows[key]["at"]):
                        rows[key] = {
                            "run_id": run_id,
                            "goal": goal.key,
                            "at": at,
                            "value": value,
                            "message_id": record.message_id,
                        }
        return _write(connection, rows)


def _write(connection: Connection, rows: Mapping[tuple[str, str], dict[str, Any]]) -> int:
    """Write conversion rows (one per run and goal), counted as they are written
    (`engine.conversion_counts`: the stats read counters, not these rows); how many."""
    if rows:
        recount(
            connection,
            [run_id for run_id, _ in rows],
            lambda: connection.execute(_upsert(connection.dialect.name), list(rows.values())),
        )
    return len(rows)


# A customer's stored track events of some names in [earliest, latest], the trigger left
# out: read by the events' customer index.
_STORED_GOAL_EVENTS = select(
    _EVENTS.c.message_id, _EVENTS.c.name, _EVENTS.c.properties, _EVENTS.c.timestamp
).where(
    _EVENTS.c.customer_id == bindparam("customer_id"),
    _EVENTS.c.type == "track",
    _EVENTS.c.name.in_(bindparam("names", expanding=True)),
    _EVENTS.c.timestamp >= bindparam("earliest"),
    _EVENTS.c.timestamp <= bindparam("latest"),
    _EVENTS.c.message_id != bindparam("trigger"),
)

# The customer's runs of some journeys that entered in [earliest, latest]: read by the
# runs' (customer, journey, key) index, a handful of rows per customer.
_CANDIDATES = select(_RUNS.c.run_id, _RUNS.c.journey_id, _RUNS.c.version, _RUNS.c.started_at).where(
    _RUNS.c.customer_id == bindparam("customer_id"),
    _RUNS.c.journey_id.in_(bindparam("journeys", expanding=True)),
    _RUNS.c.started_at >= bindparam("earliest"),
    _RUNS.c.started_at <= bindparam("latest"),
)


def _upsert(dialect: str) -> Any:
    """Insert a conversion; one there already stays, unless this event came earlier."""
    insert = dialect_insert(dialect)(_CONVERSIONS)
    return insert.on_conflict_do_update(
        index_elements=_INSERT_KEYS,
        set_={
            "at": insert.excluded.at,
            "value": insert.excluded.value,
            "message_id": insert.excluded.message_id,
        },
        where=insert.excluded.at < _CONVERSIONS.c.at,
    )


def _context(
    connection: Connection, record: EventRecord, traits: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """What a goal's `value` and `when` read (`engine.validator.GOAL_NAMES`)."""
    if record.customer_id not in traits:
        found = connection.execute(
            select(_PROFILES.c.traits).where(_PROFILES.c.customer_id == record.customer_id)
        ).scalar_one_or_none()
        traits[record.customer_id] = dict(found) if isinstance(found, dict) else {}
    profile = traits[record.customer_id]
    return {
        "event": dict(record.properties),
        "profile": profile,
        "customer": {
            "id": record.customer_id,
            "email": profile.get("email"),
            "phone": profile.get("phone"),
            "push_token": profile.get("push_token"),
        },
        "now": as_utc(record.timestamp).isoformat(),
    }


def _reached(goal: EventGoalPlan, journey_id: str, context: dict[str, Any]) -> float | None:
    """The conversion's value if ``goal``'s `when` holds (None: it does not, or it
    failed). A `value` that fails or is not a number gives 0; what failed is logged by
    name only, never with the event's or the profile's values."""
    timezone = context["profile"].get("timezone")
    timezone = timezone if isinstance(timezone, str) and timezone else "UTC"
    try:
        if goal.when and not cached_expression(goal.when).evaluate(context, timezone=timezone):
            return None
    except (EvaluationError, ExpressionError) as error:
        _log_failure(journey_id, goal, "when", error)
        return None
    if not goal.value:
        return 0.0
    try:
        value = cached_expression(goal.value).evaluate(context, timezone=timezone)
    except (EvaluationError, ExpressionError) as error:
        _log_failure(journey_id, goal, "value", error)
        return 0.0
    if value is None:
        return 0.0
    number = _number(value)
    if number is None:
        log.warning(
            "goal %s of journey %s: value is %s, not a number; recorded as 0",
            goal.key,
            journey_id,
            type(value).__name__,
        )
        return 0.0
    return number


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _log_failure(journey_id: str, goal: EventGoalPlan, part: str, error: Exception) -> None:
    cause = error.__cause__ or error
    log.warning(
        "goal %s of journey %s: its %s failed (%s)%s",
        goal.key,
        journey_id,
        part,
        type(cause).__name__,
        "; recorded as 0" if part == "value" else "; no conversion",
    )


# ----------------------------------------------------------------------------- reading


def _runs_filter(
    *,
    journey_id: str | None,
    version: str | None,
    start: datetime | None,
    end: datetime | None,
    holdout: bool | None = None,
    unindexed: bool = False,
) -> list[ColumnElement[bool]]:
    """The runs of a journey (a version; None: of all) that entered in [start, end).
    ``unindexed``: as SQLite's ``+column`` terms, which no index serves (`_converted`)."""

    def column(name: str) -> Any:
        found = _RUNS.c[name]
        return UnaryExpression(found, operator=custom_op("+")) if unindexed else found

    conditions: list[ColumnElement[bool]] = []
    if journey_id is not None:
        conditions.append(column("journey_id") == journey_id)
    if version is not None:
        conditions.append(column("version") == version)
    if start is not None:
        conditions.append(column("started_at") >= as_utc(start))
    if end is not None:
        conditions.append(column("started_at") < as_utc(end))
    if holdout is not None:
        conditions.append(_RUNS.c.holdout.is_(holdout))
    return conditions


def _outcome_goals(goals: Mapping[str, tuple[GoalPlan, ...]]) -> dict[str, list[str]]:
    """For each version, the outcomes its goals count as conversions."""
    return {
        version: [g.outcome for g in found if isinstance(g, OutcomeGoalPlan)]
        for version, found in goals.items()
        if any(isinstance(g, OutcomeGoalPlan) for g in found)
    }


_NO_OUTCOME: ColumnElement[bool] = false()


def _by_outcome(outcomes: Mapping[str, list[str]]) -> ColumnElement[bool]:
    """A run whose version counts its outcome as a conversion."""
    if not outcomes:
        return _NO_OUTCOME
    return or_(
        *(
            and_(_RUNS.c.version == version, _RUNS.c.outcome.in_(names))
            for version, names in sorted(outcomes.items())
        )
    )


def count_conversions(
    connection: Connection,
    *,
    journey_id: str,
    version: str | None,
    start: datetime | None,
    end: datetime | None,
    holdout: bool | None = None,
) -> Conversions:
    """The runs of ``journey_id`` (of ``version``; None: all) that entered in [start, end)
    and converted: reached an event goal (a `run_conversions` row) or ended with an
    outcome goal of their version. ``rate``: of the entries in that window; ``value``:
    the summed values of their event-goal conversions. ``holdout``: only held-out runs
    (True), only treated ones (False), or both (None)."""
    by_outcome = _by_outcome(_outcome_goals(journey_goals(connection, journey_id, version)))
    window: dict[str, Any] = {"journey_id": journey_id, "version": version, "start": start}
    window.update(end=end, holdout=holdout)
    if not _from_rows(connection, start, end, holdout):
        entries, converted, value = connection.execute(
            select(*_tallies(by_outcome)).where(*_runs_filter(**window))
        ).one()
        return _conversions(entries, converted, value)
    entries, outcomes = connection.execute(
        select(func.count(), _flagged(by_outcome)).where(*_runs_filter(**window))
    ).one()
    with_row, overlap, value = connection.execute(
        _converted(connection, by_outcome, window, [func.count()])
    ).one()
    return _conversions(entries, with_row + outcomes - overlap, value)


def conversions_by_arm(
    connection: Connection,
    *,
    journey_id: str,
    version: str | None,
    start: datetime | None,
    end: datetime | None,
    step_id: str,
) -> dict[str, tuple[int, Conversions]]:
    """For each arm of the split ``step_id``: the entries (in [start, end)) that were put
    in it (`run_arms`) and their conversions, as `count_conversions` counts them."""
    by_outcome = _by_outcome(_outcome_goals(journey_goals(connection, journey_id, version)))
    window: dict[str, Any] = {"journey_id": journey_id, "version": version, "start": start}
    window.update(end=end)
    in_split = _in_split(step_id)
    if not _from_rows(connection, start, end):
        rows = connection.execute(
            select(_ARMS.c.arm, *_tallies(by_outcome))
            .select_from(in_split)
            .where(*_runs_filter(**window))
            .group_by(_ARMS.c.arm)
        )
        return {
            arm: (int(entries), _conversions(entries, converted, value))
            for arm, entries, converted, value in rows
        }
    entered = connection.execute(
        select(_ARMS.c.arm, func.count(), _flagged(by_outcome))
        .select_from(in_split)
        .where(*_runs_filter(**window))
        .group_by(_ARMS.c.arm)
    ).all()
    found = {
        arm: (int(with_row), int(overlap), value)
        for with_row, overlap, value, arm in connection.execute(
            _converted(connection, by_outcome, window, [func.count()], step_id=step_id)
        )
    }
    out = {}
    for arm, entries, outcomes in entered:
        with_row, overlap, value = found.get(arm, (0, 0, 0.0))
        out[arm] = (int(entries), _conversions(entries, with_row + outcomes - overlap, value))
    return out


def _in_split(step_id: str) -> Any:
    return _RUNS.join(_ARMS, and_(_ARMS.c.run_id == _RUNS.c.run_id, _ARMS.c.step_id == step_id))


# How `count_conversions` and `conversions_by_arm` count. The old way, kept for small windows on SQLite (`_tallies`):
# for each run in the window, an EXISTS on `run_conversions` and its summed value, two
# probes a run. The way driven by the conversion rows (`_converted`), in two reads:
#
# - the runs in the window, by the covering index `ix_runs_journey_status`: the entries,
#   and those whose outcome is a goal of their version (no `run_conversions` read);
# - the `run_conversions` rows summed per run (in the key's order), each such run read by
#   the runs' key and kept if in the window: the runs that reached an event goal, their
#   summed value, and how many of them also ended with an outcome goal (else counted
#   twice).
#
# Converted = runs with a row + runs with an outcome goal - runs with both. The second
# read costs in proportion to the conversion rows, not to the runs: 120,000 runs, 36,400
# converted, SQLite: 98 -> 47 ms for `count_conversions`; PostgreSQL, which picks its
# own join (hash), always counts this way.


def _from_rows(
    connection: Connection,
    start: datetime | None,
    end: datetime | None,
    holdout: bool | None = None,
) -> bool:
    """Whether to count from the conversion rows, else by probing each run in the window.
    PostgreSQL plans by its statistics: always. SQLite keeps none: when there are fewer
    conversion rows than two thirds of the runs (all journeys') that entered in the
    window, each read from an index, not counted (a row costs about 1.2 us to read with
    its run, a run's two probes 0.8 us), and not for held-out runs (a small control group,
    read by probing)."""
    if connection.dialect.name != "sqlite":
        return True
    if holdout:
        return False
    rows = connection.execute(select(func.max(_ROWID)).select_from(_CONVERSIONS)).scalar()
    if not rows:
        return True
    if start is None and end is None:
        runs = connection.execute(select(func.max(_ROWID)).select_from(_RUNS)).scalar()
    else:
        runs = connection.execute(
            select(func.count()).where(
                *_runs_filter(journey_id=None, version=None, start=start, end=end)
            )
        ).scalar()
    return int(rows) * 2 < int(runs or 0)


_ROWID: Any = literal_column("rowid")


def _flagged(condition: ColumnElement[bool]) -> Any:
    """How many rows ``condition`` holds for, as a column (0 for none)."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _converted(
    connection: Connection,
    by_outcome: ColumnElement[bool],
    window: Mapping[str, Any],
    first: list[Any],
    step_id: str | None = None,
) -> Any:
    """``first`` (a count), how many of them also ended with an outcome goal and their
    summed value, over the runs in the window with a `run_conversions` row (and, with
    ``step_id``, in an arm of that split: per arm, the arm last). Driven by the rows,
    summed per run, each run then read by its key."""
    per_run = (
        select(_CONVERSIONS.c.run_id, func.sum(_CONVERSIONS.c.value).label("value"))
        .group_by(_CONVERSIONS.c.run_id)
        .subquery()
    )
    # SQLite keeps no statistics: offered an index on the runs' journey or entry time, or
    # the arms' step, it would start from those and probe the rows for each run (the
    # per-run cost this avoids), so those terms are `+column`, which no index serves.
    sqlite = connection.dialect.name == "sqlite"
    joined = per_run.join(_RUNS, _RUNS.c.run_id == per_run.c.run_id)
    query = select(*first, _flagged(by_outcome), func.coalesce(func.sum(per_run.c.value), 0.0))
    if step_id is not None:
        step = (
            UnaryExpression(_ARMS.c.step_id, operator=custom_op("+")) if sqlite else _ARMS.c.step_id
        )
        joined = joined.join(_ARMS, and_(_ARMS.c.run_id == per_run.c.run_id, step == step_id))
        query = query.add_columns(_ARMS.c.arm).group_by(_ARMS.c.arm)
    return query.select_from(joined).where(*_runs_filter(**window, unindexed=sqlite))


def _tallies(by_outcome: ColumnElement[bool]) -> list[Any]:
    """Entries, converted runs and their summed value, as columns over runs: a run's
    conversions are read by the `run_conversions` key, its outcome from its row."""
    has_row = exists().where(_CONVERSIONS.c.run_id == _RUNS.c.run_id)
    run_value = (
        select(func.sum(_CONVERSIONS.c.value))
        .where(_CONVERSIONS.c.run_id == _RUNS.c.run_id)
        .scalar_subquery()
    )
    return [
        func.count(),
        func.coalesce(func.sum(case((or_(has_row, by_outcome), 1), else_=0)), 0),
        func.coalesce(func.sum(func.coalesce(run_value, 0.0)), 0.0),
    ]


def _conversions(entries: Any, converted: Any, value: Any) -> Conversions:
    return Conversions(
        count=int(converted or 0),
        rate=int(converted or 0) / int(entries) if entries else None,
        value=float(value or 0.0),
    )


def conversions_by_run(
    connection: Connection, run_ids: Iterable[str]
) -> dict[str, tuple[datetime, float]]:
    """For each of ``run_ids`` that converted: when it first did (an event goal's event,
    or the run's end for an outcome goal) and the summed value of its conversions.
    Runs that did not convert are left out."""
    ids = sorted(set(run_ids))
    found: dict[str, tuple[datetime, float]] = {}
    for n in range(0, len(ids), _CHUNK):
        chunk = ids[n : n + _CHUNK]
        rows = connection.execute(
            select(
                _CONVERSIONS.c.run_id, func.min(_CONVERSIONS.c.at), func.sum(_CONVERSIONS.c.value)
            )
            .where(_CONVERSIONS.c.run_id.in_(chunk))
            .group_by(_CONVERSIONS.c.run_id)
        )
        for run_id, at, value in rows:
            found[run_id] = (as_utc(at), float(value or 0.0))
        ended = connection.execute(
            select(
                _RUNS.c.run_id,
                _RUNS.c.journey_id,
                _RUNS.c.version,
                _RUNS.c.outcome,
                _RUNS.c.ended_at,
            ).where(
                _RUNS.c.run_id.in_(chunk),
                _RUNS.c.outcome.is_not(None),
                _RUNS.c.ended_at.is_not(None),
            )
        )
        for run_id, journey_id, version, outcome, ended_at in ended:
            goals = plan_goals(connection, journey_id, version)
            if any(isinstance(g, OutcomeGoalPlan) and g.outcome == outcome for g in goals):
                at, value = found.get(run_id, (as_utc(ended_at), 0.0))
                found[run_id] = (min(at, as_utc(ended_at)), value)
    return found


def send_attributed(
    connection: Connection,
    *,
    journey_id: str,
    version: str | None,
    start: datetime | None,
    end: datetime | None,
    within_by_goal: Mapping[str, int | None] | None = None,
) -> dict[tuple[str, str], int]:
    """Per (send step id, channel): the conversions of runs that entered in [start, end)
    that came within their goal's window (seconds) after a send of that step on that
    channel was sent. A conversion counts once per step and channel, however many
    times the run was sent it.

    ``within_by_goal``: the window per goal key (None as a window: any time after the
    send); None: each version's own goals, event goals by their `within`, outcome goals
    (the run's end) with no limit. A goal not in it is not attributed."""
    windows = _windows(connection, journey_id, version, within_by_goal)
    if not windows:
        return {}
    conditions = _runs_filter(journey_id=journey_id, version=version, start=start, end=end)
    dialect = connection.dialect.name
    sent = [
        _DELIVERIES.c.run_id == _RUNS.c.run_id,
        _DELIVERIES.c.sent_at.is_not(None),
        _DELIVERIES.c.channel.is_not(None),
    ]
    parts: list[Any] = []
    event_windows = [w for w in windows if not w.outcome]
    if event_windows:
        at = _CONVERSIONS.c.at
        parts.append(
            select(
                _RUNS.c.run_id, _CONVERSIONS.c.goal, _DELIVERIES.c.step_id, _DELIVERIES.c.channel
            )
            .select_from(_RUNS)
            .join(_CONVERSIONS, _CONVERSIONS.c.run_id == _RUNS.c.run_id)
            .join(_DELIVERIES, and_(*sent))
            .where(
                *conditions,
                _DELIVERIES.c.sent_at <= at,
                or_(
                    *(_window(w, _CONVERSIONS.c.goal == w.key, at, dialect) for w in event_windows)
                ),
            )
        )
    for w in (w for w in windows if w.outcome):
        at = _RUNS.c.ended_at
        parts.append(
            select(
                _RUNS.c.run_id,
                literal(w.key).label("goal"),
                _DELIVERIES.c.step_id,
                _DELIVERIES.c.channel,
            )
            .select_from(_RUNS)
            .join(_DELIVERIES, and_(*sent))
            .where(
                *conditions,
                at.is_not(None),
                _DELIVERIES.c.sent_at <= at,
                _window(w, _RUNS.c.outcome == w.outcome, at, dialect),
            )
        )
    attributed = union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
    distinct = (
        select(attributed.c.run_id, attributed.c.goal, attributed.c.step_id, attributed.c.channel)
        .distinct()
        .subquery()
    )
    rows = connection.execute(
        select(distinct.c.step_id, distinct.c.channel, func.count())
        .group_by(distinct.c.step_id, distinct.c.channel)
        .order_by(distinct.c.step_id, distinct.c.channel)
    )
    return {(step_id, channel): int(count) for step_id, channel, count in rows}


@dataclass(frozen=True)
class _Window:
    """One goal's attribution window: its key, its version (None: any), the outcome of an
    outcome goal (None: an event goal), and its length (None: no limit)."""

    key: str
    version: str | None
    outcome: str | None
    seconds: int | None


def _windows(
    connection: Connection,
    journey_id: str,
    version: str | None,
    within_by_goal: Mapping[str, int | None] | None,
) -> list[_Window]:
    goals = journey_goals(connection, journey_id, version)
    windows: set[_Window] = set()
    for goal_version, found in goals.items():
        for goal in found:
            outcome = goal.outcome if isinstance(goal, OutcomeGoalPlan) else None
            if within_by_goal is not None:
                if goal.key not in within_by_goal:
                    continue
                windows.add(_Window(goal.key, None, outcome, within_by_goal[goal.key]))
            else:
                seconds = goal.within_seconds if isinstance(goal, EventGoalPlan) else None
                windows.add(_Window(goal.key, goal_version, outcome, seconds))
    return sorted(windows, key=lambda w: (w.key, w.version or "", w.seconds or 0))


def _window(
    window: _Window, is_goal: ColumnElement[bool], at: Any, dialect: str
) -> ColumnElement[bool]:
    """The goal's conversion came at most ``window.seconds`` after the send."""
    conditions = [is_goal]
    if window.version is not None:
        conditions.append(_RUNS.c.version == window.version)
    if window.seconds is not None:
        elapsed = _seconds_between(at, _DELIVERIES.c.sent_at, dialect)
        conditions.append(elapsed <= window.seconds)
    return and_(*conditions)


def _seconds_between(later: Any, earlier: Any, dialect: str) -> Any:
    """``later - earlier`` in seconds, in SQL (SQLite keeps times as text)."""
    if dialect == "sqlite":
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return func.extract("epoch", later - earlier)
