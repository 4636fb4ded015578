"""A run's path in the `run_path` table: written by position, read in pages.

A run records only the entries it has not recorded yet (its tail, the first of them at
position ``path_start``: `RecordRunInput`, `OpenReviewInput`), so `write_path` writes
them at ``path_start + i``: a retried record, or a tail sent again, changes nothing. Readers take a page (`read_path`), the last entries
(`last_path`: a review case) or the length (`path_length`), never the whole path at once
unless they ask for it. An entry reads as the JSON form of `PathEntry` (its time as
ISO 8601 text), as the `runs.path` column used to hold it.

Also `run_without_path`: a `runs` row without its legacy JSON `path` column, for readers
that want the row and page the path themselves. Not here: the runs row's own upsert
(`activities.runs.upsert_run`), HTTP paging parameters (the API and the console).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, bindparam, func, or_, select
from sqlalchemy.engine import Connection
from sqlmodel import Session

from engine.database import Run, RunPathEntry, dialect_insert
from engine.payloads import PathEntry
from engine.step_rollup import record_path
from engine.timestamps import as_utc

__all__ = [
    "RUN_COLUMNS",
    "PathPage",
    "last_path",
    "path_length",
    "read_path",
    "read_path_page",
    "run_without_path",
    "write_path",
]

_PATH: Table = RunPathEntry.__table__  # type: ignore[attr-defined]
_RUNS: Table = Run.__table__  # type: ignore[attr-defined]

RUN_COLUMNS = tuple(column for column in _RUNS.columns if column.name != "path")
"""The `runs` columns but the legacy JSON path (empty since revision 0003, but a worker
of the release before may still write a whole path there during a rollout)."""


def write_path(
    connection: Connection, *, run_id: str, start: int, entries: Sequence[PathEntry]
) -> None:
    """Write ``entries`` at positions ``start``, ``start + 1``, ..., in one statement: a
    position already stored with the same entry is left as it is (a retried record, a
    tail sent again: nothing is written twice), one stored with another entry takes the
    new one. That is the send that ends a run: it writes the send and the run's end
    (`delivered_record`) before the run knows it delivered, and the run, when an exit
    event came meanwhile, records its own end over it, as the last writer of the whole
    JSON path used to win. A run's writers take turns, so the last one is the run's.

    What the write changes is added to the journey's step numbers first, in the same
    transaction (`engine.step_rollup.record_path`: a write that changes nothing counts
    nothing)."""
    if not entries:
        return
    record_path(connection, run_id=run_id, start=start, entries=entries)
    rows = []
    for seq, entry in enumerate(entries, start):
        row = entry.model_dump(mode="json")
        row["at"] = as_utc(entry.at)  # the column's own type, not text; aware
        row["run_id"] = run_id
        row["seq"] = seq
        rows.append(row)
    connection.execute(_insert_statement(connection.dialect.name), rows)


_COMPARED = ("step", "type", "at", "outcome")  # not `detail`: PostgreSQL's json has no `=`


@functools.cache
def _insert_statement(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` the entry differs, into `run_path`
    for ``dialect``, built once (a run's record is the worker's hot path). An entry sent
    again is compared, not rewritten: no new row version, no write."""
    statement = dialect_insert(dialect)(_PATH)
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[_PATH.c.run_id, _PATH.c.seq],
        set_={name: excluded[name] for name in (*_COMPARED, "detail")},
        where=or_(*(_PATH.c[name].is_distinct_from(excluded[name]) for name in _COMPARED)),
    )


_COLUMNS = (_PATH.c.seq, _PATH.c.step, _PATH.c.type, _PATH.c.at, _PATH.c.outcome, _PATH.c.detail)
_AFTER = (
    select(*_COLUMNS)
    .where(_PATH.c.run_id == bindparam("run_id"), _PATH.c.seq > bindparam("after"))
    .order_by(_PATH.c.seq)
)
_LAST = (
    select(*_COLUMNS)
    .where(_PATH.c.run_id == bindparam("run_id"))
    .order_by(_PATH.c.seq.desc())
    .limit(bindparam("count"))
)
_LENGTH = select(func.coalesce(func.max(_PATH.c.seq), -1) + 1).where(
    _PATH.c.run_id == bindparam("run_id")
)


def _entry(row: Any) -> dict[str, Any]:
    at = as_utc(row.at)
    return {
        "step": row.step,
        "type": row.type,
        "at": at.isoformat().replace("+00:00", "Z"),  # as pydantic writes it in JSON
        "outcome": row.outcome,
        "detail": row.detail or {},
    }


def read_path(
    session: Session, run_id: str, *, after: int = -1, limit: int | None = None
) -> list[dict[str, Any]]:
    """The run's entries after position ``after`` (-1: from the first), in order, at most
    ``limit`` of them (None: all)."""
    return read_path_page(session, run_id, after=after, limit=limit).entries


@dataclass(frozen=True)
class PathPage:
    """Entries of a run's path, in order, from position ``first``; ``next_after`` is the
    ``after`` of the page that follows (None: no stored entry follows)."""

    entries: list[dict[str, Any]]
    first: int | None
    next_after: int | None


def read_path_page(
    session: Session, run_id: str, *, after: int = -1, limit: int | None = None
) -> PathPage:
    """`read_path` with where the page starts and what comes next: one entry more than
    ``limit`` is read, to know whether another page follows."""
    statement = _AFTER if limit is None else _AFTER.limit(limit + 1)
    rows = session.connection().execute(statement, {"run_id": run_id, "after": after}).all()
    more = limit is not None and len(rows) > limit
    rows = rows[:limit] if limit is not None else rows
    return PathPage(
        entries=[_entry(row) for row in rows],
        first=rows[0].seq if rows else None,
        next_after=rows[-1].seq if more else None,
    )


def last_path(session: Session, run_id: str, count: int) -> list[dict[str, Any]]:
    """The run's last ``count`` entries, in order."""
    rows = session.connection().execute(_LAST, {"run_id": run_id, "count": count}).all()
    return [_entry(row) for row in reversed(rows)]


def path_length(session: Session, run_id: str) -> int:
    """How long the stored path is: one past its last position (positions are written
    without gaps, each record from where the last one ended, so this is also the count)."""
    return int(session.connection().execute(_LENGTH, {"run_id": run_id}).scalar_one())


def run_without_path(session: Session, run_id: str) -> Run | None:
    """The `runs` row of ``run_id``, its legacy JSON path left unread (`Run.path` is `[]`)."""
    row = (
        session.connection()
        .execute(select(*RUN_COLUMNS).where(_RUNS.c.run_id == run_id))
        .mappings()
        .first()
    )
    return Run(**row) if row is not None else None
