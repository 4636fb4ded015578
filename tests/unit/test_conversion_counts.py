"""Conversions kept as counters (`engine.conversion_counts`): whatever order the writes
that make a conversion come in (an arm, a goal event, a message sent, the run's end),
a journey's numbers (`engine.stats.journey_stats`, which reads the counters) equal what
the rows say (`engine.conversions`' counts from rows) and what a fill from the rows
gives (`backfill`, revision 0012)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete
from sqlalchemy.engine import Engine

from activities.messaging import MessagingActivities
from activities.runs import upsert_run
from engine.conversion_counts import backfill
from engine.conversions import conversions_by_arm, count_conversions, send_attributed
from engine.database import EventRecord, StepRollup, session_scope, utcnow
from engine.payloads import PathEntry, RecordRunInput, SendMessageInput
from engine.plan import Plan
from engine.stats import journey_stats
from engine.step_rollup import backfill as backfill_paths
from service.router import EventRouter
from tests.database import deploy, fresh_engine

JOURNEYS = """
version: 1
events:
  signed_up: {}
  purchased: {amount: number}
channels:
  email: "${JOURNEYS_EMAIL_URL}"
templates:
  hello: {email: {subject: Hi, text: Hello}}
journeys:
  - id: onboard
    entry: {event: signed_up, reentry: always}
    goals:
      - {event: purchased, within: 7d, value: event.amount}
      - {outcome: finished}
    steps:
      - {id: tips, split: {a: 50, b: 50}, paths: {a: hello, b: hello}}
      - {id: hello, send: hello, channel: email}
      - {id: done, exit: finished}
"""

STEPS = ("arm", "goal_event", "sent", "end")
ORDERS = [  # a run is put in its arm before it ends; the rest may come in any order
    order for order in itertools.permutations(STEPS) if order.index("arm") < order.index("end")
]


@pytest.fixture
def db(tmp_path: Path) -> Engine:
    return fresh_engine(tmp_path)


def _record(plan: Plan, run_id: str, customer: str, **changes: Any) -> RecordRunInput:
    return RecordRunInput(
        run_id=run_id,
        workflow_id=f"journey/onboard/{customer}/{run_id}",
        journey_id="onboard",
        version=plan.version,
        customer_id=customer,
        **changes,
    )


def _writers(
    db: Engine, plan: Plan, router: EventRouter, run_id: str, customer: str
) -> dict[str, Callable[[], None]]:
    now = utcnow()

    def arm() -> None:
        entry = PathEntry(step="tips", type="split", at=now, detail={"arm": "b"})
        with session_scope(db) as session:
            upsert_run(session, _record(plan, run_id, customer, step="tips", path=[entry]))

    def goal_event() -> None:
        record = EventRecord(
            message_id=uuid.uuid4().hex,
            type="track",
            name="purchased",
            customer_id=customer,
            properties={"amount": 12.5},
            # A client's clock a minute ahead: the message sent after this event is
            # stored still comes before it, and is credited with it.
            timestamp=utcnow() + timedelta(minutes=1),
        )
        assert len(router.ingest([record]).stored) == 1

    def sent() -> None:
        request = SendMessageInput(
            workflow_id=f"journey/onboard/{customer}/{run_id}",
            run_id=run_id,
            journey_id="onboard",
            step_id="hello",
            visit=1,
            channel="email",
            template="hello",
            forms={},
        )
        MessagingActivities(db=db)._upsert(request, "email", None, "sent", None)

    def end() -> None:
        with session_scope(db) as session:
            upsert_run(
                session,
                _record(
                    plan, run_id, customer, status="completed", step="done", outcome="finished"
                ),
            )

    return {"arm": arm, "goal_event": goal_event, "sent": sent, "end": end}


def _numbers(db: Engine) -> dict[str, Any]:
    stats = journey_stats(db, "onboard")
    return {
        "conversions": stats.conversions.model_dump(),
        "arms": {
            arm: (found.entries, found.conversions)
            for arm, found in stats.experiments["tips"].arms.items()
        }
        if "tips" in stats.experiments
        else {},
        "attributed": {
            (step, channel): sends.conversions
            for step, channels in stats.sends.items()
            for channel, sends in channels.items()
            if sends.conversions
        },
    }


def _from_rows(db: Engine) -> dict[str, Any]:
    window: dict[str, Any] = {"journey_id": "onboard", "version": None, "start": None}
    window.update(end=None)
    with db.connect() as connection:
        overall = count_conversions(connection, **window)
        arms = conversions_by_arm(connection, step_id="tips", **window)
        attributed = send_attributed(connection, **window)
    return {
        "conversions": overall.model_dump(),
        "arms": {arm: (n, found.count) for arm, (n, found) in arms.items()},
        "attributed": attributed,
    }


@pytest.mark.parametrize("order", ORDERS, ids="-".join)
def test_counters_equal_the_rows_whatever_order_the_writes_come_in(
    db: Engine, order: tuple[str, ...]
) -> None:
    plan = deploy(db, JOURNEYS)["onboard"]
    router = EventRouter(db=db, client=None, task_queue="unused")
    runs = {}
    for n, customer in enumerate(("c1", "c2")):  # c2 converts by nothing: its run counts 0
        run_id = uuid.uuid4().hex
        with session_scope(db) as session:
            upsert_run(session, _record(plan, run_id, customer))
        runs[customer] = run_id
        if n == 0:
            writers = _writers(db, plan, router, run_id, customer)
            for step in order:
                writers[step]()

    counted = _numbers(db)
    assert counted == _from_rows(db)
    # One run converted (a row, and its end): once, with the purchase's value, in arm b.
    assert counted["conversions"] == {"count": 1, "rate": 0.5, "value": 12.5}
    assert counted["arms"] == {"b": (1, 1)}
    # Credited once per goal reached after it: the purchase (its time is after the send,
    # whichever was stored first), and the end if it came after the send.
    credited = 1 + (order.index("sent") < order.index("end"))
    assert counted["attributed"] == {("hello", "email"): credited}

    # The counters filled from the rows alone (revision 0012) say the same.
    with session_scope(db) as session:
        session.connection().execute(delete(StepRollup.__table__))  # type: ignore[arg-type]
        backfill_paths(session.connection())
        backfill(session.connection())
    assert _numbers(db) == counted
