"""A run's decisions and sends reach the hash-chained audit log (`engine.audit`) through
the activities that record them: the decisions from the path entries `record_run` and
`begin_run` write (once each, however often the path is recorded), the sends from the
delivery rows `send_message` writes, with the policy's reason. No address is logged."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment

from engine.audit import verify_chain
from engine.pseudonyms import customer_ref, pseudonym_key
from tests.workflows.conftest import StartRun, compile_plan, set_profile
from tests.workflows.test_journey_run import doc

RECIPIENT = "ana.audit@example.com"

DECIDING = doc(
    """
- id: j
  entry: {event: payment_failed}
  steps:
    - id: risk
      score: default_risk
      features: {amount: event.amount, days_past_due: 30, failed_payments_90d: 3}
    - id: route
      branch:
        - {when: event.amount > 100, goto: ab}
      else: done
    - id: ab
      split: {a: 50, b: 50}
      paths: {a: remind, b: remind}
    - {id: remind, send: reminder, channel: email}
    - {id: done, exit: done}
"""
)


def _entries(db: Engine) -> list[dict[str, Any]]:
    with db.connect() as connection:
        rows = connection.execute(
            text("SELECT seq, actor, kind, subject, customer, details FROM audit ORDER BY seq")
        ).mappings()
        entries = [dict(row) for row in rows]
    for entry in entries:
        if isinstance(entry["details"], str):
            entry["details"] = json.loads(entry["details"])
    return entries


async def test_a_runs_decisions_and_its_send_are_logged_once_each(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    set_profile(db, "c1", first_name="Ana", email=RECIPIENT)
    handle = await start_run(compile_plan(DECIDING), properties={"amount": 900})
    state = await handle.result()
    assert state.outcome == "done"
    run_id = handle.result_run_id
    assert run_id is not None

    entries = [entry for entry in _entries(db) if entry["subject"] == f"run:{run_id}"]

    decisions = [
        (e["details"]["step"], e["details"]["type"]) for e in entries if e["kind"] == "decision"
    ]
    assert decisions == [("risk", "score"), ("route", "branch"), ("ab", "split")]
    by_step = {e["details"]["step"]: e["details"] for e in entries if e["kind"] == "decision"}
    assert by_step["route"]["rule"] == 0 and by_step["route"]["outcome"] == "ab"
    assert by_step["ab"]["arm"] in ("a", "b")
    assert by_step["risk"]["model"] == "default_risk"
    assert "features" not in by_step["risk"] and "reads" not in by_step["route"]
    sends = [(e["kind"], e["details"]["status"]) for e in entries if e["kind"].startswith("send.")]
    assert sends == [("send.sent", "captured")]
    assert {e["customer"] for e in entries} == {customer_ref("c1", pseudonym_key(db))}
    assert {e["actor"] for e in entries} == {"journeys"}
    assert RECIPIENT not in json.dumps(_entries(db))
    report = verify_chain(db)
    assert report.ok, report.format()


async def test_a_send_skipped_by_policy_is_logged_with_the_reason(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    set_profile(db, "c2", first_name="Bo")  # no email address
    handle = await start_run(compile_plan(DECIDING), "c2", properties={"amount": 900})
    await handle.result()

    sends = [e for e in _entries(db) if e["kind"].startswith("send.")]

    c2 = customer_ref("c2", pseudonym_key(db))
    assert [(e["kind"], e["customer"]) for e in sends] == [("send.skipped", c2)]
    assert sends[0]["details"]["status"] == "no_address"
    assert sends[0]["details"]["reason"] == "the profile has no email address"
    assert verify_chain(db).ok
