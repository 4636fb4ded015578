"""Long runs (issue #14, items 5 and 6) on the time-skipping server: a run continues as new
in the middle of a wait and keeps its deadline, variables and visit counts; a run at its
step limit ends cleanly, the same in Temporal and in the runs table; events nobody takes
are in the path as ignored, with the reason."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from engine import generations
from engine.database import EventRecord, ParkedEvent, Run, session_scope
from engine.generations import GENERATION_PATH
from engine.payloads import QUERY_STATE, SIGNAL_EVENTS, EventBatch, EventMessage, RunState
from engine.run_path import read_path
from tests.workflows.conftest import StartRun, compile_plan, send_event, set_profile
from tests.workflows.test_journey_run import doc, outbox
from workflows.journey_run import MAX_SEEN

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


@pytest.mark.slow  # in `make test`; over 2 s, out of `make test-fast`
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


@pytest.mark.slow  # 4,100 signals one by one: about 15 s
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


PAUSED_COUNT_WITH_EXIT = doc(
    """
- id: j
  entry: {event: payment_failed}
  exit_on:
    - {event: account_closed, outcome: closed}
  steps:
    - {id: pause, wait: 1d}
    - id: listen
      wait: {event: payment_received, within: 1d}
      on_timeout: done
    - {id: count, set: {vars.n: "coalesce(vars.n, 0) + 1"}, next: listen}
    - {id: done, exit: quiet}
"""
)


def store_events(db: Engine, ids: list[str]) -> None:
    """The events as the router stores them before it signals them (a parked queue is
    read back from the events table)."""
    with session_scope(db) as session:
        for message_id in ids:
            session.add(
                EventRecord(
                    message_id=message_id,
                    type="track",
                    name="payment_received",
                    customer_id="c1",
                    properties={"amount": 1},
                    timestamp=datetime.now(UTC),
                    routed=True,
                )
            )


@pytest.fixture
def small_generations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generations of 20 counted events, and a queue parked once its ids pass 200 bytes:
    what 10,000 events queued into one run do, with 150."""
    monkeypatch.setattr(generations, "GENERATION_PATH", 60)
    monkeypatch.setattr(generations, "CARRY_EVENTS_BYTES", 500)
    monkeypatch.setattr(generations, "CARRY_IDS_BYTES", 200)
    monkeypatch.setattr(generations, "BACKLOG_PAGE", 7)


def _payments(ids: list[str]) -> EventBatch:
    return EventBatch(
        events=[
            EventMessage(
                name="payment_received",
                customer_id="c1",
                message_id=message_id,
                timestamp=datetime.now(UTC),
                properties={"amount": 1},
            )
            for message_id in ids
        ]
    )


def _fates(path: list[dict[str, Any]]) -> dict[str, list[str]]:
    fates: dict[str, list[str]] = {}
    for entry in path:
        message_id = (entry.get("detail") or {}).get("message_id")
        if message_id and entry["outcome"] in ("received", "ignored"):
            fates.setdefault(message_id, []).append(entry["outcome"])
    return fates


async def test_a_queue_too_long_to_carry_is_parked_and_read_back_in_order(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine, small_generations: None
) -> None:
    handle = await start_run(compile_plan(PAUSED_COUNT))
    first_run = handle.first_execution_run_id
    assert first_run is not None
    ids = [f"pay-{n:04d}" for n in range(150)]
    store_events(db, ids)
    for start in range(0, len(ids), 50):  # queued during the pause, as the router sends them
        await handle.signal(SIGNAL_EVENTS, _payments(ids[start : start + 50]))
    await handle.signal(SIGNAL_EVENTS, _payments(ids[:5]))  # late copies: no effect

    state = await handle.result()

    assert (state.status, state.outcome, state.vars["n"]) == ("completed", "quiet", 150)
    assert state.generation >= 5
    path = stored_path(db, first_run)
    assert _fates(path) == {mid: ["received"] for mid in ids}
    received = [e["detail"]["message_id"] for e in path if e["outcome"] == "received"]
    assert received == ids  # in the order they came, across the parked generations
    with session_scope(db) as session:
        left = session.exec(select(ParkedEvent).where(ParkedEvent.run_id == first_run)).all()
    assert len(left) <= 2 * 150  # two generations' rows at most, never every generation's


async def test_a_run_that_exits_with_a_parked_queue_records_each_event_as_ignored(
    env: WorkflowEnvironment,
    start_run: StartRun,
    db: Engine,
    small_generations: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A generation of 12 history events: the run continues as new during its pause, with
    # the 150 events it holds parked; then the exit event comes.
    monkeypatch.setattr(generations, "GENERATION_EVENTS", 12)
    handle = await start_run(compile_plan(PAUSED_COUNT_WITH_EXIT))
    first_run = handle.first_execution_run_id
    assert first_run is not None
    ids = [f"pay-{n:04d}" for n in range(150)]
    store_events(db, ids)
    for start in range(0, len(ids), 50):
        await handle.signal(SIGNAL_EVENTS, _payments(ids[start : start + 50]))
    for _ in range(300):
        with session_scope(db) as session:
            parked = session.exec(select(ParkedEvent).where(ParkedEvent.run_id == first_run))
            if parked.first() is not None:
                break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the queue was never parked")
    await send_event(handle, "account_closed")

    state = await handle.result()

    assert (state.status, state.outcome) == ("exited", "closed")
    assert state.generation >= 1
    path = stored_path(db, first_run)
    assert _fates(path) == {mid: ["ignored"] for mid in ids}
    ignored = [e for e in path if e["outcome"] == "ignored"]
    assert [e["detail"]["message_id"] for e in ignored] == ids
    assert {e["detail"]["reason"] for e in ignored} == {
        "the run ended (closed) before a wait took this event"
    }
