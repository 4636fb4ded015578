"""The shipped ONNX risk model end to end: the repository's journeys.yaml deployed on the
Temporal dev server, `python worker.py` scoring with risk_models/default_risk.onnx (no model
server), and payment_recovery routing on the score: a high-risk customer to ops review,
a low-risk one to the SMS grace offer. What a user sees is read from the API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from engine.catalog import build_catalog
from tests.e2e.conftest import (
    ROOT,
    JourneysStack,
    TemporalServer,
    daytime_zone,
    eventually,
    holdout_customer,
    path_steps,
    start_stack,
)

pytestmark = pytest.mark.e2e

CATALOGUE = ROOT / "journeys.yaml"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, temporal_server: TemporalServer
) -> Iterator[JourneysStack]:
    """The repository's journeys.yaml deployed, with a worker and the API running."""
    with start_stack(tmp_path_factory.mktemp("models"), temporal_server, CATALOGUE) as running:
        yield running


def treated_customer(prefix: str) -> str:
    """A customer the deployed payment_recovery version keeps out of its holdout."""
    return holdout_customer(CATALOGUE, "payment_recovery", prefix=prefix)


def start_recovery(
    stack: JourneysStack, prefix: str, *, traits: dict[str, Any], **payment: Any
) -> tuple[str, str, str]:
    """A customer with ``traits`` whose payment failed; (customer, invoice, run id)."""
    customer = treated_customer(prefix)
    stack.identify(
        customer,
        first_name="Mina",
        phone="+15550100",
        email=f"{customer}@example.test",
        timezone=daytime_zone(),
        **traits,
    )
    invoice = f"inv-{customer}"
    started = stack.track(customer, "payment_failed", currency="KRW", invoice_id=invoice, **payment)
    assert started["started"] == [f"journey/payment_recovery/{customer}/{invoice}"], started
    return customer, invoice, str(stack.only_run(customer, "payment_recovery")["run_id"])


def live_at(stack: JourneysStack, run_id: str, step: str) -> dict[str, Any]:
    """The run's live state once its last recorded step is ``step``."""

    def live() -> dict[str, Any] | None:
        state: dict[str, Any] | None = stack.run(run_id)["live"]
        return state

    found: dict[str, Any] = eventually(
        live,
        check=lambda state: (
            state is not None and bool(state["path"]) and state["path"][-1]["step"] == step
        ),
        timeout=60,
        what=f"run {run_id} at {step}",
    )
    return found


def test_a_high_risk_customer_is_scored_by_the_shipped_model_and_goes_to_ops_review(
    stack: JourneysStack,
) -> None:
    customer, invoice, run_id = start_recovery(
        stack,
        "risky",
        traits={"tenure_months": 12, "failed_payments_90d": 3},
        amount=900000,
        days_past_due=30,
    )
    live = live_at(stack, run_id, "ops_review")

    score = live["scores"]["default_risk"]
    assert score["fallback_used"] is False, score.get("error")
    assert score["score"] >= 0.7
    assert score["model_version"].startswith("sha256:")
    assert [(e["step"], e["outcome"]) for e in live["path"][1:3]] == [
        ("score_risk", f"{score['score']:g}"),
        ("route_by_risk", "ops_review"),
    ]
    assert live["path"][1]["detail"]["features"] == {
        "amount": 900000,
        "days_past_due": 30,
        "failed_payments_90d": 3,
        "tenure_months": 12,
    }

    paid = stack.track(
        customer, "payment_received", amount=900000, currency="KRW", invoice_id=invoice
    )
    assert paid["signalled"] == [f"journey/payment_recovery/{customer}/{invoice}"]
    detail = stack.wait_until_ended(run_id)
    assert (detail["status"], detail["outcome"]) == ("exited", "recovered")
    assert "offer_date" not in path_steps(detail)


def test_a_low_risk_customer_is_routed_to_the_sms_grace_offer(stack: JourneysStack) -> None:
    customer, invoice, run_id = start_recovery(
        stack, "steady", traits={"tenure_months": 48}, amount=15000, days_past_due=1
    )
    live = live_at(stack, run_id, "wait_for_morning")

    score = live["scores"]["default_risk"]
    assert score["fallback_used"] is False, score.get("error")
    assert score["score"] < 0.7
    assert [(e["step"], e["outcome"]) for e in live["path"][2:4]] == [
        ("route_by_risk", "offer_date"),
        ("offer_date", "set"),
    ]
    plan = build_catalog(CATALOGUE).plans["payment_recovery"]
    assert plan.steps["wait_for_morning"].next == "grace_sms"  # the SMS offer comes at 09:00

    stack.track(customer, "payment_received", amount=15000, currency="KRW", invoice_id=invoice)
    detail = stack.wait_until_ended(run_id)
    assert (detail["status"], detail["outcome"]) == ("exited", "recovered")
    assert "ops_review" not in path_steps(detail)
