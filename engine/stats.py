"""A journey's numbers (issue #19): `journey_stats` and `funnel`, in the shapes of
`engine.stats_models`.

Over the runs of a journey (one version, or all) that entered in [start, end):

- from the `runs` table (``ix_runs_journey_status`` covers the query): entries, runs
  active now, ends by outcome, per step the runs waiting there now (running, their
  current step) and those that left there (ended with it as their last step), and the
  holdout's arms (``control``: held out, ``treated``);
- from the `step_rollup` counters (`engine.step_rollup`) summed over the whole hours of
  the window, plus the path rows of the runs that entered in the part-hours at its ends:
  per step the runs that reached it and the time spent there (p50/p90 read from log-spaced
  buckets, within 9.05%), the moves between steps, per send step and channel the results,
  the arms of each split;
- from `review_tasks`: per review step the tasks opened, decided (by decision),
  escalated, timed out, and the time to a decision (exact percentiles);
- conversions from the same counters (`engine.conversion_counts`: ``conv`` by holdout
  arm and by split arm, with their summed value; ``attr`` per send step and channel),
  kept as goal events are stored, messages sent and runs end; for the part-hours, from
  the rows of the runs that entered then; each experiment's test from
  `engine.experiments.compare`.

`funnel` reads the path rows of the runs that entered (it is asked for rarely, and for a
few steps): runs that reached the first step, then the second after it, and so on.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from engine.conversion_counts import ATTRIBUTED, CONVERTED, JOURNEY, run_counts
from engine.database import ReviewTask, Run, RunPathEntry, StepRollup
from engine.experiments import compare
from engine.stats_models import (
    ChannelSends,
    Conversions,
    EdgeStats,
    ExperimentStats,
    FunnelStats,
    FunnelStep,
    JourneyStats,
    ReviewStats,
    StepStats,
)
from engine.step_rollup import END, Key, journey_term, path_counts, quantile, whole_hours
from engine.timestamps import as_utc

__all__ = ["HOLDOUT", "funnel", "journey_stats"]

HOLDOUT = "holdout"
"""The experiment key of the holdout (its arms: ``control``, held out; ``treated``)."""

_RUNS: Table = Run.__table__  # type: ignore[attr-defined]
_ROLLUP: Table = StepRollup.__table__  # type: ignore[attr-defined]
_PATH: Table = RunPathEntry.__table__  # type: ignore[attr-defined]
_REVIEWS: Table = ReviewTask.__table__  # type: ignore[attr-defined]

Database = Engine | Connection | Session


@contextmanager
def _connected(db: Database) -> Iterator[Connection]:
    if isinstance(db, Connection):
        yield db
    elif isinstance(db, Session):
        yield db.connection()
    else:
        with db.connect() as connection:
            yield connection


def _window(query: Any, journey_id: str, version: str | None, start: Any, end: Any) -> Any:
    query = query.where(_RUNS.c.journey_id == journey_id)
    if version is not None:
        query = query.where(_RUNS.c.version == version)
    if start is not None:
        query = query.where(_RUNS.c.started_at >= start)
    if end is not None:
        query = query.where(_RUNS.c.started_at < end)
    return query


# ----------------------------------------------------------------------------- journey_stats


def journey_stats(
    db: Database,
    journey_id: str,
    *,
    version: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> JourneyStats:
    """The numbers of the journey's runs (of ``version``, or all) that entered in
    [``start``, ``end``) (None: unbounded)."""
    start = as_utc(start) if start is not None else None
    end = as_utc(end) if end is not None else None
    with _connected(db) as connection:
        runs = _runs_counts(connection, journey_id, version, start, end)
        counts, values = _rollup_counts(connection, journey_id, version, start, end)
        reviews = _reviews(connection, journey_id, version, start, end)
    conversions, experiments = _conversions(counts, values, runs)
    steps, edges, sends = _steps(counts, runs)
    for (step, metric, channel), converted in counts.items():
        if metric == ATTRIBUTED and converted > 0:
            found = sends.setdefault(step, {}).get(channel, ChannelSends())
            sends[step][channel] = found.model_copy(update={"conversions": converted})
    return JourneyStats(
        journey_id=journey_id,
        version=version,
        window_from=start,
        window_to=end,
        entries=runs.entries,
        active=runs.active,
        outcomes=dict(sorted(runs.outcomes.items())),
        conversions=conversions,
        steps=steps,
        edges=edges,
        sends=sends,
        reviews=reviews,
        experiments=experiments,
    )


class _RunsCounts:
    def __init__(self) -> None:
        self.entries = 0
        self.active = 0
        self.outcomes: Counter[str] = Counter()
        self.waiting: Counter[str] = Counter()
        self.left: Counter[str] = Counter()
        self.holdout: Counter[bool] = Counter()


def _runs_counts(
    connection: Connection,
    journey_id: str,
    version: str | None,
    start: datetime | None,
    end: datetime | None,
) -> _RunsCounts:
    columns = (_RUNS.c.status, _RUNS.c.step, _RUNS.c.outcome, _RUNS.c.holdout)
    query = _window(select(*columns, func.count()), journey_id, version, start, end)
    result = _RunsCounts()
    for status, step, outcome, holdout, count in connection.execute(query.group_by(*columns)):
        result.entries += count
        result.holdout[bool(holdout)] += count
        if status == "running":
            result.active += count
            result.waiting[step or "entry"] += count
        else:
            result.outcomes[outcome or status] += count
            result.left[step or "entry"] += count
    return result


def _rollup_counts(
    connection: Connection,
    journey_id: str,
    version: str | None,
    start: datetime | None,
    end: datetime | None,
) -> tuple[Counter[Key], dict[Key, float]]:
    """The rollup's counters and summed values over the whole hours of the window, and
    what the runs that entered in its part-hours count, from their rows."""
    first, last = whole_hours(start, end)
    counts: Counter[Key] = Counter()
    values: dict[Key, float] = defaultdict(float)
    if first is not None and last is not None and first >= last:
        # Within one hour (or two parts of adjacent hours): rows only.
        assert start is not None and end is not None
        if start < end:
            _rows(connection, journey_id, version, start, end, counts, values)
        return counts, values
    columns = (_ROLLUP.c.step, _ROLLUP.c.metric, _ROLLUP.c.bucket)
    query = select(*columns, func.sum(_ROLLUP.c.count), func.sum(_ROLLUP.c.value)).where(
        _ROLLUP.c.journey_id == journey_id
    )
    if version is not None:
        query = query.where(_ROLLUP.c.version == version)
    if first is not None:
        query = query.where(_ROLLUP.c.hour >= first)
    if last is not None:
        query = query.where(_ROLLUP.c.hour < last)
    for step, metric, bucket, total, value in connection.execute(query.group_by(*columns)):
        counts[(step, metric, bucket)] += int(total or 0)
        if value:
            values[(step, metric, bucket)] += float(value)
    if start is not None and first is not None and start < first:
        _rows(connection, journey_id, version, start, first, counts, values)
    if end is not None and last is not None and last < end:
        _rows(connection, journey_id, version, last, end, counts, values)
    return counts, values


def _rows(
    connection: Connection,
    journey_id: str,
    version: str | None,
    start: datetime,
    end: datetime,
    counts: Counter[Key],
    values: dict[Key, float],
) -> None:
    """Add what the runs that entered in [start, end) count, from their rows: their paths
    (`engine.step_rollup.path_counts`) and their conversions (`run_counts`)."""
    counts.update(
        path_counts(connection, journey_id=journey_id, version=version, start=start, end=end)
    )
    query = select(_RUNS.c.run_id).where(
        journey_term(connection, journey_id), _RUNS.c.started_at >= start, _RUNS.c.started_at < end
    )
    if version is not None:
        query = query.where(_RUNS.c.version == version)
    for found in run_counts(connection, connection.execute(query).scalars()).values():
        counts.update(found.counts)
        for key, value in found.values.items():
            values[key] += value


def _conversions(
    counts: Counter[Key], values: Mapping[Key, float], runs: _RunsCounts
) -> tuple[Conversions, dict[str, ExperimentStats]]:
    """The conversions overall, and each experiment's arms with theirs: each split's
    (entries from the rollup's ``arm`` counters, conversions from its ``conv`` ones) and
    the holdout's (entries from the runs, conversions from the journey's ``conv``)."""

    def converted(step: str, arm: str) -> tuple[int, float]:
        key = (step, CONVERTED, arm)
        return counts[key], round(values.get(key, 0.0), 6)

    treated, control = converted(JOURNEY, "treated"), converted(JOURNEY, "control")
    count, value = treated[0] + control[0], round(treated[1] + control[1], 6)
    overall = Conversions(
        count=count, rate=count / runs.entries if runs.entries else None, value=value
    )
    experiments: dict[str, ExperimentStats] = {}
    splits = sorted({step for (step, metric, _), n in counts.items() if metric == "arm" and n})
    for step in splits:
        arms = {
            arm: (n, converted(step, arm)[0])
            for (at, metric, arm), n in sorted(counts.items())
            if at == step and metric == "arm" and n > 0
        }
        experiments[step] = compare(arms)
    if runs.holdout[True]:
        experiments[HOLDOUT] = compare(
            {
                "control": (runs.holdout[True], control[0]),
                "treated": (runs.holdout[False], treated[0]),
            },
            control="control",
        )
    return overall, dict(sorted(experiments.items()))


def _steps(
    counts: Counter[Key], runs: _RunsCounts
) -> tuple[dict[str, StepStats], list[EdgeStats], dict[str, dict[str, ChannelSends]]]:
    reached: Counter[str] = Counter()
    times: dict[str, dict[int, int]] = defaultdict(dict)
    edges: list[EdgeStats] = []
    sends: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for (step, metric, bucket), count in counts.items():
        if count <= 0:
            continue
        if metric == "reached":
            reached[step] += count
        elif metric == "time":
            times[step][int(bucket)] = times[step].get(int(bucket), 0) + count
        elif metric == "edge":
            edges.append(EdgeStats(source=step, target=bucket, count=count))
        elif metric == "send":
            channel, _, kind = bucket.partition("|")
            sends[step][channel][kind] += count
    names = sorted((set(reached) | set(runs.waiting) | set(runs.left)) - {END})
    steps = {
        name: StepStats(
            reached=reached[name],
            waiting=runs.waiting[name],
            left=runs.left[name],
            p50_seconds=_rounded(quantile(times.get(name, {}), 0.5)),
            p90_seconds=_rounded(quantile(times.get(name, {}), 0.9)),
        )
        for name in names
    }
    edges.sort(key=lambda edge: (edge.source, edge.target))
    return steps, edges, {step: _channels(sends[step]) for step in sorted(sends)}


def _channels(channels: dict[str, Counter[str]]) -> dict[str, ChannelSends]:
    out = {}
    for channel in sorted(channels):
        kinds = channels[channel]
        skipped = {
            kind.removeprefix("skipped:"): count
            for kind, count in sorted(kinds.items())
            if kind.startswith("skipped:") and count > 0
        }
        out[channel] = ChannelSends(
            attempted=kinds["attempted"],
            sent=kinds["sent"],
            failed=kinds["failed"],
            skipped=skipped,
        )
    return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _reviews(
    connection: Connection,
    journey_id: str,
    version: str | None,
    start: datetime | None,
    end: datetime | None,
) -> dict[str, ReviewStats]:
    # Driven by the journey's tasks (their own index), each task's run read by its key:
    # not by the journey's runs, of which there are many more. Hence no runs.journey_id
    # here (it would offer SQLite, which keeps no statistics, the runs index to start from).
    query = select(
        _REVIEWS.c.step_id,
        _REVIEWS.c.status,
        _REVIEWS.c.decision,
        _REVIEWS.c.escalated,
        _seconds(connection, _REVIEWS.c.created_at, _REVIEWS.c.decided_at),
    ).where(_REVIEWS.c.journey_id == journey_id)
    if version is not None or start is not None or end is not None:
        query = query.join(_RUNS, _RUNS.c.run_id == _REVIEWS.c.run_id)
        if version is not None:
            query = query.where(_RUNS.c.version == version)
        if start is not None:
            query = query.where(_RUNS.c.started_at >= start)
        if end is not None:
            query = query.where(_RUNS.c.started_at < end)
    opened: Counter[str] = Counter()
    decided: dict[str, Counter[str]] = defaultdict(Counter)
    escalated: Counter[str] = Counter()
    expired: Counter[str] = Counter()
    waits: dict[str, list[float]] = defaultdict(list)
    for step, status, decision, was_escalated, seconds in connection.execute(query):
        opened[step] += 1
        escalated[step] += bool(was_escalated)
        if status == "expired":
            expired[step] += 1
        if status == "decided" and decision:
            decided[step][decision] += 1
            if seconds is not None:
                waits[step].append(max(0.0, float(seconds)))
    return {
        step: ReviewStats(
            opened=opened[step],
            decided=dict(sorted(decided[step].items())),
            escalated=escalated[step],
            timed_out=expired[step],
            p50_seconds_to_decision=_nearest_rank(waits[step], 0.5),
            p90_seconds_to_decision=_nearest_rank(waits[step], 0.9),
        )
        for step in sorted(opened)
    }


def _seconds(connection: Connection, first: Any, then: Any) -> Any:
    """Seconds from ``first`` to ``then`` computed by the database (NULL when either is):
    reading the times would parse two datetimes a row on SQLite."""
    if connection.dialect.name == "sqlite":
        return (func.julianday(then) - func.julianday(first)) * 86400.0
    return func.extract("epoch", then - first)


def _nearest_rank(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(1, math.ceil(q * len(ordered))) - 1], 3)


# ----------------------------------------------------------------------------- funnel


def funnel(
    db: Database,
    journey_id: str,
    steps: Sequence[str],
    *,
    version: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> FunnelStats:
    """Of the runs that entered, how many reached ``steps[0]``, then ``steps[1]`` after
    it, and so on (in the order of their paths; other steps may come between)."""
    start = as_utc(start) if start is not None else None
    end = as_utc(end) if end is not None else None
    wanted = list(dict.fromkeys(steps))
    reached = [0] * len(steps)
    with _connected(db) as connection:
        entries = connection.execute(
            _window(select(func.count()).select_from(_RUNS), journey_id, version, start, end)
        ).scalar_one()
        # An `exit:` step has no entry: the run's end entry stands for its final step.
        query = _window(
            select(_PATH.c.run_id, _PATH.c.step, _RUNS.c.step.label("final_step"))
            .join(_RUNS, _RUNS.c.run_id == _PATH.c.run_id)
            .where(_PATH.c.step.in_([*wanted, END])),
            journey_id,
            version,
            start,
            end,
        ).order_by(_PATH.c.run_id, _PATH.c.seq)
        run_id, matched = None, 0
        for row_run, path_step, final_step in connection.execute(query):
            step = final_step if path_step == END else path_step
            if row_run != run_id:
                run_id, matched = row_run, 0
            if matched < len(steps) and step == steps[matched]:
                reached[matched] += 1
                matched += 1
    rows = []
    for index, step in enumerate(steps):
        previous = entries if index == 0 else reached[index - 1]
        rows.append(
            FunnelStep(
                step=step,
                reached=reached[index],
                rate_from_entry=_rate(reached[index], entries),
                rate_from_previous=_rate(reached[index], previous),
            )
        )
    return FunnelStats(journey_id=journey_id, version=version, entries=entries, steps=rows)


def _rate(count: int, of: int) -> float | None:
    return round(count / of, 4) if of else None
