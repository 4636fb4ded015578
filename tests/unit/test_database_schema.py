"""The database schema as a deployment sees it: migrated on start, the routing indexes made
on a database from before them, and routing's reads of the runs table going through an index
(query plans). Not `journeys schema`, which is in test_designer_cli.py."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine

from engine.database import EventRecord, Run, engine_for, make_engine, session_scope, with_driver
from service.router import EventRouter
from tests.database import database_url, deploy, fresh_engine

ROUTING_INDEXES = {"ix_runs_customer_status", "ix_runs_customer_entry"}

JOURNEYS = """
version: 1
journeys:
  - id: recover
    entry: {event: payment_failed, reentry: 30d}
    exit_on: [{event: payment_failed, outcome: failed_again}]
    steps:
      - {id: pause, wait: {event: payment_received}}
      - {id: done, exit: done}
  - id: follow_up
    entry: {event: payment_failed, key: event.invoice}
    exit_on: [{event: payment_failed, outcome: failed_again}]
    steps:
      - {id: done, exit: done}
"""


def _run_indexes(db: Engine) -> set[str]:
    return {str(index["name"]) for index in inspect(db).get_indexes("runs")}


def test_a_database_from_before_the_routing_indexes_gets_them_on_start(
    tmp_path: Path,
) -> None:
    """An unmigrated database whose `runs` table predates the routing indexes (the release
    that added them created them on start) gets them when it is adopted by migrations."""
    db = fresh_engine(tmp_path)
    with db.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
        # Later revisions' tables and columns: not there yet.
        connection.execute(text("DROP TABLE run_arms"))
        connection.execute(text("DROP TABLE run_path"))
        connection.execute(text("DROP TABLE run_backlog"))
        connection.execute(text("DROP TABLE channel_rates"))
        for table in (
            "audit",
            "audit_head",
            "audit_checkpoints",
            "pseudonym_key",
            "customer_keys",
            "erased_customers",
            "run_conversions",
            "step_rollup",
        ):
            connection.execute(text(f"DROP TABLE {table}"))
        connection.execute(text("ALTER TABLE runs DROP COLUMN current_run_id"))
        connection.execute(text("ALTER TABLE api_keys DROP COLUMN scopes"))
        connection.execute(text("ALTER TABLE api_keys DROP COLUMN revoked_at"))
        connection.execute(text("DROP INDEX ix_runs_started"))
        connection.execute(text("DROP INDEX ix_runs_journey_status"))
        for name in ROUTING_INDEXES:
            connection.execute(text(f"DROP INDEX {name}"))
    assert not ROUTING_INDEXES & _run_indexes(db)
    db.dispose()

    again = make_engine(database_url(tmp_path))  # what the next start does

    assert _run_indexes(again) >= ROUTING_INDEXES | {"ix_runs_started"}
    make_engine(database_url(tmp_path)).dispose()  # and a start with them present is a no-op
    again.dispose()


@pytest.mark.skipif(
    bool(os.environ.get("JOURNEYS_TEST_DATABASE_URL")),
    reason="query plans are SQLite's here: PostgreSQL chooses by its statistics",
)
def test_routing_reads_a_customers_runs_through_an_index_not_a_scan(tmp_path: Path) -> None:
    db = fresh_engine(tmp_path)
    deploy(db, JOURNEYS)
    with session_scope(db) as session:
        # Many runs of the journey and many open runs, none of them this customer's: a
        # plan that scans by journey or by status would read them all.
        for n in range(50):
            session.add(
                Run(
                    run_id=f"r{n}",
                    workflow_id=f"journey/recover/other{n}",
                    journey_id="recover",
                    version="v",
                    customer_id=f"other{n}",
                )
            )
        # The customer's own open runs: one of each keyed run, one unkeyed.
        for workflow_id, journey_id, key in (
            ("journey/recover/c1", "recover", None),
            ("journey/follow_up/c1/inv-1", "follow_up", "inv-1"),
            ("journey/follow_up/c1/inv-2", "follow_up", "inv-2"),
        ):
            session.add(
                Run(
                    run_id=workflow_id,
                    workflow_id=workflow_id,
                    journey_id=journey_id,
                    version="v",
                    customer_id="c1",
                    key=key,
                )
            )
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and " runs" in statement:
            statements.append((statement, parameters))

    router = EventRouter(db=db, client=None, task_queue="unused")
    record = EventRecord(
        message_id=uuid.uuid4().hex,
        type="track",
        name="payment_failed",
        customer_id="c1",
        properties={"invoice": "inv-1"},
        timestamp=datetime.now(UTC),
    )
    router.ingest([record])
    event.listen(db, "before_cursor_execute", capture)
    try:
        inputs = router._routing_inputs(record)
    finally:
        event.remove(db, "before_cursor_execute", capture)

    assert len(inputs.entries) == 2
    # The event is for inv-1's run and the unkeyed one, never read for inv-2's.
    assert sorted(run.workflow_id for run in inputs.open_runs) == [
        "journey/follow_up/c1/inv-1",
        "journey/recover/c1",
    ]
    assert len(statements) == 2, [s for s, _ in statements]  # open runs; reentry history
    with db.connect() as connection:
        for statement, parameters in statements:
            plan = " ".join(
                str(row[-1])
                for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            )
            assert "SCAN runs" not in plan, (statement, plan)
            assert "ix_runs_customer_" in plan, (statement, plan)


def test_a_postgresql_url_without_a_driver_gets_psycopg_3() -> None:
    """`python -m bench --postgres postgresql://...` and a `DATABASE_URL` as most hosts
    give it name no driver; SQLAlchemy would pick psycopg2, which is not installed."""

    assert with_driver("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert with_driver("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert with_driver("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert with_driver("sqlite:///x.db") == "sqlite:///x.db"
    engine = engine_for("postgresql://postgres@127.0.0.1:1/none")
    try:
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()
