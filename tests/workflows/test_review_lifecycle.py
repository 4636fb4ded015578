"""A review task lives no longer than its run, and the run reads the profile fresh after the
wait inside a review (patch `review-ends-with-run`)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from temporalio import activity
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.reviews import ReviewActivities
from engine.database import ReviewTask
from engine.payloads import (
    QUERY_STATE,
    UPDATE_REVIEW,
    WORKFLOW_NAME,
    ActivityName,
    EventMessage,
    JourneyRunInput,
    OpenReviewInput,
    ReviewDecision,
    ReviewDecisionResult,
    RunState,
)
from service import review_desk
from service.review_desk import UNCONFIRMED, ReviewRefused, decide_task
from service.users import Viewer
from tests.workflows.conftest import StartRun, compile_plan, send_event, set_profile, steps_of
from tests.workflows.test_journey_run import doc
from worker import build_worker

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


# --------------------------------------------------------------- a decision while opening


class _HeldOpening:
    """`open_review_task` as the product runs it, whose answer is held back until released:
    the task is in the review queue while the run does not know its id yet (as when the
    worker that ran the activity dies before it reports)."""

    def __init__(self, db: Engine) -> None:
        self.real = ReviewActivities(db=db, public_url="http://journeys.test")
        self.written = threading.Event()
        self.release = threading.Event()

    def activity(self) -> Callable[[OpenReviewInput], str]:
        @activity.defn(name=ActivityName.OPEN_REVIEW_TASK)
        def open_review_task(request: OpenReviewInput) -> str:
            task_id = self.real.open_review_task(request)
            self.written.set()
            self.release.wait(timeout=30)
            return task_id

        return open_review_task


@pytest_asyncio.fixture
async def held(env: WorkflowEnvironment, db: Engine) -> AsyncIterator[tuple[_HeldOpening, Worker]]:
    opening = _HeldOpening(db)
    running = build_worker(
        env.client,
        db=db,
        task_queue=f"test-{uuid.uuid4().hex[:8]}",
        public_url="http://journeys.test",
        workflow_sandbox=True,
        replace_activities={ActivityName.OPEN_REVIEW_TASK: opening.activity()},
    )
    async with running:
        try:
            yield opening, running
        finally:
            opening.release.set()


async def _start_held(env: WorkflowEnvironment, worker: Worker) -> WorkflowHandle[Any, RunState]:
    plan = compile_plan(CLOSING)  # no event or expiry comes in these tests
    trigger = EventMessage(
        name="payment_failed",
        customer_id="c1",
        message_id=uuid.uuid4().hex,
        timestamp=datetime.now(UTC),
    )
    return await env.client.start_workflow(
        WORKFLOW_NAME,
        JourneyRunInput(plan=plan, customer_id="c1", trigger=trigger),
        id=f"held/{uuid.uuid4().hex[:8]}",
        task_queue=worker.task_queue,
        result_type=RunState,
    )


async def _queued_task(db: Engine, opening: _HeldOpening) -> ReviewTask:
    """The task as the review queue shows it, while the run still waits for its id."""
    assert await asyncio.to_thread(opening.written.wait, 20), "the task was never written"
    with Session(db) as session:
        task = session.exec(select(ReviewTask)).one()
    assert task.status == "open"
    return task


async def test_a_decision_sent_while_the_task_opens_is_taken_once_the_run_has_it(
    env: WorkflowEnvironment, held: tuple[_HeldOpening, Worker], db: Engine
) -> None:
    opening, worker = held
    with env.auto_time_skipping_disabled():
        handle = await _start_held(env, worker)
        task = await _queued_task(db, opening)
        state: RunState = await handle.query(QUERY_STATE, result_type=RunState)
        assert state.open_review is None  # the run does not know the task yet

        olga = Viewer(id=1, name="olga", role="ops")
        deciding = asyncio.create_task(
            decide_task(
                db,
                env.client,
                task_id=task.id,
                viewer=olga,
                decision="approve",
                note="fine",
                address=None,
            )
        )
        # The desk holds the task while the run takes the decision; a second reviewer is
        # told so, and the decision is not lost or refused.
        for _ in range(100):
            if _task(db, task.id).status == "deciding":
                break
            await asyncio.sleep(0.05)
        assert not deciding.done()
        opening.release.set()
        decided = await asyncio.wait_for(deciding, 20)

    assert (decided.status, decided.decision, decided.reviewer) == ("decided", "approve", "olga")
    state = await handle.result()
    assert state.outcome == "approved"
    assert ("ask", "approve") in steps_of(state)


async def test_decisions_waiting_for_the_task_are_checked_once_it_is_known(
    env: WorkflowEnvironment, held: tuple[_HeldOpening, Worker], db: Engine
) -> None:
    opening, worker = held
    with env.auto_time_skipping_disabled():
        handle = await _start_held(env, worker)
        task = await _queued_task(db, opening)

        def update(task_id: str, decision: str, reviewer: str) -> Awaitable[Any]:
            return handle.execute_update(
                UPDATE_REVIEW,
                ReviewDecision(task_id=task_id, decision=decision, reviewer=reviewer, note=None),
                result_type=ReviewDecisionResult,
            )

        # Refused at once, as before: not a decision of the step.
        with pytest.raises(WorkflowUpdateFailedError) as unknown:
            await update(task.id, "maybe", "olga")
        assert "'maybe' is not a decision of this task" in str(unknown.value.cause)

        first = asyncio.create_task(update(task.id, "reject", "olga"))
        second = asyncio.create_task(update(task.id, "approve", "ivan"))
        stranger = asyncio.create_task(update("not-this-task", "approve", "petra"))
        await asyncio.sleep(0.5)
        assert not (first.done() or second.done() or stranger.done())
        opening.release.set()
        answers = await asyncio.gather(first, second, stranger, return_exceptions=True)

    taken = [a for a in answers if isinstance(a, ReviewDecisionResult)]
    refused = [str(a.cause) for a in answers if isinstance(a, WorkflowUpdateFailedError)]
    assert len(taken) == 1 and taken[0].accepted, answers
    assert sorted(refused) == sorted(
        [
            "this run has no open review task: it was decided or closed already",
            "review task not-this-task is not the open task of this run",
        ]
    ), answers
    winner = {0: ("reject", "olga", "rejected"), 1: ("approve", "ivan", "approved")}[
        next(i for i, a in enumerate(answers) if isinstance(a, ReviewDecisionResult))
    ]
    state = await handle.result()
    # The one the run took is the decision on its path, and the task's.
    entry = next(e for e in state.path if e.step == "ask" and e.outcome in ("approve", "reject"))
    assert (entry.outcome, entry.detail["reviewer"], state.outcome) == winner
    assert (_task(db, task.id).decision, _task(db, task.id).reviewer) == winner[:2]


async def test_a_decision_the_run_cannot_confirm_in_time_is_answered_503_and_still_taken(
    env: WorkflowEnvironment,
    held: tuple[_HeldOpening, Worker],
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker that opened the task died before reporting, and the run learns the
    task's id only when the activity is run again: longer than the desk waits. The
    reviewer is told so (not a 500, and not "decide again"), and the run takes the
    decision once it has the id."""
    monkeypatch.setattr(review_desk, "UPDATE_TIMEOUT_SECONDS", 1.0)
    opening, worker = held
    with env.auto_time_skipping_disabled():
        handle = await _start_held(env, worker)
        task = await _queued_task(db, opening)
        olga = Viewer(id=1, name="olga", role="ops")
        with pytest.raises(ReviewRefused) as unconfirmed:
            await decide_task(
                db,
                env.client,
                task_id=task.id,
                viewer=olga,
                decision="reject",
                note="no",
                address=None,
            )
        assert (unconfirmed.value.status, unconfirmed.value.message) == (503, UNCONFIRMED)
        opening.release.set()
        state = await asyncio.wait_for(handle.result(), 20)

    assert state.outcome == "rejected"
    decided = _task(db, task.id)
    assert (decided.status, decided.decision, decided.reviewer) == ("decided", "reject", "olga")
