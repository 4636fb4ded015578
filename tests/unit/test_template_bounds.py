"""Template rendering bounds: however a template is written, one modest event cannot make
it build a huge string or run for long; each cap fails the render with a message that
names it (and the send with a non-retryable template error)."""

from __future__ import annotations

import itertools
import json
import signal
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, given, note, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.messaging import MessagingActivities
from engine.database import session_scope, upsert_profile
from engine.errors import ErrorType
from engine.payloads import SendMessageInput
from rules import RenderError, TemplateError, compile_template
from rules.templates import MAX_RENDER_CHARACTERS, MAX_RENDER_STEPS
from tests.database import fresh_engine
from tests.unit.journey_docs import check, journey_doc

TOO_LONG = "string result too long (max 10000 chars)"
TOO_MANY_STEPS = (
    f"template rendering took more than {MAX_RENDER_STEPS} steps"
    " (loop iterations, operators, filters and printed values)"
)
TOO_MANY_CHARACTERS = f"template rendering built more than {MAX_RENDER_CHARACTERS} characters"


def render(source: str, context: dict[str, Any], *, html: bool = False) -> str:
    return compile_template(source, html=html).render(context)


def failure(source: str, context: dict[str, Any], *, html: bool = False) -> str:
    template = compile_template(source, html=html)
    with pytest.raises(RenderError) as caught:
        template.render(context)
    return caught.value.message


def failure_and_peak(source: str, context: dict[str, Any]) -> tuple[str, int]:
    """The render's error, and the most memory it held at once (bytes)."""
    template = compile_template(source, html=False)
    tracemalloc.start()
    try:
        with pytest.raises(RenderError) as caught:
            template.render(context)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return caught.value.message, peak


def rejection(source: str) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        compile_template(source, html=False)
    return caught.value


def doubling(operator: str, times: int) -> str:
    """``{% set v1 = event.s ~ event.s %}{% set v2 = v1 ~ v1 %}...{{ vN | length }}``."""
    sets = [f"{{% set v1 = event.s {operator} event.s %}}"]
    sets += [f"{{% set v{i} = v{i - 1} {operator} v{i - 1} %}}" for i in range(2, times + 1)]
    return "".join(sets) + f"{{{{ v{times} | length }}}}"


# --- every operation that builds a string is capped ----------------------------------


def test_concatenation_cannot_double_a_string_again_and_again() -> None:
    event = {"event": {"s": "x" * 1000}}
    assert render(doubling("~", 3), event) == "8000"
    message, peak = failure_and_peak(doubling("~", 30), event)
    assert message == f"{TOO_LONG} in '~'"
    assert peak < 1_000_000


def test_plus_is_capped_like_tilde() -> None:
    assert failure(doubling("+", 30), {"event": {"s": "x" * 1000}}) == f"{TOO_LONG} in '+'"


def test_join_refuses_a_long_separator_between_many_items_before_building_it() -> None:
    context = {"event": {"items": list(range(50_000)), "sep": "-" * 1000}}
    message, peak = failure_and_peak("{{ event.items | join(event.sep) }}", context)
    assert message == f"{TOO_LONG} in join"
    assert peak < 1_000_000
    assert render("{{ event.items[:3] | join(', ') }}", context) == "0, 1, 2"


def test_join_refuses_a_list_the_template_repeated() -> None:
    context = {"event": {"items": list(range(50_000))}}
    message, peak = failure_and_peak("{{ ([event.items] * 1000) | join }}", context)
    assert message == f"{TOO_LONG} in join"
    assert peak < 2_000_000


def test_a_set_block_filled_by_a_loop_is_capped() -> None:
    source = (
        "{% set rows %}{% for i in event.items %}<tr>{{ event.s }}</tr>{% endfor %}{% endset %}"
        "{{ rows | length }}"
    )
    assert render(source, {"event": {"items": list(range(10)), "s": "x" * 100}}) == "1090"
    assert failure(source, {"event": {"items": list(range(100)), "s": "x" * 200}}) == (
        f"{TOO_LONG} in a {{% set %}} or {{% filter %}} block"
    )


def test_a_filter_block_is_capped() -> None:
    source = "{% filter upper %}{% for i in event.items %}{{ event.s }}{% endfor %}{% endfilter %}"
    assert failure(source, {"event": {"items": list(range(100)), "s": "x" * 200}}) == (
        f"{TOO_LONG} in a {{% set %}} or {{% filter %}} block"
    )


def test_a_filter_may_keep_a_long_value_but_not_grow_one_past_the_cap() -> None:
    long_text = "a" * 20_000
    assert render("{{ event.text | upper | length }}", {"event": {"text": long_text}}) == "20000"
    assert failure("{{ event.text | e }}", {"event": {"text": "<" * 5000}}) == (
        f"{TOO_LONG} in filter 'e'"
    )
    assert failure("{{ event.text | replace('', '--') }}", {"event": {"text": "ab" * 2000}}) == (
        f"{TOO_LONG} in filter 'replace'"
    )


def test_a_date_format_cannot_blow_up() -> None:
    context = {"now": datetime(2026, 1, 1, tzinfo=UTC)}
    assert failure("{{ now | date('%c' * 2000) }}", context) == f"{TOO_LONG} in filter 'date'"


def test_a_list_the_template_repeated_is_not_turned_into_text() -> None:
    context = {"event": {"items": list(range(50_000))}}
    source = "{% set pages = [event.items] * 1000 %}"
    assert render(source + "{{ pages | length }}", context) == "1000"
    assert failure(source + "{{ pages ~ '' }}", context) == f"{TOO_LONG} in '~'"
    assert failure(source + "{{ pages | upper }}", context) == f"{TOO_LONG} in filter 'upper'"
    message, peak = failure_and_peak(source + "{{ pages }}", context)
    assert message == TOO_MANY_CHARACTERS
    assert peak < 2_000_000


def test_squaring_a_number_again_and_again_is_capped() -> None:
    sets = "".join(f"{{% set n{i} = n{i - 1} * n{i - 1} %}}" for i in range(1, 12))
    source = "{% set n0 = event.n %}" + sets + "{{ n11 > 0 }}"
    assert failure(source, {"event": {"n": 10**100}}) == (
        "number too large: the result of '*' would have more than 300 digits"
    )
    assert render("{{ event.n * event.n }}", {"event": {"n": 10**100}}) == str(10**200)


# --- one budget per render --------------------------------------------------------------


def test_nested_loops_run_out_of_steps() -> None:
    source = "{% for a in event.s %}{% for b in event.s %}{% endfor %}{% endfor %}done"
    assert render(source, {"event": {"s": "q" * 100}}) == "done"
    assert failure(source, {"event": {"s": "q" * 3000}}) == TOO_MANY_STEPS


def test_a_loop_that_builds_strings_runs_out_of_characters() -> None:
    source = "{% for i in event.items %}{% set t = event.s ~ event.s %}{% endfor %}done"
    assert failure(source, {"event": {"items": list(range(1000)), "s": "x" * 4000}}) == (
        TOO_MANY_CHARACTERS
    )


@pytest.mark.parametrize(
    "test", ["a in event.items", "a not in event.items", "a is in event.items"]
)
def test_searching_a_long_list_inside_a_loop_is_charged(test: str) -> None:
    source = f"{{% for a in event.items %}}{{% if {test} %}}{{% endif %}}{{% endfor %}}done"
    assert render(source, {"event": {"items": list(range(100))}}) == "done"
    assert failure(source, {"event": {"items": list(range(5000))}}) == TOO_MANY_CHARACTERS


def test_printing_inside_a_loop_is_charged_even_when_nothing_reaches_the_output() -> None:
    source = "{% set x %}{% for i in event.items %}{{ event.s }}{% endfor %}{% endset %}done"
    assert failure(source, {"event": {"items": list(range(2000)), "s": "x" * 1000}}) == (
        TOO_MANY_CHARACTERS
    )


def test_the_budget_is_per_render() -> None:
    template = compile_template("{% for i in event.items %}{% endfor %}done", html=False)
    context = {"event": {"items": list(range(MAX_RENDER_STEPS * 3 // 4))}}
    assert [template.render(context) for _ in range(3)] == ["done"] * 3


def test_an_email_listing_hundreds_of_items_is_well_within_the_budget() -> None:
    source = (
        "<ul>{% for item in event.items %}<li>{{ loop.index }}. {{ item.name | title }}"
        " x{{ item.quantity }}: {{ (item.price * item.quantity) | money('EUR') }}"
        "{{ ' (gift)' if item.name in event.gifts }}</li>{% endfor %}</ul>"
    )
    items = [{"name": f"item {n}", "quantity": n % 4 + 1, "price": 9.5} for n in range(500)]
    html = render(source, {"event": {"items": items, "gifts": ["item 7"]}}, html=True)
    assert html.count("<li>") == 500
    assert "<li>8. Item 7 x4: €38.00 (gift)</li>" in html


# --- refused when the journeys file is validated --------------------------------------


def test_loops_nested_more_than_three_deep_are_refused() -> None:
    three = (
        "{% for a in event.x %}{% for b in a.y %}{% for c in b.z %}{{ c }}"
        "{% endfor %}{% endfor %}{% endfor %}"
    )
    compile_template(three, html=False)
    four = (
        "{% for a in event.x %}{% for b in a.y %}\n{% if b %}{% for c in b.z %}"
        "{% for d in c %}{{ d }}{% endfor %}{% endfor %}{% endif %}{% endfor %}{% endfor %}"
    )
    error = rejection(four)
    assert error.message == (
        "'{% for %}' loops nested 4 deep are not allowed (at most 3: each level multiplies "
        "the work)"
    )
    assert error.line == 2


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ '=' * 20000 }}", f"{TOO_LONG} in '*'"),
        ("{{ 'ab' * 10 ** 6 }}", f"{TOO_LONG} in '*'"),
        ("{% set bar = ('x' * 6000) ~ ('y' * 6000) %}", f"{TOO_LONG} in '~'"),
        ("{{ [0] * 5000 }}", "list result too long (max 1000 items) in '*'"),
        ("{{ 2 ** 1000 }}", "power too large: exponent 1000 exceeds 100"),
        (
            "{{ (10 ** 100) * (10 ** 100) * (10 ** 100) * (10 ** 100) }}",
            "number too large: the result of '*' would have more than 300 digits",
        ),
    ],
)
def test_literal_parts_that_break_a_cap_are_refused(source: str, message: str) -> None:
    assert rejection("hello\n" + source).message == message
    assert rejection("hello\n" + source).line == 2


def test_range_cannot_be_called_at_all() -> None:
    source = "{% for i in range(event.n) %}{{ i }}{% endfor %}"
    assert rejection(source).message == "calls are not allowed in templates"


@pytest.mark.parametrize("name", ["center", "indent", "wordwrap", "format"])
def test_padding_and_formatting_filters_are_not_available(name: str) -> None:
    assert rejection(f"{{{{ event.s | {name}(10 ** 9) }}}}").message == f"unknown filter '{name}'"


def test_repetition_by_a_number_from_the_event_is_left_to_the_render() -> None:
    source = "{{ '★' * event.rating }}"
    assert render(source, {"event": {"rating": 4}}) == "★★★★"
    assert failure(source, {"event": {"rating": 10**9}}) == f"{TOO_LONG} in '*'"


def test_the_validator_reports_a_template_that_breaks_a_cap() -> None:
    head = (
        "version: 1\nevents:\n  payment_failed: {amount: number}\n"
        'channels:\n  sms: "${JOURNEYS_SMS_URL}"\n'
        "templates:\n  offer:\n    sms: \"{{ '=' * 20000 }}\"\n"
    )
    text = journey_doc("- id: hello\n  send: offer\n  channel: sms\n", head=head)
    [violation] = [v for v in check(text).violations if v.code == "template"]
    assert violation.message == f"template 'offer' (sms), line 1: {TOO_LONG} in '*'"


# --- a send whose template breaks a cap fails once, as a template error ----------------


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Engine]:
    engine = fresh_engine(tmp_path)
    with session_scope(engine) as session:
        upsert_profile(session, customer_id="c9", traits={"email": "dana@example.com"})
    yield engine
    engine.dispose()


def test_a_send_whose_template_breaks_a_cap_is_a_non_retryable_template_error(
    db: Engine,
) -> None:
    request = SendMessageInput(
        workflow_id="journey/statements/c9",
        run_id="run-1",
        journey_id="statements",
        step_id="notice",
        visit=1,
        template="notice",
        forms={"email.subject": "Notice", "email.text": "{{ event.items | join(event.sep) }}"},
        context={
            "customer": {"id": "c9"},
            "profile": {},
            "event": {"items": list(range(50_000)), "sep": "-" * 1000},
        },
        timezone="UTC",
        channel="email",
    )
    with pytest.raises(ApplicationError) as caught:
        ActivityEnvironment().run(MessagingActivities(db=db).send_message, request)
    assert caught.value.type == ErrorType.TEMPLATE_ERROR
    assert caught.value.non_retryable
    assert caught.value.message == (
        f"template 'notice' cannot be rendered for email: {TOO_LONG} in join"
    )


# --- no small template of risky constructs holds much memory or runs long -------------

MAX_TEMPLATE = 2048
MAX_EVENT = 256 * 1024
MAX_PEAK = 50 * 1024 * 1024

REPEAT_COUNTS = ["event.n", "10 ** 9", "1000", "3"]
FILTERS = [
    "upper", "e", "title", "trim", "lower", "capitalize", "length", "first", "last",
    "truncate(10 ** 9)", "join", "join(event.sep)", "replace('', event.sep)",
    "replace('a', event.s)", "default(event.s)", "date('%c' * 1000)",
]  # fmt: skip


class _Grammar:
    """Draws templates from constructs that build strings or repeat work: ``~``, ``+``,
    ``*``, lists, joins, replaces and other filters, slices, ``in``, ``{% set %}``
    (values and blocks), ``{% filter %}`` blocks and nested ``{% for %}`` loops."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.names = itertools.count()

    def expression(self, names: list[str], depth: int) -> str:
        if depth <= 0 or self.draw(st.booleans()):
            if names and self.draw(st.booleans()):  # reuse what was built: growth compounds
                return self.draw(st.sampled_from(names))
            return self.draw(st.sampled_from(["event.s", "event.sep", "event.items"]))
        a = self.expression(names, depth - 1)
        b = self.expression(names, depth - 1)
        forms = [
            f"({a} ~ {b})",
            f"({a} + {b})",
            f"({a} * {self.draw(st.sampled_from(REPEAT_COUNTS))})",
            f"[{a}, {b}]",
            f"([{a}] * 1000)",
            f"({a} | join({b}))",
            f"({a} ~ {a})",
            f"({a} | {self.draw(st.sampled_from(FILTERS))})",
            f"{a}[1:]",
        ]
        return self.draw(st.sampled_from(forms))

    def block(self, names: list[str], depth: int) -> str:
        names = list(names)
        parts = []
        for _ in range(self.draw(st.integers(1, 5))):
            kind = self.draw(st.sampled_from(["set", "print", "for", "set-block", "filter", "in"]))
            if kind == "print":
                parts.append(f"{{{{ {self.expression(names, 3)} }}}}")
            elif kind == "set":
                name = f"v{next(self.names)}"
                parts.append(f"{{% set {name} = {self.expression(names, 3)} %}}")
                names.append(name)
            elif kind == "in":
                test = f"{self.expression(names, 1)} in {self.expression(names, 1)}"
                parts.append(f"{{% if {test} %}}x{{% endif %}}")
            elif depth > 0 and kind == "for":
                name = f"x{next(self.names)}"
                body = self.block([*names, name], depth - 1)
                over = self.expression(names, 1)
                parts.append(f"{{% for {name} in {over} %}}{body}{{% endfor %}}")
            elif depth > 0 and kind == "set-block":
                name = f"v{next(self.names)}"
                parts.append(f"{{% set {name} %}}{self.block(names, depth - 1)}{{% endset %}}")
                names.append(name)
            elif depth > 0:
                parts.append(f"{{% filter upper %}}{self.block(names, depth - 1)}{{% endfilter %}}")
        return "".join(parts)


@st.composite
def risky_templates(draw: st.DrawFn) -> str:
    source = _Grammar(draw).block([], 3)
    assume(len(source.encode()) <= MAX_TEMPLATE)
    return source


events = st.fixed_dictionaries(
    {
        "s": st.sampled_from([30_000, 3000, 3, 0]).map(lambda n: "<a&" * n),
        "sep": st.sampled_from([5000, 1000, 1, 0]).map(lambda n: "-" * n),
        "items": st.sampled_from([20_000, 1000, 3, 0]).map(lambda n: list(range(n))),
        "n": st.sampled_from([0, 3, 1000, 10**9, 10**100]),
    }
)
MAX_SECONDS = 10  # a bounded render takes well under a second; unbounded ones run for hours


class TooSlow(BaseException):  # not an Exception: render() turns those into RenderError
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def interrupt(signum: int, frame: object) -> None:
        raise TooSlow

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.slow  # in `make test`; over 2 s, out of `make test-fast`
@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # failing renders take seconds: no shrinking
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(source=risky_templates(), event=events, html=st.booleans())
def test_no_small_template_holds_more_than_50_mb_or_runs_long_on_a_modest_event(
    source: str, event: dict[str, Any], html: bool
) -> None:
    assume(len(json.dumps(event)) <= MAX_EVENT)
    note(f"html={html} template={source!r}")
    note(f"event sizes: { {key: len(str(value)) for key, value in event.items()} }")
    try:
        template = compile_template(source, html=html)
    except TemplateError:
        return  # refused when the file is validated: never rendered
    context = {"event": event}
    tracemalloc.start()
    try:
        with time_limit(MAX_SECONDS):
            template.render(context)
    except RenderError as error:
        assert "MemoryError" not in error.message
    except TooSlow:
        pytest.fail(f"the render ran for more than {MAX_SECONDS} s")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak <= MAX_PEAK, f"{peak / 1e6:.0f} MB"
