"""Correlation at design time: a keyed journey's awaited events must carry the key (or say
which runs they are for with `correlate:`), and the plan carries `correlate` for the router."""

from __future__ import annotations

from engine.compiler import plan_version
from engine.plan import EventWaitPlan
from tests.unit.journey_docs import check, errors, journey_doc, line_of

KEYED = "payment_failed, key: event.invoice_id"

WAIT_FOR_PAYMENT = """
- id: wait_for_payment
  wait: {event: payment_received, within: 3d}
- id: done
  exit: done
"""


def test_a_keyed_journey_waiting_for_an_event_without_the_key_is_warned_about() -> None:
    text = journey_doc(WAIT_FOR_PAYMENT, entry=KEYED)

    catalog = check(text)

    [warning] = [v for v in catalog.violations if v.code == "correlation"]
    assert warning.severity == "warning"
    assert warning.message == (
        "event 'payment_received' declares no invoice_id: runs are keyed by "
        "'event.invoice_id', so it would reach none of them"
    )
    assert warning.line == line_of(text, "wait: {event: payment_received")
    assert warning.step == "wait_for_payment"
    assert errors(catalog) == []


def test_an_exit_on_without_the_key_is_warned_about_and_correlate_none_silences_it() -> None:
    exit_on = "exit_on: [{event: payment_received, outcome: paid}]"
    warned = check(journey_doc("- {id: done, exit: done}", entry=KEYED, extra=exit_on))
    silenced = check(
        journey_doc(
            "- {id: done, exit: done}",
            entry=KEYED,
            extra="exit_on: [{event: payment_received, outcome: paid, correlate: none}]",
        )
    )

    assert [v.code for v in warned.violations] == ["correlation"]
    assert silenced.violations == []


def test_an_event_that_carries_the_key_needs_no_correlate() -> None:
    steps = """
    - id: wait_again
      wait: {event: payment_failed, within: 3d}
    - id: done
      exit: done
    """
    assert check(journey_doc(steps, entry=KEYED)).violations == []


def test_correlate_is_checked_against_the_event_and_needs_a_keyed_journey() -> None:
    steps = """
    - id: wait_for_payment
      wait: {event: payment_received, correlate: event.invoice}
    - id: done
      exit: done
    """
    misspelt = check(journey_doc(steps, entry=KEYED))
    unkeyed = check(journey_doc(steps.replace("event.invoice", "event.amount")))

    assert [v.code for v in errors(misspelt)] == ["event-property"]
    assert [v.message for v in errors(unkeyed)] == [
        "correlate: only applies to a journey with entry.key"
    ]


def test_the_plan_carries_correlate_and_its_version_is_unchanged_without_it() -> None:
    steps = WAIT_FOR_PAYMENT.replace("within: 3d}", "within: 3d, correlate: event.amount}")
    plan = check(journey_doc(steps, entry=KEYED)).plans["j"]
    plain = check(journey_doc(WAIT_FOR_PAYMENT, entry=KEYED)).plans["j"]

    wait = plan.steps["wait_for_payment"]
    assert isinstance(wait, EventWaitPlan) and wait.correlate == "event.amount"
    assert plan.correlations() == {"payment_received": frozenset({"event.amount"})}
    assert plain.correlations() == {"payment_received": frozenset({"event.invoice_id"})}
    assert plan.version != plain.version
    # Without `correlate:` the version hashes what it hashed before the field existed.
    body = plain.model_dump(mode="json")
    body["steps"]["wait_for_payment"].pop("correlate")
    assert plan_version(body) == plain.version
