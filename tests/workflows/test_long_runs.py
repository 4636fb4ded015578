"""Long runs (issue #14, items 5 and 6) on the time-skipping server: a run continues as new
in the middle of a wait and keeps its deadline, variables and visit counts; a run at its
step limit ends cleanly, the same in Temporal and in the runs table; events nobody takes
are in the path as ignored, with the reason."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment

from engine.database import Run, session_scope
from engine.payloads import QUERY_STATE, EventMessage, RunState
from engine.run_path import read_path
from tests.workflows.conftest import StartRun, compile_plan, send_event, set_profile
from tests.workflows.test_journey_run import doc, outbox
from workflows.journey_run import GENERATION_PATH, MAX_SEEN

NOISY_WAIT = doc(
    """
- id: j
  entry: {event: payment_failed}
  exit_on:
    - {event: payment_received, when: event.amount > 0, outcome: recovered}
  steps:
    - {id: note, set: {vars.noted: 1}}
    - {id: hold, wait: 1d}
    - {id: remind, send: reminder, channel: email}
"""
)


def stored_path(db: Engine, run_id: str) -> list[dict[str, Any]]:
    with session_scope(db) as session:
        return read_path(session, run_id)


def stored_run(db: Engine, run_id: str) -> Run:
    with session_scope(db) as session:
        row = session.get(Run, run_id)
        assert row is not None
        session.expunge(row)
        return row


async def test_a_run_continues_as_new_inside_a_wait_and_keeps_its_deadline(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    set_profile(db, "c1", first_name="Ana", email="ana@example.com")
    handle = await start_run(compile_plan(NOISY_WAIT), properties={"amount": 50000})
    first_run = handle.first_execution_run_id or handle.result_run_id
    assert first_run is not None
    # Payments of 0 fail exit_on's `when` and no wait takes them: each is an "ignored"
    # entry, until the generation's path is full and it continues as new, mid-wait.
    noise = GENERATION_PATH + 100
    for _ in range(noise):
        await send_event(handle, "payment_received", amount=0)
    state = await handle.result()

    assert (state.status, state.outcome) == ("completed", "completed")
    assert state.generation >= 1
    path = stored_path(db, first_run)
    assert [e["outcome"] for e in path].count("ignored") == noise
    assert all(
        e["detail"]["reason"] == "no exit_on condition held, and no wait takes this event"
        for e in path
        if e["outcome"] == "ignored"
    )
    # The carried wait woke at the deadline the first generation set, not later.
    waiting = next(e for e in path if e["step"] == "hold")
    remind = next(e for e in path if e["step"] == "remind")
    until = datetime.fromisoformat(waiting["detail"]["until"])
    assert abs(datetime.fromisoformat(remind["at"]) - until) < timedelta(seconds=5)
    assert [(e["step"], e["outcome"]) for e in path[-2:]] == [
        ("remind", "captured"),
        ("end", "completed"),
    ]
    # One email, the path positions without gaps, and the row as Temporal ended it.
    assert [m.subject for m in outbox(db)] == ["Reminder"]
    assert state.vars == {"noted": 1}  # carried across generations
    row = stored_run(db, first_run)
    assert (row.status, row.outcome) == ("completed", "completed")
    latest = (await env.client.get_workflow_handle(handle.id).describe()).run_id
    assert row.current_run_id == latest != first_run
    assert len(state.path) <= 200
    assert state.path_start + len(state.path) == len(path)


STEP_LIMITED = doc(
    """
- id: j
  settings: {max_steps: 7}
  entry: {event: payment_failed}
  steps:
    - {id: pause, wait: 1h}
    - id: listen
      wait: {event: payment_received, within: 1d}
      on_timeout: done
    - {id: count, set: {vars.n: "coalesce(vars.n, 0) + 1"}, next: listen}
    - {id: done, exit: quiet}
"""
)


async def test_a_run_at_its_step_limit_ends_failed_the_same_in_temporal_and_the_table(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    handle = await start_run(compile_plan(STEP_LIMITED))
    # Ten payments arrive during the pause: all queued for the loop.
    for amount in range(10):
        await send_event(handle, "payment_received", amount=amount)
    state = await handle.result()
    # pause, then (listen, count) three times: the 7th step is the limit.
    assert (state.status, state.outcome, state.steps) == ("failed", "step_limit", 7)
    assert state.vars["n"] == 3
    assert handle.result_run_id is not None
    row = stored_run(db, handle.result_run_id)
    assert (row.status, row.outcome) == ("failed", "step_limit")
    path = stored_path(db, row.run_id)
    received = [e for e in path if e["outcome"] == "received"]
    ignored = [e for e in path if e["outcome"] == "ignored"]
    assert (len(received), len(ignored)) == (3, 7)
    # The events the run never took are in its path, ignored, with the reason.
    assert {e["detail"]["reason"] for e in ignored} == {
        "the run ended (step_limit) before a wait took this event"
    }
    assert (path[-1]["step"], path[-1]["type"], path[-1]["outcome"]) == (
        "end",
        "failed",
        "step_limit",
    )


PAUSED_COUNT = doc(
    """
- id: j
  entry: {event: payment_failed}
  steps:
    - {id: pause, wait: 1d}
    - id: listen
      wait: {event: payment_received, within: 1d}
      on_timeout: done
    - {id: count, set: {vars.n: "coalesce(vars.n, 0) + 1"}, next: listen}
    - {id: done, exit: quiet}
"""
)


async def test_a_late_copy_of_a_queued_event_is_not_queued_twice(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    # The router signals an event again when it cannot tell the first signal landed. A
    # run queues thousands during a pause; copies of its oldest ones then come after more
    # than the seen window's worth of others (and after a new generation).
    handle = await start_run(compile_plan(PAUSED_COUNT))
    ids = [f"pay-{n:05d}" for n in range(2 * MAX_SEEN + 100)]

    async def pay(message_id: str) -> None:
        await handle.signal(
            "event",
            EventMessage(
                name="payment_received",
                customer_id="c1",
                message_id=message_id,
                timestamp=datetime.now(UTC),
                properties={"amount": 1},
            ),
        )

    async def state() -> RunState:
        answer: RunState = await handle.query(QUERY_STATE, result_type=RunState)
        return answer

    for message_id in ids:
        await pay(message_id)
    for message_id in ids[:10]:  # past the window, still queued, in the same generation
        await pay(message_id)
    for _ in range(300):  # the burst passes the generation's bounds: it continues as new
        if (await state()).generation >= 1:
            break
        await asyncio.sleep(0.1)
    for message_id in ids[10:20]:  # in the next one, which holds the queue by reference
        await pay(message_id)

    # Still queued, all of them, once each: the copies changed nothing.
    now = await state()
    assert (now.generation, now.current_step, now.pending_events) == (1, "pause", len(ids))
    await handle.terminate("the test is over")
