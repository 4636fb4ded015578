"""The `score` step inside real runs (time-skipping Temporal server, the real worker): the
catalogue's payment_recovery journey, scored by the shipped ONNX model, sends a high-risk
customer to ops review and a low-risk one the grace SMS; a model that fails gives its
fallback, recorded, and the run takes the branch the journey defines for it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from engine.catalog import build_catalog
from engine.database import OutboxMessage, ReviewTask
from engine.decisions import bucket_of
from engine.payloads import RunState
from engine.plan import Plan
from tests.risk_models.servers import ModelService
from tests.workflows.conftest import StartRun, compile_plan, send_event, set_profile, steps_of

ROOT = Path(__file__).resolve().parents[2]
HIGH_RISK = {"amount": 900000, "days_past_due": 30, "tenure_months": 12, "failed_payments_90d": 3}
LOW_RISK = {"amount": 15000, "days_past_due": 1, "tenure_months": 48, "failed_payments_90d": 0}


@pytest.fixture(autouse=True)
def catalogue_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative model paths start at the catalogue; messages go to the outbox."""
    monkeypatch.setenv("JOURNEYS_FILE", str(ROOT / "journeys.yaml"))
    for name in ("JOURNEYS_SMS_URL", "JOURNEYS_EMAIL_URL", "JOURNEYS_OPS_URL"):
        monkeypatch.delenv(name, raising=False)


def recovery_plan() -> Plan:
    catalog = build_catalog(ROOT / "journeys.yaml")
    assert catalog.ok, [v.format() for v in catalog.violations]
    return catalog.plans["payment_recovery"]


def treated_customer(plan: Plan) -> str:
    """A customer id outside the journey's holdout."""
    weights = [plan.holdout_percent, 100 - plan.holdout_percent]
    for _ in range(1000):
        customer = f"c-{uuid.uuid4().hex[:8]}"
        if bucket_of(f"{plan.journey_id}:{customer}:holdout", weights) == 1:
            return customer
    raise AssertionError("no customer outside the holdout")


async def run_until(
    env: WorkflowEnvironment, handle: WorkflowHandle[Any, RunState], step: str, *, tick: timedelta
) -> RunState:
    """Skip time until the run's current step is ``step`` (bounded), never while an activity
    is in flight: the time-skipping server would jump past its timeout (a score taking a
    second of real time would time out an hour later in the run's time, and retry)."""
    for _ in range(400):
        state: RunState = await handle.query("state", result_type=RunState)
        if state.current_step == step:
            return state
        description = await handle.describe()
        if description.raw_description.pending_activities:
            await asyncio.sleep(0.05)
            continue
        await env.sleep(tick)
    raise AssertionError(f"the run never reached {step}; it is at {state.current_step}")


def outbox(db: Engine, customer: str) -> list[OutboxMessage]:
    with Session(db) as session:
        query = select(OutboxMessage).where(OutboxMessage.customer_id == customer)
        return list(session.exec(query).all())


async def test_a_high_risk_customer_is_scored_by_the_onnx_model_and_sent_to_review(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    plan = recovery_plan()
    customer = treated_customer(plan)
    set_profile(
        db,
        customer,
        first_name="Mina",
        phone="+821012345678",
        timezone="UTC",
        tenure_months=HIGH_RISK["tenure_months"],
        failed_payments_90d=HIGH_RISK["failed_payments_90d"],
    )
    properties = {
        "amount": HIGH_RISK["amount"],
        "currency": "KRW",
        "days_past_due": HIGH_RISK["days_past_due"],
        "invoice_id": "inv-high",
    }
    handle = await start_run(plan, customer, properties=properties, key="inv-high")
    state = await run_until(env, handle, "ops_review", tick=timedelta(seconds=1))

    score = state.scores["default_risk"]
    assert score["fallback_used"] is False, score["error"]
    assert score["score"] >= 0.7
    assert score["model_version"].startswith("sha256:")
    assert [s for s, _ in steps_of(state)][:4] == [
        "entry",
        "score_risk",
        "route_by_risk",
        "ops_review",
    ]
    scored = next(e for e in state.path if e.step == "score_risk")
    assert scored.detail["features"] == {
        "amount": 900000,
        "days_past_due": 30,
        "failed_payments_90d": 3,
        "tenure_months": 12,
    }
    assert state.open_review is not None and state.open_review.queue == "collections"
    with Session(db) as session:
        task = session.get(ReviewTask, state.open_review.task_id)
        assert task is not None and task.status == "open"

    await send_event(handle, "payment_received", customer, amount=900000, invoice_id="inv-high")
    ended = await handle.result()
    assert (ended.status, ended.outcome) == ("exited", "recovered")
    assert outbox(db, customer) == []


async def test_a_low_risk_customer_gets_the_grace_sms_at_nine(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    plan = recovery_plan()
    customer = treated_customer(plan)
    set_profile(
        db,
        customer,
        first_name="Mina",
        phone="+821012345678",
        timezone="UTC",
        tenure_months=LOW_RISK["tenure_months"],
    )
    properties = {
        "amount": LOW_RISK["amount"],
        "currency": "KRW",
        "days_past_due": LOW_RISK["days_past_due"],
        "invoice_id": "inv-low",
    }
    handle = await start_run(plan, customer, properties=properties, key="inv-low")
    state = await run_until(env, handle, "wait_for_payment", tick=timedelta(hours=1))

    score = state.scores["default_risk"]
    assert score["fallback_used"] is False, score["error"]
    assert score["score"] < 0.7
    route = next(e for e in state.path if e.step == "route_by_risk")
    assert route.outcome == "offer_date"
    [sms] = outbox(db, customer)
    assert (sms.channel, sms.recipient) == ("sms", "+821012345678")
    assert sms.body == (
        "Mina, we can move your due date to your next statement date. Reply YES to accept."
    )
    sent_at = next(e for e in state.path if e.step == "grace_sms").at
    assert (sent_at.hour, sent_at.minute) == (9, 0)

    await send_event(handle, "payment_received", customer, amount=15000, invoice_id="inv-low")
    ended = await handle.result()
    assert (ended.status, ended.outcome) == ("exited", "recovered")


FAILING_REMOTE_MODEL = """\
version: 1
events:
  payment_failed: {amount: number}
models:
  remote:
    kind: http
    protocol: json
    url: "URL"
    body: '{"amount": {{ features.amount }}}'
    score: result.probability
    timeout: 1s
    retries: 1
    fallback: 0.8
    range: [0, 1]
journeys:
  - id: j
    entry: {event: payment_failed}
    steps:
      - {id: risk, score: remote, features: {amount: event.amount}}
      - id: route
        branch:
          - {when: scores.remote.fallback_used, goto: manual}
          - {when: scores.remote.score >= 0.7, goto: manual}
        else: auto
      - {id: manual, exit: sent_to_review}
      - {id: auto, exit: automatic}
"""


@pytest.mark.parametrize(
    ("path", "outcome", "error"),
    [
        ("/json/score", "automatic", None),
        ("/json/error", "sent_to_review", "the model answered HTTP 500 (2 tries)"),
        ("/json/nan", "sent_to_review", "the model's result.probability answered nan"),
        ("/json/text", "sent_to_review", "the model's result.probability answered text"),
        ("/json/slow", "sent_to_review", "the model did not answer within 1s"),
    ],
    ids=["answers", "500", "nan", "text", "timeout"],
)
async def test_a_failing_model_takes_the_journeys_fallback_branch_and_the_history_says_why(
    start_run: StartRun, service: ModelService, path: str, outcome: str, error: str | None
) -> None:
    plan = compile_plan(FAILING_REMOTE_MODEL.replace("URL", service.url(path)))
    state = await (await start_run(plan, properties={"amount": 300000})).result()
    assert state.outcome == outcome
    recorded = state.scores["remote"]
    assert recorded["fallback_used"] is (error is not None)
    if error is None:
        assert recorded["score"] == 0.3
    else:
        assert recorded["score"] == 0.8
        assert recorded["error"].startswith(error), recorded["error"]
        scored = next(e for e in state.path if e.step == "risk")
        assert (
            scored.detail["fallback_used"] is True and scored.detail["error"] == recorded["error"]
        )
