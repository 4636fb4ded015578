"""Preference and consent changes over HTTP reach the hash-chained audit log
(`engine.audit`), in the transaction that stores them, with who made them: an API key's
name, an unsubscribe link, an SMS gateway. Never an address."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client

from channels.unsubscribe import make_unsubscribe_token
from engine.audit import verify_chain
from engine.database import session_scope, upsert_profile
from engine.pseudonyms import customer_ref, pseudonym_key
from service.api.app import create_app
from tests.api.conftest import AUTH, RunningApi, api_settings, running_api
from tests.database import deploy

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "unsubscribe-secret-for-audit-tests"
PHONE = "+821012345678"


@pytest_asyncio.fixture
async def api(
    database_url: str, task_queue: str, temporal_client: Client
) -> AsyncIterator[RunningApi]:
    settings = api_settings(database_url=database_url, task_queue=task_queue).model_copy(
        update={"secret_key": SECRET}
    )
    async with running_api(create_app(settings, client=temporal_client)) as running:
        yield running


def _pseudonym(db: Engine, customer: str) -> str:
    """The customer's keyed pseudonym, which the audit log holds instead of the id."""
    return customer_ref(customer, pseudonym_key(db))


def _consent_entries(db: Engine) -> list[tuple[Any, ...]]:
    with db.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT actor, customer, details FROM audit WHERE kind = 'consent.changed' ORDER BY seq"
            )
        ).all()
    entries = []
    for actor, customer, details in rows:
        details = json.loads(details) if isinstance(details, str) else details
        entries.append(
            (
                actor.split(":")[0],
                customer,
                details["channel"],
                details["opted_in"],
                details["source"],
            )
        )
    return entries


async def test_preference_changes_are_logged_with_who_made_them(
    api: RunningApi, db: Engine
) -> None:
    with session_scope(db) as session:
        upsert_profile(session, customer_id="c2", traits={"phone": PHONE})

    put = await api.http.put(
        "/v1/customers/c1/preferences",
        json={"channels": {"email": False, "sms": True}},
        headers=AUTH,
    )
    assert put.status_code == 200
    token = make_unsubscribe_token(customer_id="c1", channel="push", secret=SECRET)
    assert (await api.http.post(f"/v1/unsubscribe/{token}")).status_code == 200
    stop = await api.http.post(
        "/v1/inbound/sms", json={"from": PHONE, "text": "STOP"}, headers=AUTH
    )
    assert stop.status_code == 200

    c1, c2 = _pseudonym(db, "c1"), _pseudonym(db, "c2")
    assert _consent_entries(db) == [
        ("api-key", c1, "email", False, "api"),
        ("api-key", c1, "sms", True, "api"),
        ("customer", c1, "push", False, "unsubscribe link"),
        ("sms", c2, "sms", False, "sms STOP"),
    ]
    with db.connect() as connection:
        logged = json.dumps(
            [list(row) for row in connection.execute(text("SELECT * FROM audit")).all()],
            default=str,
        )
    assert PHONE not in logged and "1012345678" not in logged
    assert '"c1"' not in logged and "customer:c1" not in logged  # pseudonyms only
    assert verify_chain(db).ok


JOURNEYS = """\
version: 1
events:
  payment_failed: {amount: number}
journeys:
  - id: recovery
    entry: {event: payment_failed, when: "event.amount >= 100", reentry: never}
    steps:
      - id: pause
        wait: 1d
"""


async def test_runs_the_router_starts_and_skips_are_logged_with_the_reason(
    api: RunningApi, db: Engine
) -> None:
    deploy(db, JOURNEYS)
    for message_id, amount in (("m-small", 50), ("m-first", 150), ("m-again", 900)):
        event = {
            "type": "track",
            "userId": "c7",
            "event": "payment_failed",
            "messageId": message_id,
            "properties": {"amount": amount},
        }
        assert (await api.http.post("/v1/track", json=event, headers=AUTH)).status_code in (
            200,
            202,
        )

    with db.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT kind, actor, customer, details FROM audit "
                "WHERE kind LIKE 'run.%' ORDER BY seq"
            )
        ).all()
    logged = []
    for kind, actor, customer, details in rows:
        details = json.loads(details) if isinstance(details, str) else details
        logged.append((kind, actor, customer, details["event"], details.get("reason")))
    c7 = _pseudonym(db, "c7")
    assert logged[0] == ("run.skipped", "router", c7, "m-small", "entry condition is false")
    assert logged[1] == ("run.started", "router", c7, "m-first", None)
    assert logged[2][:4] == ("run.skipped", "router", c7, "m-again")
    assert logged[2][4].startswith("reentry never")
    assert len(logged) == 3
    assert verify_chain(db).ok
