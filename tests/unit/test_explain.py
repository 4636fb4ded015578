"""`service.explain` on recorded rows: a run of the example payment-recovery journey as its
workflow records it (path entries, deliveries, the outbox, a review task), explained in
words, with the same model the API answers and the console shows. No database, no clock:
`RunRecords` carries the rows and the time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine.catalog import build_catalog
from engine.database import Delivery, EventRecord, OutboxMessage, ReviewTask, Run
from service.explain import (
    Explanation,
    Item,
    RunExplanation,
    RunRecords,
    explain_run,
    render_text,
    without_content,
)

ROOT = Path(__file__).resolve().parents[2]
PLAN = build_catalog(ROOT / "journeys.yaml").plans["payment_recovery"]
START = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)  # 12:00 in Seoul
ZONE = "Asia/Seoul"


def at(minutes: float) -> str:
    return (START + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def entry(
    step: str, kind: str, minutes: float, outcome: str | None = None, **detail: Any
) -> dict[str, Any]:
    return {"step": step, "type": kind, "at": at(minutes), "outcome": outcome, "detail": detail}


def run_row(**changes: Any) -> Run:
    values: dict[str, Any] = {
        "run_id": "run-1",
        "workflow_id": "journey/payment_recovery/c1/inv-1",
        "journey_id": "payment_recovery",
        "version": PLAN.version,
        "customer_id": "c1",
        "key": "inv-1",
        "status": "running",
        "step": "wait_for_payment",
        "trigger_message_id": "m-1",
        "started_at": START,
    }
    values.update(changes)
    return Run(**values)


def event() -> EventRecord:
    return EventRecord(
        message_id="m-1",
        type="track",
        name="payment_failed",
        customer_id="c1",
        properties={"amount": 25000, "currency": "KRW", "days_past_due": 3, "invoice_id": "inv-1"},
        timestamp=START,
    )


def decided_task() -> ReviewTask:
    return ReviewTask(
        id="task-1",
        workflow_id="journey/payment_recovery/c1/inv-1",
        run_id="run-1",
        journey_id="payment_recovery",
        customer_id="c1",
        step_id="ops_review",
        visit=1,
        queue="collections",
        title="Grace offer for Mina",
        status="decided",
        decision="approve",
        reviewer="ana",
        note="Grace agreed by phone.",
        case={"scores": {"default_risk": {"score": 0.81, "model_version": "onnx-3f2a"}}},
    )


def sms_delivery(**changes: Any) -> Delivery:
    values: dict[str, Any] = {
        "id": 7,
        "workflow_id": "journey/payment_recovery/c1/inv-1",
        "run_id": "run-1",
        "step_id": "grace_sms",
        "visit": 1,
        "journey_id": "payment_recovery",
        "customer_id": "c1",
        "channel": "sms",
        "template": "grace_offer",
        "recipient_masked": "+82******1234",
        "status": "captured",
        "reason": "no channel URL set: kept in the outbox",
        "attempts": 0,
        "created_at": START + timedelta(minutes=5),
        "sent_at": START + timedelta(minutes=5),
    }
    values.update(changes)
    return Delivery(**values)


def sms_outbox() -> OutboxMessage:
    return OutboxMessage(
        id=3,
        workflow_id="journey/payment_recovery/c1/inv-1",
        run_id="run-1",
        step_id="grace_sms",
        visit=1,
        journey_id="payment_recovery",
        customer_id="c1",
        channel="sms",
        recipient="+821055501234",
        body="Mina, we can move your due date to your next statement date. Reply YES to accept.",
    )


def approved_path(*tail: dict[str, Any]) -> list[dict[str, Any]]:
    features = {"amount": 25000, "days_past_due": 3, "failed_payments_90d": 0, "tenure_months": 0}
    return [
        entry("entry", "entry", 0, event="payment_failed", message_id="m-1"),
        entry(
            "score_risk",
            "score",
            0.1,
            "0.81",
            model="default_risk",
            features=features,
            fallback_used=False,
            error=None,
            defaulted=["failed_payments_90d", "tenure_months"],
        ),
        entry(
            "route_by_risk",
            "branch",
            0.1,
            "ops_review",
            rule=1,
            reads={"scores.default_risk.fallback_used": False, "scores.default_risk.score": 0.81},
            error=None,
        ),
        entry("ops_review", "review", 0.2, "opened", task_id="task-1", queue="collections"),
        entry(
            "ops_review",
            "review",
            4,
            "approve",
            task_id="task-1",
            reviewer="ana",
            note="Grace agreed by phone.",
        ),
        entry(
            "offer_date",
            "set",
            4,
            "set",
            values={"vars.new_due": "your next statement date"},
            error=None,
        ),
        entry(
            "choose_strategy",
            "decide",
            4,
            "when_to_send",
            rule=3,
            rules=[3],
            hit="unique",
            inputs={"risk": 0.81, "late": 3},
            set={"strategy": "supervised"},
            reads={},
            error=None,
        ),
        entry(
            "when_to_send",
            "branch",
            4,
            "grace_sms",
            rule=0,
            reads={"review.decision": "approve"},
            error=None,
        ),
        *tail,
    ]


def records(path: list[dict[str, Any]], **changes: Any) -> RunRecords:
    values: dict[str, Any] = {
        "run": run_row(),
        "path": path,
        "deliveries": [sms_delivery()],
        "outbox": [sms_outbox()],
        "tasks": [decided_task()],
        "plan": PLAN,
        "event": event(),
        "traits": {"first_name": "Mina", "phone": "+821055501234", "timezone": ZONE},
        "now": START + timedelta(hours=1),
    }
    values.update(changes)
    return RunRecords(**values)


SENT = entry("grace_sms", "send", 5, "captured", channel="sms", reason=None, template="grace_offer")


def item(explained: RunExplanation, kind: str, step: str | None = None) -> Item:
    found = [i for i in explained.items if i.kind == kind and (step is None or i.step == step)]
    assert len(found) == 1, [i.headline for i in explained.items]
    return found[0]


def details(found: Item) -> dict[str, str]:
    return {d.label: d.text for d in found.details}


# ----------------------------------------------------------------------------- the tests


def test_the_entry_names_its_event_its_rule_and_the_values_it_read() -> None:
    explained = explain_run(records(approved_path(SENT)))
    entered = item(explained, "entry")
    assert entered.headline == "entered payment_recovery on payment_failed (message m-1)"
    said = details(entered)
    assert said["entry rule"] == 'event.amount >= 10000 and not profile.segment == "vip": true'
    assert "event.amount = 25000" in said["it read"]
    assert "profile.segment = not known" in said["it read"]
    assert said["key"] == "event.invoice_id = inv-1"
    assert entered.local == "2026-12-04 12:00 KST"  # in the customer's zone
    assert explained.zone == ZONE and explained.zone_source == "the customer's zone"


def test_the_score_names_model_version_features_defaults_and_fallback() -> None:
    scored = item(explain_run(records(approved_path(SENT))), "score")
    assert scored.headline == "default_risk scored 0.810"
    said = details(scored)
    assert said["model"] == "default_risk, version onnx-3f2a"
    assert said["amount"] == "25000"
    assert said["tenure_months"] == "not known (default 0)"
    assert [d.label for d in scored.details if d.flag == "defaulted"] == [
        "failed_payments_90d",
        "tenure_months",
    ]
    assert said["fallback"] == "no: the model answered"


def test_a_score_without_a_review_case_says_its_version_is_not_recorded() -> None:
    path = approved_path(SENT)
    path[1]["detail"] = {**path[1]["detail"], "fallback_used": True, "error": "timeout"}
    scored = item(explain_run(records(path, tasks=[])), "score")
    said = details(scored)
    assert said["model"] == "default_risk (version not recorded)"
    assert said["fallback"].startswith("yes: the model failed (timeout)")


def test_each_decision_names_its_rule_and_what_it_read() -> None:
    explained = explain_run(records(approved_path(SENT)))
    routed = item(explained, "branch", "route_by_risk")
    assert routed.headline == "went to ops_review by rule 1: scores.default_risk.score >= 0.7"
    assert details(routed)["it read"] == (
        "scores.default_risk.fallback_used = no; scores.default_risk.score = 0.810"
    )
    table = item(explained, "decide")
    assert table.headline == "decision table: row 3 (risk >= 0.7) → when_to_send"
    assert details(table) == {"inputs": "risk = 0.810; late = 3", "set": "strategy = supervised"}
    review = [i for i in explained.items if i.kind == "review"]
    assert [i.headline for i in review] == [
        "opened a review task in collections",
        "ana decided approve",
    ]
    assert details(review[1]) == {"note": "Grace agreed by phone."}


def test_a_sent_message_shows_its_checks_content_and_a_masked_address() -> None:
    explained = explain_run(records(approved_path(SENT)))
    sent = item(explained, "send")
    assert sent.headline.startswith("SMS grace_offer captured in the outbox to +82******1234")
    message = sent.message
    assert message is not None and message.sent and message.delivery_id == 7
    checks = {c.name: (c.passed, c.text) for c in message.checks}
    assert checks["consent"] == (True, "SMS allowed: not opted out")
    assert checks["suppression"] == (True, "the address is not suppressed")
    assert checks["quiet hours"] == (
        True,
        "21:00-09:00 in Asia/Seoul: not in them at 12:05, sent at once",
    )
    assert checks["frequency cap"] == (True, "3 per 1 day: within it")
    assert checks["fallback"] == (True, "none needed")
    assert message.body is not None and message.body.startswith("Mina, we can move")
    assert "+821055501234" not in explained.model_dump_json()  # the address, masked
    hidden = without_content(explained)
    assert "Mina, we can" not in hidden.model_dump_json()
    assert item(hidden, "send").message.content_hidden  # type: ignore[union-attr]


def test_a_send_held_for_quiet_hours_says_until_when() -> None:
    night = START + timedelta(hours=10)  # 22:00 in Seoul
    held = entry(
        "grace_sms",
        "send",
        600,
        "deferred",
        channel="sms",
        until=(START + timedelta(hours=21)).isoformat(),
        reason="quiet hours 21:00-09:00 in Asia/Seoul",
    )
    late = entry(
        "grace_sms", "send", 1260, "captured", channel="sms", reason=None, template="grace_offer"
    )
    morning = START + timedelta(hours=21)
    delivery = sms_delivery(created_at=night, sent_at=morning)
    explained = explain_run(records(approved_path(held, late), deliveries=[delivery]))
    sends = [i for i in explained.items if i.kind == "send"]
    assert sends[0].headline == (
        "SMS grace_offer held: quiet hours 21:00-09:00 in Asia/Seoul, until 2026-12-05 09:00 KST"
    )
    message = sends[1].message
    assert message is not None
    checks = {c.name: c.text for c in message.checks}
    assert checks["quiet hours"] == (
        "21:00-09:00 in Asia/Seoul: held until 2026-12-05 09:00 KST, then sent"
    )


def test_a_send_refused_says_why_not_and_which_check_refused() -> None:
    refused = entry(
        "grace_sms",
        "send",
        5,
        "no_consent",
        channel="sms",
        reason="opted out of sms",
        template="grace_offer",
    )
    delivery = sms_delivery(status="no_consent", reason="opted out of sms", sent_at=None)
    explained = explain_run(records(approved_path(refused), deliveries=[delivery], outbox=[]))
    sent = item(explained, "send")
    assert sent.headline == "SMS grace_offer not sent: no consent (opted out of sms)"
    message = sent.message
    assert message is not None and not message.sent
    checks = {c.name: (c.passed, c.text) for c in message.checks}
    assert checks["address"][0] is True
    assert checks["consent"] == (False, "opted out of sms")
    assert checks["suppression"] == (None, "not reached")
    assert checks["fallback"] == (None, "no other channel: on to reminder_email")


def test_a_waiting_run_says_until_when_in_the_customer_zone() -> None:
    path = [
        *approved_path()[:5],
        entry(
            "wait_for_morning",
            "wait",
            4,
            "waiting",
            until=(START + timedelta(hours=21)).isoformat(),
            local="09:00 Asia/Seoul",
        ),
    ]
    explained = explain_run(records(path, deliveries=[], outbox=[]))
    waited = item(explained, "wait")
    assert waited.headline == "waits until 2026-12-05 09:00 KST (09:00 the customer's time)"


def test_a_held_out_run_says_no_message_and_why() -> None:
    path = [entry("entry", "entry", 0, event="payment_failed", message_id="m-1")]
    path.append(entry("holdout", "holdout", 0, "held_out"))
    explained = explain_run(records(path, run=run_row(holdout=True), deliveries=[], outbox=[]))
    held = item(explained, "holdout")
    assert held.headline == "in the 5% holdout: a control group that gets no messages"
    assert details(held) == {"not sent because": "the customer is in the holdout"}


def test_a_delivery_the_path_has_not_recorded_yet_is_explained_from_its_row() -> None:
    explained = explain_run(records(approved_path()))
    sent = item(explained, "send")
    assert sent.step == "grace_sms" and sent.local == "2026-12-04 12:05 KST"
    assert sent.message is not None and sent.message.outbox_id == 3
    assert details(sent) == {"recorded": "by the delivery; the run's path not yet"}


def test_without_its_plan_a_run_is_still_explained_and_says_so() -> None:
    explained = explain_run(records(approved_path(SENT), plan=None))
    assert explained.notes == [
        f"the plan of payment_recovery version {PLAN.version} is gone: rules not shown"
    ]
    assert item(explained, "branch", "route_by_risk").headline == "went to ops_review by rule 1"


def test_the_text_is_what_the_model_says_line_by_line() -> None:
    explained = explain_run(records(approved_path(SENT)))
    text = render_text(Explanation(customer_id="c1", runs=[explained, explained]))
    lines = text.splitlines()
    assert lines[0] == "customer c1: 2 runs"
    assert lines[1] == ""
    assert lines[2] == (
        f"run run-1: payment_recovery (version {PLAN.version}), customer c1, running, at wait_for_payment"
    )
    assert lines[3] == "times in Asia/Seoul (the customer's zone)"
    assert "  2026-12-04 12:04 KST  ops_review: ana decided approve" in lines
    assert "      note: Grace agreed by phone." in lines
    assert "      tenure_months: not known (default 0)" in lines
    assert (
        "      quiet hours: 21:00-09:00 in Asia/Seoul: not in them at 12:05, sent at once" in lines
    )
    assert any(line.startswith("      message: Mina, we can move") for line in lines)
    # The JSON form is the same model: it reads back to the same text.
    again = Explanation.model_validate_json(
        Explanation(customer_id="c1", runs=[explained, explained]).model_dump_json()
    )
    assert render_text(again) == text


def test_a_captured_message_before_its_delivery_row_is_explained_too() -> None:
    explained = explain_run(records(approved_path(), deliveries=[]))
    sent = item(explained, "send")
    assert sent.headline.startswith("SMS grace_offer captured in the outbox to +82******1234")
    assert sent.message is not None and sent.message.body is not None
