"""Workflow tests run on the root conftest's ``env`` (Temporal's time-skipping test server
unless ``--workflow-environment`` says otherwise), with the real worker wiring, a fresh
task queue per test and the root ``db`` (a fresh database per test)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.engine import Engine
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from engine.catalog import build_catalog_from_text
from engine.database import session_scope, upsert_profile
from engine.payloads import (
    QUERY_STATE,
    WORKFLOW_NAME,
    EventMessage,
    JourneyRunInput,
    RunState,
    workflow_id_for,
)
from engine.plan import Plan
from tests.conftest import TEST_SERVER
from tests.history_keys import test_data_converter
from worker import build_worker

SECRET_KEY = "test-secret-key-for-unsubscribe-links"


@pytest.fixture(scope="session")
def env(env: WorkflowEnvironment) -> WorkflowEnvironment:
    """The root ``env``. These tests wait through simulated hours (and some await a run
    that sleeps for days), so on a server without time skipping they would hang: there
    they are skipped, with the reason."""
    if not env.supports_time_skipping:
        pytest.skip("the workflow tests need --workflow-environment=time-skipping")
    return env


@pytest_asyncio.fixture
async def fresh_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of its own: its clock starts at today's date, untouched by
    other tests, so a test can move it to a chosen date (a DST switch, a renewal)."""
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(TEST_SERVER), data_converter=test_data_converter()
    )
    try:
        yield environment
    finally:
        await environment.shutdown()


@pytest_asyncio.fixture
async def worker(env: WorkflowEnvironment, db: Engine) -> AsyncIterator[Worker]:
    queue = f"test-{uuid.uuid4().hex[:8]}"
    running = build_worker(
        env.client,
        db=db,
        task_queue=queue,
        secret_key=SECRET_KEY,
        public_url="http://journeys.test",
        workflow_sandbox=True,  # a forbidden call in the interpreter fails the tests
    )
    async with running:
        yield running


def compile_plan(text: str, journey: str = "j") -> Plan:
    catalog = build_catalog_from_text(text)
    assert catalog.ok, [v.format() for v in catalog.violations]
    return catalog.plans[journey]


def set_profile(db: Engine, customer: str, **traits: Any) -> None:
    with session_scope(db) as session:
        upsert_profile(session, customer_id=customer, traits=traits)


StartRun = Callable[..., Awaitable[WorkflowHandle[Any, RunState]]]


@pytest.fixture
def start_run(env: WorkflowEnvironment, worker: Worker) -> StartRun:
    async def start(
        plan: Plan,
        customer: str = "c1",
        *,
        properties: dict[str, Any] | None = None,
        key: str | None = None,
        at: datetime | None = None,
    ) -> WorkflowHandle[Any, RunState]:
        trigger = EventMessage(
            name=plan.entry.event,
            customer_id=customer,
            message_id=uuid.uuid4().hex,
            timestamp=at or datetime.now(UTC),
            properties=properties or {},
        )
        return await env.client.start_workflow(
            WORKFLOW_NAME,
            JourneyRunInput(plan=plan, customer_id=customer, key=key, trigger=trigger),
            id=workflow_id_for(plan.journey_id, customer, key) + f"/{uuid.uuid4().hex[:6]}",
            task_queue=worker.task_queue,
            result_type=RunState,
        )

    return start


async def send_event(
    handle: WorkflowHandle[Any, Any], name: str, customer: str = "c1", **properties: Any
) -> None:
    await handle.signal(
        "event",
        EventMessage(
            name=name,
            customer_id=customer,
            message_id=uuid.uuid4().hex,
            timestamp=datetime.now(UTC),
            properties=properties,
        ),
    )


def steps_of(state: RunState) -> list[tuple[str, str | None]]:
    """The path as (step, outcome) pairs, entries and ends included."""
    return [(entry.step, entry.outcome) for entry in state.path]


async def run_to_end(
    env: WorkflowEnvironment, handle: WorkflowHandle[Any, RunState], *, polls: int = 600
) -> RunState:
    """The run's final state, skipping time only while it sleeps on a timer.

    The time-skipping server does not count a running activity as work in flight: while a
    test awaits `handle.result()` it may jump past an activity's timeout during a real SMTP
    conversation, and the attempt is retried while the first one still sends. So tests that
    talk to real servers wait here: automatic skipping off, and an explicit `env.sleep` to
    the run's `wake_at` whenever it has no activity pending.
    """
    with env.auto_time_skipping_disabled():
        for _ in range(polls):
            description = await handle.describe()
            if description.status != WorkflowExecutionStatus.RUNNING:
                return await handle.result()
            if not description.raw_description.pending_activities:
                state = await handle.query(QUERY_STATE, result_type=RunState)
                if state.wake_at is not None:
                    ahead = state.wake_at - await env.get_current_time()
                    if ahead > timedelta(0):
                        await env.sleep(ahead + timedelta(seconds=1))
                        continue
            await asyncio.sleep(0.05)
    raise AssertionError(f"run {handle.id} did not end within {polls} polls")
