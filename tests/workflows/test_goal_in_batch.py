"""A goal event that reaches the database before its run's row converts the run too: sent
in the same batch as the event that starts the run, or while the router was starting it.
Through the router, with the real interpreter on the time-skipping server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from engine.database import EventRecord, Run, RunConversion, session_scope
from engine.stats import journey_stats
from service.router import EventRouter
from tests.database import deploy
from tests.workflows.test_journey_run import doc

JOURNEY = doc(
    """
- id: j
  entry: {event: payment_failed, reentry: always}
  goals: [{event: payment_received, within: 7d, value: event.amount}]
  steps:
    - {id: pause, wait: 7d}
    - {id: done, exit: done}
"""
)

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def router(env: WorkflowEnvironment, worker: Worker, db: Engine) -> EventRouter:
    deploy(db, JOURNEY)
    return EventRouter(db=db, client=env.client, task_queue=worker.task_queue)


# Customer ids of this module's own: its runs wait for days on the session's test server,
# where another test's run of journey `j` for `c1` would find them running.
PREFIX = f"goal-{uuid.uuid4().hex[:6]}-"


def _event(name: str, at: datetime, customer: str = "c1", **properties: Any) -> EventRecord:
    return EventRecord(
        message_id=uuid.uuid4().hex,
        type="track",
        name=name,
        customer_id=PREFIX + customer,
        properties=properties,
        timestamp=at,
    )


async def _batch(router: EventRouter, *records: EventRecord) -> None:
    """As `POST /v1/batch` does: stored in one transaction, then routed in order."""
    stored = (await router.store(list(records))).stored
    assert len(stored) == len(records)
    outcomes = await router.route_in_order(stored)
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes


def _conversions(db: Engine) -> dict[str, tuple[float, str]]:
    """Per customer: the value and message id of their run's conversion."""
    with session_scope(db) as session:
        rows = session.execute(
            select(Run.customer_id, RunConversion.value, RunConversion.message_id).join(
                Run, Run.run_id == RunConversion.run_id
            )
        ).all()
    return {customer.removeprefix(PREFIX): (value, message) for customer, value, message in rows}


async def test_a_goal_in_the_batch_that_starts_the_run_converts_it(
    router: EventRouter, db: Engine
) -> None:
    paid = _event("payment_received", NOW + timedelta(seconds=5), amount=40.0)
    await _batch(router, _event("payment_failed", NOW, amount=40.0), paid)

    assert _conversions(db) == {"c1": (40.0, paid.message_id)}
    stats = journey_stats(db, "j")  # the counters the API and console read
    assert (stats.conversions.count, stats.conversions.value) == (1, 40.0)


async def test_a_goal_before_the_entry_or_after_the_window_does_not_convert(
    router: EventRouter, db: Engine
) -> None:
    await _batch(
        router,
        _event("payment_received", NOW - timedelta(seconds=1), customer="d1", amount=10.0),
        _event("payment_failed", NOW, customer="d1", amount=40.0),
        _event("payment_received", NOW + timedelta(days=7, seconds=1), customer="d1", amount=20.0),
    )
    # Another customer's payment in the same batch converts no run of theirs.
    await _batch(
        router,
        _event("payment_failed", NOW, customer="d2", amount=5.0),
        _event("payment_received", NOW + timedelta(days=1), customer="d3", amount=30.0),
        _event("payment_received", NOW + timedelta(days=2), customer="d2", amount=5.0),
    )

    converted = _conversions(db)
    assert {customer: value for customer, (value, _) in converted.items()} == {"d2": 5.0}
    assert journey_stats(db, "j").conversions.count == 1


async def test_the_earliest_goal_of_the_batch_is_the_conversion(
    router: EventRouter, db: Engine
) -> None:
    first = _event("payment_received", NOW + timedelta(hours=1), customer="e1", amount=25.0)
    await _batch(
        router,
        _event("payment_failed", NOW, customer="e1", amount=40.0),
        _event("payment_received", NOW + timedelta(hours=2), customer="e1", amount=15.0),
        first,
    )

    assert _conversions(db) == {"e1": (25.0, first.message_id)}
    assert journey_stats(db, "j").conversions.value == 25.0
