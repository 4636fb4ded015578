"""Goal conversions (issue #19), on a real database through the router's `ingest`: a goal
event converts the customer's runs that entered within its window (holdout runs too),
once per run and goal, with its value; outcome goals count runs by their outcome; and
conversions are attributed to the sends that came within the window before them."""

from __future__ import annotations

import logging
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine

from engine.conversions import (
    conversions_by_arm,
    conversions_by_run,
    count_conversions,
    send_attributed,
)
from engine.database import Delivery, EventRecord, Run, RunArm, RunConversion, session_scope
from engine.plan import Plan
from engine.stats_models import Conversions
from service.router import EventRouter
from tests.database import deploy, fresh_engine

JOURNEYS = """
version: 1
events:
  payment_failed: {amount: number, invoice_id: string}
  payment_received: {amount: number, invoice_id: string}
  signed_up: {}
  first_purchase: {}
channels:
  sms: "${JOURNEYS_SMS_URL}"
templates:
  nudge: {sms: "Please pay"}
journeys:
  - id: recover
    entry: {event: payment_failed, reentry: always}
    exit_on: [{event: payment_received, outcome: recovered}]
    goals: [{event: payment_received, within: 7d, value: event.amount}]
    steps:
      - {id: remind, send: nudge, channel: sms}
      - {id: pause, wait: 3d}
      - {id: again, send: nudge, channel: sms}
      - {id: gave_up, exit: gave_up}
  - id: big_only
    entry: {event: payment_failed}
    goals: [{event: payment_received, within: 7d, when: "event.amount >= 100"}]
    steps:
      - {id: pause, wait: 7d}
  - id: fragile
    entry: {event: payment_failed}
    goals: [{event: payment_received, within: 7d, value: 100 / event.amount}]
    steps:
      - {id: pause, wait: 7d}
  - id: onboard
    entry: {event: signed_up}
    exit_on: [{event: first_purchase, outcome: converted}]
    goals: [{outcome: converted}]
    steps:
      - {id: pause, wait: 7d}
"""

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture
def db(tmp_path: Path) -> Engine:
    return fresh_engine(tmp_path)


@pytest.fixture
def plans(db: Engine) -> dict[str, Plan]:
    return deploy(db, JOURNEYS)


@pytest.fixture
def router(db: Engine, plans: dict[str, Plan]) -> EventRouter:
    return EventRouter(db=db, client=None, task_queue="unused")


def _run(
    db: Engine,
    plans: dict[str, Plan],
    journey: str,
    *,
    customer: str = "c1",
    started_at: datetime = T0,
    holdout: bool = False,
    outcome: str | None = None,
    run_id: str | None = None,
) -> str:
    run_id = run_id or uuid.uuid4().hex
    with session_scope(db) as session:
        session.add(
            Run(
                run_id=run_id,
                workflow_id=f"journey/{journey}/{customer}/{run_id}",
                journey_id=journey,
                version=plans[journey].version,
                customer_id=customer,
                status="completed" if outcome else "running",
                outcome=outcome,
                holdout=holdout,
                started_at=started_at,
                ended_at=started_at + DAY if outcome else None,
            )
        )
    return run_id


def _event(
    router: EventRouter, name: str, at: datetime, customer: str = "c1", **properties: Any
) -> None:
    record = EventRecord(
        message_id=uuid.uuid4().hex,
        type="track",
        name=name,
        customer_id=customer,
        properties=properties,
        timestamp=at,
    )
    assert len(router.ingest([record]).stored) == 1


def _rows(db: Engine) -> dict[tuple[str, str], tuple[datetime, float]]:
    with db.connect() as connection:
        table = RunConversion.__table__  # type: ignore[attr-defined]
        rows = connection.execute(select(table.c.run_id, table.c.goal, table.c.at, table.c.value))
        return {(r.run_id, r.goal): (r.at.replace(tzinfo=UTC), r.value) for r in rows}


def _count(db: Engine, journey: str, **options: Any) -> Conversions:
    with db.connect() as connection:
        return count_conversions(
            connection, journey_id=journey, version=None, start=None, end=None, **options
        )


def test_a_payment_within_seven_days_converts_with_its_amount_as_value(
    db: Engine, plans: dict[str, Plan], router: EventRouter
) -> None:
    run = _run(db, plans, "recover")
    _run(db, plans, "recover", customer="c2")  # another customer's run: no conversion

    _event(router, "payment_received", T0 + 6 * DAY, amount=250.0)

    assert _rows(db)[(run, "payment_received")] == (T0 + 6 * DAY, 250.0)
    assert _count(db, "recover") == Conversions(count=1, rate=0.5, value=250.0)


def test_a_payment_after_seven_days_does_not_convert(
    db: Engine, plans: dict[str, Plan], router: EventRouter
) -> None:
    run = _run(db, plans, "recover")

    _event(router, "payment_received", T0 + 7 * DAY + timedelta(seconds=1), amount=250.0)
    _event(router, "payment_received", T0 - timedelta(seconds=1), amount=250.0)  # before entry

    assert (run, "payment_received") not in _rows(db)
    assert _count(db, "recover") == Conversions(count=0, rate=0.0, value=0.0)


def test_a_second_payment_does_not_convert_the_run_twice(
    db: Engine, plans: dict[str, Plan], router: EventRouter
) -> None:
    run = _run(db, plans, "recover")

    _event(router, "payment_received", T0 + DAY, amount=100.0)
    _event(router, "payment_received", T0 + 2 * DAY, amount=900.0)

    assert [key for key in _rows(db) if key[0] == run] == [(run, "payment_received")]
    assert _rows(db)[(run, "payment_received")] == (T0 + DAY, 100.0)
    assert _count(db, "recover").count == 1
    assert _count(db, "recover").value == 100.0


def test_a_late_arriving_earlier_payment_becomes_the_first_conversion(
    db: Engine, plans: dict[str, Plan], router: EventRouter
) -> None:
    run = _run(db, plans, "recover")

    _event(router, "payment_received", T0 + 3 * DAY, amount=300.0)
    _event(router, "payment_received", T0 + DAY, amount=100.0)  # sent late by its source

    assert _rows(db)[(run, "payment_received")] == (T0 + DAY, 100.0)


def test_a_holdout_run_converts_by_the_same_goal(
    db: Engine, plans: dict[str, Plan], router: EventRouter
) -> None:
    held_out = _run(db, plans, "recover", holdout=True)
    treated = _run(db, plans, "recover", customer="c2")

    _event(router, "payment_received", T0 + DAY, amount=40.0)

    assert (held_out, "payment_received") in _rows(db)
    assert (treated, "payment_received") not in _rows(db)
    assert _count(db, "recover", holdout=True) == Conversions(count=1, rate=1.0, value=40.0)
    assert _count(db, "recover", holdout=False) == Conversions(count=0, rate=0.0, value=0.0)


def test_an_ended_run_converts_too(db: Engine, plans: dict[str, Plan], router: EventRouter) -> None:
    """The payment that ends the run (exit_on) still converts it: any status counts."""
    run = _run(db, plans, "recover", outcome="recovered")

    _event(router, "payment_received", T0 + DAY, amount=40.0)

    assert (run, "payment_received") in _rows(db)


def test_a_goal_whose_when_is_false_does_not_convert(
    db: Engine, plans: dict[str, Plan], router: EventRouter
) -> None:
    run = _run(db, plans, "big_only")

    _event(router, "payment_received", T0 + DAY, amount=99.0)
    assert (run, "payment_received") not in _rows(db)

    _event(router, "payment_received", T0 + 2 * DAY, amount=100.0)
    assert _rows(db)[(run, "payment_received")] == (T0 + 2 * DAY, 0.0)  # no value: 0


def test_a_value_that_fails_records_zero_and_logs_no_values(
    db: Engine, plans: dict[str, Plan], router: EventRouter, caplog: pytest.LogCaptureFixture
) -> None:
    run = _run(db, plans, "fragile", customer="cust-7731")

    with caplog.at_level(logging.WARNING, logger="engine.conversions"):
        _event(router, "payment_received", T0 + DAY, "cust-7731", amount=0, invoice_id="inv-4242")

    assert _rows(db)[(run, "payment_received")] == (T0 + DAY, 0.0)
    assert "ZeroDivisionError" in caplog.text and "fragile" in caplog.text
    assert "inv-4242" not in caplog.text and "cust-7731" not in caplog.text


def test_an_outcome_goal_counts_the_runs_with_that_outcome(
    db: Engine, plans: dict[str, Plan], router: EventRouter
) -> None:
    converted = _run(db, plans, "onboard", outcome="converted")
    _run(db, plans, "onboard", customer="c2", outcome="expired")
    _run(db, plans, "onboard", customer="c3")

    assert _count(db, "onboard") == Conversions(count=1, rate=1 / 3, value=0.0)
    with db.connect() as connection:
        found = conversions_by_run(connection, [converted, "unknown-run"])
    assert found == {converted: (T0 + DAY, 0.0)}


def test_counts_keep_to_the_entry_window_asked_for(
    db: Engine, plans: dict[str, Plan], router: EventRouter
) -> None:
    early = _run(db, plans, "recover", started_at=T0)
    _run(db, plans, "recover", customer="c2", started_at=T0 + 10 * DAY)
    _event(router, "payment_received", T0 + DAY, amount=10.0)

    with db.connect() as connection:
        window = count_conversions(
            connection,
            journey_id="recover",
            version=plans["recover"].version,
            start=T0 + 5 * DAY,
            end=T0 + 20 * DAY,
        )
        found = conversions_by_run(connection, [early])
    assert window == Conversions(count=0, rate=0.0, value=0.0)
    assert found == {early: (T0 + DAY, 10.0)}


def _delivery(
    db: Engine, run_id: str, step: str, sent_at: datetime | None, channel: str = "sms"
) -> None:
    with session_scope(db) as session:
        session.add(
            Delivery(
                workflow_id=f"w-{run_id}",
                run_id=run_id,
                step_id=step,
                visit=1,
                journey_id="recover",
                customer_id="c1",
                channel=channel,
                status="sent" if sent_at else "failed",
                sent_at=sent_at,
            )
        )


def test_send_attribution_counts_a_conversion_two_days_after_a_send_for_that_step(
    db: Engine, plans: dict[str, Plan], router: EventRouter
) -> None:
    run = _run(db, plans, "recover")
    _delivery(db, run, "remind", T0 + timedelta(hours=1))  # 5 days before the payment
    _delivery(db, run, "again", T0 + 4 * DAY)  # 2 days before
    _delivery(db, run, "never_sent", None)
    _run(db, plans, "recover", customer="c2")  # sent to, never converted
    _event(router, "payment_received", T0 + 6 * DAY, amount=10.0)

    with db.connect() as connection:
        three_days = send_attributed(
            connection,
            journey_id="recover",
            version=None,
            start=None,
            end=None,
            within_by_goal={"payment_received": 3 * 86400},
        )
        by_the_goals = send_attributed(
            connection, journey_id="recover", version=None, start=None, end=None
        )
    assert three_days == {("again", "sms"): 1}
    assert by_the_goals == {("again", "sms"): 1, ("remind", "sms"): 1}  # within 7d


def test_a_send_after_the_conversion_is_not_attributed(
    db: Engine, plans: dict[str, Plan], router: EventRouter
) -> None:
    run = _run(db, plans, "recover")
    _delivery(db, run, "again", T0 + 3 * DAY)
    _event(router, "payment_received", T0 + 2 * DAY, amount=10.0)

    with db.connect() as connection:
        found = send_attributed(
            connection, journey_id="recover", version=None, start=None, end=None
        )
    assert found == {}


def test_an_outcome_goal_is_attributed_to_the_sends_before_the_end(
    db: Engine, plans: dict[str, Plan], router: EventRouter
) -> None:
    run = _run(db, plans, "onboard", outcome="converted")  # ended at T0 + 1 day
    with session_scope(db) as session:
        for step, sent_at in (("welcome", T0 + timedelta(hours=2)), ("late", T0 + 2 * DAY)):
            session.add(
                Delivery(
                    workflow_id="w",
                    run_id=run,
                    step_id=step,
                    visit=1,
                    journey_id="onboard",
                    customer_id="c1",
                    channel="email",
                    status="sent",
                    sent_at=sent_at,
                )
            )

    with db.connect() as connection:
        found = send_attributed(
            connection, journey_id="onboard", version=None, start=None, end=None
        )
        bounded = send_attributed(
            connection,
            journey_id="onboard",
            version=None,
            start=None,
            end=None,
            within_by_goal={"outcome:converted": 3600},
        )
    assert found == {("welcome", "email"): 1}
    assert bounded == {}


def _runs_reads(db: Engine, router: EventRouter, name: str) -> list[tuple[str, Any]]:
    """The statements reading the runs table while ``router`` ingests a ``name`` event."""
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and " runs" in statement:
            statements.append((statement, parameters))

    event.listen(db, "before_cursor_execute", capture)
    try:
        _event(router, name, T0 + DAY, amount=10.0)
    finally:
        event.remove(db, "before_cursor_execute", capture)
    return statements


@pytest.mark.skipif(
    bool(os.environ.get("JOURNEYS_TEST_DATABASE_URL")),
    reason="query plans are SQLite's here: PostgreSQL chooses by its statistics",
)
def test_recording_reads_the_customers_runs_by_index_and_only_for_goal_events(
    db: Engine, plans: dict[str, Plan], router: EventRouter
) -> None:
    for n in range(30):  # other customers' runs: a scan would read them all
        _run(db, plans, "recover", customer=f"other{n}")
    _run(db, plans, "recover")

    assert _runs_reads(db, router, "first_purchase") == []  # no goal names it
    statements = _runs_reads(db, router, "payment_received")

    # The customer's runs found by index; then the run converted read by its key, before
    # and after its row is written, to count it (`engine.conversion_counts`).
    assert len(statements) == 3, statements
    with db.connect() as connection:
        plans_read = [
            " ".join(
                str(row[-1])
                for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            )
            for statement, parameters in statements
        ]
    assert all("SCAN runs" not in plan for plan in plans_read), plans_read
    assert "ix_runs_customer_entry" in plans_read[0], plans_read
    assert all("runs.run_id IN" in statement for statement, _ in statements[1:]), statements


def test_conversions_by_arm_counts_each_arms_entries_and_conversions(
    db: Engine, plans: dict[str, Plan], router: EventRouter
) -> None:
    runs = {
        arm: [_run(db, plans, "recover", customer=f"{arm}{n}") for n in range(2)]
        for arm in ("a", "b")
    }
    with session_scope(db) as session:
        for arm, ids in runs.items():
            for run_id in ids:
                session.add(RunArm(run_id=run_id, step_id="tips", arm=arm))
    _event(router, "payment_received", T0 + DAY, "b0", amount=30.0)

    with db.connect() as connection:
        found = conversions_by_arm(
            connection, journey_id="recover", version=None, start=None, end=None, step_id="tips"
        )
    assert found == {
        "a": (2, Conversions(count=0, rate=0.0, value=0.0)),
        "b": (2, Conversions(count=1, rate=0.5, value=30.0)),
    }


def test_an_event_only_a_goal_names_is_listened_to(tmp_path: Path) -> None:
    """An event no journey enters, waits or exits on, but one counts as its goal, is not
    `unrouted` (nor refused by `?strict=true`): it converts runs."""
    from service.api.routes.events import listened_events

    db = fresh_engine(tmp_path)
    deploy(
        db,
        """
version: 1
events:
  signed_up: {}
  renewed: {amount: number}
journeys:
  - id: welcome
    entry: {event: signed_up}
    goals: [{event: renewed, within: 30d, value: event.amount}]
    steps:
      - {id: pause, wait: 7d}
""",
    )
    assert listened_events(db) == frozenset({"signed_up", "renewed"})


@pytest.mark.parametrize("from_rows", [True, False], ids=["from-rows", "by-probing"])
def test_both_ways_of_counting_agree_on_overlaps_holdout_windows_and_arms(
    db: Engine, plans: dict[str, Plan], monkeypatch: pytest.MonkeyPatch, from_rows: bool
) -> None:
    """Counted from the conversion rows (large windows) or by probing each run (small
    ones, on SQLite): a run with a row and an outcome goal counts once, values sum per
    run, the holdout and the window filter the rows' runs, arms split them."""
    import engine.conversions as conversions

    monkeypatch.setattr(conversions, "_from_rows", lambda *_a, **_k: from_rows)
    both = _run(db, plans, "onboard", customer="c1", outcome="converted")
    row_only = _run(db, plans, "onboard", customer="c2")
    _run(db, plans, "onboard", customer="c3", outcome="converted")  # outcome only
    _run(db, plans, "onboard", customer="c4")  # neither
    held_out = _run(db, plans, "onboard", customer="c5", holdout=True)
    late = _run(db, plans, "onboard", customer="c6", started_at=T0 + 10 * DAY)
    with session_scope(db) as session:
        for run_id, goal, value in (
            (both, "a", 5.0),
            (both, "b", 1.0),
            (row_only, "a", 2.0),
            (held_out, "a", 7.0),
            (late, "a", 100.0),
        ):
            session.add(RunConversion(run_id=run_id, goal=goal, at=T0 + DAY, value=value))
        for run_id, arm in ((both, "x"), (row_only, "y"), (late, "y")):
            session.add(RunArm(run_id=run_id, step_id="tips", arm=arm))
    window: dict[str, Any] = {"version": None, "start": T0, "end": T0 + 5 * DAY}

    with db.connect() as connection:
        overall = count_conversions(connection, journey_id="onboard", **window)
        treated = count_conversions(connection, journey_id="onboard", holdout=False, **window)
        control = count_conversions(connection, journey_id="onboard", holdout=True, **window)
        arms = conversions_by_arm(connection, journey_id="onboard", step_id="tips", **window)
    assert overall == Conversions(count=4, rate=4 / 5, value=15.0)
    assert treated == Conversions(count=3, rate=3 / 4, value=8.0)
    assert control == Conversions(count=1, rate=1.0, value=7.0)
    assert arms == {
        "x": (1, Conversions(count=1, rate=1.0, value=6.0)),
        "y": (1, Conversions(count=1, rate=1.0, value=2.0)),
    }
