"""Property-based fuzzing of every operation in the API's own OpenAPI document
(schemathesis, in-process over ASGI, with a valid key): no input, valid or not, may
cause a 5xx.

The app connects to the session's dev server itself, as it does in production, and
keeps one database for the module. Operations are fuzzed in a loop inside the test
(rather than with ``schema.parametrize``) because the schema can only be loaded once the
fixtures exist, and schemathesis' lazy fixture loader does not support this pytest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation.case import Case
from schemathesis.schemas import BaseSchema
from temporalio.testing import WorkflowEnvironment

from engine.database import make_engine
from service.api.app import create_app
from tests.api.conftest import AUTH, api_settings, fresh_database_url
from tests.api.test_events_api import JOURNEYS
from tests.database import deploy

EXAMPLES_PER_OPERATION = 25
EXPECTED_OPERATIONS = {
    "POST /v1/track",
    "POST /v1/identify",
    "POST /v1/batch",
    "POST /v1/events",
    "GET /v1/runs",
    "GET /v1/runs/{run_id}",
    "GET /v1/runs/{run_id}/explanation",
    "GET /v1/explain",
    "GET /v1/journeys",
    "GET /v1/journeys/{journey_id}/stats",
    "GET /v1/journeys/{journey_id}/funnel",
    "GET /healthz",
    "GET /v1/customers/{customer_id}/preferences",
    "PUT /v1/customers/{customer_id}/preferences",
    "DELETE /v1/customers/{customer_id}",
    "POST /v1/inbound/sms",
    "GET /v1/outbox",
    "GET /v1/deliveries",
    "GET /v1/unsubscribe/{token}",
    "POST /v1/unsubscribe/{token}",
    "GET /v1/status/{token}",
    "GET /v1/reviews",
    "GET /v1/reviews/{task_id}",
    "POST /v1/reviews/{task_id}/claim",
    "POST /v1/reviews/{task_id}/release",
    "POST /v1/reviews/{task_id}/decision",
}


@pytest.fixture(scope="module")
def api_schema(
    temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> BaseSchema:
    database_url = fresh_database_url(Path(tmp_path_factory.mktemp("fuzz")))
    engine = make_engine(database_url)
    deploy(engine, JOURNEYS)
    engine.dispose()
    app_settings = api_settings(
        database_url=database_url,
        task_queue="api-fuzz",
        temporal_address=temporal_env.client.service_client.config.target_host,
    )
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(app_settings))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_input_causes_a_server_error(api_schema: BaseSchema, mode: GenerationMode) -> None:
    operations = []
    for result in api_schema.get_all_operations():
        assert isinstance(result, Ok), f"operation not in a usable form: {result.err()}"
        operations.append(result.ok())
    assert {operation.label for operation in operations} == EXPECTED_OPERATIONS

    for operation in operations:
        takes_input = bool(list(operation.iter_parameters())) or bool(list(operation.body))
        if mode == GenerationMode.NEGATIVE and not takes_input:
            continue  # nothing to get wrong

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Case[Any]) -> None:
            case.call_and_validate(headers=AUTH, checks=[not_a_server_error])

        fuzz()
