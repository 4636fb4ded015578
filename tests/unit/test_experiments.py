"""Experiments that survive edits: a customer's split arm and holdout placement come from
the journey, the step and the customer (and a `salt:`), never from the plan's version.

1,000 customers are put through a split with `decide_at_entry`, the walk the event router
runs before a run starts (the run's own walk builds its salt the same way), against
versions of one journey a designer might deploy one after another."""

from __future__ import annotations

from datetime import UTC, datetime

from engine import plan as p
from engine.decisions import bucket_of, decide_at_entry
from engine.payloads import CustomerContext, EventMessage
from tests.unit.journey_docs import check, journey_doc

CUSTOMERS = [f"cust-{n}" for n in range(1000)]
NOW = datetime(2026, 12, 2, tzinfo=UTC)


def _plan(*, weights: str = "{a: 50, b: 50}", salt: str = "", offer: str = "offer") -> p.Plan:
    steps = f"""
    - id: ab
      split: {weights}
      paths: {{a: nudge, b: done}}
      {salt}
    - {{id: nudge, send: {offer}, channel: sms}}
    - {{id: done, exit: done}}
    """
    head = journey_doc("- {id: x, exit: x}").split("journeys:")[0]
    head = head.replace("templates:\n", "templates:\n  reminder: {sms: 'A reminder'}\n")
    catalog = check(journey_doc(steps, head=head))
    assert catalog.ok, [v.format() for v in catalog.violations]
    return catalog.plans["j"]


def _arms(plan: p.Plan) -> dict[str, str]:
    """Each customer's arm, as the step's path records it (`SplitArm.name`)."""
    split = plan.steps["ab"]
    assert isinstance(split, p.SplitPlan)
    arms: dict[str, str] = {}
    for customer in CUSTOMERS:
        trigger = EventMessage(
            name="payment_failed",
            customer_id=customer,
            message_id=f"m-{customer}",
            timestamp=NOW,
            properties={"amount": 10},
        )
        walked = decide_at_entry(plan, CustomerContext(id=customer), trigger, now=NOW)
        assert walked is not None
        arms[customer] = split.arms[walked.decisions[0].bucket or 0].name
    return arms


def _moved(before: dict[str, str], after: dict[str, str]) -> int:
    return sum(before[c] != after[c] for c in CUSTOMERS)


def test_redeploying_with_an_unrelated_step_changed_keeps_every_customer_in_their_arm() -> None:
    before, after = _plan(), _plan(offer="reminder")
    assert before.version != after.version

    arms = _arms(before)

    assert _arms(after) == arms
    assert 430 <= sum(arm == "a" for arm in arms.values()) <= 570  # and it is a 50/50 split


def test_moving_weight_from_50_50_to_60_40_moves_only_the_customers_at_the_boundary() -> None:
    before, after = _arms(_plan()), _arms(_plan(weights="{a: 60, b: 40}"))

    moved = [c for c in CUSTOMERS if before[c] != after[c]]

    assert 70 <= len(moved) <= 130  # about a tenth of 1,000
    assert all((before[c], after[c]) == ("b", "a") for c in moved)  # only b's edge, into a


def test_a_new_salt_starts_a_new_experiment_and_reshuffles_about_half() -> None:
    unsalted = _arms(_plan())
    first = _arms(_plan(salt="salt: pricing-2026"))

    assert 420 <= _moved(unsalted, first) <= 580
    assert 420 <= _moved(first, _arms(_plan(salt="salt: pricing-2027"))) <= 580
    assert _arms(_plan(salt="salt: pricing-2026", offer="reminder")) == first


def test_the_holdout_survives_edits_and_a_journey_salt_redraws_it() -> None:
    def held_out(extra: str, offer: str = "offer") -> set[str]:
        head = journey_doc("- {id: x, exit: x}").split("journeys:")[0]
        head = head.replace("templates:\n", "templates:\n  reminder: {sms: 'A reminder'}\n")
        steps = f"- {{id: nudge, send: {offer}, channel: sms}}"
        plan = check(journey_doc(steps, head=head, extra=extra)).plans["j"]
        weights = [plan.holdout_percent, 100 - plan.holdout_percent]
        return {c for c in CUSTOMERS if bucket_of(p.bucket_salt(plan, c, "holdout"), weights) == 0}

    held = held_out("holdout: 10%")

    assert 60 <= len(held) <= 140
    assert held_out("holdout: 10%", offer="reminder") == held
    redrawn = held_out("holdout: 10%\nsalt: control-2026")
    assert 60 <= len(redrawn) <= 140 and len(held & redrawn) < 40


def test_a_salt_must_be_short_text() -> None:
    for salt, problem in (('""', "at least 1 character"), ("x" * 101, "at most 100 characters")):
        split = (
            f"- {{id: ab, split: {{a: 100}}, paths: {{a: d}}, salt: {salt}}}\n- {{id: d, exit: d}}"
        )
        for document in (
            journey_doc(split),
            journey_doc("- {id: d, exit: d}", extra=f"salt: {salt}"),
        ):
            messages = [v.format() for v in check(document).violations]
            assert len(messages) == 1 and f"salt: String should have {problem}" in messages[0]
