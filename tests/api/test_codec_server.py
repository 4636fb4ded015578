"""The codec server (service/api/routes/codec.py): Temporal's Web UI and CLI send sealed
payloads to ``/codec/decode``; auditors and ops read them, nobody else does."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from google.protobuf import json_format
from sqlalchemy import delete
from temporalio.api.common.v1 import Payloads
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import WorkflowSerializationContext

from engine.payloads import workflow_id_for
from engine.settings import RuntimeSettings
from runtime.codec import CUSTOMER_METADATA, ENCODING, HistoryCodec, KeyRing
from runtime.customer_keys import CUSTOMER_KEYS, CustomerKeyStore, shared_store
from service.api.app import create_app
from service.users import add_user, change_password, check_password
from tests.api.conftest import API_KEY, AUTH, RunningApi, running_api
from tests.history_keys import TEST_KEY_RING, TEST_KEYS

pytestmark = pytest.mark.asyncio(loop_scope="session")

PASSWORD = "a-good-long-password"
UI = "http://127.0.0.1:8233"


def basic(name: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{PASSWORD}".encode()).decode()}


def _sealed_body(value: Any, codec: HistoryCodec | None = None) -> dict[str, Any]:
    plain = pydantic_data_converter.payload_converter.to_payloads([value])
    sealed = (codec or HistoryCodec(TEST_KEY_RING)).seal(plain[0])
    return json_format.MessageToDict(Payloads(payloads=[sealed]))


def _values(body: dict[str, Any]) -> list[Any]:
    message = json_format.ParseDict(body, Payloads())
    return pydantic_data_converter.payload_converter.from_payloads(list(message.payloads))


@pytest_asyncio.fixture
async def codec_api(database_url: str) -> AsyncIterator[RunningApi]:
    settings = RuntimeSettings(
        database_url=database_url,
        task_queue="codec-tests",
        api_key=API_KEY,
        temporal_address="127.0.0.1:1",
        secret_key="codec-console-secret-for-tests",
        history_keys=TEST_KEYS,
    )
    async with running_api(create_app(settings)) as running:
        for name, role in (("aud", "auditor"), ("opa", "ops"), ("des", "designer")):
            first = add_user(running.app.state.db, name=name, role=role)
            user = check_password(running.app.state.db, name=name, password=first)
            assert user is not None and user.id is not None
            change_password(running.app.state.db, user_id=user.id, current=first, new=PASSWORD)
        yield running


async def test_decode_needs_a_person(codec_api: RunningApi) -> None:
    body = _sealed_body({"first_name": "Ann"})
    answer = await codec_api.http.post("/codec/decode", json=body)
    assert answer.status_code == 401
    assert "Ann" not in answer.text
    # An API key names a system (an event source), not a person who may read profiles.
    answer = await codec_api.http.post("/codec/decode", json=body, headers=AUTH)
    assert answer.status_code == 403 and "not with an API key" in answer.json()["detail"]


async def test_a_designer_may_not_decode(codec_api: RunningApi) -> None:
    answer = await codec_api.http.post(
        "/codec/decode", json=_sealed_body({"first_name": "Ann"}), headers=basic("des")
    )
    assert answer.status_code == 403 and "'designer'" in answer.json()["detail"]
    assert "Ann" not in answer.text


async def test_an_auditor_decodes_sealed_and_plain_payloads(codec_api: RunningApi) -> None:
    body = _sealed_body({"first_name": "Ann"})
    assert "Ann" not in str(body)
    plain = pydantic_data_converter.payload_converter.to_payloads(["recorded before"])
    body["payloads"].append(json_format.MessageToDict(plain[0]))
    answer = await codec_api.http.post("/codec/decode", json=body, headers=basic("aud"))
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    assert _values(answer.json()) == [{"first_name": "Ann"}, "recorded before"]


async def test_encode_seals_under_the_current_key(codec_api: RunningApi) -> None:
    plain = pydantic_data_converter.payload_converter.to_payloads([{"signal": "pay"}])
    body = json_format.MessageToDict(Payloads(payloads=plain))
    answer = await codec_api.http.post("/codec/encode", json=body, headers=basic("opa"))
    assert answer.status_code == 200, answer.text
    [sealed] = json_format.ParseDict(answer.json(), Payloads()).payloads
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata["encryption-key-id"] == b"test-2"


async def test_an_unknown_key_id_is_a_400_naming_it(codec_api: RunningApi) -> None:
    other = HistoryCodec(KeyRing.parse("gone:" + base64.b64encode(bytes(32)).decode()))
    answer = await codec_api.http.post(
        "/codec/decode", json=_sealed_body(1, other), headers=basic("aud")
    )
    assert answer.status_code == 400 and "'gone'" in answer.json()["detail"]


async def test_bad_bodies_are_refused(codec_api: RunningApi) -> None:
    answer = await codec_api.http.post(
        "/codec/decode",
        content=b"payloads=1",
        headers={**basic("aud"), "Content-Type": "text/plain"},
    )
    assert answer.status_code == 415
    answer = await codec_api.http.post(
        "/codec/decode",
        content=b"{nope",
        headers={**basic("aud"), "Content-Type": "application/json"},
    )
    assert answer.status_code == 400


async def test_cors_preflight_answers_the_web_ui_only(codec_api: RunningApi) -> None:
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    answer = await codec_api.http.options("/codec/decode", headers={**ask, "Origin": UI})
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == UI
    assert answer.headers["access-control-allow-credentials"] == "true"
    assert "POST" in answer.headers["access-control-allow-methods"]
    allowed = answer.headers["access-control-allow-headers"].lower()
    assert "content-type" in allowed and "x-namespace" in allowed
    twin = await codec_api.http.options(
        "/codec/decode", headers={**ask, "Origin": "http://localhost:8233"}
    )
    assert twin.headers["access-control-allow-origin"] == "http://localhost:8233"
    other = await codec_api.http.options(
        "/codec/decode", headers={**ask, "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in other.headers
    # Refusals carry the headers too, so the UI can tell a 401 from a network failure.
    refused = await codec_api.http.post(
        "/codec/decode", json=_sealed_body(1), headers={"Origin": UI}
    )
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == UI


async def _sign_in(http: httpx.AsyncClient, name: str) -> None:
    page = await http.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    answer = await http.post(
        "/console/login", data={"name": name, "password": PASSWORD, "csrf": csrf.group(1)}
    )
    assert answer.status_code == 303, answer.text


async def test_the_web_ui_decodes_with_the_console_session(codec_api: RunningApi) -> None:
    await _sign_in(codec_api.http, "opa")
    body = _sealed_body({"first_name": "Ann"})
    answer = await codec_api.http.post("/codec/decode", json=body, headers={"Origin": UI})
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == UI
    assert _values(answer.json()) == [{"first_name": "Ann"}]
    # The same cookie sent by a page of another origin opens nothing.
    elsewhere = await codec_api.http.post(
        "/codec/decode", json=body, headers={"Origin": "https://evil.example"}
    )
    assert elsewhere.status_code == 401 and "Ann" not in elsewhere.text


async def test_a_designer_session_may_not_decode(codec_api: RunningApi) -> None:
    await _sign_in(codec_api.http, "des")
    answer = await codec_api.http.post(
        "/codec/decode", json=_sealed_body(1), headers={"Origin": UI}
    )
    assert answer.status_code == 403


async def test_an_erased_customers_payloads_stay_sealed_and_the_rest_open(
    codec_api: RunningApi, database_url: str
) -> None:
    """The Web UI shows nothing of an event whose decode answer is an error: a payload
    whose customer's key was erased comes back as it was, the others opened, a 200."""
    shared_store(database_url).clear()  # the same URL in every test on PostgreSQL
    writer = CustomerKeyStore(database_url)  # a worker's, in another process
    codec = HistoryCodec(TEST_KEY_RING, customer_keys=writer)

    async def sealed_for(customer: str, value: Any) -> dict[str, Any]:
        context = WorkflowSerializationContext(
            namespace="default", workflow_id=workflow_id_for("recovery", customer)
        )
        plain = pydantic_data_converter.payload_converter.to_payloads([value])
        [sealed] = await codec.with_context(context).encode(plain)
        return json_format.MessageToDict(sealed)

    ann = await sealed_for("ann", {"first_name": "Ann"})
    bob = await sealed_for("bob", {"first_name": "Bob"})
    plain = json_format.MessageToDict(
        pydantic_data_converter.payload_converter.to_payloads(["recorded before"])[0]
    )
    body = {"payloads": [ann, bob, plain]}
    answer = await codec_api.http.post("/codec/decode", json=body, headers=basic("aud"))
    assert answer.status_code == 200, answer.text
    assert _values(answer.json()) == [
        {"first_name": "Ann"},
        {"first_name": "Bob"},
        "recorded before",
    ]

    # Erasure: the seed deleted, and forgotten by the API process's store.
    ann_ref = base64.b64decode(ann["metadata"][CUSTOMER_METADATA]).decode()
    with writer.engine().begin() as connection:
        connection.execute(delete(CUSTOMER_KEYS).where(CUSTOMER_KEYS.c.ref == ann_ref))
    shared_store(database_url).forget(ann_ref)
    writer.close()

    answer = await codec_api.http.post("/codec/decode", json=body, headers=basic("aud"))
    assert answer.status_code == 200, answer.text
    kept, opened_bob, opened_plain = answer.json()["payloads"]
    assert kept == ann  # still sealed, as it came
    rest = json_format.ParseDict({"payloads": [opened_bob, opened_plain]}, Payloads())
    assert pydantic_data_converter.payload_converter.from_payloads(list(rest.payloads)) == [
        {"first_name": "Bob"},
        "recorded before",
    ]
