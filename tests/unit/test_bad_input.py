"""Unsafe or broken expressions and templates are refused at validation, on their line."""

from __future__ import annotations

import pytest

from tests.unit.journey_docs import HEAD, check, journey_doc, line_of, only_error

UNSAFE_EXPRESSIONS = [
    (
        "__import__('os').system('id')",
        "'__import__' is not allowed: names starting with '_' are private",
    ),
    ("event.__class__.__mro__", "'__class__' is not allowed: names starting with '_' are private"),
    ("'{0.__class__}'.format(event)", "method calls are not allowed: .format()"),
    ("rand() > 0.5", "unknown function 'rand'"),
    ("'a' * 10**9", "string result too long (max 10000 chars)"),
    ("10**10**10 > 1", "power too large: exponent 10000000000 exceeds 100"),
    ("vars.tags.append(1)", "method calls are not allowed: .append()"),
]


@pytest.mark.parametrize(("source", "message"), UNSAFE_EXPRESSIONS)
def test_unsafe_expression_is_refused_on_its_line(source: str, message: str) -> None:
    quoted = '"' + source.replace('"', '\\"') + '"'
    text = journey_doc(
        f"""
        - id: route
          branch:
            - when: {quoted}
              goto: done
        - id: done
          exit: ok
        """
    )
    violation = only_error(check(text))
    assert violation.code == "expression"
    assert violation.message == f"expression {source!r}: {message}"
    assert violation.line == line_of(text, "- when:")
    assert (violation.journey, violation.step) == ("j", "route")
    assert check(text).plans == {}


def test_unknown_function_hint_names_the_closest() -> None:
    text = journey_doc(
        """
        - id: route
          branch:
            - when: dayz_since(trigger.timestamp) > 3
              goto: done
        - id: done
          exit: ok
        """
    )
    violation = only_error(check(text))
    assert (
        violation.message
        == "expression 'dayz_since(trigger.timestamp) > 3': unknown function 'dayz_since'"
    )
    assert violation.hint == "did you mean 'days_since'?"


def test_unknown_context_name_in_an_entry_rule() -> None:
    text = journey_doc("- {id: done, exit: ok}").replace(
        "entry: {event: payment_failed}",
        "entry: {event: payment_failed, when: profil.segment == 'vip'}",
    )
    violation = only_error(check(text))
    assert violation.message == "expression \"profil.segment == 'vip'\": unknown name 'profil'"
    assert violation.hint == "did you mean 'profile'?"
    assert violation.line == line_of(text, "entry:")


def _with_template(sms: str) -> str:
    head = HEAD.replace('sms: "Hi {{ profile.first_name }}, {{ event.amount }}"', f"sms: {sms}")
    return journey_doc("- {id: hi, send: offer, channel: sms}", head=head)


@pytest.mark.parametrize(
    ("sms", "message"),
    [
        (
            "\"{{ ''.__class__.__mro__ }}\"",
            "'__class__' is not allowed: names starting with '_' are private",
        ),
        ('"Hi {{ first_name }}"', "unknown name 'first_name'"),
        ('"{{ vars.tags.append(1) }}"', "calls are not allowed in templates"),
        ('"{{ profile.first_name | shout }}"', "unknown filter 'shout'"),
    ],
)
def test_unsafe_or_broken_template_is_refused_on_its_line(sms: str, message: str) -> None:
    text = _with_template(sms)
    violation = only_error(check(text))
    assert violation.code == "template"
    assert violation.message == f"template 'offer' (sms), line 1: {message}"
    assert violation.line == line_of(text, "    sms:")


def test_template_syntax_error_reports_the_template_line() -> None:
    head = HEAD.replace(
        'sms: "Hi {{ profile.first_name }}, {{ event.amount }}"',
        "sms: |\n      Hi {{ profile.first_name }},\n      your total is {{ event.amount",
    )
    violation = only_error(check(journey_doc("- {id: hi, send: offer, channel: sms}", head=head)))
    assert violation.message.startswith("template 'offer' (sms), line 2: cannot parse template:")


def test_template_reading_a_property_the_event_lacks() -> None:
    text = _with_template('"Hi {{ event.amonut }}"')
    violation = only_error(check(text))
    assert violation.code == "event-property"
    assert (
        violation.message
        == "template 'offer' (sms): event 'payment_failed' has no property 'amonut'"
    )
    assert violation.hint == "did you mean 'amount'?"
    assert violation.line == line_of(text, "send: offer")


def test_review_title_template_is_checked() -> None:
    text = journey_doc(
        """
        - id: ask
          review: ops
          title: "Case {{ customer.idd }}"
          decisions: {approve: done}
        - id: done
          exit: ok
        """
    )
    violation = only_error(check(text))
    assert violation.message == "template: 'customer' has no 'idd'"
    assert violation.hint == "did you mean 'id'?"
