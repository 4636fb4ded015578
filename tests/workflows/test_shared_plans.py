"""Runs of one plan version share one parsed plan in the worker (issue #20, capacity)."""

from __future__ import annotations

from engine.payloads import RunState
from tests.workflows.conftest import StartRun, compile_plan
from workflows import shared_plans

PLAN = """
version: 1
events:
  entered: {}
journeys:
  - id: shared
    entry: {event: entered}
    steps:
      - id: pause
        wait: 1m
      - id: done
        exit: done
"""


def test_equal_plans_share_one_copy() -> None:
    first = compile_plan(PLAN, "shared")
    second = first.model_validate_json(first.model_dump_json())  # as a start event parses it
    assert second is not first
    assert shared_plans.shared(first).plan is shared_plans.shared(second).plan


def test_a_different_plan_under_the_same_version_is_not_shared() -> None:
    plan = compile_plan(PLAN, "shared")
    other = plan.model_copy(update={"start": "done"})  # same id and version, other content
    kept = shared_plans.shared(plan)
    assert shared_plans.shared(other).plan is other
    assert kept.plan == plan


def test_derived_facts() -> None:
    facts = shared_plans.shared(compile_plan(PLAN, "shared"))
    assert facts.awaited == frozenset()
    assert facts.walk_starts == frozenset()


async def test_runs_of_one_version_complete_on_the_shared_plan(start_run: StartRun) -> None:
    plan = compile_plan(PLAN, "shared")
    handles = [await start_run(plan, customer) for customer in ("c1", "c2")]
    for handle in handles:
        state: RunState = await handle.result()
        assert (state.status, state.outcome) == ("completed", "done")
    assert shared_plans.shared(plan).plan == plan
