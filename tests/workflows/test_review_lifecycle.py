"""A review task lives no longer than its run, and the run reads the profile fresh after the
wait inside a review (patch `review-ends-with-run`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.testing import WorkflowEnvironment

from engine.database import ReviewTask
from engine.payloads import ReviewDecision, RunState
from service.review_desk import ReviewRefused, decide_task
from service.users import Viewer
from tests.workflows.conftest import StartRun, compile_plan, send_event, set_profile, steps_of
from tests.workflows.test_journey_run import doc

CLOSING = doc(
    """
- id: j
  entry: {event: payment_failed}
  exit_on:
    - {event: payment_received, when: event.amount > 0, outcome: recovered}
  settings: {max_duration: 2d}
  steps:
    - id: ask
      review: collections
      title: "Case {{ customer.id }}"
      decisions: {approve: yes, reject: no}
    - {id: yes, exit: approved}
    - {id: no, exit: rejected}
"""
)

RE_READ = doc(
    """
- id: j
  entry: {event: payment_failed}
  steps:
    - id: ask
      review: collections
      title: "Case {{ customer.id }}"
      decisions: {approve: check, reject: no}
      sla: 1d
      on_timeout: check
    - id: check
      branch:
        - {when: profile.segment == "vip", goto: vip}
      else: standard
    - {id: vip, exit: approved_vip}
    - {id: standard, exit: approved_standard}
    - {id: no, exit: rejected}
"""
)


async def _open_task(env: WorkflowEnvironment, handle: Any) -> str:
    for _ in range(100):
        state: RunState = await handle.query("state", result_type=RunState)
        if state.open_review is not None:
            return state.open_review.task_id
        await env.sleep(timedelta(seconds=1))
    raise AssertionError("the run never opened a review task")


def _task(db: Engine, task_id: str) -> ReviewTask:
    with Session(db) as session:
        task = session.get(ReviewTask, task_id)
        assert task is not None
        return task


async def test_an_exit_event_during_a_review_closes_the_task_with_the_reason(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    handle = await start_run(compile_plan(CLOSING))
    task_id = await _open_task(env, handle)
    await send_event(handle, "payment_received", amount=100)
    state = await handle.result()

    assert (state.status, state.outcome) == ("exited", "recovered")
    task = _task(db, task_id)
    assert (task.status, task.note, task.decision) == ("closed", "run exited: recovered", None)
    assert task.decided_at is not None
    assert steps_of(state)[-3:] == [("ask", "recovered"), ("ask", "closed"), ("end", "recovered")]
    assert state.path[-2].detail == {"task_id": task_id, "reason": "run exited: recovered"}
    assert state.open_review is None

    # The desk refuses a decision on it with the reason, before it reaches the run.
    olga = Viewer(id=1, name="olga", role="ops")
    with pytest.raises(ReviewRefused) as refused:
        await decide_task(
            db, None, task_id=task_id, viewer=olga, decision="approve", note=None, address=None
        )
    assert refused.value.status == 409
    assert "closed: run exited: recovered" in refused.value.message
    assert _task(db, task_id).status == "closed"


async def test_a_run_expiring_during_a_review_closes_the_task(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    handle = await start_run(compile_plan(CLOSING))
    task_id = await _open_task(env, handle)
    state = await handle.result()

    assert (state.status, state.outcome) == ("expired", "expired")
    task = _task(db, task_id)
    assert (task.status, task.note) == ("closed", "run expired")
    assert ("ask", "closed") in steps_of(state)


@pytest.mark.parametrize("decide", [True, False], ids=["decided", "timed_out"])
async def test_the_step_after_a_review_reads_the_profile_as_it_is_after_the_wait(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine, decide: bool
) -> None:
    set_profile(db, "c1", first_name="Min", segment="standard")
    handle = await start_run(compile_plan(RE_READ))
    task_id = await _open_task(env, handle)
    # The customer is upgraded while the case waits for a reviewer.
    set_profile(db, "c1", first_name="Min", segment="vip")
    if decide:
        await handle.execute_update(
            "decide_review",
            ReviewDecision(task_id=task_id, decision="approve", reviewer="olga", note="ok"),
            result_type=None,
        )
    state = await handle.result()

    assert state.outcome == "approved_vip"
    branch = next(e for e in state.path if e.step == "check")
    assert branch.outcome == "vip"
    assert _task(db, task_id).status == ("decided" if decide else "expired")
