"""Issue #15: personal data by declaration (`engine.personal`), as the validator, the
compiler and the router's view of an event show it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.catalog import build_catalog_from_text
from engine.payloads import CustomerContext, EventMessage
from engine.personal import (
    kind_by_name,
    mask_found,
    mask_traits,
    mask_value,
    run_event,
    run_key,
    scrubbed,
)
from engine.profiles import mask_address, masked_customer

ROOT = Path(__file__).resolve().parents[2]
JOURNEYS = Path(sys.executable).parent / "journeys"

CATALOGUE = """
version: 1
events:
  signed_up:
    plan: string
    source: string
    campaign: string
    contact_point: email
    holder: {type: string, personal: pii}
    name: {type: string, personal: none}
    voucher: secret
profile:
  reach_me: email
  mob: phone
  legal: pii
  vault: secret
channels:
  sms: "json://127.0.0.1:9/sms"
templates:
  hi: {sms: "Hi {{ profile.legal }} {{ event.plan }}"}
journeys:
  - id: welcome
    entry: {event: signed_up, when: "event.source != 'test'"}
    steps:
      - id: pick
        branch:
          - when: event.campaign == "spring"
            goto: greet
        else: greet
      - id: greet
        send: hi
        channel: sms
"""


def _plan(text: str = CATALOGUE, journey: str = "welcome"):  # type: ignore[no-untyped-def]
    catalog = build_catalog_from_text(text)
    assert catalog.ok, [v.format() for v in catalog.violations]
    return catalog.plans[journey]


def _event(**properties: object) -> EventMessage:
    return EventMessage(
        name="signed_up",
        customer_id="c-1",
        message_id="m-1",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        properties=dict(properties),
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("email", "email"),
        ("workEmail", "email"),
        ("phone_number", "phone"),
        ("mobile", "phone"),
        ("MSISDN", "phone"),
        ("first_name", "pii"),
        ("name", "pii"),
        ("billing_address", "pii"),
        ("date_of_birth", "pii"),
        ("password", "secret"),
        ("api_key", "secret"),
        ("card_number", "secret"),
        ("plan", None),
        ("amount", None),
        ("product_name", None),
        ("currency", None),
    ],
)
def test_well_known_names_are_personal(name: str, kind: str | None) -> None:
    assert kind_by_name(name) == kind


def test_masks_show_no_more_than_needed() -> None:
    assert mask_value("Jane.Doe@Example.com", "email") == "j***@example.com"
    assert mask_value("+82 10 1234 5678", "phone") == "+82******5678"
    assert mask_value("Jane Doe", "pii") == "***"
    assert mask_value(19800101, "pii") == "***"
    assert mask_value("hunter2", "secret") == "[secret]"
    assert mask_value(True, "email") is True  # a flag such as email_opt_out
    assert mask_value(None, "pii") is None


@pytest.mark.parametrize(
    "malformed",
    ["jane@doe@secret-host.example", "jane@", "@example.com", "jane@host with space.com", "x"],
)
def test_a_malformed_address_is_masked_whole(malformed: str) -> None:
    shown = mask_value(malformed, "email")
    assert shown == "***"
    assert str(mask_address(malformed, "email")) == "***"


def test_text_holding_an_address_or_phone_is_masked_wherever_it_is() -> None:
    found = mask_found(
        {
            "note": "write to jane.doe@example.com or call +44 7700 900123 today",
            "nested": [{"how": "jo@corp.example"}, {"mobile": "01012345678"}],
            "count": 3,
        }
    )
    text = json.dumps(found)
    assert "jane.doe@" not in text and "900123" not in text and "jo@corp" not in text
    assert "01012345678" not in text  # `mobile` is a personal name at any depth
    assert found["count"] == 3
    assert "today" in found["note"]


def test_declarations_decide_before_names() -> None:
    traits = mask_traits(
        {"reach_me": "ann@example.com", "name": "Widget", "legal": "Ann Lee", "plan": "pro"},
        {"reach_me": "email", "name": "none", "legal": "pii"},
    )
    assert traits == {
        "reach_me": "a***@example.com",
        "name": "Widget",
        "legal": "***",
        "plan": "pro",
    }


def test_the_plan_carries_marks_and_what_its_expressions_read() -> None:
    plan = _plan()
    personal = plan.personal
    assert personal is not None
    assert personal.profile == {
        "reach_me": "email",
        "mob": "phone",
        "legal": "pii",
        "vault": "secret",
    }
    assert personal.events["signed_up"]["contact_point"] == "email"
    assert personal.events["signed_up"]["name"] == "none"
    assert personal.events["signed_up"]["plan"] == ""
    # entry.when reads `source`, the branch `campaign`; a template read does not count.
    assert personal.reads == ("campaign", "source")


def test_a_run_gets_only_declared_or_read_properties_masked() -> None:
    plan = _plan()
    event = run_event(
        _event(
            plan="pro",
            contact_point="ann@example.com",
            holder="Ann Lee",
            name="Spring promo",
            voucher="V-123",
            source="ads",
            campaign="spring",
            unread_by_expressions="left out",
            stray="someone@example.com",
        ),
        plan.personal,
    )
    assert event.properties == {
        "plan": "pro",
        "contact_point": "a***@example.com",
        "holder": "***",
        "name": "Spring promo",
        "voucher": "[secret]",
        "source": "ads",
        "campaign": "spring",
    }


def test_an_expression_reading_the_event_whole_keeps_every_property() -> None:
    text = CATALOGUE.replace('event.campaign == "spring"', 'event["camp" + "aign"] == "spring"')
    plan = _plan(text)
    assert plan.personal is not None and plan.personal.reads is None
    event = run_event(_event(extra="kept", contact_point="ann@example.com"), plan.personal)
    assert event.properties == {"extra": "kept", "contact_point": "a***@example.com"}


def test_a_plan_from_before_declarations_masks_by_name_and_form() -> None:
    event = run_event(_event(email="ann@example.com", note="x"), None)
    assert event.properties == {"email": "a***@example.com", "note": "x"}


def test_the_profile_a_run_holds_follows_the_profile_schema() -> None:
    customer = CustomerContext(
        id="c-1",
        email="ann@example.com",
        traits={
            "reach_me": "ann@work.example",
            "mob": "+821012345678",
            "vault": "s3cr3t",
            "tier": 2,
        },
    )
    shown = masked_customer(customer, _plan().personal.profile)  # type: ignore[union-attr]
    assert shown.email == "a***@example.com"
    assert shown.traits == {
        "reach_me": "a***@work.example",
        "mob": "+82******5678",
        "vault": "[secret]",
        "tier": 2,
    }


def test_a_personal_key_is_kept_as_a_digest() -> None:
    keyed = CATALOGUE.replace(
        "entry: {event: signed_up, when: \"event.source != 'test'\"}",
        "entry: {event: signed_up, key: event.contact_point}",
    )
    plan = _plan(keyed)
    assert plan.personal is not None and plan.personal.key_personal
    key = run_key("ann@example.com", plan.personal)
    assert key.startswith("pk-") and "ann" not in key
    assert key == run_key("ann@example.com", plan.personal)  # stable: correlation works
    assert run_key("inv-42", None) == "inv-42"
    assert run_key("ann@example.com", None).startswith("pk-")  # by its form


def test_a_bad_declaration_is_an_error_at_its_line() -> None:
    catalog = build_catalog_from_text(CATALOGUE.replace("mob: phone", "mob: phonee"))
    assert not catalog.ok
    messages = [v.format() for v in catalog.violations]
    assert any(
        m.startswith("journeys.yaml:14:") and "text:" not in m and "'pii'" in m for m in messages
    ), messages


@pytest.mark.slow  # in `make test`; over 2 s, out of `make test-fast`
def test_validate_lists_what_it_treats_as_personal(tmp_path: Path) -> None:
    path = tmp_path / "journeys.yaml"
    path.write_text(CATALOGUE, encoding="utf-8")
    done = subprocess.run(
        [str(JOURNEYS), "validate", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "profile.reach_me" in done.stdout and "email   declared" in done.stdout
    assert "event signed_up.holder" in done.stdout
    assert "event signed_up.name" not in done.stdout  # unmarked with `personal: none`
    listed = subprocess.run(
        [str(JOURNEYS), "validate", str(path), "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    personal = json.loads(listed.stdout)["personal"]
    assert {"field": "profile.vault", "kind": "secret", "why": "declared"} in personal


def test_an_error_about_real_data_is_scrubbed_of_it() -> None:
    plan = _plan()
    message = (
        "days_since() cannot read 'Ann Lee' as a time; nor 'ann@example.com', "
        "nor '+82 10 1234 5678', nor 'V-123'"
    )
    shown = scrubbed(
        message,
        {"holder": "Ann Lee", "voucher": "V-123", "plan": "pro"},
        {"reach_me": "ann@example.com"},
        plan.personal,
        "signed_up",
    )
    assert "Ann Lee" not in shown and "ann@example.com" not in shown
    assert "1234 5678" not in shown and "V-123" not in shown
    assert "days_since() cannot read '***'" in shown and "[secret]" in shown
