"""A journey's step numbers, kept as they happen: the `step_rollup` table.

Counting a journey's numbers from its path rows reads every row (a million of them for a
hundred thousand runs). Instead, every write of path rows (`engine.run_path.write_path`)
adds what the rows change to counters in the same transaction, by journey, version, UTC
hour of the run's entry, step, ``metric`` and ``bucket``:

``reached``  (bucket ``""``) runs whose path holds the step at least once;
``edge``     (bucket: the next step) moves from the step to the next entry's step (a
             repeated entry of the same step, a deferred send or an ignored event, is
             no move);
``time``     (bucket: `time_bucket` of the seconds from the entry to the next entry) time
             spent there, log-spaced so that percentiles can be read back (`quantile`);
``send``     (bucket ``channel|kind``) a send entry's result: ``attempted``, ``sent``,
             ``failed``, ``skipped:<reason>`` (`send_kinds`);
``arm``      (bucket: the arm) runs put in an arm at a split step.

Only what a write really changes is counted: the stored entries around the written
positions are read first, and the counts of the entries and pairs of entries the write
changes are taken off and those of the new ones added (a retried record, a tail sent
again: nothing). Runs, not entries, are what ``reached`` and ``arm`` count: a step counts
for a run when no other position of its path holds it (``ix_run_path_run_step``).

`path_counts` counts the same from path rows (the edges of a window that are not whole
hours; `backfill`, which revision 0011 runs over the rows stored before it).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Table, and_, bindparam, column, or_, select, table
from sqlalchemy.engine import Connection

from engine.database import Run, RunPathEntry, StepRollup, dialect_insert
from engine.timestamps import as_utc

__all__ = [
    "END",
    "TIME_BUCKETS_PER_DOUBLING",
    "Key",
    "add_counts",
    "backfill",
    "bucket_bounds",
    "entry_hour",
    "full_counts",
    "journey_term",
    "path_counts",
    "quantile",
    "record_path",
    "send_kinds",
    "time_bucket",
]

END = "end"
"""The step of a run's last entry, its end (`JourneyRun._end`): no step of the journey."""

TIME_BUCKETS_PER_DOUBLING = 4
"""Time buckets are [2^((b-1)/4), 2^(b/4)) milliseconds: a value read back as its bucket's
geometric middle is within 2^(1/8) - 1 = 9.05% of the true one."""

Key = tuple[str, str, str]
"""(step, metric, bucket)."""

_PATH: Table = RunPathEntry.__table__  # type: ignore[attr-defined]
_RUNS: Table = Run.__table__  # type: ignore[attr-defined]
_ROLLUP: Table = StepRollup.__table__  # type: ignore[attr-defined]

_DELIVERED = frozenset({"sent", "captured"})
_SKIPS = {"no_address", "no_consent", "suppressed"}


class _Entry(Protocol):
    """A path entry: a `PathEntry` or a `run_path` row."""

    @property
    def step(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def at(self) -> datetime: ...
    @property
    def outcome(self) -> str | None: ...
    @property
    def detail(self) -> Any: ...


# ----------------------------------------------------------------------------- counting


def time_bucket(seconds: float) -> int:
    """The `time` bucket of a duration: 0 below a millisecond, else 1 + floor(4 log2 ms)."""
    milliseconds = seconds * 1000.0
    if milliseconds < 1.0:
        return 0
    return 1 + math.floor(TIME_BUCKETS_PER_DOUBLING * math.log2(milliseconds))


def bucket_bounds(bucket: int) -> tuple[float, float]:
    """The seconds a `time` bucket holds, [low, high)."""
    if bucket <= 0:
        return 0.0, 0.001
    step = 1.0 / TIME_BUCKETS_PER_DOUBLING
    return 2.0 ** ((bucket - 1) * step) / 1000.0, 2.0 ** (bucket * step) / 1000.0


def quantile(histogram: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of a `time` histogram, as its bucket's geometric
    middle (0 for the sub-millisecond bucket); None for an empty one."""
    total = sum(count for count in histogram.values() if count > 0)
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(histogram):
        seen += max(0, histogram[bucket])
        if seen >= rank:
            if bucket <= 0:
                return 0.0
            low, high = bucket_bounds(bucket)
            return math.sqrt(low * high)
    return None  # pragma: no cover - the loop reaches the rank


def send_kinds(outcome: str | None, reason: str | None) -> tuple[str, ...]:
    """What a send entry counts: its channel's ``attempted`` and result (``sent``,
    ``failed``, ``skipped:<reason>``), or a deferral alone (it is tried again)."""
    if outcome in _DELIVERED:
        return ("attempted", "sent")
    if outcome == "failed":
        return ("attempted", "failed")
    if outcome in _SKIPS:
        return ("attempted", f"skipped:{outcome}")
    if outcome == "capped":  # a full cap, and the step skips rather than waits
        return ("attempted", "skipped:frequency_cap")
    if outcome == "deferred":  # quiet hours or a full cap: waited out, then tried again
        text = (reason or "").lower()
        if text.startswith("quiet hours"):
            return ("skipped:quiet_hours",)
        if text.startswith("frequency cap"):
            return ("skipped:frequency_cap_wait",)
        return ("skipped:deferred",)
    return ("attempted", f"skipped:{outcome or 'unknown'}")


def _detail(entry: _Entry) -> dict[str, Any]:
    detail = entry.detail
    return detail if isinstance(detail, dict) else {}


def _channel(entry: _Entry) -> str:
    return str(_detail(entry).get("channel") or "-")


def entry_counts(entry: _Entry) -> list[Key]:
    """What one entry counts by itself (a send's result)."""
    if entry.type != "send":
        return []
    channel = _channel(entry)
    kinds = send_kinds(entry.outcome, _detail(entry).get("reason"))
    return [(entry.step, "send", f"{channel}|{kind}") for kind in kinds]


def pair_counts(previous: _Entry, entry: _Entry, final_step: str | None = None) -> list[Key]:
    """What two consecutive entries count: the time spent at the first, the move from it
    to the second, a send that fell back from one channel to the next.

    An `exit:` step has no path entry of its own: the run's end entry follows the step
    before it, and the runs row names the exit step (``final_step``, its `step` column,
    written just before). So the end after another step counts the move into the exit
    step and the run reaching it."""
    if previous.step == END:
        return []
    seconds = max(0.0, (as_utc(entry.at) - as_utc(previous.at)).total_seconds())
    keys: list[Key] = [(previous.step, "time", str(time_bucket(seconds)))]
    if entry.step not in (END, previous.step):
        keys.append((previous.step, "edge", entry.step))
    if entry.step == END and final_step not in (None, END, previous.step):
        assert final_step is not None
        keys += [(previous.step, "edge", final_step), (final_step, "reached", "")]
    if (
        previous.type == "send"
        and entry.type == "send"
        and entry.step == previous.step
        and previous.outcome not in _DELIVERED
        and previous.outcome != "deferred"
        and _channel(entry) != _channel(previous)
    ):
        keys.append((previous.step, "send", f"{_channel(previous)}|skipped:fallback"))
    return keys


def _arm(entry: _Entry) -> str | None:
    arm = _detail(entry).get("arm")
    return arm if entry.type == "split" and isinstance(arm, str) else None


def _reach(counts: Counter[Key], step: str, entries: Iterable[_Entry], sign: int) -> None:
    counts[(step, "reached", "")] += sign
    arm = next((a for e in entries if e.step == step and (a := _arm(e)) is not None), None)
    if arm is not None:
        counts[(step, "arm", arm)] += sign


def full_counts(entries: Sequence[_Entry], final_step: str | None = None) -> Counter[Key]:
    """Everything one run's whole path counts (``final_step``: its runs row's step)."""
    counts: Counter[Key] = Counter()
    for index, entry in enumerate(entries):
        counts.update(entry_counts(entry))
        if index:
            counts.update(pair_counts(entries[index - 1], entry, final_step))
    for step in dict.fromkeys(entry.step for entry in entries):
        if step != END:
            _reach(counts, step, entries, 1)
    return counts


def entry_hour(started_at: datetime) -> datetime:
    """The rollup hour of a run: its start, in UTC, truncated to the hour."""
    return as_utc(started_at).replace(minute=0, second=0, microsecond=0)


# ----------------------------------------------------------------------------- writing

# The run's row and its stored entries around the written positions, in one statement
# (a record is the worker's hot path): no row without the runs row, which is read by key.
_WINDOW = (
    select(
        _RUNS.c.journey_id,
        _RUNS.c.version,
        _RUNS.c.started_at,
        _RUNS.c.step.label("final_step"),
        _PATH.c.seq,
        _PATH.c.step,
        _PATH.c.type,
        _PATH.c.at,
        _PATH.c.outcome,
        _PATH.c.detail,
    )
    .select_from(_RUNS)
    .outerjoin(
        _PATH,
        and_(
            _PATH.c.run_id == _RUNS.c.run_id,
            _PATH.c.seq >= bindparam("low"),
            _PATH.c.seq <= bindparam("high"),
        ),
    )
    .where(_RUNS.c.run_id == bindparam("run_id"))
)


# Which of these steps the run's path holds at other positions (``ix_run_path_run_step``);
# built once: a record is the worker's hot path.
_ELSEWHERE = (
    select(_PATH.c.step)
    .distinct()
    .where(
        _PATH.c.run_id == bindparam("run_id"),
        _PATH.c.step.in_(bindparam("steps", expanding=True)),
        or_(_PATH.c.seq < bindparam("start"), _PATH.c.seq >= bindparam("stop")),
    )
)


def _same(stored: _Entry, entry: _Entry) -> bool:
    """Equal as `write_path` compares (not ``detail``: a stored row keeps its own)."""
    return (
        stored.step == entry.step
        and stored.type == entry.type
        and stored.outcome == entry.outcome
        and as_utc(stored.at) == as_utc(entry.at)
    )


def _window_counts(
    window: Mapping[int, _Entry], start: int, stop: int, final_step: str | None
) -> Counter[Key]:
    """What positions ``start`` to ``stop - 1`` count, with the pairs they are part of."""
    counts: Counter[Key] = Counter()
    for seq in range(start, stop + 1):
        entry = window.get(seq)
        if entry is None:
            continue
        if seq < stop:
            counts.update(entry_counts(entry))
        previous = window.get(seq - 1)
        if previous is not None:
            counts.update(pair_counts(previous, entry, final_step))
    return counts


def record_path(
    connection: Connection, *, run_id: str, start: int, entries: Sequence[_Entry]
) -> None:
    """Add to the rollup what writing ``entries`` at ``start`` on changes; call it just
    before the rows are written (it reads the stored ones), in their transaction."""
    stop = start + len(entries)
    params = {"run_id": run_id, "low": start - 1, "high": stop}
    rows = connection.execute(_WINDOW, params).all()
    if not rows:
        return  # no runs row to count by (the run records one before anything else)
    run = rows[0]
    stored: dict[int, _Entry] = {row.seq: row for row in rows if row.seq is not None}
    new = dict(stored)
    for seq, entry in enumerate(entries, start):
        old = stored.get(seq)
        if old is None or not _same(old, entry):
            new[seq] = entry
    if new == stored:
        return  # a retried record, a tail sent again: nothing changes
    delta = _window_counts(new, start, stop, run.final_step)
    delta.subtract(_window_counts(stored, start, stop, run.final_step))
    _reached_delta(connection, delta, run_id, start, stop, stored, new)
    add_counts(connection, run.journey_id, run.version, entry_hour(run.started_at), delta)


def _reached_delta(
    connection: Connection,
    delta: Counter[Key],
    run_id: str,
    start: int,
    stop: int,
    stored: Mapping[int, _Entry],
    new: Mapping[int, _Entry],
) -> None:
    """Steps the written positions add to or take from the run's path as a whole."""
    before = [stored[seq] for seq in range(start, stop) if seq in stored]
    after = [new[seq] for seq in range(start, stop) if seq in new]
    changed = ({e.step for e in before} ^ {e.step for e in after}) - {END}
    if not changed:
        return
    if start <= 1 and stop not in stored:
        # Every other position was read with the window (positions have no gaps): the
        # run's first record, typically. No need to ask.
        outside = {entry.step for seq, entry in stored.items() if seq < start}
        _reach_changed(delta, changed, outside & changed, before, after)
        return
    params = {"run_id": run_id, "steps": sorted(changed), "start": start, "stop": stop}
    elsewhere = set(connection.execute(_ELSEWHERE, params).scalars())
    _reach_changed(delta, changed, elsewhere, before, after)


def _reach_changed(
    delta: Counter[Key],
    changed: set[str],
    elsewhere: set[str],
    before: Sequence[_Entry],
    after: Sequence[_Entry],
) -> None:
    for step in changed - elsewhere:
        if any(e.step == step for e in after):
            _reach(delta, step, after, 1)
        else:
            _reach(delta, step, before, -1)


@functools.cache
def _add_statement(dialect: str, with_values: bool) -> Any:
    """The upsert that adds to the counters; without values, one that names no ``value``
    column (path counts have none; revision 0011 runs it before 0012 adds the column)."""
    columns = [*_PRIMARY, "count", *(("value",) if with_values else ())]
    target = table(_ROLLUP.name, *(column(name, _ROLLUP.c[name].type) for name in columns))
    statement = dialect_insert(dialect)(target)
    added = {name: target.c[name] + statement.excluded[name] for name in columns[6:]}
    return statement.on_conflict_do_update(
        index_elements=[target.c[name] for name in _PRIMARY], set_=added
    )


_PRIMARY = ("journey_id", "hour", "version", "step", "metric", "bucket")


def add_counts(
    connection: Connection,
    journey_id: str,
    version: str,
    hour: datetime,
    delta: Mapping[Key, int],
    values: Mapping[Key, float] | None = None,
) -> None:
    """Add ``delta`` (and ``values`` to the counters' summed values) to the counters, in
    key order (two transactions adding to the same counters lock them in the same order:
    no deadlock on PostgreSQL)."""
    values = values or {}
    rows = []
    for step, metric, bucket in sorted(set(delta) | set(values)):
        count, value = delta.get((step, metric, bucket), 0), values.get((step, metric, bucket))
        if not count and not value:
            continue
        row = {"journey_id": journey_id, "hour": hour, "version": version, "step": step}
        row.update(metric=metric, bucket=bucket, count=count)
        if values:
            row["value"] = value or 0.0
        rows.append(row)
    if rows:
        connection.execute(_add_statement(connection.dialect.name, bool(values)), rows)


# ----------------------------------------------------------------------------- reading paths


def _runs_paths(rows: Iterable[Any]) -> Iterator[tuple[Any, list[Any]]]:
    """Rows ordered by run and position, grouped: (first row, the run's rows)."""
    current: list[Any] = []
    for row in rows:
        if current and row.run_id != current[0].run_id:
            yield current[0], current
            current = []
        current.append(row)
    if current:
        yield current[0], current


def path_counts(
    connection: Connection,
    *,
    journey_id: str,
    version: str | None,
    start: datetime,
    end: datetime,
) -> Counter[Key]:
    """What the paths of the journey's runs that entered in [start, end) count, read from
    their rows (for windows that are not whole hours)."""
    query = (
        select(
            _PATH.c.run_id,
            _PATH.c.seq,
            _PATH.c.step,
            _PATH.c.type,
            _PATH.c.at,
            _PATH.c.outcome,
            _PATH.c.detail,
            _RUNS.c.step.label("final_step"),
        )
        .join(_RUNS, _RUNS.c.run_id == _PATH.c.run_id)
        .where(
            journey_term(connection, journey_id),
            _RUNS.c.started_at >= start,
            _RUNS.c.started_at < end,
        )
        .order_by(_PATH.c.run_id, _PATH.c.seq)
    )
    if version is not None:
        query = query.where(_RUNS.c.version == version)
    counts: Counter[Key] = Counter()
    for first, rows in _runs_paths(connection.execute(query)):
        counts.update(full_counts(rows, first.final_step))
    return counts


def journey_term(connection: Connection, journey_id: str) -> Any:
    """``runs.journey_id = journey_id``, on SQLite in a form no index serves: SQLite keeps
    no statistics and would read every run of the journey by the journey's index rather
    than the hour's runs by `ix_runs_started` (measured: 60-85 ms against 1-2 ms with
    120,000 runs). PostgreSQL chooses by its statistics."""
    column = _RUNS.c.journey_id
    if connection.dialect.name == "sqlite":
        return column.op("||")("") == journey_id
    return column == journey_id


_BACKFILL_PAGE = 500


def backfill(connection: Connection) -> int:
    """Add every stored path to the rollup (revision 0011; the bench); returns the runs
    counted. Reads the runs ``_BACKFILL_PAGE`` at a time, by key."""
    totals: dict[tuple[str, str, datetime], Counter[Key]] = {}
    last, runs = "", 0
    while True:
        page = connection.execute(
            select(
                _RUNS.c.run_id,
                _RUNS.c.journey_id,
                _RUNS.c.version,
                _RUNS.c.started_at,
                _RUNS.c.step,
            )
            .where(_RUNS.c.run_id > last)
            .order_by(_RUNS.c.run_id)
            .limit(_BACKFILL_PAGE)
        ).all()
        if not page:
            break
        last = page[-1].run_id
        runs_by_id = {row.run_id: row for row in page}
        paths = connection.execute(
            select(_PATH)
            .where(_PATH.c.run_id.in_(list(runs_by_id)))
            .order_by(_PATH.c.run_id, _PATH.c.seq)
        )
        for first, rows in _runs_paths(paths):
            run = runs_by_id[first.run_id]
            key = (run.journey_id, run.version, entry_hour(run.started_at))
            totals.setdefault(key, Counter()).update(full_counts(rows, run.step))
            runs += 1
    for (journey_id, version, hour), counts in totals.items():
        add_counts(connection, journey_id, version, hour, counts)
    return runs


def whole_hours(start: datetime | None, end: datetime | None) -> tuple[datetime | None, ...]:
    """The window [start, end) as (first whole hour, end of the whole hours): the part of
    the window the rollup answers; the rest (less than an hour at each side) is counted
    from path rows. None: unbounded on that side."""
    first = None
    if start is not None:
        start = as_utc(start)
        first = entry_hour(start)
        if first < start:
            first += timedelta(hours=1)
    last = entry_hour(end) if end is not None else None
    return first, last
