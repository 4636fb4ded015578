"""What Temporal stores of a run holds no personal value in the clear: every payload is
sealed by the history codec (runtime/codec.py), and the search attributes, which Temporal
indexes as they are, hold only ids, the journey, the current step and the outcome."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from engine.payloads import (
    SEARCH_ATTRIBUTES,
    WORKFLOW_NAME,
    EventMessage,
    JourneyRunInput,
    RunState,
    workflow_id_for,
)
from runtime.codec import ENCODING
from tests.history_keys import opened_history_json
from tests.workflows.conftest import compile_plan, set_profile
from tests.workflows.test_journey_run import doc
from workflows.search_attributes import at_start

FIRST_NAME = "Zoltana"
EMAIL = "zoltana.kiss@example.com"
# Kept unmasked in the run's payloads (neither is marked personal): an event property of
# the trigger and a trait the branch reads. Sealing must hide them all the same.
INVOICE = "inv-7731-qxw"
TIER = "platinum-zx9"

JOURNEY = doc(
    """
- id: j
  entry: {event: payment_failed}
  steps:
    - id: route
      branch:
        - {when: "profile.first_name != '' and profile.tier != ''", goto: remind}
      else: done
    - {id: remind, send: reminder, channel: email}
    - {id: done, exit: done}
"""
)


async def _finished_run(
    env: WorkflowEnvironment, worker: Worker, db: Engine
) -> tuple[WorkflowHistory, RunState, str]:
    customer = f"c-{uuid.uuid4().hex[:8]}"
    set_profile(db, customer, first_name=FIRST_NAME, email=EMAIL, tier=TIER)
    plan = compile_plan(JOURNEY)
    trigger = EventMessage(
        name="payment_failed",
        customer_id=customer,
        message_id=uuid.uuid4().hex,
        timestamp=datetime.now(UTC),
        properties={"amount": 25000, "invoice_id": INVOICE},
    )
    handle = await env.client.start_workflow(
        WORKFLOW_NAME,
        JourneyRunInput(plan=plan, customer_id=customer, trigger=trigger),
        id=workflow_id_for(plan.journey_id, customer) + f"/{uuid.uuid4().hex[:6]}",
        task_queue=worker.task_queue,
        result_type=RunState,
        search_attributes=at_start(
            journey_id=plan.journey_id, version=plan.version, customer_id=customer
        ),
    )
    state = await handle.result()
    return await handle.fetch_history(), state, customer


def _payload_texts(history: WorkflowHistory) -> str:
    """Every payload's data as Temporal stores it, decoded from base64 as far as it goes."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and "metadata" in node:
                found.append(base64.b64decode(node["data"]).decode("utf-8", "replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(history.to_json()))
    return "\n".join(found)


async def test_no_payload_of_a_run_holds_a_personal_value_in_the_clear(
    env: WorkflowEnvironment, worker: Worker, db: Engine
) -> None:
    history, state, _ = await _finished_run(env, worker, db)
    assert state.outcome == "done", state
    stored = _payload_texts(history)
    raw = b"".join(event.SerializeToString() for event in history.events)
    for value in (FIRST_NAME, EMAIL, INVOICE, TIER, "payment_failed", "z***@example.com"):
        assert value not in stored and value.encode() not in raw, value
    # Not an empty check: opened with the key ring, the history holds the invoice, the tier,
    # the masked address and the plan (the first name and address only masked, as before).
    opened = "\n".join(
        base64.b64decode(payload.get("data", "")).decode("utf-8", "replace")
        for event in json.loads(opened_history_json(history))["events"]
        for payload in _payloads(event)
    )
    for value in (INVOICE, TIER, "payment_failed", "z***@example.com"):
        assert value in opened, value
    assert FIRST_NAME not in opened and EMAIL not in opened
    # Every payload the SDK wrote is sealed; only the SDK core's own marker fields (a local
    # activity's type and attempt, a patch's id) and search attributes are not.
    for event in json.loads(history.to_json())["events"]:
        for payload in _payloads(event, core=False):
            encoding = base64.b64decode(payload.get("metadata", {}).get("encoding", ""))
            assert encoding == ENCODING, (event["eventType"], payload)


def _payloads(node: Any, *, core: bool = True) -> list[dict[str, Any]]:
    """The payloads under ``node``, search attributes left out (and, with ``core=False``,
    the fields of markers the SDK core writes itself: ``data``, ``patch-data``)."""
    if isinstance(node, dict):
        if "metadata" in node and set(node) <= {"metadata", "data", "externalPayloads"}:
            return [node]
        found = []
        for key, value in node.items():
            if key == "searchAttributes" or (not core and key in ("data", "patch-data")):
                continue
            found += _payloads(value, core=core)
        return found
    if isinstance(node, list):
        return [p for value in node for p in _payloads(value, core=core)]
    return []


async def test_search_attributes_hold_only_ids_journey_step_and_outcome(
    env: WorkflowEnvironment, worker: Worker, db: Engine
) -> None:
    history, state, customer = await _finished_run(env, worker, db)
    plan = compile_plan(JOURNEY)
    seen: dict[str, set[str]] = {}
    for event in history.events:
        fields: Any = None
        if event.HasField("workflow_execution_started_event_attributes"):
            fields = event.workflow_execution_started_event_attributes.search_attributes
        elif event.HasField("upsert_workflow_search_attributes_event_attributes"):
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
        if fields is None:
            continue
        for name, payload in fields.indexed_fields.items():
            # Temporal indexes these as they are: never sealed, so they must hold no data.
            assert payload.metadata.get("encoding") != ENCODING, name
            value = json.loads(payload.data)
            for item in value if isinstance(value, list) else [value]:
                seen.setdefault(name, set()).add(item)
    # Ours, and Temporal's own: the patch ids a run took (`workflow.patched`).
    patches = seen.pop("TemporalChangeVersion", set())
    assert all(isinstance(patch, str) and " " not in patch for patch in patches), patches
    assert set(seen) <= set(SEARCH_ATTRIBUTES), seen
    assert seen["JourneyId"] == {plan.journey_id}
    assert seen["JourneyVersion"] == {plan.version}
    assert seen["CustomerId"] == {customer}
    assert seen["CurrentStep"] <= {"entry", *plan.steps}, seen
    assert seen.get("Outcome", set()) <= {state.outcome}, seen
    values = " ".join(value for values in seen.values() for value in values)
    assert FIRST_NAME not in values and EMAIL not in values
