"""Quiet hours defer a send to their end in the customer's time zone, across DST changes too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment

from engine.localtime import next_local_time, quiet_hours_end
from engine.payloads import WORKFLOW_NAME, EventMessage, JourneyRunInput, RunState
from tests.workflows.conftest import compile_plan, set_profile
from tests.workflows.test_journey_run import doc, outbox
from worker import build_worker

NEW_YORK = ZoneInfo("America/New_York")

QUIET = doc(
    """
- id: j
  entry: {event: payment_failed}
  settings: {quiet_hours: {start: "21:00", end: "08:00"}}
  steps:
    - {id: offer, send: offer, channel: sms}
"""
)


def test_quiet_hours_end_keeps_local_0800_across_spring_forward() -> None:
    # 22:00 EST on Sat 13 March 2027; clocks go 02:00 -> 03:00 that night.
    now = datetime(2027, 3, 14, 3, 0, tzinfo=UTC)
    assert now.astimezone(NEW_YORK).hour == 22
    end = quiet_hours_end(now, NEW_YORK, "21:00", "08:00")
    assert end == datetime(2027, 3, 14, 12, 0, tzinfo=UTC)  # 08:00 EDT, not 13:00 UTC
    assert end is not None and end.astimezone(NEW_YORK).hour == 8


def test_quiet_hours_end_keeps_local_0800_across_fall_back() -> None:
    now = datetime(2026, 11, 1, 2, 30, tzinfo=UTC)  # 22:30 EDT, Sat 31 Oct
    end = quiet_hours_end(now, NEW_YORK, "21:00", "08:00")
    assert end == datetime(2026, 11, 1, 13, 0, tzinfo=UTC)  # 08:00 EST


def test_outside_quiet_hours_nothing_waits() -> None:
    assert (
        quiet_hours_end(datetime(2026, 11, 23, 15, 0, tzinfo=UTC), NEW_YORK, "21:00", "08:00")
        is None
    )


def test_a_local_time_inside_the_spring_forward_gap_is_shifted_by_the_gap() -> None:
    now = datetime(2027, 3, 14, 5, 0, tzinfo=UTC)  # 00:00 EST
    fire = next_local_time(now, NEW_YORK, "02:30")  # does not exist that night
    assert fire == datetime(2027, 3, 14, 7, 30, tzinfo=UTC)  # 03:30 EDT


async def test_a_send_in_quiet_hours_waits_until_0800_in_the_customer_zone_across_dst(
    fresh_env: WorkflowEnvironment, db: Engine
) -> None:
    env = fresh_env
    # Move the test server's clock to 22:00 New York time on the night clocks spring forward.
    target = datetime(2027, 3, 14, 3, 0, tzinfo=UTC)
    now = await env.get_current_time()
    assert now < target, "this test needs the test server's clock before March 2027"
    await env.sleep(target - now)
    set_profile(db, "ny", first_name="Ann", phone="+12125550100", timezone="America/New_York")
    plan = compile_plan(QUIET)
    trigger = EventMessage(
        name="payment_failed",
        customer_id="ny",
        message_id="m-dst",
        timestamp=target,
        properties={"amount": 1},
    )
    async with build_worker(env.client, db=db, task_queue="dst", workflow_sandbox=True) as _:
        handle = await env.client.start_workflow(
            WORKFLOW_NAME,
            JourneyRunInput(plan=plan, customer_id="ny", trigger=trigger),
            id="journey/j/ny",
            task_queue="dst",
            result_type=RunState,
        )
        state = await handle.result()
    deferred, sent = (e for e in state.path if e.step == "offer")
    assert deferred.outcome == "deferred"
    assert deferred.detail["until"] == "2027-03-14T12:00:00+00:00"
    assert sent.outcome == "captured"
    assert sent.at.astimezone(NEW_YORK).strftime("%H:%M %Z") == "08:00 EDT"
    # Held at 22:00 EST, sent at 08:00 EDT: nine hours of clock, ten of wall time gone by
    # the spring-forward. (Each moment is a little after its mark: the test's own work
    # between them runs in real time, more of it on a busy machine.)
    evening, morning = target, datetime(2027, 3, 14, 12, 0, tzinfo=UTC)
    assert evening <= deferred.at < evening + timedelta(minutes=1), deferred.at
    assert morning <= sent.at < morning + timedelta(minutes=1), sent.at
    [message] = outbox(db)
    assert message.recipient == "+12125550100"
