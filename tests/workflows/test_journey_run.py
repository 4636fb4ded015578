"""The interpreter on the time-skipping server: every step type and the run-level rules."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from temporalio.client import WorkflowHistory, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from engine.database import OutboxMessage, Profile, ReviewTask, Run
from engine.decisions import bucket_of
from engine.payloads import PathEntry, ReviewDecision, RunState
from engine.run_path import read_path
from tests.history_keys import opened_history_json
from tests.http_endpoint import running_endpoint
from tests.workflows.conftest import StartRun, compile_plan, send_event, set_profile, steps_of


def stored_path(db: Engine, run_id: str) -> list[PathEntry]:
    """The run's path as its `run_path` rows hold it."""
    with Session(db) as session:
        return [PathEntry.model_validate(entry) for entry in read_path(session, run_id)]


HEAD = """\
version: 1
settings: {timezone: UTC}
events:
  payment_failed: {amount: number, currency: string, invoice_id: string}
  payment_received: {amount: number}
channels: {sms: "${JOURNEYS_SMS_URL}", email: "${JOURNEYS_EMAIL_URL}", push: "${JOURNEYS_PUSH_URL}"}
models:
  default_risk: {kind: python, function: "risk_models.default_risk:predict", fallback: 0.5}
  broken: {kind: python, function: "tests.workflows.models:explode", fallback: 0.9}
templates:
  offer: {sms: "Hi {{ profile.first_name }}, pay {{ trigger.properties.amount }}", push: "Pay {{ trigger.properties.amount }}"}
  reminder: {email: {subject: "Reminder", text: "Please pay, {{ profile.first_name }}"}}
"""


def doc(journey: str) -> str:
    return (
        HEAD
        + "journeys:\n"
        + "\n".join("  " + line for line in journey.strip("\n").splitlines())
        + "\n"
    )


def outbox(db: Engine) -> list[OutboxMessage]:
    with Session(db) as session:
        return list(session.exec(select(OutboxMessage).order_by(OutboxMessage.id)).all())  # type: ignore[arg-type]


RECOVERY = doc(
    """
- id: j
  entry: {event: payment_failed}
  exit_on:
    - {event: payment_received, when: event.amount > 0, outcome: recovered}
  steps:
    - {id: cool_off, wait: 3d}
    - {id: remind, send: reminder, channel: email}
"""
)


async def test_payment_received_during_a_3_day_wait_exits_as_recovered_at_once(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    set_profile(db, "c1", first_name="Ana", email="ana@example.com")
    handle = await start_run(compile_plan(RECOVERY), properties={"amount": 50000})
    await env.sleep(timedelta(hours=5))
    await send_event(handle, "payment_received", amount=0)  # `when` is false: ignored
    await send_event(handle, "payment_received", amount=50000)
    state = await handle.result()
    assert (state.status, state.outcome) == ("exited", "recovered")
    assert steps_of(state) == [
        ("entry", None),
        ("cool_off", "waiting"),
        ("cool_off", "ignored"),  # exit_on's `when` is false, and no wait takes it
        ("cool_off", "recovered"),
        ("end", "recovered"),
    ]
    waited = state.path[-1].at - state.path[0].at
    assert timedelta(hours=4, minutes=59) <= waited < timedelta(hours=6)
    assert outbox(db) == []
    with Session(db) as session:
        row = session.exec(select(Run)).one()
    assert (row.status, row.outcome, row.customer_id) == ("exited", "recovered", "c1")


async def test_without_payment_the_reminder_goes_out_after_3_days(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    set_profile(db, "c1", first_name="Ana", email="ana@example.com")
    handle = await start_run(compile_plan(RECOVERY), properties={"amount": 50000})
    state = await handle.result()
    assert (state.status, state.outcome) == ("completed", "completed")
    assert state.path[-1].at - state.path[0].at >= timedelta(days=3)
    [message] = outbox(db)
    assert (message.channel, message.recipient, message.subject) == (
        "email",
        "ana@example.com",
        "Reminder",
    )
    assert message.body == "Please pay, Ana"


EVERY_STEP = doc(
    """
- id: j
  entry: {event: payment_failed}
  steps:
    - id: risk
      score: default_risk
      features: {amount: event.amount, days_past_due: 30, failed_payments_90d: 3}
    - id: route
      branch:
        - {when: scores.default_risk.score >= 0.7, goto: ask}
      else: note
    - id: ask
      review: collections
      title: "Risk {{ scores.default_risk.score | round(2) }} for {{ customer.id }}"
      decisions: {approve: note, reject: rejected}
    - id: note
      set: {vars.approved: review.decision == "approve", profile.last_offer: trigger.properties.amount}
    - id: ticket
      call: {method: POST, url: "${TICKETS_URL}/cases", json: {customer: customer.id, risk: scores.default_risk.score}}
    - id: ab
      split: {a: 50, b: 50}
      paths: {a: offer, b: offer}
    - id: offer
      send: offer
      channel: [push, sms]
    - id: pay
      wait: {event: payment_received, within: 1d}
      on_timeout: unpaid
    - {id: paid, exit: recovered}
    - {id: unpaid, exit: unpaid}
    - {id: rejected, exit: rejected}
"""
)


class _Tickets(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []  # noqa: RUF012 - shared with the test on purpose

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Tickets.received.append(
            {"path": self.path, "body": body, "idempotency": self.headers.get("Idempotency-Key")}
        )
        payload = json.dumps({"ticket": "T-1"}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tickets(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    server = HTTPServer(("127.0.0.1", 0), _Tickets)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TICKETS_URL", f"http://127.0.0.1:{server.server_port}")
    _Tickets.received = []
    try:
        yield _Tickets.received
    finally:
        server.shutdown()
        server.server_close()


async def test_every_step_type_runs_in_one_journey(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine, tickets: list[dict[str, Any]]
) -> None:
    set_profile(db, "c1", first_name="Ana", phone="+821012345678")
    handle = await start_run(compile_plan(EVERY_STEP), properties={"amount": 900000})
    state = await _wait_for_review(env, handle)
    task = state.open_review
    assert task is not None and task.queue == "collections"
    with Session(db) as session:
        row = session.get(ReviewTask, task.task_id)
        assert row is not None and row.status == "open" and row.title == "Risk 1.0 for c1"
    result = await handle.execute_update(
        "decide_review",
        ReviewDecision(task_id=task.task_id, decision="approve", reviewer="olga", note="ok"),
        result_type=None,
    )
    assert result is not None
    await env.sleep(timedelta(hours=2))
    await send_event(handle, "payment_received", amount=10)
    state = await handle.result()
    assert state.outcome == "recovered"
    visited = [step for step, _ in steps_of(state)]
    assert visited[:2] == ["entry", "risk"]
    assert [s for s in visited if s not in ("entry", "end")] == [
        "risk",
        "route",
        "ask",
        "ask",
        "note",
        "ticket",
        "ab",
        "offer",
        "offer",
        "pay",
        "pay",
    ]
    # The push channel has no address on the profile, so the send falls back to SMS.
    assert [(s, o) for s, o in steps_of(state) if s == "offer"] == [
        ("offer", "no_address"),
        ("offer", "captured"),
    ]
    assert state.vars["approved"] is True
    assert state.vars["ticket"] == {"ticket": "T-1"}
    assert state.review is not None and state.review["reviewer"] == "olga"
    assert state.scores["default_risk"]["fallback_used"] is False
    assert tickets[0]["path"] == "/cases" and tickets[0]["body"] == {
        "customer": "c1",
        "risk": state.scores["default_risk"]["score"],
    }
    assert tickets[0]["idempotency"].endswith(":ticket:1")
    [message] = outbox(db)
    assert (message.channel, message.recipient, message.body) == (
        "sms",
        "+821012345678",
        "Hi Ana, pay 900000",
    )
    with Session(db) as session:
        decided = session.get(ReviewTask, task.task_id)
        assert decided is not None and (decided.status, decided.decision, decided.reviewer) == (
            "decided",
            "approve",
            "olga",
        )


async def _wait_for_review(env: WorkflowEnvironment, handle: Any) -> RunState:
    for _ in range(100):
        state: RunState = await handle.query("state", result_type=RunState)
        if state.open_review is not None:
            return state
        await env.sleep(timedelta(seconds=1))
    raise AssertionError("the run never opened a review task")


REVIEW = doc(
    """
- id: j
  entry: {event: payment_failed}
  steps:
    - id: ask
      review: collections
      title: "Case {{ customer.id }}"
      decisions: {approve: yes, reject: no}
      sla: 4h
      escalate_to: supervisors
      on_timeout: late
    - {id: yes, exit: approved}
    - {id: no, exit: rejected}
    - {id: late, wait: 1d}
    - {id: late_exit, exit: timed_out}
"""
)


async def test_review_sla_escalates_then_times_out_and_a_late_decision_is_refused(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    handle = await start_run(compile_plan(REVIEW))
    first = await _wait_for_review(env, handle)
    assert first.open_review is not None
    task_id = first.open_review.task_id
    await env.sleep(timedelta(hours=4, minutes=5))
    escalated: RunState = await handle.query("state", result_type=RunState)
    assert escalated.open_review is not None and escalated.open_review.queue == "supervisors"
    with Session(db) as session:
        row = session.get(ReviewTask, task_id)
        assert row is not None and (row.queue, row.escalated, row.status) == (
            "supervisors",
            True,
            "open",
        )
    await env.sleep(timedelta(hours=4))
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(
            "decide_review",
            ReviewDecision(task_id=task_id, decision="approve", reviewer="olga"),
            result_type=None,
        )
    assert "no open review task" in str(refused.value.cause)
    state = await handle.result()
    assert state.outcome == "timed_out"
    assert [o for s, o in steps_of(state) if s == "ask"] == ["opened", "escalated", "timed_out"]
    with Session(db) as session:
        row = session.get(ReviewTask, task_id)
        assert row is not None and row.status == "expired"


async def test_a_decision_is_taken_once_and_must_be_one_of_the_step(
    env: WorkflowEnvironment, start_run: StartRun
) -> None:
    handle = await start_run(compile_plan(REVIEW))
    state = await _wait_for_review(env, handle)
    assert state.open_review is not None
    task_id = state.open_review.task_id
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(
            "decide_review",
            ReviewDecision(task_id=task_id, decision="maybe", reviewer="olga"),
            result_type=None,
        )
    await handle.execute_update(
        "decide_review",
        ReviewDecision(task_id=task_id, decision="reject", reviewer="olga", note="no"),
        result_type=None,
    )
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(
            "decide_review",
            ReviewDecision(task_id=task_id, decision="approve", reviewer="ivan"),
            result_type=None,
        )
    assert (await handle.result()).outcome == "rejected"


KEYED = doc(
    """
- id: j
  entry: {event: payment_failed, key: event.invoice_id}
  exit_on:
    - {event: payment_received, outcome: recovered}
  steps:
    - {id: pay, wait: {event: payment_received, within: 2d}, on_timeout: late}
    - {id: paid, exit: paid}
    - {id: late, exit: late}
"""
)


async def test_two_keys_of_one_customer_run_independently(
    env: WorkflowEnvironment, start_run: StartRun
) -> None:
    plan = compile_plan(KEYED)
    first = await start_run(plan, properties={"invoice_id": "A"}, key="A")
    second = await start_run(plan, properties={"invoice_id": "B"}, key="B")
    await env.sleep(timedelta(hours=1))
    await send_event(first, "payment_received", amount=5)
    assert (await first.result()).outcome == "recovered"
    state = await second.result()
    assert (state.status, state.outcome) == ("completed", "late")


SPLIT = doc(
    """
- id: j
  entry: {event: payment_failed}
  steps:
    - id: ab
      split: {a: 50, b: 50}
      paths: {a: arm_a, b: arm_b}
    - {id: arm_a, exit: got_a}
    - {id: arm_b, exit: got_b}
"""
)


async def test_the_same_customer_always_gets_the_same_split_arm(start_run: StartRun) -> None:
    plan = compile_plan(SPLIT)
    outcomes = {
        c: {(await (await start_run(plan, c)).result()).outcome for _ in range(3)}
        for c in ("c1", "c2", "c3", "c4", "c5", "c6")
    }
    assert all(len(arms) == 1 for arms in outcomes.values()), outcomes
    expected = {c: "got_a" if bucket_of(f"j:{c}:ab", [50, 50]) == 0 else "got_b" for c in outcomes}
    assert {c: next(iter(arms)) for c, arms in outcomes.items()} == expected
    assert {next(iter(arms)) for arms in outcomes.values()} == {"got_a", "got_b"}


HOLDOUT = doc(
    """
- id: j
  entry: {event: payment_failed}
  holdout: 50%
  settings: {max_duration: 2d}
  exit_on:
    - {event: payment_received, outcome: recovered}
  steps:
    - {id: offer, send: offer, channel: sms}
"""
)


async def test_holdout_runs_record_entry_and_send_nothing(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    plan = compile_plan(HOLDOUT)
    in_holdout = (
        c for c in (f"h{i}" for i in range(40)) if bucket_of(f"j:{c}:holdout", [50, 50]) == 0
    )
    held = [next(in_holdout), next(in_holdout)]
    treated = next(
        c for c in (f"t{i}" for i in range(40)) if bucket_of(f"j:{c}:holdout", [50, 50]) == 1
    )
    for customer in (*held, treated):
        set_profile(db, customer, first_name="Ana", phone="+15550000000")
    runs = [await start_run(plan, c, properties={"amount": 1}) for c in held]
    await env.sleep(timedelta(hours=3))
    await send_event(runs[0], "payment_received", customer=held[0], amount=1)
    converted, expired = await runs[0].result(), await runs[1].result()
    assert converted.holdout and (converted.status, converted.outcome) == ("exited", "recovered")
    assert expired.holdout and (expired.status, expired.outcome) == ("expired", "expired")
    assert [s for s, _ in steps_of(expired)] == ["entry", "holdout", "end"]
    assert outbox(db) == []
    state = await (await start_run(plan, treated, properties={"amount": 1})).result()
    assert not state.holdout
    assert [m.customer_id for m in outbox(db)] == [treated]
    with Session(db) as session:
        rows = {r.customer_id: r.holdout for r in session.exec(select(Run)).all()}
    assert rows == {held[0]: True, held[1]: True, treated: False}


MAX_DURATION = doc(
    """
- id: j
  entry: {event: payment_failed}
  settings: {max_duration: 1d}
  steps:
    - {id: long, wait: 5d}
"""
)


async def test_a_run_open_past_max_duration_expires(start_run: StartRun) -> None:
    state = await (await start_run(compile_plan(MAX_DURATION))).result()
    assert (state.status, state.outcome) == ("expired", "expired")
    assert state.path[-1].at - state.path[0].at < timedelta(days=1, minutes=1)


FAILING_MODEL = doc(
    """
- id: j
  entry: {event: payment_failed}
  steps:
    - {id: risk, score: broken, features: {amount: event.amount}}
    - id: route
      branch:
        - {when: scores.broken.fallback_used, goto: manual}
      else: auto
    - {id: manual, exit: sent_to_review}
    - {id: auto, exit: automatic}
"""
)


async def test_a_failing_model_yields_the_fallback_and_the_journey_routes_it(
    start_run: StartRun,
) -> None:
    state = await (await start_run(compile_plan(FAILING_MODEL), properties={"amount": 1})).result()
    assert state.outcome == "sent_to_review"
    assert state.scores["broken"]["score"] == 0.9
    assert state.scores["broken"]["fallback_used"] is True
    assert "ZeroDivisionError" in state.scores["broken"]["error"]


LOCAL_MORNING = doc(
    """
- id: j
  entry: {event: payment_failed}
  steps:
    - {id: morning, wait: {until: "09:00"}}
    - {id: offer, send: offer, channel: sms}
"""
)


async def test_wait_until_fires_at_the_next_local_time(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    set_profile(db, "c1", first_name="Ana", phone="+821000000000", timezone="Asia/Seoul")
    state = await (await start_run(compile_plan(LOCAL_MORNING), properties={"amount": 1})).result()
    sent = next(e for e in state.path if e.step == "offer")
    local = sent.at.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Seoul"))
    assert (local.hour, local.minute) == (9, 0)
    assert sent.at - state.path[0].at <= timedelta(days=1)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


DECISIONS = doc(
    """
- id: j
  entry: {event: payment_failed}
  steps:
    - {id: note_amount, set: {vars.due: event.amount * 2, profile.tier: '"watch"'}}
    - id: route
      branch:
        - {when: vars.due >= 20000 and profile.tier == "watch", goto: offer}
      else: done
    - {id: done, exit: quiet}
    - {id: offer, send: offer, channel: sms}
"""
)


async def test_consecutive_decisions_are_one_recorded_walk_before_the_first_send(
    start_run: StartRun, db: Engine
) -> None:
    set_profile(db, "c1", first_name="Min", phone="+15550001111")
    handle = await start_run(compile_plan(DECISIONS), properties={"amount": 12000})
    state = await handle.result()
    assert steps_of(state) == [
        ("entry", None),
        ("note_amount", "set"),
        ("route", "offer"),
        ("offer", "captured"),
        ("end", "completed"),
    ]
    assert state.vars == {"due": 24000}
    route = next(entry for entry in state.path if entry.step == "route")
    assert route.detail["reads"] == {"vars.due": 24000, "profile.tier": "watch"}
    with Session(db) as session:
        run = session.exec(select(Run).where(Run.run_id == handle.result_run_id)).one()
    assert run.status == "completed" and run.outcome == "completed"
    # The send that ended the run wrote its final row: the same path the history holds.
    assert stored_path(db, run.run_id) == state.path
    assert run.step == "offer" and run.ended_at is not None
    # The profile write of `set` reached the database.
    with Session(db) as session:
        profile = session.get(Profile, "c1")
        assert profile is not None and profile.traits["tier"] == "watch"
    # What an auditor reads in the history: before the send, one local activity that started
    # the run and decided both steps, with the rule chosen and the values it read; after
    # it none (the send recorded the run's end).
    markers = _local_activity_markers(await handle.fetch_history())
    assert [name for name, _ in markers] == ["begin_run"]
    decided = markers[0][1]["decided"]["decisions"]
    assert [(d["step_id"], d["values"], d["first_true"]) for d in decided] == [
        ("note_amount", [24000, "watch"], None),
        ("route", [True], 0),
    ]
    assert decided[1]["reads"] == {"vars.due": 24000, "profile.tier": "watch"}


LAST_SEND = doc(
    """
- id: j
  entry: {event: payment_failed}
  exit_on:
    - {event: payment_received, outcome: recovered}
  steps:
    - {id: nudge, send: offer, channel: sms}
"""
)


async def test_an_exit_event_during_the_last_send_is_recorded_over_the_sends_end(
    start_run: StartRun, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The send would end the run, so it writes the run's end; an exit event that arrives
    # while it is at the gateway ends the run otherwise, and the run records that itself.
    set_profile(db, "c1", first_name="Min", phone="+15550001111")
    with running_endpoint() as gateway:
        gateway.reply = {"result": {"message_id": "1", "status": "ok"}}
        gateway.hold = True
        monkeypatch.setenv(
            "JOURNEYS_SMS_URL", f"smseagle://tok_sms_gateway_1234@127.0.0.1:{gateway.port}"
        )
        handle = await start_run(compile_plan(LAST_SEND), properties={"amount": 700})
        for _ in range(200):  # bounded: 10 s
            if gateway.requests:
                break
            await asyncio.sleep(0.05)
        assert len(gateway.requests) == 1
        await send_event(handle, "payment_received", amount=700)
        await asyncio.sleep(0.5)  # the signal is in the history before the send completes
        gateway.release.set()
        state = await handle.result()

    assert steps_of(state)[-3:] == [("nudge", "sent"), ("nudge", "recovered"), ("end", "recovered")]
    assert (state.status, state.outcome) == ("exited", "recovered")
    with Session(db) as session:
        run = session.exec(select(Run).where(Run.run_id == handle.result_run_id)).one()
    assert (run.status, run.outcome) == ("exited", "recovered")
    assert stored_path(db, run.run_id) == state.path
    markers = _local_activity_markers(await handle.fetch_history())
    assert [name for name, _ in markers] == ["begin_run", "record_run"]


SCORED = doc(
    """
- id: j
  entry: {event: payment_failed}
  steps:
    - id: risk
      score: default_risk
      features: {amount: event.amount, days_past_due: 30, failed_payments_90d: "coalesce(vars.missing, 3)"}
    - id: route
      branch:
        - {when: scores.default_risk.score >= 0.7, goto: high}
      else: low
    - {id: high, set: {vars.tier: '"high"'}}
    - {id: offer, send: offer, channel: sms}
    - {id: offered, exit: offered}
    - {id: low, exit: low_risk}
"""
)


async def test_a_score_step_and_the_decisions_after_it_are_one_recorded_activity(
    start_run: StartRun, db: Engine
) -> None:
    set_profile(db, "c1", first_name="Min", phone="+15550001111")
    handle = await start_run(compile_plan(SCORED), properties={"amount": 90000})
    state = await handle.result()
    score = state.scores["default_risk"]["score"]
    assert score >= 0.7
    assert steps_of(state) == [
        ("entry", None),
        ("risk", f"{score:g}"),
        ("route", "high"),
        ("high", "set"),
        ("offer", "captured"),
        ("end", "offered"),
    ]
    assert state.vars == {"tier": "high"}
    risk = next(entry for entry in state.path if entry.step == "risk")
    assert risk.detail["features"] == {
        "amount": 90000,
        "days_past_due": 30,
        "failed_payments_90d": 3,
    }
    route = next(entry for entry in state.path if entry.step == "route")
    assert route.detail["reads"] == {"scores.default_risk.score": score}
    assert [m.body for m in outbox(db)] == ["Hi Min, pay 90000"]
    history = await handle.fetch_history()
    # No decision in a local activity: the run's start (started by hand, it records itself),
    # then the features, the model and the two steps after it in one activity, whose input
    # and result the history records; the send before the exit step recorded the run's end.
    markers = _local_activity_markers(history)
    assert [name for name, _ in markers] == ["begin_run"]
    assert markers[0][1]["decided"] is None
    events = json.loads(opened_history_json(history))["events"]
    scheduled = [
        e["activityTaskScheduledEventAttributes"]["activityType"]["name"]
        for e in events
        if "activityTaskScheduledEventAttributes" in e
    ]
    assert scheduled == ["score_step", "send_message"]
    completed = [
        e["activityTaskCompletedEventAttributes"]
        for e in events
        if "activityTaskCompletedEventAttributes" in e
    ]
    result = json.loads(base64.b64decode(completed[0]["result"]["payloads"][0]["data"]))
    assert result["features"]["amount"] == 90000
    assert result["reads"] == {"event.amount": 90000, "vars.missing": None}
    assert [(d["step_id"], d["first_true"]) for d in result["decided"]["decisions"]] == [
        ("route", 0),
        ("high", None),
    ]
    # A new run records one patch marker: `long-runs`, asked at its start.
    names = [
        e["markerRecordedEventAttributes"]["markerName"]
        for e in events
        if "markerRecordedEventAttributes" in e
    ]
    assert names.count("core_patch") == 1


def _local_activity_markers(history: WorkflowHistory) -> list[tuple[str, dict[str, Any]]]:
    """Each local activity's name and decoded result, in history order."""
    found: list[tuple[str, dict[str, Any]]] = []
    for event in json.loads(opened_history_json(history))["events"]:
        marker = event.get("markerRecordedEventAttributes")
        if not marker or marker.get("markerName") != "core_local_activity":
            continue
        details = marker["details"]
        data = json.loads(base64.b64decode(details["data"]["payloads"][0]["data"]))
        payload = details["result"]["payloads"][0]
        result = json.loads(base64.b64decode(payload["data"])) if "data" in payload else {}
        found.append((data["activity_type"], result))
    return found
