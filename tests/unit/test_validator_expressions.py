"""The validator on expressions and templates: unsafe or broken ones are refused, on their
line, with a message and hint the designer can act on."""

from __future__ import annotations

import pytest

from tests.unit.journey_docs import (
    HEAD,
    Refusal,
    assert_refused,
    check,
    journey_doc,
    line_of,
    only_error,
)

FUNCTIONS_HINT = "allowed functions: "  # the list follows
FILTERS_HINT = "available filters: "
NAMES_HINT = "available names: "

# (source, the refusal after "expression '<source>': ", how the hint starts or None)
UNSAFE_EXPRESSIONS = [
    pytest.param(
        "__import__('os').system('id')",
        "'__import__' is not allowed: names starting with '_' are private",
        None,
        id="dunder-import",
    ),
    pytest.param(
        "event.__class__.__mro__",
        "'__class__' is not allowed: names starting with '_' are private",
        None,
        id="dunder-attribute",
    ),
    pytest.param(
        "'{0.__class__}'.format(event)",
        "method calls are not allowed: .format()",
        FUNCTIONS_HINT,
        id="format-method",
    ),
    pytest.param("rand() > 0.5", "unknown function 'rand'", "did you mean 'round'?", id="rand"),
    pytest.param("'a' * 10**9", "string result too long (max 10000 chars)", None, id="huge-string"),
    pytest.param(
        "10**10**10 > 1",
        "power too large: exponent 10000000000 exceeds 100",
        None,
        id="huge-power",
    ),
    pytest.param(
        "vars.tags.append(1)",
        "method calls are not allowed: .append()",
        FUNCTIONS_HINT,
        id="append-method",
    ),
]


@pytest.mark.parametrize(("source", "message", "hint"), UNSAFE_EXPRESSIONS)
def test_unsafe_expression_is_refused_on_its_line(
    source: str, message: str, hint: str | None
) -> None:
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
    catalog = check(text)
    violation = only_error(catalog)
    assert violation.code == "expression"
    assert violation.message == f"expression {source!r}: {message}"
    if hint is None:
        assert violation.hint is None
    else:
        assert violation.hint is not None and violation.hint.startswith(hint)
    assert violation.line == line_of(text, "- when:")
    assert (violation.journey, violation.step) == ("j", "route")
    assert catalog.plans == {}


def _with_template(sms: str) -> str:
    head = HEAD.replace('sms: "Hi {{ profile.first_name }}, {{ event.amount }}"', f"sms: {sms}")
    return journey_doc("- {id: hi, send: offer, channel: sms}", head=head)


# (the sms template, the refusal after "template 'offer' (sms), line 1: ", the hint's start)
BROKEN_TEMPLATES = [
    pytest.param(
        "\"{{ ''.__class__.__mro__ }}\"",
        "'__class__' is not allowed: names starting with '_' are private",
        None,
        id="dunder-attribute",
    ),
    pytest.param('"Hi {{ first_name }}"', "unknown name 'first_name'", NAMES_HINT, id="bare-name"),
    pytest.param(
        '"{{ vars.tags.append(1) }}"',
        "calls are not allowed in templates",
        "use a filter instead, e.g. {{ name | upper }}",
        id="method-call",
    ),
    pytest.param(
        '"{{ profile.first_name | shout }}"',
        "unknown filter 'shout'",
        FILTERS_HINT,
        id="unknown-filter",
    ),
]


@pytest.mark.parametrize(("sms", "message", "hint"), BROKEN_TEMPLATES)
def test_unsafe_or_broken_template_is_refused_on_its_line(
    sms: str, message: str, hint: str | None
) -> None:
    text = _with_template(sms)
    violation = only_error(check(text))
    assert violation.code == "template"
    assert violation.message == f"template 'offer' (sms), line 1: {message}"
    if hint is None:
        assert violation.hint is None
    else:
        assert violation.hint is not None and violation.hint.startswith(hint)
    assert violation.line == line_of(text, "    sms:")


REFUSALS = [
    pytest.param(
        Refusal(
            journey_doc(
                """
                - id: route
                  branch:
                    - when: dayz_since(trigger.timestamp) > 3
                      goto: done
                - id: done
                  exit: ok
                """
            ),
            code="expression",
            message=(
                "expression 'dayz_since(trigger.timestamp) > 3': unknown function 'dayz_since'"
            ),
            hint="did you mean 'days_since'?",
            at="dayz_since",
            step="route",
        ),
        id="unknown-function-names-the-closest",
    ),
    pytest.param(
        Refusal(
            journey_doc("- {id: done, exit: ok}").replace(
                "entry: {event: payment_failed}",
                "entry: {event: payment_failed, when: profil.segment == 'vip'}",
            ),
            code="expression",
            message="expression \"profil.segment == 'vip'\": unknown name 'profil'",
            hint="did you mean 'profile'?",
            at="entry:",
        ),
        id="unknown-name-in-an-entry-rule",
    ),
    pytest.param(
        Refusal(
            _with_template('"Hi {{ event.amonut }}"'),
            code="event-property",
            message="template 'offer' (sms): event 'payment_failed' has no property 'amonut'",
            hint="did you mean 'amount'?",
            at="send: offer",
            step="hi",
        ),
        id="template-reads-a-property-the-event-lacks",
    ),
    pytest.param(
        Refusal(
            journey_doc(
                """
                - id: ask
                  review: ops
                  title: "Case {{ customer.idd }}"
                  decisions: {approve: done}
                - id: done
                  exit: ok
                """
            ),
            code="unknown-name",
            message="template: 'customer' has no 'idd'",
            hint="did you mean 'id'?",
            at="title:",
            step="ask",
        ),
        id="review-title-template-is-checked",
    ),
]


@pytest.mark.parametrize("case", REFUSALS)
def test_a_broken_expression_or_template_is_refused_with_one_precise_error(
    case: Refusal,
) -> None:
    assert_refused(case)


def test_template_syntax_error_reports_the_template_line() -> None:
    head = HEAD.replace(
        'sms: "Hi {{ profile.first_name }}, {{ event.amount }}"',
        "sms: |\n      Hi {{ profile.first_name }},\n      your total is {{ event.amount",
    )
    violation = only_error(check(journey_doc("- {id: hi, send: offer, channel: sms}", head=head)))
    assert violation.message.startswith("template 'offer' (sms), line 2: cannot parse template:")
