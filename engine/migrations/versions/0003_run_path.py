"""The `run_path` table: a run's path as one row per entry; `runs.current_run_id`.

Revision ID: 0003
Revises: 0002

A run's path was one JSON column, `runs.path`, rewritten whole at every record: a run of
20,000 steps wrote its 20,000 entries again at each of them. Runs now record only the
entries they have not recorded yet, as rows keyed by (run, position). The paths the
`runs` table holds are moved into rows (position = index) and the column is left `[]`:
kept, so that a reader of the release before this one still finds a list there, but no
longer written. `current_run_id` is the Temporal run id of the generation now running
(a run continues as new; `run_id` stays the first generation's).

Reads every run once, in pages: on a large `runs` table run `journeys db upgrade` at a
quiet hour. Frozen: change the schema in a new revision.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_RUNS = sa.table(
    "runs",
    sa.column("run_id", sa.String()),
    sa.column("path", sa.JSON()),
    sa.column("started_at", sa.DateTime(timezone=True)),
)
_PATH = sa.table(
    "run_path",
    sa.column("run_id", sa.String()),
    sa.column("seq", sa.Integer()),
    sa.column("step", sa.String()),
    sa.column("type", sa.String()),
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("outcome", sa.String()),
    sa.column("detail", sa.JSON()),
)
_PAGE = 500  # runs read at a time (upgrade); path rows read at a time (downgrade): 10x


def upgrade() -> None:
    op.create_table(
        "run_path",
        sa.Column("run_id", sa.String(length=100), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq"),
    )
    op.add_column("runs", sa.Column("current_run_id", sa.String(length=100), nullable=True))
    connection = op.get_bind()
    for page in _pages_of_runs(connection):
        rows = [
            _row(run_id, seq, entry, started_at)
            for run_id, path, started_at in page
            for seq, entry in enumerate(path or [])
            if isinstance(entry, dict)
        ]
        moved = [run_id for run_id, path, _ in page if path]
        if rows:
            connection.execute(_PATH.insert(), rows)
        if moved:
            connection.execute(
                _RUNS.update().where(_RUNS.c.run_id.in_(moved)).values(path=[]),
            )


def _pages_of_runs(connection: sa.Connection) -> Iterator[list[tuple[str, Any, Any]]]:
    """Every run's id, path and start, ``_PAGE`` runs at a time (by key: each page is read
    whole before it is written back, on both databases)."""
    last = ""
    while True:
        page = [
            (run_id, path, started_at)
            for run_id, path, started_at in connection.execute(
                sa.select(_RUNS.c.run_id, _RUNS.c.path, _RUNS.c.started_at)
                .where(_RUNS.c.run_id > last)
                .order_by(_RUNS.c.run_id)
                .limit(_PAGE)
            )
        ]
        if not page:
            return
        yield page
        last = page[-1][0]


def _row(run_id: str, seq: int, entry: dict[str, Any], started_at: Any) -> dict[str, Any]:
    detail = entry.get("detail")
    return {
        "run_id": run_id,
        "seq": seq,
        "step": str(entry.get("step") or ""),
        "type": str(entry.get("type") or ""),
        "at": _instant(entry.get("at")) or _instant(started_at) or datetime.now(UTC),
        "outcome": entry.get("outcome"),
        "detail": detail if isinstance(detail, dict) else {},
    }


def _instant(value: Any) -> datetime | None:
    """An entry's time (ISO 8601 text in the JSON; a datetime from the database), in UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def downgrade() -> None:
    connection = op.get_bind()
    run_id: str | None = None
    path: list[dict[str, Any]] = []
    for row in _rows_of_paths(connection):
        if row.run_id != run_id:
            _put_back(connection, run_id, path)
            run_id, path = row.run_id, []
        path.append(
            {
                "step": row.step,
                "type": row.type,
                "at": _text(row.at),
                "outcome": row.outcome,
                "detail": row.detail or {},
            }
        )
    _put_back(connection, run_id, path)
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("current_run_id")
    op.drop_table("run_path")


def _rows_of_paths(connection: sa.Connection) -> Iterator[Any]:
    """Every path row, by run and position, ``10 * _PAGE`` at a time."""
    last_run, last_seq = "", -1
    while True:
        page = connection.execute(
            sa.select(_PATH)
            .where(
                sa.or_(
                    _PATH.c.run_id > last_run,
                    sa.and_(_PATH.c.run_id == last_run, _PATH.c.seq > last_seq),
                )
            )
            .order_by(_PATH.c.run_id, _PATH.c.seq)
            .limit(10 * _PAGE)
        ).all()
        if not page:
            return
        yield from page
        last_run, last_seq = page[-1].run_id, page[-1].seq


def _put_back(connection: sa.Connection, run_id: str | None, path: list[dict[str, Any]]) -> None:
    if run_id is not None and path:
        connection.execute(_RUNS.update().where(_RUNS.c.run_id == run_id).values(path=path))


def _text(value: Any) -> str | None:
    """An entry's time as the JSON path held it (pydantic's form: ``...Z``)."""
    instant = _instant(value)
    return instant.isoformat().replace("+00:00", "Z") if instant is not None else None
