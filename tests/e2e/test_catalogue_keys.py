"""Issue #14: the example catalogue's keyed journeys are correct for a customer with two
open keys, end to end.

`payment_recovery` is keyed by invoice (`entry.key: event.invoice_id`) and
`abandoned_cart` by cart (`event.cart_id`); their `exit_on` events carry the same
property, so the router's correlation must end only the run of the key the event names.
One customer opens two runs of a journey (keys A and B) through the real API; the ending
event for A ends run A with the catalogue's outcome and leaves run B running, untouched;
the ending event for B then ends B. Everything is seen as a user sees it: the router's
answer, `GET /v1/runs?customer=...`, each run's path and the outbox (`GET /v1/outbox`).

Both journeys start with a long wait (09:00 local for a low-risk payment, two hours for a
cart), so the runs are still waiting there when the ending events come: the progress is
event-driven and needs no time skipping. Customers get a daytime zone, so 09:00 is hours
away.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from engine.payloads import workflow_id_for
from tests.e2e.conftest import (
    ROOT,
    JourneysStack,
    TemporalServer,
    daytime_zone,
    eventually,
    holdout_customer,
    start_stack,
)

pytestmark = pytest.mark.e2e

CATALOGUE = ROOT / "journeys.yaml"
WAIT_TIMEOUT = 30.0  # each poll below; the whole test stays well under a minute


@dataclass(frozen=True)
class KeyedJourney:
    """A keyed catalogue journey: how a run starts, where it then waits, how it ends."""

    journey: str
    key_property: str
    key_prefix: str  # keys are <prefix>-A and <prefix>-B
    entry_event: str
    entry_properties: dict[str, Any]
    waits_at: str  # the step a new run is at when the ending event comes
    end_event: str
    end_properties: dict[str, Any]
    outcome: str  # the catalogue's `exit_on` outcome
    traits: dict[str, Any]


PAYMENT_RECOVERY = KeyedJourney(
    journey="payment_recovery",
    key_property="invoice_id",
    key_prefix="inv",
    entry_event="payment_failed",
    entry_properties={"amount": 15000, "currency": "KRW", "days_past_due": 1},
    # A long tenure keeps the demo model's risk low: no review, the wait for 09:00.
    traits={"tenure_months": 24},
    waits_at="wait_for_morning",
    end_event="payment_received",
    end_properties={"amount": 15000, "currency": "KRW"},
    outcome="recovered",
)

ABANDONED_CART = KeyedJourney(
    journey="abandoned_cart",
    key_property="cart_id",
    key_prefix="cart",
    entry_event="cart_updated",
    entry_properties={"items": 2, "value": 59000, "currency": "KRW"},
    traits={},
    waits_at="wait_two_hours",
    end_event="order_completed",
    end_properties={"value": 59000},
    outcome="purchased",
)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, temporal_server: TemporalServer
) -> Iterator[JourneysStack]:
    """The repository's journeys.yaml deployed, with a worker and the API running."""
    with start_stack(tmp_path_factory.mktemp("keys"), temporal_server, CATALOGUE) as running:
        yield running


def _new_customer(stack: JourneysStack, case: KeyedJourney) -> str:
    """A customer the journey treats (outside its holdout), with every address."""
    customer = holdout_customer(CATALOGUE, case.journey, prefix="keys")
    stack.identify(
        customer,
        first_name="Mina",
        phone="+15550100",
        email=f"{customer}@example.test",
        push_token=f"push-{customer}",
        timezone=daytime_zone(),
        **case.traits,
    )
    return customer


def _last_step(stack: JourneysStack, run_id: str) -> str | None:
    """The step the running workflow last recorded in its path (its live state)."""
    live = stack.run(run_id)["live"]
    if live is None or not live["path"]:
        return None
    return str(live["path"][-1]["step"])


def _wait_at(stack: JourneysStack, case: KeyedJourney, run_id: str) -> None:
    """Poll until the run has reached the journey's first long wait."""
    eventually(
        lambda: _last_step(stack, run_id),
        check=lambda step: step == case.waits_at,
        timeout=WAIT_TIMEOUT,
        what=f"run {run_id} waiting at {case.waits_at}",
    )


def _by_key(stack: JourneysStack, customer: str, journey: str) -> dict[str, dict[str, Any]]:
    """The customer's runs of ``journey`` as `GET /v1/runs` lists them, by key."""
    return {str(run["key"]): run for run in stack.runs(customer, journey)}


def _end(stack: JourneysStack, case: KeyedJourney, customer: str, key: str) -> str:
    """POST the journey's ending event for ``key``; it must signal only that key's run.
    Returns the event's message id."""
    message_id = f"e2e-end-{uuid.uuid4()}"
    answer = stack.track(
        customer,
        case.end_event,
        message_id=message_id,
        **{case.key_property: key},
        **case.end_properties,
    )
    assert answer["started"] == [], answer
    assert answer["signalled"] == [workflow_id_for(case.journey, customer, key)], answer
    return message_id


def _assert_ended_by(
    stack: JourneysStack, case: KeyedJourney, run_id: str, key: str, message_id: str
) -> None:
    """The run ended with the catalogue's outcome, at its wait, by that very event."""
    detail = stack.wait_until_ended(run_id, timeout=WAIT_TIMEOUT)
    assert (detail["key"], detail["status"], detail["outcome"]) == (key, "exited", case.outcome)
    assert detail["ended_at"] is not None
    tail = [(e["step"], e["type"], e["outcome"]) for e in detail["path"][-3:]]
    assert tail == [
        (case.waits_at, "wait", "waiting"),
        (case.waits_at, "exit_on", case.outcome),
        ("end", "exited", case.outcome),
    ], detail["path"]
    exits = [e["detail"] for e in detail["path"] if e["type"] == "exit_on"]
    assert [(e.get("event"), e.get("message_id")) for e in exits] == [(case.end_event, message_id)]


def _assert_untouched(stack: JourneysStack, case: KeyedJourney, run_id: str, *foreign: str) -> None:
    """The run is still running at its wait, and no entry of its path (stored or live)
    comes from the events ``foreign`` (message ids) meant for another key."""
    detail = stack.run(run_id)
    assert (detail["status"], detail["outcome"], detail["ended_at"]) == ("running", None, None)
    assert detail["live"] is not None, "the running workflow answers its state query"
    assert detail["live"]["status"] == "running"
    for path in (detail["path"], detail["live"]["path"]):
        assert path[-1]["step"] == case.waits_at, path
        assert not [e for e in path if e["type"] == "exit_on"], path
        assert not [e for e in path if e.get("detail", {}).get("message_id") in foreign], path


@pytest.mark.parametrize(
    "case", [PAYMENT_RECOVERY, ABANDONED_CART], ids=["payment_recovery", "abandoned_cart"]
)
def test_an_ending_event_ends_only_the_run_of_the_key_it_names(
    stack: JourneysStack, case: KeyedJourney
) -> None:
    customer = _new_customer(stack, case)
    keys = {"A": f"{case.key_prefix}-A", "B": f"{case.key_prefix}-B"}

    # Two entry events, two keys: two runs of the same journey for the one customer.
    for key in keys.values():
        started = stack.track(
            customer, case.entry_event, **{case.key_property: key}, **case.entry_properties
        )
        assert started["started"] == [workflow_id_for(case.journey, customer, key)], started
    runs = eventually(
        lambda: _by_key(stack, customer, case.journey),
        check=lambda found: set(found) == set(keys.values()),
        timeout=WAIT_TIMEOUT,
        what=f"two {case.journey} runs for {customer}",
    )
    run_a, run_b = runs[keys["A"]]["run_id"], runs[keys["B"]]["run_id"]
    assert run_a != run_b
    for run_id in (run_a, run_b):
        _wait_at(stack, case, run_id)

    # The ending event for A ends A with the catalogue's outcome; B goes on waiting.
    ended_a = _end(stack, case, customer, keys["A"])
    _assert_ended_by(stack, case, run_a, keys["A"], ended_a)
    listed = _by_key(stack, customer, case.journey)
    assert (listed[keys["A"]]["status"], listed[keys["A"]]["outcome"]) == ("exited", case.outcome)
    assert (listed[keys["B"]]["status"], listed[keys["B"]]["outcome"]) == ("running", None)
    _assert_untouched(stack, case, run_b, ended_a)

    # A second ending event for A finds no open run of that key and leaves B alone.
    again_a = f"e2e-again-{uuid.uuid4()}"
    again = stack.track(
        customer,
        case.end_event,
        message_id=again_a,
        **{case.key_property: keys["A"]},
        **case.end_properties,
    )
    assert (again["accepted"], again["started"], again["signalled"]) == (1, [], []), again
    _assert_untouched(stack, case, run_b, ended_a, again_a)

    # Then the ending event for B ends B, the same way.
    ended_b = _end(stack, case, customer, keys["B"])
    _assert_ended_by(stack, case, run_b, keys["B"], ended_b)
    listed = _by_key(stack, customer, case.journey)
    assert {key: (run["status"], run["outcome"]) for key, run in listed.items()} == {
        keys["A"]: ("exited", case.outcome),
        keys["B"]: ("exited", case.outcome),
    }
    assert len(stack.runs(customer)) == 2, "no other journey started a run"

    # Both ended at their first wait: the customer was sent nothing.
    assert stack.get("/v1/outbox", customer=customer)["messages"] == []
    assert stack.get("/v1/deliveries", customer=customer)["deliveries"] == []
