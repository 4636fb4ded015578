"""Waits on dates read from the run and on weekdays: the message goes out at the local
time in the customer's zone (across DST changes too), and a missing or past date takes
`on_missing`, or goes on at once, with the path saying which and what was read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment

from engine.payloads import WORKFLOW_NAME, EventMessage, JourneyRunInput, RunState
from tests.workflows.conftest import StartRun, compile_plan, set_profile, steps_of
from tests.workflows.test_journey_run import doc
from worker import build_worker

SEOUL = ZoneInfo("Asia/Seoul")
NEW_YORK = ZoneInfo("America/New_York")

RENEWAL = doc(
    """
- id: j
  entry: {event: payment_failed}
  steps:
    - id: before_renewal
      wait: {until: {date: profile.renewal_date, offset: -3d, at: "09:00"}}
      on_missing: no_date
    - {id: offer, send: offer, channel: sms}
    - {id: done, exit: reminded}
    - {id: no_date, exit: no_date}
"""
)

RENEWAL_OR_ON = doc(
    """
- id: j
  entry: {event: payment_failed}
  steps:
    - id: before_renewal
      wait: {until: {date: profile.renewal_date, offset: -3d, at: "09:00"}}
    - {id: offer, send: offer, channel: sms}
"""
)

MONDAY = doc(
    """
- id: j
  entry: {event: payment_failed}
  steps:
    - {id: monday, wait: {until: {weekday: mon, at: "10:00"}}}
    - {id: offer, send: offer, channel: sms}
"""
)


async def _run(env: WorkflowEnvironment, db: Engine, customers: list[str]) -> list[RunState]:
    plan = compile_plan(RENEWAL)
    now = await env.get_current_time()
    async with build_worker(env.client, db=db, task_queue="dates", workflow_sandbox=True) as _:
        handles = [
            await env.client.start_workflow(
                WORKFLOW_NAME,
                JourneyRunInput(
                    plan=plan,
                    customer_id=customer,
                    trigger=EventMessage(
                        name="payment_failed",
                        customer_id=customer,
                        message_id=f"m-{customer}",
                        timestamp=now,
                        properties={"amount": 1},
                    ),
                ),
                id=f"journey/j/{customer}",
                task_queue="dates",
                result_type=RunState,
            )
            for customer in customers
        ]
        return [await handle.result() for handle in handles]


async def test_renewal_minus_3_days_at_0900_local_in_seoul_and_across_dst_in_new_york(
    fresh_env: WorkflowEnvironment, db: Engine
) -> None:
    env = fresh_env
    # Wednesday 10 March 2027, 12:00 UTC: New York is still on EST; its clocks spring
    # forward on Sunday 14 March, the day 3 days before a renewal on the 17th.
    target = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)
    now = await env.get_current_time()
    assert now < target, "this test needs the test server's clock before March 2027"
    await env.sleep(target - now)
    people = [
        ("seoul", "+821000000000", "Asia/Seoul", "2027-03-17"),
        ("ny", "+12125550100", "America/New_York", "2027-03-17"),
        ("ny_early", "+12125550101", "America/New_York", "2027-03-16"),
    ]
    for customer, phone, zone_name, renewal in people:
        set_profile(
            db, customer, first_name="Min", phone=phone, timezone=zone_name, renewal_date=renewal
        )
    seoul, ny, ny_early = await _run(env, db, [person[0] for person in people])
    for state, zone, renewal, fires in (
        (seoul, SEOUL, "2027-03-17", datetime(2027, 3, 14, 0, 0, tzinfo=UTC)),  # KST, UTC+9
        # sent on EDT after a start on EST (clocks sprang forward that night)
        (ny, NEW_YORK, "2027-03-17", datetime(2027, 3, 14, 13, 0, tzinfo=UTC)),
        # renewal on EDT, reminder on EST: 72 hours before 09:00 EDT would be 08:00 EST
        (ny_early, NEW_YORK, "2027-03-16", datetime(2027, 3, 13, 14, 0, tzinfo=UTC)),
    ):
        assert state.outcome == "reminded"
        waiting = next(e for e in state.path if e.step == "before_renewal")
        assert waiting.outcome == "waiting"
        assert waiting.detail["value"] == renewal
        assert waiting.detail["until"] == fires.isoformat()
        sent = next(e for e in state.path if e.step == "offer")
        assert sent.outcome == "captured"
        # At the mark, or a little after: the send runs in real time once the timer fires.
        assert fires <= sent.at < fires + timedelta(seconds=30), (sent.at, fires)
        assert sent.at.astimezone(zone).strftime("%H:%M") == "09:00"
    assert next(e for e in ny.path if e.step == "offer").at.astimezone(NEW_YORK).tzname() == "EDT"


async def test_a_missing_date_takes_on_missing_at_once(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    set_profile(db, "c1", first_name="Ana", phone="+821000000000", timezone="Asia/Seoul")
    state = await (await start_run(compile_plan(RENEWAL), properties={"amount": 1})).result()
    assert (state.status, state.outcome) == ("completed", "no_date")
    assert steps_of(state) == [
        ("entry", None),
        ("before_renewal", "missing"),
        ("end", "no_date"),
    ]
    missing = state.path[1]
    assert missing.detail["value"] is None
    assert missing.at - state.path[0].at < timedelta(minutes=1)


async def test_a_past_date_takes_on_missing_with_the_date_it_read(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    yesterday = (await env.get_current_time()).astimezone(SEOUL).date() - timedelta(days=1)
    set_profile(
        db,
        "c1",
        first_name="Ana",
        phone="+821000000000",
        timezone="Asia/Seoul",
        renewal_date=str(yesterday),
    )
    state = await (await start_run(compile_plan(RENEWAL), properties={"amount": 1})).result()
    assert steps_of(state)[1:] == [("before_renewal", "past"), ("end", "no_date")]
    past = state.path[1]
    assert past.detail["value"] == str(yesterday)
    assert past.at - state.path[0].at < timedelta(minutes=1)


async def test_a_past_date_without_on_missing_goes_on_at_once(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    set_profile(
        db,
        "c1",
        first_name="Ana",
        phone="+821000000000",
        timezone="Asia/Seoul",
        renewal_date="2020-01-01",
    )
    state = await (await start_run(compile_plan(RENEWAL_OR_ON), properties={"amount": 1})).result()
    assert steps_of(state)[1:3] == [("before_renewal", "past"), ("offer", "captured")]
    assert state.path[2].at - state.path[0].at < timedelta(minutes=1)


async def test_a_weekday_wait_sends_on_the_next_monday_at_1000_local(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    set_profile(db, "c1", first_name="Ana", phone="+821000000000", timezone="Asia/Seoul")
    state = await (await start_run(compile_plan(MONDAY), properties={"amount": 1})).result()
    started = state.path[0].at
    sent = next(e for e in state.path if e.step == "offer")
    assert sent.outcome == "captured"
    local = sent.at.astimezone(SEOUL)
    assert (local.strftime("%a"), local.hour, local.minute) == ("Mon", 10, 0)
    assert timedelta(0) < sent.at - started <= timedelta(days=7)
