"""`decide` (engine/decisions.py): consecutive set/branch/split steps decided in one walk,
each against the context the steps before it left, with what it read; and the walk the
event router decides before a run starts (`decide_at_entry`), as the run would."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from engine import plan as p
from engine.decisions import bucket_of, decide, decide_at_entry
from engine.payloads import CustomerContext, DecideInput, EventMessage, run_context
from tests.unit.journey_docs import check, journey_doc

STEPS = """
- id: count
  set: {vars.failures: event.amount / 1000, profile.tier: '"gold"'}
- id: enough
  branch:
    - when: vars.failures >= 3 and profile.tier == "gold"
      goto: ab
  else: calm
- id: ab
  split: {a: 50, b: 50}
  paths: {a: risk, b: risk}
- id: risk
  score: default_risk
  features: {amount: event.amount, failures: vars.failures, tier: profile.tier}
- id: offer
  send: offer
  channel: sms
- id: calm
  exit: calm
"""


def _plan() -> p.Plan:
    catalog = check(journey_doc(STEPS))
    assert catalog.ok, [v.format() for v in catalog.violations]
    return catalog.plans["j"]


def _input(plan: p.Plan, start: str, *, amount: int, limit: int = 100) -> DecideInput:
    context: dict[str, Any] = {
        "event": {"amount": amount},
        "profile": {"first_name": "Min"},
        "vars": {},
        "journey": {"id": plan.journey_id, "version": plan.version, "step": None},
    }
    return DecideInput(
        start=start,
        steps={sid: s for sid, s in plan.steps.items() if p.decidable(s)},
        context=context,
        timezone="Asia/Seoul",
        salt=f"{plan.journey_id}:cust-1:",
        limit=limit,
    )


def test_a_set_is_visible_to_the_branch_after_it_and_the_walk_stops_at_the_score() -> None:
    plan = _plan()
    result = decide(_input(plan, "count", amount=5000))
    assert [(d.step_id, d.type) for d in result.decisions] == [
        ("count", "set"),
        ("enough", "branch"),
        ("ab", "split"),
    ]
    count, enough, _ = result.decisions
    assert count.values == [5.0, "gold"]
    assert enough.first_true == 0
    assert enough.reads == {"vars.failures": 5.0, "profile.tier": "gold"}
    assert result.stop == "risk"
    assert result.prepared is not None and result.prepared.step_id == "risk"
    assert result.prepared.values == [5000, 5.0, "gold"]


def test_a_false_branch_takes_else_and_stops_at_the_exit() -> None:
    result = decide(_input(_plan(), "count", amount=1000))
    assert [d.step_id for d in result.decisions] == ["count", "enough"]
    assert result.decisions[1].first_true is None
    assert result.stop == "calm"
    assert result.prepared is None


def test_a_customer_stays_in_one_split_arm() -> None:
    plan = _plan()
    split = plan.steps["ab"]
    assert isinstance(split, p.SplitPlan)
    for customer in ("cust-1", "cust-2", "cust-3", "cust-4", "cust-5", "cust-6"):
        request = _input(plan, "ab", amount=5000).model_copy(
            update={"salt": f"{plan.journey_id}:{customer}:"}
        )
        walked = decide(request)
        # A split's salt (`bucket_salt` and the step id): journey:customer:step.
        expected = bucket_of(f"{plan.journey_id}:{customer}:ab", [a.weight for a in split.arms])
        assert walked.decisions[0].bucket == expected


def test_a_walk_starting_at_a_score_only_prepares_its_features() -> None:
    result = decide(_input(_plan(), "risk", amount=7000))
    assert result.decisions == []
    assert result.stop == "risk"
    assert result.prepared is not None and result.prepared.values[0] == 7000


def test_the_limit_stops_the_walk_at_the_next_undecided_step() -> None:
    result = decide(_input(_plan(), "count", amount=5000, limit=1))
    assert [d.step_id for d in result.decisions] == ["count"]
    assert result.stop == "enough"
    assert result.prepared is None


def test_an_expression_that_fails_counts_as_false_and_the_error_is_recorded() -> None:
    request = _input(_plan(), "count", amount=5000)
    request.context["event"] = {"amount": "lots"}
    result = decide(request)
    count, enough = result.decisions
    assert count.values[0] is None and count.error
    assert enough.first_true is None
    assert result.stop == "calm"


def _entry_plan(steps: str) -> p.Plan:
    catalog = check(journey_doc(steps))
    assert catalog.ok, [v.format() for v in catalog.violations]
    return catalog.plans["j"]


def _trigger() -> EventMessage:
    return EventMessage(
        name="payment_failed",
        customer_id="c1",
        message_id="m1",
        timestamp=datetime(2026, 12, 2, tzinfo=UTC),
        properties={"amount": 2000},
    )


def test_the_starter_decides_the_first_pure_steps_as_the_run_would() -> None:
    plan = _entry_plan(
        """
        - {id: note, set: {vars.tries: event.amount / 1000}}
        - id: route
          branch:
            - {when: 'vars.tries >= 2 and profile.tier == "gold"', goto: offer}
          else: quiet
        - {id: offer, send: offer, channel: sms}
        - {id: quiet, exit: quiet}
        """
    )
    customer = CustomerContext(id="c1", traits={"tier": "gold"})
    walked = decide_at_entry(plan, customer, _trigger(), now=datetime(2026, 12, 2, tzinfo=UTC))
    assert walked is not None
    assert [(d.step_id, d.values, d.first_true) for d in walked.decisions] == [
        ("note", [2], None),
        ("route", [True], 0),
    ]
    assert walked.decisions[1].reads == {"vars.tries": 2, "profile.tier": "gold"}
    assert walked.stop == "offer"
    # The same walk the run's own begin_run would take from the same context.
    assert walked == decide(
        DecideInput(
            start="note",
            steps={sid: s for sid, s in plan.steps.items() if p.decidable(s)},
            context=run_context(
                plan,
                customer,
                _trigger(),
                now=datetime(2026, 12, 2, tzinfo=UTC),
                run_id="r1",
                step=None,
            ),
            salt="j:c1:",
        )
    )


def test_the_starter_leaves_a_walk_that_reads_the_run_id_to_the_run() -> None:
    plan = _entry_plan(
        """
        - {id: note, set: {vars.run: journey.run_id}}
        - {id: offer, send: offer, channel: sms}
        """
    )
    customer = CustomerContext(id="c1")
    assert decide_at_entry(plan, customer, _trigger(), now=datetime.now(UTC)) is None


def test_the_starter_does_not_walk_from_a_step_that_is_not_pure() -> None:
    for first in (
        "{id: offer, send: offer, channel: sms}",
        "{id: s, score: default_risk, features: {amount: event.amount}}",
    ):
        plan = _entry_plan(f"- {first}\n- {{id: done, exit: done}}")
        customer = CustomerContext(id="c1")
        assert decide_at_entry(plan, customer, _trigger(), now=datetime.now(UTC)) is None
