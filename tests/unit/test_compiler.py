"""Compiling journeys to plans: explicit successors, stable versions, every step type."""

from __future__ import annotations

import string
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from engine import plan as p
from engine.catalog import build_catalog
from tests.unit.journey_docs import check, journey_doc

ROOT = Path(__file__).resolve().parents[2]

STEPS = """
- id: risk
  score: default_risk
  features: {amount: event.amount}
- id: route
  branch:
    - when: scores.default_risk.score > 0.7
      goto: review_it
  else: pause
- id: review_it
  review: ops
  title: "Check {{ customer.id }}"
  decisions: {approve: pause, reject: gone}
  sla: 4h
  on_timeout: gone
- id: pause
  wait: {until: "09:00"}
- id: offer
  send: offer
  channel: [sms, email]
- id: ab
  split: {a: 30, b: 70}
  paths: {a: note, b: pay}
- id: note
  set: {vars.arm: '"a"'}
- id: pay
  wait: {event: payment_received, within: 3d}
  on_timeout: ticket
- id: paid
  exit: recovered
- id: ticket
  call: {url: "${TICKETS_URL}/t", json: {c: customer.id}}
- id: gone
  exit: lost
"""


def test_every_step_type_compiles_with_explicit_successors() -> None:
    catalog = check(journey_doc(STEPS))
    assert catalog.ok, [v.format() for v in catalog.violations]
    plan = catalog.plans["j"]
    assert plan.start == "risk"
    assert [s.type for s in plan.steps.values()] == [
        "score",
        "branch",
        "review",
        "wait",
        "send",
        "split",
        "set",
        "wait",
        "exit",
        "call",
        "exit",
    ]
    route = plan.steps["route"]
    assert isinstance(route, p.BranchPlan) and route.otherwise == "pause"
    offer = plan.steps["offer"]
    assert (
        isinstance(offer, p.SendPlan) and offer.next == "ab" and offer.channels == ("sms", "email")
    )
    pay = plan.steps["pay"]
    assert isinstance(pay, p.EventWaitPlan)
    assert (pay.mode, pay.within_seconds, pay.next, pay.on_timeout) == (
        "event",
        259200,
        "paid",
        "ticket",
    )
    ticket = plan.steps["ticket"]
    assert isinstance(ticket, p.CallPlan) and ticket.next == "gone"
    assert plan.templates == {
        "offer": {
            "email.subject": "An offer",
            "email.text": "Hi {{ profile.first_name }}",
            "sms": "Hi {{ profile.first_name }}, {{ event.amount }}",
        }
    }
    assert plan.models["default_risk"]["function"] == "risk_models.default_risk:predict"
    assert plan.events == {"payment_failed", "payment_received"}


def test_last_step_falls_through_to_completion() -> None:
    plan = check(journey_doc("- {id: only, wait: 1h}")).plans["j"]
    only = plan.steps["only"]
    assert isinstance(only, p.TimerWaitPlan) and only.next is None and only.seconds == 3600


def test_a_channel_url_with_credentials_in_the_file_is_refused() -> None:
    text = journey_doc("- {id: hi, send: offer, channel: sms}").replace(
        '"${JOURNEYS_SMS_URL}"', '"twilio://SID:TOKEN@+15550001111"'
    )
    catalog = check(text)
    assert [(v.code, v.severity, v.message) for v in catalog.violations] == [
        ("secret", "error", "channel 'sms' has credentials written in the file")
    ]
    assert catalog.plans == {}


def test_plans_keep_channel_urls_unresolved() -> None:
    plan = check(journey_doc("- {id: hi, send: offer, channel: sms}")).plans["j"]
    assert plan.channel_config["sms"].url == "${JOURNEYS_SMS_URL}"
    assert plan.channel_config["sms"].ttl_seconds == 3600


def test_formatting_and_comments_do_not_change_the_version() -> None:
    text = journey_doc(STEPS)
    reformatted = text.replace("  - id: j\n", "  # a comment\n  - id: j   # same journey\n")
    assert check(text).plans["j"].version == check(reformatted).plans["j"].version


def test_a_change_of_meaning_changes_the_version() -> None:
    base = check(journey_doc(STEPS)).plans["j"].version
    changed_expr = check(journey_doc(STEPS.replace("> 0.7", "> 0.8"))).plans["j"].version
    changed_template = check(journey_doc(STEPS).replace("Hi {{", "Hello {{")).plans["j"].version
    changed_setting = (
        check(journey_doc(STEPS, extra="settings: {quiet_hours: {start: '22:00', end: '07:00'}}"))
        .plans["j"]
        .version
    )
    assert len({base, changed_expr, changed_template, changed_setting}) == 4


def test_example_catalogue_validates_clean() -> None:
    catalog = build_catalog(ROOT / "journeys.yaml")
    assert [v.format() for v in catalog.violations] == []
    assert set(catalog.plans) == {
        "payment_recovery",
        "onboarding",
        "suspicious_login",
        "abandoned_cart",
    }


@settings(max_examples=40, deadline=None)
@given(
    threshold=st.integers(min_value=0, max_value=10**6),
    name=st.text(string.ascii_lowercase, min_size=1, max_size=8),
)
def test_compile_is_deterministic(threshold: int, name: str) -> None:
    text = journey_doc(
        f"""
        - id: route
          branch:
            - when: event.amount > {threshold}
              goto: {name}_x
        - id: {name}_x
          exit: done
        """
    )
    first, second = check(text), check(text)
    assert first.ok, [v.format() for v in first.violations]
    assert first.plans["j"] == second.plans["j"]
    assert first.plans["j"].version == second.plans["j"].version
