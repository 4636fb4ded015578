"""Records the histories in this folder: the example catalogue's journeys, run on the
time-skipping server with the real worker. Run it when a journey scenario is added:

    .venv/bin/python -m tests.histories.record

The scenarios cover one history per shape of run: every step type, a review approved, one
timed out (after its escalation), one whose run an exit event ended and one decided while
its task was being opened, an exit event during a wait, a fallback channel (the first has
no address, the second delivers), a held-out customer, and runs started as the event
router starts them. The untagged files are the interpreter's baseline (issue #13): no
`workflow.patched` branch existed when they were recorded; the one exception,
`payment_recovery_high_risk_decided_while_opening.json`, records a later change that
needed no patch (it added no command).

Most scenarios run a journey of the example catalogue (journeys.yaml); the waits until a
date read from the profile (and, when it is missing, `on_missing` and a wait until a
weekday) run `renewal_reminder` from date_waits.yaml beside this file, since the catalogue
has no such step. Each scenario names its file (`Scenario.catalogue`), compiled the same
way (`engine.catalog.build_catalog`).

Existing files are kept (they are what old runs look like); pass --overwrite to redo them.
Name scenarios to record only those (``... record suspicious_login_alerted``): a new
scenario then gets its file without the others' missing untagged files being written.
When a change to the interpreter goes behind `workflow.patched(...)`, record the scenarios
again under a tag naming the patch (``--tag <patch-id>`` writes
``<scenario>.<patch-id>.json``), so both the old and the new shape replay; remove the old
files with the patch, once `max_duration` has passed since `deprecate_patch`. Every file
here must keep replaying on the current interpreter (tests/workflows/test_replay.py).
Profiles hold addresses in the database only: no history may carry one unmasked.

Histories are recorded as the product writes them, each payload sealed by the history codec
(runtime/codec.py) under the tests' fixed key ring (tests/history_keys.py); the files
recorded before the codec hold plain payloads, which the codec passes through, and both
kinds replay.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from temporalio import activity
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from activities.reviews import ReviewActivities
from engine.catalog import Catalog, build_catalog
from engine.database import make_engine, session_scope, upsert_profile
from engine.decisions import bucket_of, decide_at_entry
from engine.payloads import (
    WORKFLOW_NAME,
    ActivityName,
    CustomerContext,
    EventMessage,
    JourneyRunInput,
    OpenReviewInput,
    ReviewDecision,
    RunState,
)
from engine.plan import Plan, SplitPlan, bucket_salt, split_salt
from engine.profiles import customer_from_traits, masked_customer
from tests.history_keys import test_data_converter
from worker import build_worker

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
QUEUE = "record-histories"
CATALOGUE = ROOT / "journeys.yaml"  # the example catalogue, for most scenarios
DATE_WAITS = HERE / "date_waits.yaml"  # journeys with steps the catalogue lacks
LONG_RUNS = HERE / "long_runs.yaml"  # a looping wait, for runs that continue as new

Act = Callable[[WorkflowEnvironment, WorkflowHandle[Any, RunState]], Awaitable[None]]


def _event(name: str, customer: str, at: datetime, **properties: Any) -> EventMessage:
    # `at` is the test server's clock, which time skipping has moved ahead of the real one.
    return EventMessage(
        name=name,
        customer_id=customer,
        message_id=uuid.uuid4().hex,
        timestamp=at,
        properties=properties,
    )


def _customer(plan: Plan, prefix: str, *, held_out: bool, arm: str | None) -> str:
    """A customer id inside or outside the plan's holdout, in the split arm called ``arm``
    (if given), as the run will place them."""
    holdout = plan.holdout_percent
    for i in range(1000):
        customer = f"{prefix}{i}"
        bucket = (
            bucket_of(bucket_salt(plan, customer, "holdout"), [holdout, 100 - holdout])
            if holdout
            else 1
        )
        if (bucket == 0) == held_out and (arm is None or _arm_of(plan, customer) == arm):
            return customer
    raise AssertionError("no customer with that placement")


def _arm_of(plan: Plan, customer: str) -> str | None:
    """The arm of the plan's first split step the customer falls in."""
    split = next((s for s in plan.steps.values() if isinstance(s, SplitPlan)), None)
    if split is None:
        return None
    salt = split_salt(bucket_salt(plan, customer), split)
    return split.arms[bucket_of(salt, [arm.weight for arm in split.arms])].name


async def _until_review(env: WorkflowEnvironment, handle: WorkflowHandle[Any, RunState]) -> str:
    for _ in range(200):
        state: RunState = await handle.query("state", result_type=RunState)
        if state.open_review is not None:
            return state.open_review.task_id
        await env.sleep(timedelta(seconds=1))
    raise AssertionError("no review task opened")


async def _approve_then_pay(
    env: WorkflowEnvironment, handle: WorkflowHandle[Any, RunState]
) -> None:
    task_id = await _until_review(env, handle)
    await handle.execute_update(
        "decide_review",
        ReviewDecision(task_id=task_id, decision="approve", reviewer="olga", note="first miss"),
        result_type=None,
    )
    await _pay_a_day_later(env, handle)


async def _pay_a_day_later(env: WorkflowEnvironment, handle: WorkflowHandle[Any, RunState]) -> None:
    """After an approval: the payment comes the next day, during the wait for it."""
    await env.sleep(timedelta(days=1, hours=2))
    await handle.signal(
        "event",
        _event(
            "payment_received",
            handle.id.split("/")[2],
            await env.get_current_time(),
            amount=25000,
            currency="KRW",
        ),
    )


class _HeldOpening:
    """`open_review_task` as the product runs it; while ``hold`` is set, its answer waits
    for ``release`` after the task is written, as when the worker that ran it dies before
    reporting and the run learns the task's id only later."""

    def __init__(self) -> None:
        self.real: ReviewActivities | None = None
        self.hold = False
        self.task_id: str | None = None
        self.written = threading.Event()
        self.release = threading.Event()


_OPENING = _HeldOpening()


@activity.defn(name=ActivityName.OPEN_REVIEW_TASK)
def _open_review_task(request: OpenReviewInput) -> str:
    assert _OPENING.real is not None
    task_id = _OPENING.real.open_review_task(request)
    if _OPENING.hold:
        _OPENING.task_id = task_id
        _OPENING.written.set()
        _OPENING.release.wait(timeout=60)
    return task_id


async def _decide_while_opening(
    env: WorkflowEnvironment, handle: WorkflowHandle[Any, RunState]
) -> None:
    """The decision comes while the task is in the queue and the run does not know its id
    yet: the Update is accepted and waits (`decide_review`), then the payment arrives."""
    assert await asyncio.to_thread(_OPENING.written.wait, 60), "no review task written"
    assert _OPENING.task_id is not None
    decision = ReviewDecision(
        task_id=_OPENING.task_id, decision="approve", reviewer="olga", note="first miss"
    )
    deciding = asyncio.create_task(
        handle.execute_update("decide_review", decision, result_type=None)
    )
    await asyncio.sleep(1.0)
    assert not deciding.done(), "the decision did not wait for the task's id"
    _OPENING.release.set()
    await deciding
    await _pay_a_day_later(env, handle)


async def _nothing(env: WorkflowEnvironment, handle: WorkflowHandle[Any, RunState]) -> None:
    return None


async def _pay_during_review(
    env: WorkflowEnvironment, handle: WorkflowHandle[Any, RunState]
) -> None:
    await _until_review(env, handle)
    await handle.signal(
        "event",
        _event(
            "payment_received",
            handle.id.split("/")[2],
            await env.get_current_time(),
            amount=900000,
            currency="KRW",
        ),
    )


async def _three_failures(env: WorkflowEnvironment, handle: WorkflowHandle[Any, RunState]) -> None:
    customer = handle.id.split("/")[2]
    for _ in range(2):
        await env.sleep(timedelta(minutes=1))
        await handle.signal(
            "event",
            _event(
                "login_failed",
                customer,
                await env.get_current_time(),
                ip="203.0.113.9",
                device="web",
            ),
        )


async def _purchase(env: WorkflowEnvironment, handle: WorkflowHandle[Any, RunState]) -> None:
    await env.sleep(timedelta(days=2))
    await handle.signal(
        "event",
        _event("first_purchase", handle.id.split("/")[2], await env.get_current_time(), amount=30),
    )


async def _scan_many(env: WorkflowEnvironment, handle: WorkflowHandle[Any, RunState]) -> None:
    """800 events in a burst (every tenth fails the wait's `when`): the run's path passes
    2,000 entries and it continues as new with the rest queued; once all are counted, the
    wait's 7 days pass (time skipping) and it ends `quiet`."""
    customer = handle.id.split("/")[2]
    now = await env.get_current_time()
    for i in range(800):
        n = -1 if i % 10 == 9 else i
        await handle.signal("event", _event("item_scanned", customer, now, n=n))


async def _generations(
    client: Client, handle: WorkflowHandle[Any, RunState]
) -> list[WorkflowHistory]:
    """The histories of a run's generations, following each continue-as-new."""
    first = client.get_workflow_handle(handle.id, run_id=handle.result_run_id)
    histories = [await first.fetch_history()]
    while True:
        last = histories[-1].events[-1]
        if not last.HasField("workflow_execution_continued_as_new_event_attributes"):
            return histories
        next_run = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
        following = client.get_workflow_handle(handle.id, run_id=next_run)
        histories.append(await following.fetch_history())


@dataclass(frozen=True)
class Scenario:
    """A run to record: the journey (from the file ``catalogue``), its trigger's
    properties, the customer's profile, what happens during the run, and where the
    customer is placed."""

    journey: str
    properties: dict[str, Any]
    traits: dict[str, Any]
    act: Act
    held_out: bool = False
    arm: str | None = None  # the arm of the journey's split the customer must fall in
    catalogue: Path = CATALOGUE
    # Traits holding a date: the customer's local date this long after the recording's
    # start (the test server's clock), so that a wait until it lies ahead.
    dates: dict[str, timedelta] = field(default_factory=dict)
    hold_opening: bool = False  # the review task's opening answered late (`_HeldOpening`)


_HIGH_RISK = {"amount": 900000, "currency": "KRW", "days_past_due": 40, "invoice_id": "INV-1"}
_MIN = {
    "first_name": "Min",
    "phone": "+821012345678",
    "email": "min@example.com",
    "failed_payments_90d": 3,
    "timezone": "Asia/Seoul",
}

SCENARIOS: dict[str, Scenario] = {
    # score, branch, review approved, set, wait until, send, exit event during a wait
    "payment_recovery_high_risk_approved_paid": Scenario(
        "payment_recovery", _HIGH_RISK, _MIN, _approve_then_pay
    ),
    # the review escalated, then timed out: reminder, timer, the handover call, exit step
    "payment_recovery_high_risk_review_timed_out": Scenario(
        "payment_recovery", {**_HIGH_RISK, "invoice_id": "INV-3"}, _MIN, _nothing
    ),
    # an exit event while the review waits: the task is closed with the reason
    # (recorded from patch `review-ends-with-run` on: no untagged file)
    "payment_recovery_high_risk_paid_during_review": Scenario(
        "payment_recovery", {**_HIGH_RISK, "invoice_id": "INV-4"}, _MIN, _pay_during_review
    ),
    # the decision sent while the review task opens (the run waits for the task's id
    # before taking it; recorded from 2026-12-06 on, no patch: no untagged file)
    "payment_recovery_high_risk_decided_while_opening": Scenario(
        "payment_recovery",
        {**_HIGH_RISK, "invoice_id": "INV-6"},
        _MIN,
        _decide_while_opening,
        hold_opening=True,
    ),
    # wait for an event that times out, send, timer, call, exit step
    "payment_recovery_low_risk_unpaid": Scenario(
        "payment_recovery",
        {"amount": 12000, "currency": "KRW", "days_past_due": 1, "invoice_id": "INV-2"},
        {
            "first_name": "Jae",
            "phone": "+821055550000",
            "email": "jae@example.com",
            "tenure_months": 60,
        },
        _nothing,
    ),
    # as above, recorded after the catalogue gained its decision table (issue #14): the
    # `choose_strategy` decide step after the score, with the rule and inputs in the path
    "payment_recovery_low_risk_decided": Scenario(
        "payment_recovery",
        {"amount": 12000, "currency": "KRW", "days_past_due": 1, "invoice_id": "INV-5"},
        {
            "first_name": "Jae",
            "phone": "+821055550000",
            "email": "jae@example.com",
            "tenure_months": 60,
        },
        _nothing,
    ),
    # split (email arm), the awaited event that is also an exit event
    "onboarding_converted": Scenario(
        "onboarding",
        {"plan": "basic", "source": "ads"},
        {"first_name": "Kim", "email": "kim@example.com", "push_token": "tok-1"},
        _purchase,
        arm="email_tips",
    ),
    # split (push arm): push has no address, the email channel delivers; the nudge fails
    "onboarding_fallback_channel": Scenario(
        "onboarding",
        {"plan": "pro", "source": "friend"},
        {"first_name": "Oh", "email": "oh@example.com"},
        _nothing,
        arm="push_tips",
    ),
    # held out: no step, only the exit event
    "onboarding_held_out": Scenario(
        "onboarding",
        {"plan": "basic", "source": "ads"},
        {"first_name": "Yun", "email": "yun@example.com", "push_token": "tok-4"},
        _purchase,
        held_out=True,
    ),
    # set, wait for an event with `when`, branch back to the wait, sends, exit step
    "suspicious_login_alerted": Scenario(
        "suspicious_login",
        {"ip": "203.0.113.9", "device": "web"},
        {"email": "lee@example.com", "push_token": "tok-2", "timezone": "UTC"},
        _three_failures,
    ),
    # timers, sends under quiet hours and the cap
    "abandoned_cart_reminded": Scenario(
        "abandoned_cart",
        {"cart_id": "cart-9", "items": 2, "value": 59000, "currency": "KRW"},
        {"first_name": "Park", "email": "park@example.com", "push_token": "tok-3"},
        _nothing,
    ),
    # a wait until a date on the profile (renewal minus 3 days at 09:00 local), then a send
    "renewal_reminder_date_wait": Scenario(
        "renewal_reminder",
        {"plan": "annual"},
        {"first_name": "Ana", "email": "ana@example.com", "timezone": "America/New_York"},
        _nothing,
        catalogue=DATE_WAITS,
        dates={"renewal_date": timedelta(days=10)},
    ),
    # no date on the profile: `on_missing` at once, a wait until Monday 10:00, a send
    # a burst of events into a looping wait: the run continues as new (each generation's
    # history is a file: `<name>.<tag>.json`, then `.gen1`, ...), and ends on the close
    # (recorded from patch `long-runs` on: no untagged file)
    "tally_continued": Scenario(
        "tally", {}, {"email": "tally@example.com"}, _scan_many, catalogue=LONG_RUNS
    ),
    "renewal_reminder_missing_date": Scenario(
        "renewal_reminder",
        {"plan": "monthly"},
        {"first_name": "Bo", "email": "bo@example.com", "timezone": "Europe/Berlin"},
        _nothing,
        catalogue=DATE_WAITS,
    ),
}

ROUTED = {
    "payment_recovery_low_risk_unpaid_routed": "payment_recovery_low_risk_unpaid",
    "abandoned_cart_reminded_routed": "abandoned_cart_reminded",
    "suspicious_login_alerted_routed": "suspicious_login_alerted",
}
"""Scenarios recorded again as the event router starts runs: with the profile it read and
the runs row written by the router (`JourneyRunInput.recorded_by_starter`), and the first
walk the router decides (`JourneyRunInput.decided`, `decide_at_entry`)."""


async def record(
    out_dir: Path,
    *,
    overwrite: bool = False,
    tag: str | None = None,
    only: frozenset[str] | None = None,
) -> list[Path]:
    """Record the scenarios (``only``: those named) whose files are missing, or all of them
    with ``overwrite``; the files written."""
    catalogues = {path: _catalogue(path) for path in {s.catalogue for s in SCENARIOS.values()}}
    written: list[Path] = []
    collections = _CollectionsApi()
    os.environ["COLLECTIONS_API_URL"] = collections.url
    with tempfile.TemporaryDirectory() as tmp:
        db = make_engine(f"sqlite:///{tmp}/journeys.db")
        env = await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=str(Path(sys.executable).parent / "temporal-test-server"),
            data_converter=test_data_converter(),
        )
        try:
            _OPENING.real = ReviewActivities(db=db)
            async with build_worker(
                env.client,
                db=db,
                task_queue=QUEUE,
                workflow_sandbox=True,
                replace_activities={ActivityName.OPEN_REVIEW_TASK: _open_review_task},
            ):
                runs = [(name, False, SCENARIOS[name]) for name in SCENARIOS]
                runs += [(name, True, SCENARIOS[base]) for name, base in ROUTED.items()]
                for name, routed, scenario in runs:
                    if only is not None and name not in only:
                        continue
                    target = out_dir / (f"{name}.{tag}.json" if tag else f"{name}.json")
                    if target.exists() and not overwrite:
                        continue
                    plan = catalogues[scenario.catalogue].plans[scenario.journey]
                    # One customer per scenario: caps and profiles never leak between them.
                    prefix = "".join(word[0] for word in name.split("_"))
                    customer = _customer(plan, prefix, held_out=scenario.held_out, arm=scenario.arm)
                    traits = {
                        **scenario.traits,
                        **_dates(scenario, plan, await env.get_current_time()),
                    }
                    with session_scope(db) as session:
                        upsert_profile(session, customer_id=customer, traits=traits)
                    profile = (
                        masked_customer(customer_from_traits(customer, traits)) if routed else None
                    )
                    _OPENING.hold = scenario.hold_opening
                    _OPENING.written.clear()
                    _OPENING.release.clear()
                    handle = await _start(
                        env.client,
                        plan,
                        customer,
                        scenario.properties,
                        await env.get_current_time(),
                        profile=profile,
                    )
                    await scenario.act(env, handle)
                    state = await handle.result()
                    for number, history in enumerate(await _generations(env.client, handle)):
                        path = target
                        if number:
                            path = target.with_name(f"{target.stem}.gen{number}.json")
                        path.write_text(history.to_json(), encoding="utf-8")
                        written.append(path)
                        print(
                            f"{path.name}: {state.status} {state.outcome}"
                            f" ({len(history.events)} events)"
                        )
        finally:
            await env.shutdown()
            collections.close()
    return written


def _catalogue(path: Path) -> Catalog:
    """The journeys file at ``path``, compiled; every problem in it stops the recording."""
    catalogue = build_catalog(path)
    if not catalogue.ok:
        problems = "\n".join(str(violation) for violation in catalogue.violations)
        raise SystemExit(f"{path} does not validate:\n{problems}")
    return catalogue


def _dates(scenario: Scenario, plan: Plan, now: datetime) -> dict[str, str]:
    """The scenario's date traits as ISO dates in the customer's time zone."""
    zone = ZoneInfo(str(scenario.traits.get("timezone") or plan.settings.timezone))
    return {
        name: (now + delta).astimezone(zone).date().isoformat()
        for name, delta in scenario.dates.items()
    }


class _CollectionsApi:
    """A stand-in for the collections system the handover step calls, on loopback."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = b'{"case": "C-1"}'
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def _start(
    client: Client,
    plan: Plan,
    customer: str,
    properties: dict[str, Any],
    at: datetime,
    *,
    profile: CustomerContext | None = None,
) -> WorkflowHandle[Any, RunState]:
    key = (
        str(properties["invoice_id"])
        if plan.entry.key == "event.invoice_id"
        else (str(properties["cart_id"]) if plan.entry.key == "event.cart_id" else None)
    )
    workflow_id = f"journey/{plan.journey_id}/{customer}" + (f"/{key}" if key else "")
    trigger = _event(plan.entry.event, customer, at, **properties)
    return await client.start_workflow(
        WORKFLOW_NAME,
        JourneyRunInput(
            plan=plan,
            customer_id=customer,
            key=key,
            trigger=trigger,
            profile=profile,
            recorded_by_starter=profile is not None,
            decided=decide_at_entry(plan, profile, trigger, now=at) if profile else None,
        ),
        id=workflow_id,
        task_queue=QUEUE,
        result_type=RunState,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--tag", help="suffix for the files: the patch id a change went behind")
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help="record only these scenarios (default: every one)",
    )
    args = parser.parse_args()
    names = frozenset(args.scenarios)
    unknown = names - {*SCENARIOS, *ROUTED}
    if unknown:
        parser.error(f"no such scenario: {', '.join(sorted(unknown))}")
    asyncio.run(record(HERE, overwrite=args.overwrite, tag=args.tag, only=names or None))


if __name__ == "__main__":
    main()
