"""Reentry and keys through the router, with the real interpreter on the time-skipping server."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from engine.database import EventRecord, Run, session_scope
from engine.payloads import RunState
from service.router import EventRouter, RouteResult
from tests.database import deploy
from tests.workflows.test_journey_run import doc


def journey(reentry: str) -> str:
    return doc(
        f"""
- id: j
  entry: {{event: payment_failed, reentry: {reentry}}}
  steps:
    - {{id: pause, wait: {{event: payment_received}}}}
    - {{id: done, exit: done}}
"""
    )


@pytest.fixture
def router(env: WorkflowEnvironment, worker: Worker, db: Engine) -> EventRouter:
    return EventRouter(db=db, client=env.client, task_queue=worker.task_queue)


async def emit(router: EventRouter, customer: str = "c1", **properties: Any) -> RouteResult:
    record = EventRecord(
        message_id=uuid.uuid4().hex,
        type="track",
        name="payment_failed",
        customer_id=customer,
        properties=properties,
        timestamp=datetime.now(UTC),
    )
    router.ingest([record])
    return await router.route(record)


async def pay(router: EventRouter, customer: str = "c1", **properties: Any) -> RouteResult:
    record = EventRecord(
        message_id=uuid.uuid4().hex,
        type="track",
        name="payment_received",
        customer_id=customer,
        properties={"amount": 10, **properties},
        timestamp=datetime.now(UTC),
    )
    router.ingest([record])
    return await router.route(record)


async def finish(env: WorkflowEnvironment, workflow_id: str) -> RunState:
    """The final state of the latest run of ``workflow_id``, once it has closed."""
    for _ in range(100):
        description = await env.client.get_workflow_handle(workflow_id).describe()
        if description.status != WorkflowExecutionStatus.RUNNING:
            handle = env.client.get_workflow_handle(workflow_id, run_id=description.run_id)
            state: RunState = await handle.query("state", result_type=RunState)
            return state
        await asyncio.sleep(0.1)
    raise AssertionError(f"{workflow_id} did not finish")


async def test_reentry_never_lets_a_customer_in_once(
    env: WorkflowEnvironment, router: EventRouter, db: Engine
) -> None:
    deploy(db, journey("never"))
    first = await emit(router)
    assert first.started == ["journey/j/c1"]
    assert (await pay(router)).signalled == ["journey/j/c1"]
    assert (await finish(env, "journey/j/c1")).outcome == "done"
    again = await emit(router)
    assert again.started == []
    assert [s.reason for s in again.skipped] == ["reentry never: this customer already entered"]
    other = await emit(router, customer="c2")
    assert other.started == ["journey/j/c2"]


async def test_reentry_30d_waits_thirty_days_since_the_last_entry(
    env: WorkflowEnvironment, router: EventRouter, db: Engine
) -> None:
    deploy(db, journey("30d"))
    assert (await emit(router)).started == ["journey/j/c1"]
    await pay(router)
    await finish(env, "journey/j/c1")
    blocked = await emit(router)
    assert blocked.started == [] and blocked.skipped[0].reason.startswith(
        "reentry after 30d: last entry "
    )
    # The last entry is now 31 days old (the router keeps entry times in the runs table).
    with session_scope(db) as session:
        for run in session.exec(select(Run)).all():
            run.started_at = datetime.now(UTC) - timedelta(days=31)
            session.add(run)
    assert (await emit(router)).started == ["journey/j/c1"]
    await pay(router)
    await finish(env, "journey/j/c1")
    with Session(db) as session:
        assert len(session.exec(select(Run).where(col(Run.customer_id) == "c1")).all()) == 2


async def test_reentry_always_starts_again_once_the_run_is_over(
    env: WorkflowEnvironment, router: EventRouter, db: Engine
) -> None:
    deploy(db, journey("always"))
    assert (await emit(router)).started == ["journey/j/c1"]
    while_running = await emit(router)
    assert while_running.started == []
    assert [s.reason for s in while_running.skipped] == ["already running"]
    await pay(router)
    await finish(env, "journey/j/c1")
    assert (await emit(router)).started == ["journey/j/c1"]
    await pay(router)
    assert (await finish(env, "journey/j/c1")).outcome == "done"


KEYED = doc(
    """
- id: j
  entry: {event: payment_failed, key: event.invoice_id, reentry: always}
  exit_on:
    - {event: payment_received, when: event.invoice_id == trigger.properties.invoice_id, outcome: paid}
  steps:
    - {id: pause, wait: 30d}
    - {id: done, exit: unpaid}
"""
).replace(
    "payment_received: {amount: number}", "payment_received: {amount: number, invoice_id: string}"
)


async def test_two_keys_run_independently_and_an_event_ends_only_its_own(
    env: WorkflowEnvironment, router: EventRouter, db: Engine
) -> None:
    deploy(db, KEYED)
    a = await emit(router, invoice_id="A")
    b = await emit(router, invoice_id="B")
    assert (a.started, b.started) == (["journey/j/c1/A"], ["journey/j/c1/B"])
    routed = await pay(router, invoice_id="A")
    # Correlated by the entry key: the payment for A never reaches B's run.
    assert routed.signalled == ["journey/j/c1/A"]
    assert (await finish(env, "journey/j/c1/A")).outcome == "paid"
    assert (await pay(router, invoice_id="B")).signalled == ["journey/j/c1/B"]
    assert (await finish(env, "journey/j/c1/B")).outcome == "paid"
