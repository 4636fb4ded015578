"""Conversions kept as counters in the `step_rollup` table, as they happen (issue #19).

Counting a journey's conversions from the rows (`run_conversions` joined to the runs of a
window, to their arms, and to their deliveries for attribution) took 170-270 ms with
132,000 runs. So, as for the step numbers (`engine.step_rollup`), what a run counts is
added to counters by the run's journey, version and UTC hour of entry, in the
transaction of every write that can change it, and the stats read the counters.

What one run counts (`run_counts`), when it converted (a `run_conversions` row, or it
ended with an outcome its version declares a goal: `engine.conversions`):

``("", "conv", "treated" | "control")``
    the run, and its summed goal value (the ``value`` column), by holdout arm;
``(split step, "conv", arm)``
    the same by its arm at each split it passed (`run_arms`);
``(send step, "attr", channel)``
    per goal of its version it reached, once per send step and channel that sent it a
    message (`deliveries.sent_at`) at most the goal's ``within`` before the conversion
    (an outcome goal: any time before the run's end).

`recount` wraps a write: it reads what the runs count before it, makes it, reads again and
adds the difference. Its callers: `engine.conversions.ConversionRecorder` (a goal event
stored), `activities.runs.upsert_run` (a run ended, or put in an arm), and
`activities.messaging` (a message marked sent). Only runs of journeys with goals are read
(the goals of a version are cached per process). A write that cannot convert a run (a
send, an arm, an end whose outcome is no goal) costs one read by key when the run has not
converted: the run's row joined to its conversion rows. `backfill` fills the counters from the rows (revision 0012).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Table, select
from sqlalchemy.engine import Connection

from engine.database import Delivery, Run, RunArm, RunConversion
from engine.goals import plan_goals
from engine.plan import EventGoalPlan, OutcomeGoalPlan
from engine.step_rollup import Key, add_counts, entry_hour
from engine.timestamps import as_utc

__all__ = [
    "ATTRIBUTED",
    "CONVERTED",
    "JOURNEY",
    "Counts",
    "backfill",
    "ends_converted",
    "has_goals",
    "recount",
    "run_counts",
]

CONVERTED = "conv"
ATTRIBUTED = "attr"
JOURNEY = ""
"""The step of the journey-wide counters (no step of a journey has an empty id)."""

_RUNS: Table = Run.__table__  # type: ignore[attr-defined]
_CONVERSIONS: Table = RunConversion.__table__  # type: ignore[attr-defined]
_ARMS: Table = RunArm.__table__  # type: ignore[attr-defined]
_DELIVERIES: Table = Delivery.__table__  # type: ignore[attr-defined]
_CHUNK = 500

Group = tuple[str, str, datetime]
"""(journey id, version, entry hour): the counters a run adds to."""


@dataclass
class Counts:
    """Counters and their summed values, as `engine.step_rollup.add_counts` adds them."""

    counts: Counter[Key]
    values: defaultdict[Key, float]

    @classmethod
    def empty(cls) -> Counts:
        return cls(Counter(), defaultdict(float))

    def add(self, other: Counts, sign: int = 1) -> None:
        for key, count in other.counts.items():
            self.counts[key] += sign * count
        for key, value in other.values.items():
            self.values[key] += sign * value


T = TypeVar("T")


def _chunks(items: list[T]) -> Iterator[list[T]]:
    for n in range(0, len(items), _CHUNK):
        yield items[n : n + _CHUNK]


def has_goals(connection: Connection, journey_id: str, version: str) -> bool:
    """Whether runs of this version can convert (cached per process)."""
    return bool(plan_goals(connection, journey_id, version))


def run_counts(connection: Connection, run_ids: Iterable[str]) -> dict[Group, Counts]:
    """What ``run_ids`` count, read from their rows, by the group each adds to."""
    runs, reached = _runs_and_conversions(connection, sorted(set(run_ids)))
    converted: dict[str, tuple[Any, list[_Window]]] = {}
    for run_id, run in runs.items():
        windows = _windows(connection, run, reached.get(run_id, []))
        if reached.get(run_id) or windows:
            converted[run_id] = (run, windows)
    arms, sends = _arms_and_sends(connection, sorted(converted))
    groups: dict[Group, Counts] = {}
    for run_id, (run, windows) in converted.items():
        group = (run.journey_id, run.version, entry_hour(run.started_at))
        found = groups.setdefault(group, Counts.empty())
        value = sum(v for _, _, v in reached.get(run_id, []))
        for key in [
            (JOURNEY, CONVERTED, "control" if run.holdout else "treated"),
            *((step, CONVERTED, arm) for step, arm in arms.get(run_id, [])),
        ]:
            found.counts[key] += 1
            found.values[key] += value
        credited = {
            (goal, step, channel)
            for goal, at, within in windows
            for step, channel, sent_at in sends.get(run_id, [])
            if sent_at <= at and (within is None or at - sent_at <= timedelta(seconds=within))
        }
        for _, step, channel in credited:
            found.counts[(step, ATTRIBUTED, channel)] += 1
    return groups


_Window = tuple[str, datetime, int | None]
"""A conversion as an attribution window: (goal, when, seconds before it that a send
counts; None: any)."""

_Reached = dict[str, list[tuple[str, datetime, float]]]


def _runs_and_conversions(
    connection: Connection, ids: list[str]
) -> tuple[dict[str, Any], _Reached]:
    """The runs of versions with goals among ``ids``, and each one's event-goal
    conversions (goal, when, value): one read (the runs by key, their rows by theirs)."""
    runs: dict[str, Any] = {}
    reached: _Reached = defaultdict(list)
    for chunk in _chunks(ids):
        for row in connection.execute(
            select(
                _RUNS.c.run_id,
                _RUNS.c.journey_id,
                _RUNS.c.version,
                _RUNS.c.started_at,
                _RUNS.c.holdout,
                _RUNS.c.outcome,
                _RUNS.c.ended_at,
                _CONVERSIONS.c.goal,
                _CONVERSIONS.c.at,
                _CONVERSIONS.c.value,
            )
            .select_from(_RUNS.outerjoin(_CONVERSIONS, _CONVERSIONS.c.run_id == _RUNS.c.run_id))
            .where(_RUNS.c.run_id.in_(chunk))
        ):
            if not plan_goals(connection, row.journey_id, row.version):
                continue
            runs[row.run_id] = row
            if row.goal is not None:
                reached[row.run_id].append((row.goal, as_utc(row.at), float(row.value or 0.0)))
    return runs, reached


def _arms_and_sends(
    connection: Connection, ids: list[str]
) -> tuple[dict[str, list[tuple[str, str]]], dict[str, list[tuple[str, str, datetime]]]]:
    """Each run's arms (split step, arm) and sends that went out (step, channel, when)."""
    arms: dict[str, list[tuple[str, str]]] = defaultdict(list)
    sends: dict[str, list[tuple[str, str, datetime]]] = defaultdict(list)
    for chunk in _chunks(ids):
        for run_id, step_id, arm in connection.execute(
            select(_ARMS.c.run_id, _ARMS.c.step_id, _ARMS.c.arm).where(_ARMS.c.run_id.in_(chunk))
        ):
            arms[run_id].append((step_id, arm))
        for run_id, step_id, channel, sent_at in connection.execute(
            select(
                _DELIVERIES.c.run_id,
                _DELIVERIES.c.step_id,
                _DELIVERIES.c.channel,
                _DELIVERIES.c.sent_at,
            ).where(
                _DELIVERIES.c.run_id.in_(chunk),
                _DELIVERIES.c.sent_at.is_not(None),
                _DELIVERIES.c.channel.is_not(None),
            )
        ):
            sends[run_id].append((step_id, channel, as_utc(sent_at)))
    return arms, sends


def _windows(
    connection: Connection, run: Any, reached: list[tuple[str, datetime, float]]
) -> list[_Window]:
    """The run's conversions as attribution windows; an outcome goal's is the run's end."""
    goals = plan_goals(connection, run.journey_id, run.version)
    windows: list[_Window] = []
    by_key = {goal.key: goal for goal in goals}
    for key, at, _ in reached:
        goal = by_key.get(key)
        if isinstance(goal, EventGoalPlan):
            windows.append((key, at, goal.within_seconds))
    if run.outcome is not None and run.ended_at is not None:
        for goal in goals:
            if isinstance(goal, OutcomeGoalPlan) and goal.outcome == run.outcome:
                windows.append((goal.key, as_utc(run.ended_at), None))
    return windows


def recount(
    connection: Connection,
    run_ids: Iterable[str],
    write: Callable[[], T],
    *,
    may_convert: bool = True,
) -> T:
    """Make ``write`` (in ``connection``'s transaction) and add what it changes in the
    counts of ``run_ids`` to the counters. ``may_convert=False``: the write cannot make
    a run convert (a message sent, an arm): runs that had not converted before it count
    nothing after it, and are not read again (the usual case costs one read)."""
    ids = sorted(set(run_ids))
    before = run_counts(connection, ids)
    result = write()
    if not before and not may_convert:
        return result
    after = run_counts(connection, ids)
    for group in sorted(set(before) | set(after)):
        delta = Counts.empty()
        if group in after:
            delta.add(after[group])
        if group in before:
            delta.add(before[group], -1)
        _store(connection, group, delta)
    return result


def ends_converted(
    connection: Connection, journey_id: str, version: str, outcome: str | None
) -> bool:
    """Whether a run of this version ending with ``outcome`` reaches an outcome goal."""
    return outcome is not None and any(
        isinstance(goal, OutcomeGoalPlan) and goal.outcome == outcome
        for goal in plan_goals(connection, journey_id, version)
    )


def _store(connection: Connection, group: Group, delta: Counts) -> None:
    journey_id, version, hour = group
    add_counts(connection, journey_id, version, hour, delta.counts, delta.values)


def backfill(connection: Connection) -> int:
    """Add the counts of every run that converted, from the rows (revision 0012; the
    bench); returns the runs read."""
    totals: dict[Group, Counts] = {}
    last, read = "", 0
    while True:
        page = (
            connection.execute(
                select(_RUNS.c.run_id)
                .where(_RUNS.c.run_id > last)
                .order_by(_RUNS.c.run_id)
                .limit(_CHUNK)
            )
            .scalars()
            .all()
        )
        if not page:
            break
        last, read = page[-1], read + len(page)
        for group, counts in run_counts(connection, page).items():
            totals.setdefault(group, Counts.empty()).add(counts)
    for group in sorted(totals):
        _store(connection, group, totals[group])
    return read
