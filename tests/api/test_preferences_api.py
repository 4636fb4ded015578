"""The messaging endpoints over HTTP: preferences read and written with an API key,
one-click unsubscribe by signed link (GET only shows a page), SMS STOP and START from a
gateway, and the outbox and delivery log with recipients masked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from sqlalchemy.engine import Engine
from sqlmodel import select
from temporalio.client import Client

from channels import policies
from channels.unsubscribe import make_unsubscribe_token
from engine.database import (
    Delivery,
    OutboxMessage,
    Preference,
    session_scope,
    upsert_profile,
    utcnow,
)
from service.api.app import create_app
from tests.api.conftest import AUTH, RunningApi, api_settings, running_api

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "unsubscribe-secret-for-tests"
PHONE = "+821012345678"


@pytest_asyncio.fixture
async def api(
    database_url: str, task_queue: str, temporal_client: Client
) -> AsyncIterator[RunningApi]:
    """The API with a secret key for unsubscribe links (the shared fixture has none)."""
    settings = api_settings(database_url=database_url, task_queue=task_queue).model_copy(
        update={"secret_key": SECRET}
    )
    async with running_api(create_app(settings, client=temporal_client)) as running:
        yield running


def _preference_rows(db: Engine) -> list[tuple[str, str, bool, str]]:
    with session_scope(db) as session:
        rows = session.exec(select(Preference)).all()
        return sorted((r.customer_id, r.channel, r.opted_in, r.source) for r in rows)


# ----------------------------------------------------------------------------- preferences


async def test_a_customer_with_no_choices_is_opted_in_by_default(api: RunningApi) -> None:
    response = await api.http.get("/v1/customers/c1/preferences", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {
        "customer_id": "c1",
        "channels": {
            name: {"opted_in": True, "source": "default", "updated_at": None}
            for name in ("email", "push", "sms")
        },
    }


async def test_put_preferences_stores_choices_including_custom_channels(
    api: RunningApi, db: Engine
) -> None:
    response = await api.http.put(
        "/v1/customers/c1/preferences",
        json={"channels": {"email": False, "whatsapp": True}},
        headers=AUTH,
    )
    assert response.status_code == 200
    channels = response.json()["channels"]
    assert channels["email"]["opted_in"] is False and channels["email"]["source"] == "api"
    assert channels["email"]["updated_at"] is not None
    assert channels["whatsapp"]["opted_in"] is True
    assert channels["sms"] == {"opted_in": True, "source": "default", "updated_at": None}
    again = await api.http.get("/v1/customers/c1/preferences", headers=AUTH)
    assert again.json() == response.json()
    assert _preference_rows(db) == [("c1", "email", False, "api"), ("c1", "whatsapp", True, "api")]


async def test_preferences_need_an_api_key(api: RunningApi, db: Engine) -> None:
    assert (await api.http.get("/v1/customers/c1/preferences")).status_code == 401
    put = await api.http.put("/v1/customers/c1/preferences", json={"channels": {"email": False}})
    assert put.status_code == 401
    bad = await api.http.put("/v1/customers/c1/preferences", json={"channels": {"E": 1}})
    assert bad.status_code == 401
    assert _preference_rows(db) == []


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"channels": {"Email": False}}, "channels", "'Email'"),
        ({"channels": {"email": "no"}}, "channels.email", "boolean"),
        ({}, "channels", "field required"),
        ({"channels": {"email": False}, "chanels": {}}, "chanels", "extra"),
    ],
    ids=["channel-name", "not-a-boolean", "missing", "unknown-field"],
)
async def test_a_bad_preferences_body_is_a_422_naming_the_field(
    api: RunningApi, db: Engine, body: dict[str, object], field: str, words: str
) -> None:
    response = await api.http.put("/v1/customers/c1/preferences", json=body, headers=AUTH)
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert errors[0]["field"] == field
    assert words.lower() in errors[0]["message"].lower()
    assert field in response.json()["detail"]
    assert _preference_rows(db) == []


# ----------------------------------------------------------------------------- unsubscribe


async def test_the_unsubscribe_page_changes_nothing(api: RunningApi, db: Engine) -> None:
    token = make_unsubscribe_token(customer_id="c1", channel="email", secret=SECRET)
    response = await api.http.get(f"/v1/unsubscribe/{token}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<form method="post">' in response.text and "email" in response.text
    assert "c1" not in response.text  # the page does not reveal who the link is for
    assert _preference_rows(db) == []


async def test_one_click_unsubscribe_opts_the_customer_out_without_an_api_key(
    api: RunningApi, db: Engine
) -> None:
    token = make_unsubscribe_token(customer_id="c1", channel="email", secret=SECRET)
    response = await api.http.post(
        f"/v1/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}
    )
    assert response.status_code == 200
    assert "unsubscribed" in response.text
    assert _preference_rows(db) == [("c1", "email", False, "unsubscribe link")]
    with session_scope(db) as session:
        allowed = policies.consent(session, customer_id="c1", channel="email", traits={})
    assert allowed == (False, "opted out of email (unsubscribe link)")
    again = await api.http.post(f"/v1/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200
    assert len(_preference_rows(db)) == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_tampered_unsubscribe_link_is_a_400_and_changes_nothing(
    api: RunningApi, db: Engine, method: str
) -> None:
    token = make_unsubscribe_token(customer_id="c1", channel="email", secret=SECRET)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    foreign = make_unsubscribe_token(customer_id="c1", channel="email", secret="another")
    for bad in (tampered, foreign, "not-a-token"):
        response = await api.http.request(
            method, f"/v1/unsubscribe/{bad}", data={"List-Unsubscribe": "One-Click"}
        )
        assert response.status_code == 400, bad
        assert "Nothing was changed" in response.text
    assert _preference_rows(db) == []


# ----------------------------------------------------------------------------- inbound SMS


def _seed_phones(db: Engine) -> None:
    with session_scope(db) as session:
        upsert_profile(session, customer_id="c1", traits={"phone": "+82 10-1234-5678"})
        upsert_profile(session, customer_id="c2", traits={"phone": PHONE})
        upsert_profile(session, customer_id="c3", traits={"phone": "+821099999999"})
        upsert_profile(session, customer_id="c4", traits={"email": "d@example.com"})


def _sms_state(db: Engine, customer_id: str) -> tuple[bool, str | None]:
    with session_scope(db) as session:
        allowed, _ = policies.consent(session, customer_id=customer_id, channel="sms", traits={})
        return allowed, policies.is_suppressed(session, channel="sms", address=PHONE)


async def test_stop_opts_every_matching_customer_out_and_suppresses_the_number(
    api: RunningApi, db: Engine
) -> None:
    _seed_phones(db)
    response = await api.http.post(
        "/v1/inbound/sms", json={"from": PHONE, "text": "  Stop "}, headers=AUTH
    )
    assert response.status_code == 200
    assert response.json() == {"opted_out": True, "opted_in": False, "customers": 2}
    assert _sms_state(db, "c1") == (False, "sms STOP")
    assert _sms_state(db, "c2") == (False, "sms STOP")
    assert _preference_rows(db) == [
        ("c1", "sms", False, "sms STOP"),
        ("c2", "sms", False, "sms STOP"),
    ]


async def test_start_in_twilio_form_fields_opts_back_in_and_lifts_the_stop(
    api: RunningApi, db: Engine
) -> None:
    _seed_phones(db)
    await api.http.post("/v1/inbound/sms", json={"from": PHONE, "text": "STOPALL"}, headers=AUTH)
    response = await api.http.post(
        "/v1/inbound/sms", data={"From": "+82 10 1234 5678", "Body": "start"}, headers=AUTH
    )
    assert response.status_code == 200
    assert response.json() == {"opted_out": False, "opted_in": True, "customers": 2}
    assert _sms_state(db, "c1") == (True, None)
    assert _sms_state(db, "c2") == (True, None)


async def test_start_does_not_lift_a_suppression_made_for_another_reason(
    api: RunningApi, db: Engine
) -> None:
    _seed_phones(db)
    with session_scope(db) as session:
        policies.suppress(session, channel="sms", address=PHONE, reason="invalid number")
    await api.http.post("/v1/inbound/sms", json={"from": PHONE, "text": "START"}, headers=AUTH)
    assert _sms_state(db, "c2") == (True, "invalid number")


async def test_other_texts_change_nothing(api: RunningApi, db: Engine) -> None:
    _seed_phones(db)
    for text in ("hello", "please stop texting me", ""):
        response = await api.http.post(
            "/v1/inbound/sms", json={"from": PHONE, "text": text}, headers=AUTH
        )
        assert response.json()["opted_out"] is False
    assert _preference_rows(db) == []
    assert _sms_state(db, "c2") == (True, None)


async def test_inbound_sms_needs_a_key_and_a_sender(api: RunningApi, db: Engine) -> None:
    body = {"from": PHONE, "text": "STOP"}
    assert (await api.http.post("/v1/inbound/sms", json=body)).status_code == 401
    missing = await api.http.post("/v1/inbound/sms", json={"text": "STOP"}, headers=AUTH)
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "from"
    garbage = await api.http.post(
        "/v1/inbound/sms", content=b"STOP", headers={**AUTH, "Content-Type": "text/plain"}
    )
    assert garbage.status_code == 422 and garbage.json()["errors"][0]["field"] == "body"
    assert _sms_state(db, "c2") == (True, None)


# ----------------------------------------------------------------------------- outbox, deliveries


async def test_the_outbox_shows_messages_newest_first_with_recipients_masked(
    api: RunningApi, db: Engine
) -> None:
    now = utcnow()
    with session_scope(db) as session:
        for visit, (customer, recipient) in enumerate(
            [("c1", "ana@example.com"), ("c1", "ana@example.com"), ("c2", "bo@example.com")]
        ):
            session.add(
                OutboxMessage(
                    workflow_id=f"journey/welcome/{customer}",
                    run_id=f"run-{customer}",
                    step_id="hello",
                    visit=visit,
                    journey_id="welcome",
                    customer_id=customer,
                    channel="email",
                    recipient=recipient,
                    subject=f"Hello #{visit}",
                    body="Welcome aboard",
                    created_at=now + timedelta(seconds=visit),
                )
            )
    response = await api.http.get("/v1/outbox", params={"customer": "c1"}, headers=AUTH)
    assert response.status_code == 200
    messages = response.json()["messages"]
    assert [m["subject"] for m in messages] == ["Hello #1", "Hello #0"]
    assert {m["recipient"] for m in messages} == {"a***@example.com"}
    assert "ana@example.com" not in response.text
    assert set(messages[0]) == {
        "id",
        "journey_id",
        "customer_id",
        "channel",
        "recipient",
        "subject",
        "body",
        "created_at",
        "run_id",
        "step_id",
    }
    everyone = await api.http.get("/v1/outbox", params={"limit": 1}, headers=AUTH)
    assert [m["customer_id"] for m in everyone.json()["messages"]] == ["c2"]
    assert (await api.http.get("/v1/outbox")).status_code == 401


async def test_deliveries_filter_by_run_and_customer_and_never_show_an_address(
    api: RunningApi, db: Engine
) -> None:
    with session_scope(db) as session:
        for run_id, customer, status in [("r1", "c1", "sent"), ("r2", "c1", "no_consent")]:
            session.add(
                Delivery(
                    workflow_id=f"journey/welcome/{customer}",
                    run_id=run_id,
                    step_id="hello",
                    visit=1,
                    journey_id="welcome",
                    customer_id=customer,
                    channel="sms",
                    template="hello",
                    recipient_hash=policies.address_hash("sms", PHONE),
                    recipient_masked=policies.mask("sms", PHONE),
                    status=status,
                )
            )
    by_run = await api.http.get("/v1/deliveries", params={"run_id": "r2"}, headers=AUTH)
    assert by_run.status_code == 200
    deliveries = by_run.json()["deliveries"]
    assert [(d["run_id"], d["status"]) for d in deliveries] == [("r2", "no_consent")]
    assert deliveries[0]["recipient"] == "+82******5678"
    assert "recipient_hash" not in deliveries[0] and PHONE not in by_run.text
    by_customer = await api.http.get("/v1/deliveries", params={"customer": "c1"}, headers=AUTH)
    assert {d["run_id"] for d in by_customer.json()["deliveries"]} == {"r1", "r2"}
    nobody = await api.http.get("/v1/deliveries", params={"customer": "c9"}, headers=AUTH)
    assert nobody.json() == {"deliveries": []}
