"""Where a reviewer's decision leads (`engine.destinations`), described from the plan, and
which score features took their `coalesce` default (`engine.decisions.defaulted_by`)."""

from __future__ import annotations

from pathlib import Path

from engine import plan as p
from engine.catalog import build_catalog, build_catalog_from_text
from engine.decisions import decide, defaulted_by
from engine.destinations import decision_destinations, describe_seconds
from engine.payloads import DecideInput, StepDecision

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_review_says_where_approve_and_reject_lead() -> None:
    plan = build_catalog(ROOT / "journeys.yaml").plans["payment_recovery"]
    found = decision_destinations(plan, "ops_review")
    assert set(found) == {"approve", "reject"}
    # when_to_send branches on review.decision alone: an approval goes straight to the SMS.
    assert found["approve"].text.startswith(
        "SMS grace_offer, then wait up to 3 days for payment_received"
    )
    assert found["approve"].open_ended  # the wait for the payment chooses what comes next
    assert found["reject"].text == (
        "email payment_reminder, then wait 4 days, then call handover (POST),"
        " then end: handed_to_collections"
    )
    assert not found["reject"].open_ended


def test_a_choice_ends_the_description_and_an_unknown_step_has_none() -> None:
    text = """
version: 1
settings: {timezone: UTC}
events: {e: {x: number}}
channels: {sms: "${SMS}", email: "${EMAIL}"}
templates: {t: {sms: "hi", email: {subject: "s", text: "t"}}}
journeys:
  - id: j
    entry: {event: e}
    steps:
      - id: r
        review: q
        title: "t"
        decisions: {yes: pick, no: gone}
      - id: pick
        branch:
          - {when: event.x > 1, goto: a}
        else: gone
      - {id: a, send: t, channel: [sms, email]}
      - {id: gone, exit: refused}
"""
    plan = build_catalog_from_text(text).plans["j"]
    found = decision_destinations(plan, "r")
    assert found["yes"].text == "choose at pick, …"
    assert found["no"].text == "end: refused"
    assert decision_destinations(plan, "a") == {}
    assert decision_destinations(plan, "nowhere") == {}


def test_a_branch_on_the_decision_alone_is_followed() -> None:
    text = """
version: 1
channels: {sms: "json://127.0.0.1:9/sms"}
templates: {t: {sms: "hi"}}
journeys:
  - id: j
    entry: {event: e}
    steps:
      - id: r
        review: q
        title: "t"
        decisions: {yes: pick, no: pick}
      - id: pick
        branch:
          - {when: review.decision == "yes", goto: a}
        else: gone
      - {id: a, send: t, channel: sms}
      - {id: gone, exit: refused}
"""
    found = decision_destinations(build_catalog_from_text(text).plans["j"], "r")
    assert found["yes"].text == "SMS t, then end: refused"
    assert found["no"].text == "end: refused"


def test_durations_read_as_people_say_them() -> None:
    assert describe_seconds(4 * 86400) == "4 days"
    assert describe_seconds(3600) == "1 hour"
    assert describe_seconds(5400) == "1 hour 30 minutes"
    assert describe_seconds(0) == "0 seconds"


def test_a_feature_from_its_coalesce_default_is_named() -> None:
    names = ["amount", "failed", "tenure", "spaced"]
    sources = [
        "event.amount",
        "coalesce(profile.failed_payments_90d, 0)",
        "coalesce(profile.tenure_months, 0)",
        " coalesce( profile.missing , 0 ) ",
    ]
    context = {"event": {"amount": 5}, "profile": {"failed_payments_90d": 0}}
    # A real 0 is not a default; a missing trait is.
    assert defaulted_by(names, sources, context, "UTC") == ["tenure", "spaced"]
    assert defaulted_by(["x"], ["coalesce(profile.a)"], context, "UTC") == []  # no default


def test_a_walk_that_stops_at_a_score_step_records_its_defaulted_features() -> None:
    score = p.ScorePlan(
        id="s",
        model="m",
        features={"a": "coalesce(profile.a, 0)", "b": "coalesce(profile.b, 0)"},
        next=None,
    )
    walk = decide(
        DecideInput(start="s", steps={"s": score}, context={"profile": {"b": 2}}, timezone="UTC")
    )
    assert walk.prepared is not None
    assert walk.prepared.values == [0, 2] and walk.prepared.defaulted == ["a"]


def test_a_decision_recorded_before_defaulted_existed_still_reads() -> None:
    old = StepDecision.model_validate({"step_id": "s", "type": "score", "values": [1]})
    assert old.defaulted == []
