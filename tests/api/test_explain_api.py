"""Why a customer got a message, over HTTP: GET /v1/runs/{id}/explanation and GET
/v1/explain (a customer's runs, one run, one message) answer the explanation
`service.explain` builds from the recorded rows, and the console's run page shows the same
in its "Why" section, the message's content only to roles that may read it.

The run is recorded as the example journey's workflow records it (`upsert_run`, the
delivery, the captured SMS, the decided review task): no Temporal is needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from activities.runs import upsert_run
from engine.catalog import build_catalog
from engine.database import EventRecord, Profile, session_scope
from engine.deploy import deploy_catalog
from engine.payloads import PathEntry, RecordRunInput
from service.api.app import create_app
from tests.api.conftest import AUTH, api_settings, running_api
from tests.api.test_console_runs_api import NoTemporal, signed_in, text_of
from tests.unit.test_explain import approved_path, decided_task, sms_delivery, sms_outbox

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)


def record_the_quick_start_run(db: Engine) -> str:
    """c1's payment-recovery run, approved by ana, its SMS captured: what the README's
    quick start leaves behind."""
    catalog = build_catalog(ROOT / "journeys.yaml")
    deploy_catalog(catalog, engine=db, source_text=(ROOT / "journeys.yaml").read_text())
    plan = catalog.plans["payment_recovery"]
    sent: dict[str, Any] = {
        "step": "grace_sms",
        "type": "send",
        "at": START + timedelta(minutes=5),
        "outcome": "captured",
        "detail": {"channel": "sms", "reason": None, "template": "grace_offer"},
    }
    path = [PathEntry.model_validate(e) for e in approved_path()] + [PathEntry(**sent)]
    with session_scope(db) as session:
        session.add(
            Profile(
                customer_id="c1",
                traits={"first_name": "Mina", "phone": "+821055501234", "timezone": "Asia/Seoul"},
            )
        )
        session.add(
            EventRecord(
                message_id="m-1",
                type="track",
                name="payment_failed",
                customer_id="c1",
                properties={"amount": 25000, "days_past_due": 3, "invoice_id": "inv-1"},
                timestamp=START,
            )
        )
        upsert_run(
            session,
            RecordRunInput(
                run_id="run-1",
                workflow_id="journey/payment_recovery/c1/inv-1",
                journey_id="payment_recovery",
                version=plan.version,
                customer_id="c1",
                key="inv-1",
                trigger_message_id="m-1",
                step="wait_for_payment",
                path=path,
                path_start=0,
            ),
        )
        session.add(decided_task())
        session.add(sms_delivery())
        session.add(sms_outbox())
    return "run-1"


async def test_a_run_is_explained_over_the_api(database_url: str, db: Engine) -> None:
    run_id = record_the_quick_start_run(db)
    settings = api_settings(database_url=database_url, task_queue="unused")
    async with running_api(create_app(settings)) as api:
        one = await api.http.get(f"/v1/runs/{run_id}/explanation", headers=AUTH)
        by_customer = await api.http.get("/v1/explain", params={"customer": "c1"}, headers=AUTH)
        by_message = await api.http.get("/v1/explain", params={"message": "7"}, headers=AUTH)
        by_outbox = await api.http.get("/v1/explain", params={"message": "outbox:3"}, headers=AUTH)
        none = await api.http.get("/v1/explain", params={"customer": "nobody"}, headers=AUTH)
        missing = await api.http.get("/v1/runs/nope/explanation", headers=AUTH)
        no_message = await api.http.get("/v1/explain", params={"message": "99"}, headers=AUTH)
        both = await api.http.get(
            "/v1/explain", params={"customer": "c1", "run": run_id}, headers=AUTH
        )
        keyless = await api.http.get("/v1/explain", params={"customer": "c1"})

    assert one.status_code == 200, one.text
    body = one.json()
    kinds = [item["kind"] for item in body["items"]]
    assert kinds[:3] == ["entry", "score", "branch"] and kinds[-1] == "send"
    [score] = [item for item in body["items"] if item["kind"] == "score"]
    assert {"label": "tenure_months", "text": "not known (default 0)", "flag": "defaulted"} in (
        score["details"]
    )
    [send] = [item for item in body["items"] if item["kind"] == "send"]
    message = send["message"]
    # Content is in the answer, as GET /v1/outbox has it; the address is masked.
    assert message["body"].startswith("Mina, we can move your due date")
    assert message["recipient"] == "+82******1234" and "+821055501234" not in one.text
    checks = {check["name"]: check["text"] for check in message["checks"]}
    assert checks["quiet hours"] == "21:00-09:00 in Asia/Seoul: not in them at 12:05, sent at once"

    assert by_customer.status_code == 200 and [r["run_id"] for r in by_customer.json()["runs"]] == [
        run_id
    ]
    for answer in (by_message, by_outbox):
        assert answer.status_code == 200, answer.text
        [run] = answer.json()["runs"]
        assert run["items"][-1]["message"]["delivery_id"] == 7
    assert none.status_code == 200 and none.json()["runs"] == []
    assert missing.status_code == 404 and no_message.status_code == 404
    assert both.status_code == 422
    assert keyless.status_code == 401


async def test_the_run_page_explains_why_and_hides_content_from_ops(
    database_url: str, db: Engine
) -> None:
    run_id = record_the_quick_start_run(db)
    async with signed_in(database_url, db, role="ops", client=NoTemporal()) as http:
        ops_page = await http.get(f"/console/runs/{run_id}")
    shown = text_of(ops_page)
    assert 'id="why"' in ops_page.text
    assert "ops_review: ana decided approve" in shown
    assert "note Grace agreed by phone." in shown
    assert "tenure_months not known (default 0)" in shown
    assert "quiet hours passed 21:00-09:00 in Asia/Seoul: not in them at 12:05, sent at once" in (
        shown
    )
    assert "grace_sms: SMS grace_offer captured in the outbox to +82******1234" in shown
    assert "we can move your due date" not in shown  # ops may not read content
    assert "+821055501234" not in ops_page.text

    async with signed_in(database_url, db, role="auditor", client=NoTemporal()) as http:
        auditor_page = await http.get(f"/console/runs/{run_id}")
    assert 'data-content="grace_sms"' in auditor_page.text
    assert "Mina, we can move your due date" in text_of(auditor_page)
