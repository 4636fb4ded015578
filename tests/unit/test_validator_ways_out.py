"""The validator learns where a step leads from engine.successors, and points at where
each way out is written: defaults the compiler fills in keep their old places."""

from __future__ import annotations

from pathlib import Path

from engine import plan as p
from engine.catalog import build_catalog
from engine.compiler import compile_step
from engine.successors import successors
from tests.unit.journey_docs import check, errors, journey_doc, line_of, only_error

EXAMPLE = Path(__file__).resolve().parents[2] / "journeys.yaml"


def test_a_branch_without_else_goes_on_to_the_following_step() -> None:
    text = journey_doc(
        """
        - id: route
          branch:
            - {when: "event.amount > 10", goto: big}
        - id: small
          exit: small
        - id: big
          exit: big
        """
    )
    assert check(text).violations == []


def test_a_branch_whose_next_is_unknown_points_at_next() -> None:
    text = journey_doc(
        """
        - id: route
          branch:
            - {when: "event.amount > 10", goto: big}
          next: nowher
        - id: big
          exit: big
        """
    )
    violation = only_error(check(text))
    assert violation.code == "unknown-step"
    assert violation.message == "next names step 'nowher', which journey 'j' does not have"
    assert violation.line == line_of(text, "next: nowher")


def test_an_event_wait_with_within_and_no_on_timeout_is_not_a_second_reference() -> None:
    text = journey_doc(
        """
        - id: wait_pay
          wait: {event: payment_received, within: 2d}
          next: nowhere
        """
    )
    violation = only_error(check(text))
    assert violation.message == "next names step 'nowhere', which journey 'j' does not have"
    assert violation.line == line_of(text, "next: nowhere")


def test_an_on_timeout_that_never_fires_is_one_error_not_two() -> None:
    text = journey_doc(
        """
        - id: wait_pay
          wait: {event: payment_received}
          on_timeout: late
        - id: paid
          exit: paid
        - id: late
          exit: late
        """
    )
    violation = only_error(check(text))
    assert violation.message == "on_timeout: needs wait.within"


def test_a_path_for_an_unknown_arm_is_still_checked() -> None:
    text = journey_doc(
        """
        - id: test
          split: {a: 50, b: 50}
          paths: {a: one, b: two, c: thre}
        - id: one
          exit: one
        - id: two
          exit: two
        """
    )
    found = sorted(v.message for v in errors(check(text)))
    assert found == [
        "path names step 'thre', which journey 'j' does not have",
        "paths: must name exactly the split's arms: path for unknown arm c",
    ]


def test_next_after_an_exit_is_never_taken() -> None:
    text = journey_doc(
        """
        - id: done
          exit: done
          next: done
        """
    )
    violation = only_error(check(text))
    assert violation.message == "next: is never taken after a exit step"
    assert violation.line == line_of(text, "next: done")


def test_every_example_step_compiles_to_the_ways_out_its_plan_has() -> None:
    catalog = build_catalog(EXAMPLE)
    document = catalog.document
    assert document is not None and catalog.plans
    for journey in document.journeys:
        plan = catalog.plans[journey.id]
        ids = [s.id for s in journey.steps]
        for position, step in enumerate(journey.steps):
            following = ids[position + 1] if position + 1 < len(ids) else None
            compiled: p.PlanStep = compile_step(step, following, document)
            assert successors(compiled) == successors(plan.steps[step.id])
