"""Journey templates: what customers receive, and what designers are stopped from writing."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from rules import FILTER_NAMES, RenderError, TemplateError, compile_template

PROFILE = {"first_name": "Ha-eun", "timezone": "Asia/Seoul"}


def render(source: str, context: dict[str, Any], *, html: bool = False, **options: Any) -> str:
    return compile_template(source, html=html).render(context, **options)


def rejection(source: str, *, html: bool = False, **options: Any) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        compile_template(source, html=html, **options)
    return caught.value


def render_failure(source: str, context: dict[str, Any], **options: Any) -> str:
    template = compile_template(source, html=False)
    with pytest.raises(RenderError) as caught:
        template.render(context, **options)
    return caught.value.message


# --- what is refused at compile time ----------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "{{ ''.__class__.__mro__ }}",
            "'__class__' is not allowed: names starting with '_' are private",
        ),
        (
            "{{ profile['__dict__'] }}",
            "'__dict__' is not allowed: names starting with '_' are private",
        ),
        ("{% set _secret = 1 %}", "'_secret' is not allowed: names starting with '_' are private"),
        ("{{ tags.append(1) }}", "calls are not allowed in templates"),
        ("{{ range(10) }}", "calls are not allowed in templates"),
        ("{{ lipsum() }}", "calls are not allowed in templates"),
        ("{{ profile.first_name.upper() }}", "calls are not allowed in templates"),
        ("{% include 'other.html' %}", "'{% include %}' is not allowed in templates"),
        ("{% import 'macros.html' as m %}", "'{% import %}' is not allowed in templates"),
        ("{% from 'm.html' import x %}", "'{% from ... import %}' is not allowed in templates"),
        ("{% extends 'base.html' %}", "'{% extends %}' is not allowed in templates"),
        ("{% macro greet() %}hi{% endmacro %}", "'{% macro %}' is not allowed in templates"),
        (
            "{% autoescape false %}{{ x }}{% endautoescape %}",
            "'{% autoescape %}' is not allowed in templates",
        ),
        ("{{ profile.first_name | safe }}", "unknown filter 'safe'"),
        ("{% if profile.age is nonsense %}{% endif %}", "unknown test 'nonsense'"),
    ],
)
def test_unsafe_templates_are_refused_with_a_precise_message(source: str, message: str) -> None:
    assert rejection(source).message == message


def test_unknown_name_is_refused_at_compile_time_with_a_hint() -> None:
    error = rejection("Hi {{ profle.first_name }},")
    assert error.message == "unknown name 'profle'"
    assert error.hint == "did you mean 'profile'?"
    assert error.line == 1


def test_unknown_filter_suggests_the_closest_one() -> None:
    error = rejection("{{ event.amount | mony('USD') }}")
    assert error.message == "unknown filter 'mony'"
    assert error.hint == "did you mean 'money'?"


def test_syntax_error_reports_the_line_inside_the_template() -> None:
    source = "<p>Hello {{ profile.first_name }}</p>\n<p>\n{% if event.amount > %}\n</p>"
    error = rejection(source, html=True)
    assert error.message == "cannot parse template: unexpected 'end of statement block'"
    assert error.line == 3


def test_unknown_name_reports_its_line() -> None:
    assert rejection("Hello\n\n{{ customr.email }}").line == 3


def test_names_defined_inside_the_template_are_not_context_names() -> None:
    template = compile_template(
        "{% for item in event.items %}{{ item.name }} {% endfor %}{% set total = 3 %}{{ total }}",
        html=False,
    )
    assert template.names == frozenset({"event"})
    assert template.attribute_paths == (("event", "items"),)


def test_compiled_template_lists_names_and_paths_in_source_order() -> None:
    template = compile_template(
        "{{ profile.first_name }}, {{ event.amount | money(event.currency) }} {{ vars['due'] }}",
        html=False,
    )
    assert template.names == frozenset({"profile", "event", "vars"})
    assert template.attribute_paths == (
        ("profile", "first_name"),
        ("event", "amount"),
        ("event", "currency"),
        ("vars", "due"),
    )


def test_filter_list_is_the_contracts_plus_safe_builtins() -> None:
    assert {"money", "date", "datetime", "default", "upper", "escape"} <= FILTER_NAMES
    assert not {"safe", "attr", "format", "map", "tojson", "pprint"} & FILTER_NAMES


# --- rendering --------------------------------------------------------------------------


def test_contract_sms_example_renders() -> None:
    sms = "{{ profile.first_name }}, we can move your due date to {{ vars.new_due }}."
    assert render(sms, {"profile": PROFILE, "vars": {"new_due": "June 3"}}) == (
        "Ha-eun, we can move your due date to June 3."
    )


def test_missing_attribute_fails_instead_of_rendering_a_blank() -> None:
    message = render_failure("Hi {{ profile.first_name }},", {"profile": {}})
    assert message == "template needs profile.first_name, which is missing"


def test_missing_context_name_fails_at_render() -> None:
    assert render_failure("Hi {{ profile.first_name }},", {}) == (
        "template needs profile, which is missing"
    )


def test_missing_nested_attribute_is_named_by_its_full_path() -> None:
    message = render_failure("{{ event.card.last4 }}", {"event": {"card": {}}})
    assert message == "template needs event.card.last4, which is missing"


def test_guarded_optional_attribute_is_blamed_correctly() -> None:
    source = "{% if profile.nickname is defined %}{{ profile.nickname }}{% else %}{{ profile.first_name }}{% endif %}"
    assert render(source, {"profile": {"first_name": "Ha-eun"}}) == "Ha-eun"
    assert render_failure(source, {"profile": {}}) == (
        "template needs profile.first_name, which is missing"
    )


def test_printing_none_fails_instead_of_rendering_none() -> None:
    message = render_failure("Hi {{ profile.first_name }},", {"profile": {"first_name": None}})
    assert message == "template would print None for profile.first_name"
    fallback = "Hi {{ profile.first_name or 'there' }},"
    assert render(fallback, {"profile": {"first_name": None}}) == "Hi there,"


def test_default_filter_covers_a_missing_attribute() -> None:
    assert render("Hi {{ profile.nickname | default('there') }}", {"profile": {}}) == "Hi there"


def test_html_templates_escape_and_text_templates_do_not() -> None:
    context = {"profile": {"first_name": "<b>Tom & Jerry</b>"}}
    source = "<p>{{ profile.first_name }}</p>"
    assert render(source, context, html=True) == "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>"
    assert render(source, context, html=False) == "<p><b>Tom & Jerry</b></p>"


def test_mapping_keys_win_over_dict_methods() -> None:
    context = {"event": {"items": ["a", "b"], "values": 3}}
    assert render("{{ event.items | join(', ') }} / {{ event.values }}", context) == "a, b / 3"


def test_output_longer_than_the_cap_is_refused() -> None:
    context = {"event": {"items": list(range(200))}}
    source = "{% for i in event.items %}{{ '0123456789' }}{% endfor %}"
    assert len(render(source, context, max_length=2000)) == 2000
    assert render_failure(source, context, max_length=1999) == (
        "rendered template is longer than 1999 characters"
    )


def test_string_repetition_is_capped() -> None:
    assert rejection("{{ 'a' * 1000000000 }}").message == (
        "string result too long (max 10000 chars) in '*'"
    )
    assert render_failure("{{ 'x' * event.n }}", {"event": {"n": 10**9}}) == (
        "string result too long (max 10000 chars) in '*'"
    )


def test_replace_cannot_blow_up_a_string() -> None:
    context = {"event": {"text": "a" * 2000}}
    assert render_failure("{{ event.text | replace('', 'xxxxxxxxxx') }}", context) == (
        "string result too long (max 10000 chars) in filter 'replace'"
    )
    assert render("{{ event.text | replace('a', 'b') | length }}", context) == "2000"


def test_percent_formatting_of_strings_is_refused() -> None:
    assert render_failure("{{ '%*d' % (1000000000, 1) }}", {}) == (
        "cannot render template: '%' works on numbers only (string formatting is not allowed)"
    )


def test_sandbox_refusals_are_render_errors() -> None:
    message = render_failure(
        "{{ event.items | join(attribute='__class__') }}", {"event": {"items": [1]}}
    )
    assert message.startswith("template is not allowed to do that: access to attribute '__class__'")


def test_unknown_render_timezone_is_a_render_error() -> None:
    assert render_failure("hi", {}, timezone="Mars/Olympus") == "unknown timezone 'Mars/Olympus'"


# --- filters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (12500, "KRW", "₩12,500"),
        (1234.5, "USD", "$1,234.50"),
        (-1234.5, "USD", "-$1,234.50"),
        (1234567.891, "EUR", "€1,234,567.89"),
        (0.005, "GBP", "£0.01"),
        (1999.6, "JPY", "¥2,000"),
        (99.99, "inr", "₹99.99"),
        (12.5, "XYZ", "12.50 XYZ"),
        ("1000", "USD", "$1,000.00"),
        (-0.001, "USD", "$0.00"),
    ],
)
def test_money_filter(amount: object, currency: str, expected: str) -> None:
    context = {"event": {"amount": amount, "currency": currency}}
    assert render("{{ event.amount | money(event.currency) }}", context) == expected


def test_money_defaults_to_usd() -> None:
    assert render("{{ event.amount | money }}", {"event": {"amount": 5}}) == "$5.00"


def test_money_refuses_a_non_number() -> None:
    assert render_failure("{{ event.amount | money }}", {"event": {"amount": "lots"}}) == (
        "cannot render template: money needs a number, got 'lots'"
    )


def test_date_and_datetime_filters_show_times_in_the_render_timezone() -> None:
    context = {"trigger": {"timestamp": "2024-05-01T23:30:00Z"}}
    assert render("{{ trigger.timestamp | date }}", context) == "2024-05-01"
    assert render("{{ trigger.timestamp | date }}", context, timezone="Asia/Seoul") == "2024-05-02"
    assert render("{{ trigger.timestamp | datetime }}", context, timezone="Asia/Seoul") == (
        "2024-05-02 08:30"
    )
    london = render(
        "{{ trigger.timestamp | datetime('%H:%M %Z') }}", context, timezone="Europe/London"
    )
    assert london == "00:30 BST"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2024, 5, 1, 23, 30, tzinfo=UTC), "02 May 2024"),
        (datetime(2024, 5, 1, 23, 30), "02 May 2024"),  # naive: taken as UTC
        (datetime(2024, 5, 1, 23, 30, tzinfo=UTC).timestamp(), "02 May 2024"),
        (date(2024, 5, 1), "01 May 2024"),  # a calendar date is never shifted
        ("2024-05-01", "01 May 2024"),
    ],
)
def test_date_filter_accepts_datetimes_dates_iso_strings_and_epoch_seconds(
    value: object, expected: str
) -> None:
    context = {"vars": {"due": value}}
    assert render("{{ vars.due | date('%d %b %Y') }}", context, timezone="Asia/Seoul") == expected


def test_date_filter_refuses_unreadable_values() -> None:
    assert render_failure("{{ vars.due | date }}", {"vars": {"due": "soon"}}) == (
        "cannot render template: date cannot read 'soon' as a time "
        "(expected ISO 8601, e.g. 2024-05-01T09:30:00Z)"
    )


def test_renders_with_different_timezones_do_not_share_state() -> None:
    template = compile_template("{{ trigger.timestamp | datetime('%H') }}", html=False)
    context = {"trigger": {"timestamp": "2024-05-01T00:00:00Z"}}
    assert template.render(context, timezone="Asia/Seoul") == "09"
    assert template.render(context) == "00"
    assert template.render(context, timezone="America/Los_Angeles") == "17"
