"""``DELETE /v1/customers/{id}`` as an operator's script meets it: the customer's open run
ends and is deleted from Temporal, their data goes, the answer names only the pseudonym,
their later events and preference changes are refused, asking again is harmless, and the
audit chain verifies with the erasure in it. (tests/e2e/test_erasure.py does the same
through `journeys erase` on a running system with the real interpreter; the row-by-row
scrub is tests/unit/test_erasure.py's.)"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from engine.audit import verify_chain
from engine.pseudonyms import customer_ref, pseudonym_key
from tests.api.conftest import AUTH, RunningApi
from tests.database import deploy

pytestmark = pytest.mark.asyncio(loop_scope="session")

JOURNEYS = """\
version: 1
events:
  payment_failed: {amount: number}
journeys:
  - id: recovery
    entry: {event: payment_failed}
    steps:
      - id: pause
        wait: 1d
"""

EMAIL = "erin.erase@api-erase.test"


def _track(customer: str, message_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": customer,
        "event": "payment_failed",
        "messageId": message_id or uuid.uuid4().hex,
        "properties": {"amount": 120},
    }


async def _exists(client: Client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


def _rows(db: Engine, sql: str, **params: Any) -> list[Any]:
    with db.connect() as connection:
        return list(connection.execute(text(sql), params).all())


async def test_erasing_ends_deletes_and_refuses_what_comes_after(
    api: RunningApi, db: Engine, temporal_client: Client
) -> None:
    deploy(db, JOURNEYS)
    customer = f"c-erase-{uuid.uuid4().hex[:6]}"
    identify = {"type": "identify", "userId": customer, "traits": {"email": EMAIL}}
    assert (await api.http.post("/v1/identify", json=identify, headers=AUTH)).status_code == 202
    put = await api.http.put(
        f"/v1/customers/{customer}/preferences", json={"channels": {"sms": False}}, headers=AUTH
    )
    assert put.status_code == 200
    started = (await api.http.post("/v1/track", json=_track(customer), headers=AUTH)).json()
    (workflow_id,) = started["started"]
    assert await _exists(temporal_client, workflow_id)

    answer = await api.http.delete(f"/v1/customers/{customer}", headers=AUTH)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    ref = customer_ref(customer, pseudonym_key(db))
    assert body["customer"] == ref and customer not in answer.text
    assert body["runs_ended"] == 1 and body["histories_deleted"] >= 1, body
    assert body["rows"]["profiles"] == 1 and body["rows"]["events"] == 2, body
    assert body["rows"]["preferences"] == 1 and body["erased_before"] is False, body
    for _ in range(100):  # an open execution goes at once, in the background
        if not await _exists(temporal_client, workflow_id):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"{workflow_id} is still in Temporal")
    (run,) = _rows(db, "SELECT customer_id, status, outcome, workflow_id FROM runs")
    assert tuple(run) == (ref, "exited", "erased", workflow_id.replace(customer, ref))

    # Afterwards: their events are not stored and start nothing; nothing is kept for them.
    again = await api.http.post("/v1/track", json=_track(customer, "after-1"), headers=AUTH)
    assert again.status_code == 202
    assert again.json()["erased"] == ["after-1"] and again.json()["started"] == []
    assert (
        "erased"
        not in (await api.http.post("/v1/track", json=_track("someone-else"), headers=AUTH)).json()
    )
    identify_again = await api.http.post("/v1/identify", json=identify, headers=AUTH)
    assert identify_again.status_code == 202 and len(identify_again.json()["erased"]) == 1
    refused = await api.http.put(
        f"/v1/customers/{customer}/preferences", json={"channels": {"sms": True}}, headers=AUTH
    )
    assert refused.status_code == 410, refused.text
    assert "was erased" in refused.json()["detail"]
    for table in ("events", "profiles", "preferences"):
        assert _rows(db, f"SELECT * FROM {table} WHERE customer_id = :c", c=customer) == []

    # Asking again is harmless (it finishes an interrupted erasure).
    repeat = await api.http.delete(f"/v1/customers/{customer}", headers=AUTH)
    assert repeat.status_code == 200 and repeat.json()["erased_before"] is True

    assert verify_chain(db).ok
    entries = _rows(db, "SELECT kind, subject, customer, details FROM audit ORDER BY seq")
    erasures = [e for e in entries if e.kind == "customer.erased"]
    assert [e.subject for e in erasures] == [f"customer:{ref}"] * 2
    logged = json.dumps([list(e) for e in entries], default=str)
    assert customer not in logged and EMAIL not in logged
