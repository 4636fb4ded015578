"""The example catalogue end to end: Segment-shaped events posted to the real API start,
advance and end real runs on the Temporal dev server, interpreted by `python worker.py`,
and a user sees the result where they would look: the API's runs, each run's path and
outcome, and the messages in the outbox.

Customers get a time zone where it is daytime now, so the catalogue's quiet hours
(21:00-09:00) never hold a send for hours.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.client import Client

from engine.catalog import build_catalog
from engine.payloads import workflow_id_for
from tests.e2e.conftest import (
    ROOT,
    JourneysStack,
    TemporalServer,
    customer_id,
    daytime_zone,
    eventually,
    holdout_customer,
    path_steps,
    start_stack,
)
from tests.history_text import history_text

pytestmark = pytest.mark.e2e

CATALOGUE = ROOT / "journeys.yaml"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, temporal_server: TemporalServer
) -> Iterator[JourneysStack]:
    """The repository's journeys.yaml deployed, with a worker and the API running."""
    with start_stack(tmp_path_factory.mktemp("catalogue"), temporal_server, CATALOGUE) as running:
        yield running


def _identify(stack: JourneysStack, customer: str, **extra: Any) -> str:
    """A customer with every channel address and a daytime time zone; the zone."""
    zone = daytime_zone()
    answer = stack.identify(
        customer,
        first_name="Mina",
        phone="+15550100",
        email=f"{customer}@example.test",
        push_token=f"push-{customer}",
        timezone=zone,
        **extra,
    )
    assert answer == {
        "accepted": 1,
        "duplicates": 0,
        "started": [],
        "signalled": [],
        "skipped": [],
        "routing": "done",
    }
    return zone


def _customer_outside_holdout(stack: JourneysStack, *, held_out: bool) -> str:
    """A payment_recovery customer the deployed version puts in (or out of) its holdout."""
    plan = build_catalog(CATALOGUE).plans["payment_recovery"]
    deployed = {j["id"]: j for j in stack.get("/v1/journeys")["journeys"]}
    assert deployed["payment_recovery"]["version"] == plan.version
    return holdout_customer(CATALOGUE, "payment_recovery", prefix="payer", held_out=held_out)


def test_deploy_printed_every_catalogue_journey(stack: JourneysStack) -> None:
    deployed = {j["id"] for j in stack.get("/v1/journeys")["journeys"]}
    assert deployed == set(build_catalog(CATALOGUE).plans)
    for journey in deployed:
        assert f"{journey}: new version" in stack.deploy_output


def test_small_failed_payment_starts_no_run(stack: JourneysStack) -> None:
    customer = customer_id("small")
    _identify(stack, customer)

    answer = stack.track(
        customer,
        "payment_failed",
        message_id=f"{customer}-pf",
        amount=5000,
        currency="KRW",
        days_past_due=2,
        invoice_id="inv-small",
    )

    assert answer["accepted"] == 1
    assert answer["started"] == []
    assert [(s["journey_id"], s["reason"]) for s in answer["skipped"]] == [
        ("payment_recovery", "entry condition is false")
    ]
    assert stack.runs(customer) == []
    stored = stack.stored_event(f"{customer}-pf")
    assert stored is not None and stored.routed, "an accepted event is stored and routed"
    assert stack.outbox(customer) == []


def test_three_failed_logins_alert_by_push_then_email(stack: JourneysStack) -> None:
    customer = customer_id("login")
    _identify(stack, customer)
    workflow_id = workflow_id_for("suspicious_login", customer)

    first = stack.track(customer, "login_failed", ip="203.0.113.7", device="phone")
    assert first["started"] == [workflow_id]
    for _ in range(2):
        more = stack.track(customer, "login_failed", ip="203.0.113.7", device="phone")
        assert more["started"] == []
        assert more["signalled"] == [workflow_id]
        assert [s["journey_id"] for s in more["skipped"]] == ["suspicious_login"]
        assert more["skipped"][0]["reason"].startswith("reentry after 1h")

    listed = stack.only_run(customer, "suspicious_login")
    assert listed["workflow_id"] == workflow_id
    detail = stack.wait_until_ended(listed["run_id"])

    assert (detail["status"], detail["outcome"]) == ("completed", "alerted"), detail
    assert path_steps(detail) == [
        "entry",
        "count_attempts",
        "wait_for_more",  # waiting
        "wait_for_more",  # received the second failure
        "count_again",
        "enough",  # two failures: wait for more
        "wait_for_more",
        "wait_for_more",
        "count_again",
        "enough",  # three: alert
        "alert_push",
        "alert_email",
        "end",
    ], detail["path"]
    sends = {e["step"]: e for e in detail["path"] if e["type"] == "send"}
    assert sends["alert_push"]["outcome"] == "captured"
    assert sends["alert_push"]["detail"]["channel"] == "push"
    assert sends["alert_email"]["outcome"] == "captured"
    assert sends["alert_email"]["detail"]["channel"] == "email"

    outbox = stack.outbox(customer)
    assert [(m.step_id, m.channel, m.recipient) for m in outbox] == [
        ("alert_push", "push", f"push-{customer}"),
        ("alert_email", "email", f"{customer}@example.test"),
    ]
    assert all(m.run_id == listed["run_id"] and m.visit == 1 for m in outbox)
    assert outbox[0].subject == "Was this you?"
    assert "203.0.113.7" in outbox[0].body
    assert outbox[1].subject == "Failed sign-ins to your account"

    ended = stack.runs(customer, "suspicious_login")[0]
    assert (ended["status"], ended["outcome"], ended["step"]) == (
        "completed",
        "alerted",
        "alerted",  # the exit step
    )
    assert ended["ended_at"] is not None


@pytest.mark.parametrize("held_out", [False, True], ids=["treated", "holdout"])
def test_payment_received_ends_recovery_as_recovered(stack: JourneysStack, held_out: bool) -> None:
    customer = _customer_outside_holdout(stack, held_out=held_out)
    # A long tenure keeps the demo model's risk low: no ops review, a grace offer at 09:00.
    _identify(stack, customer, tenure_months=24)
    invoice = f"inv-{customer}"
    workflow_id = f"journey/payment_recovery/{customer}/{invoice}"

    started = stack.track(
        customer,
        "payment_failed",
        amount=15000,
        currency="KRW",
        days_past_due=1,
        invoice_id=invoice,
    )
    assert started["started"] == [workflow_id]

    # The run waits: for 09:00 local time (hours away in a daytime zone), or held out.
    run_id = stack.only_run(customer, "payment_recovery")["run_id"]
    waiting_at = "holdout" if held_out else "wait_for_morning"

    def live_step() -> str | None:
        live = stack.run(run_id)["live"]
        if live is None or not live["path"]:
            return None
        return str(live["path"][-1]["step"])

    eventually(live_step, check=lambda step: step == waiting_at, timeout=60, what="run waiting")

    paid = stack.track(
        customer, "payment_received", amount=15000, currency="KRW", invoice_id=invoice
    )
    assert paid["signalled"] == [workflow_id]
    detail = stack.wait_until_ended(run_id)

    assert detail["workflow_id"] == workflow_id
    assert detail["key"] == invoice
    assert (detail["status"], detail["outcome"], detail["holdout"]) == (
        "exited",
        "recovered",
        held_out,
    )
    steps = [(e["step"], e["type"], e["outcome"]) for e in detail["path"]]
    if held_out:
        assert steps == [
            ("entry", "entry", None),
            ("holdout", "holdout", "held_out"),
            ("holdout", "exit_on", "recovered"),
            ("end", "exited", "recovered"),
        ]
    else:
        assert steps[:3] == [
            ("entry", "entry", None),
            ("score_risk", "score", steps[1][2]),
            ("route_by_risk", "branch", "offer_date"),
        ]
        assert float(steps[1][2] or "nan") < 0.7
        assert steps[3:] == [
            ("offer_date", "set", "set"),
            ("choose_strategy", "decide", "when_to_send"),
            ("when_to_send", "branch", "wait_for_morning"),  # no reviewer approved it
            ("wait_for_morning", "wait", "waiting"),
            ("wait_for_morning", "exit_on", "recovered"),
            ("end", "exited", "recovered"),
        ]
    assert stack.outbox(customer) == [], "a recovered customer gets no message"


def test_repeated_message_id_is_accepted_and_starts_nothing(stack: JourneysStack) -> None:
    customer = customer_id("dup")
    _identify(stack, customer)
    properties: dict[str, Any] = {
        "amount": 20000,
        "currency": "KRW",
        "days_past_due": 3,
        "invoice_id": "inv-dup",
    }
    body: dict[str, Any] = {
        "type": "track",
        "event": "payment_failed",
        "userId": customer,
        "messageId": f"{customer}-once",
        "properties": properties,
    }

    first = stack.post("/v1/events", body)
    again = stack.post("/v1/events", body)
    batch = stack.post("/v1/batch", {"batch": [body]})

    assert first["accepted"] == 1
    assert first["started"] == [f"journey/payment_recovery/{customer}/inv-dup"]
    for repeat in (again, batch):
        assert (repeat["accepted"], repeat["duplicates"]) == (0, 1)
        assert (repeat["started"], repeat["signalled"], repeat["skipped"]) == ([], [], [])
    # The same new message twice in one batch (a CDP retrying within its batch).
    twice = {
        **body,
        "messageId": f"{customer}-twice",
        "properties": {**properties, "invoice_id": "inv-dup-2"},
    }
    both = stack.post("/v1/batch", {"batch": [twice, twice]})
    assert (both["accepted"], both["duplicates"]) == (1, 1)
    assert both["started"] == [f"journey/payment_recovery/{customer}/inv-dup-2"]

    runs = stack.runs(customer)
    assert sorted(run["trigger_message_id"] for run in runs) == [
        f"{customer}-once",
        f"{customer}-twice",
    ]


def test_a_run_the_router_starts_on_a_wait_takes_no_local_activity_before_it(
    stack: JourneysStack,
) -> None:
    customer = customer_id("cart")
    _identify(stack, customer)
    workflow_id = workflow_id_for("abandoned_cart", customer, "cart-e2e")
    answer = stack.track(
        customer, "cart_updated", cart_id="cart-e2e", items=2, value=59000, currency="KRW"
    )
    assert answer["started"] == [workflow_id]
    # The router wrote the runs row itself: it is there at once, running.
    listed = stack.only_run(customer, "abandoned_cart")
    assert (listed["workflow_id"], listed["status"]) == (workflow_id, "running")

    before_timer = _local_activities_before_first_timer(stack, workflow_id, "the 2h timer")
    # Before the timer: the record of the wait; nothing read the profile or wrote the row
    # at entry (the router handed over the masked profile).
    assert before_timer == ["record_run"], before_timer
    text = asyncio.run(_history_text(stack, workflow_id))
    assert f"{customer}@example.test" not in text
    flat = text.replace(" ", "").replace('\\"', '"')
    assert '"first_name":"***"' in flat  # handed over, and masked (a personal name)
    assert "Mina" not in text


def test_the_router_decides_a_runs_first_steps_and_the_run_takes_them_from_its_input(
    stack: JourneysStack,
) -> None:
    customer = customer_id("login")
    _identify(stack, customer)
    workflow_id = workflow_id_for("suspicious_login", customer, None)
    answer = stack.track(customer, "login_failed", ip="203.0.113.9", device="phone")
    assert answer["started"] == [workflow_id]
    before_timer = _local_activities_before_first_timer(stack, workflow_id, "the 10-minute wait")
    # The first step (set vars.failures) was decided by the router: no begin_run, only the
    # record of the wait.
    assert before_timer == ["record_run"], before_timer
    decided = asyncio.run(_started_input(stack, workflow_id))["decided"]
    assert [(d["step_id"], d["values"]) for d in decided["decisions"]] == [("count_attempts", [1])]
    assert decided["stop"] == "wait_for_more"
    run = stack.only_run(customer, "suspicious_login")
    detail = stack.get(f"/v1/runs/{run['run_id']}")
    assert [(e["step"], e["outcome"]) for e in detail["path"][:2]] == [
        ("entry", None),
        ("count_attempts", "set"),
    ]
    assert detail["live"]["vars"] == {"failures": 1}


async def _started_input(stack: JourneysStack, workflow_id: str) -> dict[str, Any]:
    client = await Client.connect(stack.temporal.address)
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    start = json.loads(history.to_json())["events"][0]["workflowExecutionStartedEventAttributes"]
    data: dict[str, Any] = json.loads(base64.b64decode(start["input"]["payloads"][0]["data"]))
    return data


def _local_activities_before_first_timer(
    stack: JourneysStack, workflow_id: str, what: str
) -> list[str]:
    """The local activities the run recorded before its first timer (waiting for it)."""
    names = eventually(
        lambda: asyncio.run(_markers_until_timer(stack, workflow_id)),
        check=lambda found: found is not None,
        timeout=30,
        what=what,
    )
    assert names is not None
    return [name for name in names if name != "patch"]


async def _markers_until_timer(stack: JourneysStack, workflow_id: str) -> list[str] | None:
    """Marker names (local activity types, or "patch") before the first timer; None while
    the run has not started one."""
    client = await Client.connect(stack.temporal.address)
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    names: list[str] = []
    for event in json.loads(history.to_json())["events"]:
        marker = event.get("markerRecordedEventAttributes")
        if marker is not None and marker.get("markerName") == "core_local_activity":
            data = marker["details"]["data"]["payloads"][0]["data"]
            names.append(json.loads(base64.b64decode(data))["activity_type"])
        elif marker is not None:
            names.append("patch")
        if "timerStartedEventAttributes" in event:
            return names
    return None


async def _history_text(stack: JourneysStack, workflow_id: str) -> str:
    client = await Client.connect(stack.temporal.address)
    return history_text(await client.get_workflow_handle(workflow_id).fetch_history())
