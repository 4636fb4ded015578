"""Journey goals in the language (issue #19): what a designer may write, the errors at the
line of the mistake, the compiled form, the JSON Schema, and versions that stay put for
journeys without goals."""

from __future__ import annotations

import pytest

from engine.compiler import plan_version
from engine.plan import EventGoalPlan, OutcomeGoalPlan
from engine.schema import json_schema
from tests.unit.journey_docs import HEAD, Refusal, assert_refused, check, journey_doc

STEPS = """
- id: pause
  wait: 3d
- id: done
  exit: paid
"""


def _doc(goals: str, *, exit_on: str = "") -> str:
    extra = (f"exit_on: {exit_on}\n" if exit_on else "") + f"goals: {goals}"
    return journey_doc(STEPS, extra=extra)


def test_event_and_outcome_goals_compile_with_stable_keys() -> None:
    text = _doc(
        "[{event: payment_received, within: 7d, value: event.amount, when: 'event.amount > 0'},"
        " {event: payment_received, within: 1d},"
        " {outcome: paid}, {outcome: stopped}]",
        exit_on="[{event: payment_failed, outcome: stopped}]",
    )
    catalog = check(text)
    assert catalog.violations == []
    assert catalog.plans["j"].goals == (
        EventGoalPlan(
            key="payment_received",
            event="payment_received",
            within_seconds=7 * 86400,
            value="event.amount",
            when="event.amount > 0",
        ),
        EventGoalPlan(key="payment_received#2", event="payment_received", within_seconds=86400),
        OutcomeGoalPlan(key="outcome:paid", outcome="paid"),
        OutcomeGoalPlan(key="outcome:stopped", outcome="stopped"),
    )


def test_a_journey_without_goals_keeps_its_version_and_goals_change_it() -> None:
    plain = check(journey_doc(STEPS)).plans["j"]
    empty = check(_doc("[]")).plans["j"]
    with_goal = check(_doc("[{outcome: paid}]")).plans["j"]
    other_goal = check(_doc("[{event: payment_received, within: 7d}]")).plans["j"]

    # As the plan hashed before it had a `goals` field at all.
    before_goals = {k: v for k, v in plain.model_dump(mode="json").items() if k != "goals"}
    assert plain.version == plan_version(before_goals) == empty.version
    assert len({plain.version, with_goal.version, other_goal.version}) == 3


def test_goal_event_properties_are_not_kept_in_runs() -> None:
    """A goal's expressions are evaluated as the event is stored, never by a run: they add
    nothing to the properties a run keeps of its events (`engine.personal`)."""
    plain = check(journey_doc(STEPS)).plans["j"]
    goal = check(_doc("[{event: payment_failed, within: 7d, value: event.amount}]")).plans["j"]
    assert plain.personal is not None and goal.personal is not None
    assert goal.personal.reads == plain.personal.reads


REFUSALS = [
    pytest.param(
        Refusal(
            _doc("[{event: payment_recieved, within: 7d}]"),
            code="goal",
            message="goal event 'payment_recieved' is not declared under events:",
            hint="did you mean 'payment_received'?",
            at="goals:",
        ),
        id="undeclared-event-with-did-you-mean",
    ),
    pytest.param(
        Refusal(
            _doc("[{event: signed_up, within: 7d}]"),
            code="goal",
            message="goal event 'signed_up' is not declared under events:",
            hint="valid: payment_failed, payment_received",
            at="goals:",
        ),
        id="undeclared-event",
    ),
    pytest.param(
        Refusal(
            journey_doc(
                STEPS,
                head=HEAD[: HEAD.index("events:")] + HEAD[HEAD.index("channels:") :],
                extra="goals: [{event: payment_received, within: 7d}]",
            ),
            code="goal",
            message="goal event 'payment_received' is not declared under events:",
            hint="declare it, with the properties its value and when read",
            at="goals:",
        ),
        id="a-goal-event-needs-declaring-even-without-events",
    ),
    pytest.param(
        Refusal(
            _doc("[{outcome: piad}]"),
            code="goal",
            message="goal outcome 'piad' is not an outcome of journey 'j'",
            hint="did you mean 'paid'?",
            at="goals:",
        ),
        id="unknown-outcome-with-did-you-mean",
    ),
    pytest.param(
        Refusal(
            _doc("[{outcome: converted}]", exit_on="[{event: payment_received, outcome: done}]"),
            code="goal",
            message="goal outcome 'converted' is not an outcome of journey 'j'",
            hint="valid: done, paid",
            at="goals:",
        ),
        id="unknown-outcome-lists-the-outcomes",
    ),
    pytest.param(
        Refusal(
            _doc("[{outcome: paid}, {outcome: paid}]"),
            code="goal",
            message="goal outcome 'paid' is listed twice",
            at="goals:",
        ),
        id="outcome-twice",
    ),
    pytest.param(
        Refusal(
            _doc("[{event: payment_received, within: 7d, value: event.currency}]"),
            code="event-property",
            message="expression 'event.currency': event 'payment_received' has no property "
            "'currency'",
            hint="valid: amount",
            at="goals:",
        ),
        id="value-reads-an-undeclared-property",
    ),
    pytest.param(
        Refusal(
            _doc("[{event: payment_received, within: 7d, value: 'event.amount > 10'}]"),
            code="type-mismatch",
            message="goal value 'event.amount > 10' is a boolean, not a number",
            hint="a goal's value is a number, e.g. event.amount",
            at="goals:",
        ),
        id="value-not-a-number",
    ),
    pytest.param(
        Refusal(
            _doc("[{event: payment_received, within: 7d, when: 'vars.paid'}]"),
            code="expression",
            message="expression 'vars.paid': unknown name 'vars'",
            hint="available names: customer, event, now, profile",
            at="goals:",
        ),
        id="when-reads-the-run",
    ),
    pytest.param(
        Refusal(
            _doc("[{event: payment_received, within: 7 days}]"),
            code="duration",
            message="'7 days' is not a duration: use a number and a unit, s m h d w, such as "
            "'30s', '15m', '4h', '3d', '2w' or '1d12h'",
            at="goals:",
        ),
        id="bad-within",
    ),
    pytest.param(
        Refusal(
            _doc("[{event: payment_received}]"),
            code="missing-key",
            message="missing required key 'within'",
            at="goals:",
        ),
        id="no-within",
    ),
    pytest.param(
        Refusal(
            _doc("[{event: payment_received, withn: 7d, within: 7d}]"),
            code="unknown-key",
            message="unknown key 'withn'",
            hint="did you mean 'within'?",
            at="goals:",
        ),
        id="typo-in-a-goal-key",
    ),
    pytest.param(
        Refusal(
            _doc("[paid]"),
            code="type",
            message="a goal is {event: <name>, within: 7d, value: ..., when: ...} or "
            "{outcome: <exit outcome>}",
            at="goals:",
        ),
        id="goal-of-the-wrong-shape",
    ),
]


@pytest.mark.parametrize("case", REFUSALS)
def test_goal_mistakes_are_refused_at_their_line(case: Refusal) -> None:
    assert_refused(case)


def test_the_json_schema_has_goals() -> None:
    schema = json_schema()
    goals = schema["$defs"]["Journey"]["properties"]["goals"]
    assert goals["items"]["oneOf"] == [
        {"$ref": "#/$defs/EventGoal"},
        {"$ref": "#/$defs/OutcomeGoal"},
    ]
    assert set(schema["$defs"]["EventGoal"]["required"]) == {"event", "within"}
    assert schema["$defs"]["OutcomeGoal"]["required"] == ["outcome"]
