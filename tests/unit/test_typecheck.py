"""Type-checked expressions (issue #17, item 2): the validator infers types from the event
schemas, the profile's declared traits, the `vars` a journey writes, model results and the
functions' signatures, and refuses what can never work, on its line and column, with a
hint. What it cannot know is `any` and never an error."""

from __future__ import annotations

import ast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.typecheck import (
    ANY,
    BOOL,
    LIST,
    MODEL_RESULT,
    NUMBER,
    STRING,
    Scope,
    Type,
    check_expression,
    check_template,
    expression_type,
)
from tests.unit.journey_docs import (
    HEAD,
    Refusal,
    assert_refused,
    check,
    journey_doc,
    line_of,
    only_error,
)

PROFILE_HEAD = HEAD.replace(
    "templates:",
    "profile:\n  vip: boolean\n  tier: string\n  balance: {type: number, personal: pii}\n"
    "  contact: email\ntemplates:",
)


def branch_doc(when: str, *, head: str = HEAD, before: str = "") -> str:
    """A journey whose branch step `b` has one rule, ``when``."""
    return journey_doc(
        before
        + f"""
- id: b
  branch:
    - when: {when}
      goto: done
- id: done
  exit: done
""",
        head=head,
    )


def column_of(text: str, marker: str) -> int:
    """1-based column of ``marker`` on the first line holding it."""
    line = next(line for line in text.splitlines() if marker in line)
    return line.index(marker) + 1


def refusal(
    when: str,
    message: str,
    hint: str,
    *,
    head: str = HEAD,
    before: str = "",
    part: str | None = None,
) -> Refusal:
    """The refusal of ``when``, at the column of ``part`` inside it (default: its start)."""
    text = branch_doc(when, head=head, before=before)
    return Refusal(
        text=text,
        code="type-mismatch",
        message=f"expression {when!r}: {message}",
        hint=hint,
        at=f"when: {when}",
        step="b",
        column=column_of(text, when) + (when.index(part) if part else 0),
    )


# ----------------------------------------------------------------------------- one per class


def test_a_string_compared_with_a_number_is_refused() -> None:
    assert_refused(
        refusal(
            "event.currency > 100",
            "'>' compares event.currency (a string) with 100 (a number): never true",
            "compare a string with a string; check the declared types",
        )
    )


def test_equality_between_incompatible_types_is_never_true_and_inequality_always() -> None:
    assert_refused(
        refusal(
            "event.amount != 'high'",
            "'!=' compares event.amount (a number) with 'high' (a string): always true",
            "compare a number with a number; check the declared types",
        )
    )


def test_arithmetic_between_a_number_and_a_string_is_refused() -> None:
    assert_refused(
        refusal(
            "event.amount + event.currency > 100",
            "'+' between event.amount (a number) and event.currency (a string) always fails",
            "arithmetic needs numbers on both sides; + also joins two strings or two lists",
        )
    )


def test_an_attribute_of_a_scalar_is_refused() -> None:
    assert_refused(
        refusal(
            "event.currency.code == 'USD'",
            "event.currency is a string: it has no attribute 'code' (always missing)",
            "only objects have attributes; use event.currency itself",
        )
    )


def test_in_on_a_number_is_refused() -> None:
    assert_refused(
        refusal(
            "500 in event.amount",
            "'in' needs a list, string or object on its right; event.amount is a number",
            "use == to compare values, or a list: x in [1, 2]",
            part="event.amount",  # the column points inside the expression, at the number
        )
    )


def test_a_number_looked_for_in_a_string_is_refused() -> None:
    assert_refused(
        refusal(
            "event.amount in event.currency",
            "'in' looks for event.amount (a number) in event.currency (a string): never true",
            "only text can be found in a string",
        )
    )


def test_a_model_result_used_as_a_number_says_which_field() -> None:
    score = """
- id: s
  score: default_risk
  features: {amount: event.amount}
"""
    assert_refused(
        refusal(
            "scores.default_risk >= 0.7",
            "scores.default_risk is a model result, not a number",
            "did you mean `scores.default_risk.score`?",
            before=score,
        )
    )


def test_a_model_result_in_arithmetic_says_which_field() -> None:
    assert_refused(
        refusal(
            "scores.default_risk * 100 > 70",
            "scores.default_risk is a model result, not a number",
            "did you mean `scores.default_risk.score`?",
        )
    )


def test_a_function_given_the_wrong_type_is_refused() -> None:
    assert_refused(
        refusal(
            "lower(event.amount) == 'x'",
            "lower() needs a string; event.amount is a number",
            "give lower() a string",
            part="event.amount",
        )
    )


def test_profile_traits_are_typed_by_their_declaration() -> None:
    assert_refused(
        refusal(
            "profile.tier > 3",
            "'>' compares profile.tier (a string) with 3 (a number): never true",
            "compare a string with a string; check the declared types",
            head=PROFILE_HEAD,
        )
    )
    assert_refused(
        refusal(
            "profile.balance.cents > 3",
            "profile.balance is a number: it has no attribute 'cents' (always missing)",
            "only objects have attributes; use profile.balance itself",
            head=PROFILE_HEAD,
        )
    )


def test_vars_are_typed_by_the_set_steps_that_write_them() -> None:
    before = """
- id: note
  set:
    vars.label: upper(event.currency)
"""
    assert_refused(
        refusal(
            "vars.label >= 10",
            "'>=' compares vars.label (a string) with 10 (a number): never true",
            "compare a string with a string; check the declared types",
            before=before,
        )
    )


def test_the_column_points_at_the_expression_in_a_flow_mapping() -> None:
    text = journey_doc(
        """
- {id: b, branch: [{when: event.currency > 100, goto: done}]}
- {id: done, exit: done}
"""
    )
    (violation,) = [v for v in check(text).violations if v.code == "type-mismatch"]
    assert (violation.line, violation.column) == (
        text.splitlines().index(next(line for line in text.splitlines() if "{id: b" in line)) + 1,
        column_of(text, "event.currency > 100"),
    )


# ----------------------------------------------------------------------------- conservative


@pytest.mark.parametrize(
    "when",
    [
        "profile.segment > 3",  # an undeclared trait is any
        "profile.vip > 0",  # a boolean is a number in arithmetic and order
        "profile.tier == 'gold'",
        "profile.contact != ''",  # email is a string
        "profile.balance > 100",  # a personal number is still a number
        "event.amount > 100 and event.currency == 'USD'",
        "event.amount == None",  # None is compared with anything (it is never equal)
        "coalesce(event.amount, 0) * 2 > 10",
        "round(event.amount / 3, 2) >= 1",
        "days_since(trigger.timestamp) > 3",
        "trigger.timestamp < now",
        "len(event.currency) == 3",
        "event.currency in ['USD', 'EUR']",
        "'US' in event.currency",
        "event.currency[0] == 'U'",
        "scores.default_risk.score >= 0.7",
        "scores.default_risk.fallback_used == True",
        "vars.anything > 1",
        "event.amount * 'x' == 'xx'",  # works: repetition (a strange but real string)
        "-event.amount < 0",
        "min(event.amount, 5) < 3",
        "True + 1 == 2",
        "[1] + [2] == [1, 2]",
        "now - trigger.timestamp",  # a timestamp may be a datetime at run time
    ],
)
def test_what_can_work_is_not_refused(when: str) -> None:
    text = branch_doc(when, head=PROFILE_HEAD)
    assert [v.format() for v in check(text).violations if v.code == "type-mismatch"] == []


def test_a_var_written_two_ways_is_any() -> None:
    before = """
- id: one
  set:
    vars.x: event.currency
- id: two
  set:
    vars.x: event.amount
"""
    text = branch_doc("vars.x > 3", before=before)
    assert [v for v in check(text).violations if v.code == "type-mismatch"] == []


def test_an_event_without_a_schema_is_any() -> None:
    head = HEAD.replace("  payment_received: {amount: number}\n", "")
    text = journey_doc(
        """
- id: w
  wait: {event: payment_received, within: 3d}
- id: b
  branch:
    - {when: event.amount.x > 'a', goto: done}
- id: done
  exit: done
""",
        head=head.replace("events:\n", "events:\n  other: {a: string}\n"),
    )
    assert [v for v in check(text).violations if v.code == "type-mismatch"] == []


def test_events_that_disagree_on_a_property_make_it_any() -> None:
    head = HEAD.replace("payment_received: {amount: number}", "payment_received: {amount: string}")
    text = journey_doc(
        """
- id: w
  wait: {event: payment_received, within: 3d}
  on_timeout: b
- id: b
  branch:
    - {when: event.amount > 3, goto: done}
- id: done
  exit: done
""",
        head=head,
    )
    violations = [v for v in check(text).violations if v.code == "type-mismatch"]
    assert violations == []


def test_after_a_wait_the_awaited_events_schema_types_event() -> None:
    head = HEAD.replace("payment_received: {amount: number}", "payment_received: {amount: string}")
    text = journey_doc(
        """
- id: w
  wait: {event: payment_received, within: 3d}
- id: b
  branch:
    - {when: event.amount > 3, goto: done}
- id: done
  exit: done
""",
        head=head,
    )
    (violation,) = [v for v in check(text).violations if v.code == "type-mismatch"]
    assert violation.message.endswith(
        "'>' compares event.amount (a string) with 3 (a number): never true"
    )


# ----------------------------------------------------------------------------- the functions

SCOPE = Scope(
    {
        "event": Type("object", {"amount": NUMBER, "currency": STRING, "tags": LIST}),
        "scores": Type("object", {"risk": MODEL_RESULT}),
        "profile": Type("object", {"vip": BOOL}),
    }
)


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("event.amount * 2", NUMBER),
        ("upper(event.currency)", STRING),
        ("event.currency + 'x'", STRING),
        ("event.amount > 1", BOOL),
        ("scores.risk", MODEL_RESULT),
        ("scores.risk.score", NUMBER),
        ("coalesce(event.amount, 1)", NUMBER),
        ("event.amount if profile.vip else event.currency", ANY),
        ("vars.nothing", ANY),
    ],
)
def test_expression_types(source: str, kind: Type) -> None:
    assert expression_type(source, SCOPE).kind == kind.kind


def test_the_problem_column_is_the_offending_part_within_the_expression() -> None:
    (problem,) = check_expression("  1 < 2 and event.currency > 100", SCOPE)
    assert problem.column == len("  1 < 2 and ")


EXPRESSION_PARTS = st.sampled_from(
    [
        "event",
        "event.amount",
        "event.currency",
        "event.tags",
        "scores.risk",
        "scores.risk.score",
        "profile.vip",
        "vars.x",
        "now",
        "1",
        "0.5",
        "'a'",
        "None",
        "True",
        "[1, 'a']",
        "{'k': 1}",
        "len(event.tags)",
        "round(event.amount, 'x')",
        "min()",
        "coalesce()",
        "event[0]",
        "event.currency[1:]",
    ]
)
BINARY = st.sampled_from(
    [
        " + ",
        " - ",
        " * ",
        " / ",
        " // ",
        " % ",
        " ** ",
        " < ",
        " == ",
        " != ",
        " in ",
        " not in ",
        " and ",
        " or ",
        " >= ",
        " & ",
        " is ",
    ]
)


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> str:
    if depth > 3 or draw(st.booleans()):
        return draw(EXPRESSION_PARTS)
    shape = draw(st.integers(0, 6))
    left = draw(expressions(depth + 1))
    right = draw(expressions(depth + 1))
    if shape == 0:
        return f"({left}){draw(BINARY)}({right})"
    if shape == 1:
        return f"-({left})"
    if shape == 2:
        function = draw(st.sampled_from(["lower", "len", "round", "abs", "days_since", "max"]))
        return f"{function}({left}, {right})" if draw(st.booleans()) else f"{function}({left})"
    if shape == 3:
        return f"({left}).{draw(st.sampled_from(['x', 'score', 'amount']))}"
    if shape == 4:
        return f"({left})[{right}]"
    if shape == 5:
        return f"({left}) if ({right}) else ({left})"
    return f"not ({left})"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions())
def test_the_checker_never_raises_on_generated_expressions(source: str) -> None:
    ast.parse(source, mode="eval")  # the generator makes Python, checked or not
    for problem in check_expression(source, SCOPE):
        assert 0 <= problem.column <= len(source)
    expression_type(source, SCOPE)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_the_checker_never_raises_on_any_text(source: str) -> None:
    check_expression(source, SCOPE)
    expression_type(source, SCOPE)
    check_template(source, SCOPE)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from([*"()[]{}.,:+-*/%<>=!'\" |~ae1", " ", "event", " in ", "not "]),
        max_size=60,
    ).map("".join)
)
def test_the_checker_never_raises_on_expression_like_text(source: str) -> None:
    check_expression(source, SCOPE)
    check_template("{{ " + source + " }}", SCOPE)


# ----------------------------------------------------------------------------- decision tables


def table_doc(inputs: str, cell: str) -> str:
    return journey_doc(
        f"""
- id: s
  score: default_risk
  features: {{amount: event.amount}}
- id: choose
  decide:
    inputs: {{{inputs}}}
    rules:
      - when: {{x: {cell}}}
        goto: done
    else: done
- id: done
  exit: done
"""
    )


def table_refusal(inputs: str, cell: str, message: str, hint: str) -> Refusal:
    text = table_doc(inputs, cell)
    return Refusal(
        text=text,
        code="type-mismatch",
        message=message,
        hint=hint,
        at=f"when: {{x: {cell}}}",
        step="choose",
        column=column_of(text, cell),
    )


def test_a_number_cell_on_a_model_result_input_says_which_field() -> None:
    assert_refused(
        table_refusal(
            "x: scores.default_risk",
            '">= 0.7"',
            "input 'x' (scores.default_risk) is a model result: the cell '>= 0.7' tests for "
            "a number and never matches",
            "did you mean `scores.default_risk.score`?",
        )
    )


def test_a_text_cell_on_a_number_input_is_refused() -> None:
    assert_refused(
        table_refusal(
            "x: event.amount",
            "'\"high\"'",
            "input 'x' (event.amount) is a number: the cell '\"high\"' tests for a string "
            "and never matches",
            "test a number input with a comparison, an interval or numbers: < 0.3, 1, 2",
        )
    )


@pytest.mark.parametrize(
    ("inputs", "cell"),
    [
        ("x: scores.default_risk.score", '"[0.3..0.7)"'),
        ("x: event.currency", '\'"USD", "EUR"\''),
        ("x: event.amount", "\"1, 2, 'x'\""),  # one literal may match
        ("x: profile.segment", '"< 3"'),  # any
        ("x: event.currency", '"-"'),
    ],
)
def test_cells_that_may_match_are_not_refused(inputs: str, cell: str) -> None:
    text = table_doc(inputs, cell)
    assert [v.format() for v in check(text).violations if v.code == "type-mismatch"] == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions())
def test_the_validator_never_fails_on_generated_expressions(source: str) -> None:
    text = branch_doc(repr(source), head=PROFILE_HEAD)
    violations = check(text).violations
    assert [v.format() for v in violations if v.code == "internal"] == []


@pytest.mark.parametrize(
    ("written", "shift"),
    [
        ("when: 500 in event.amount", 6 + 7),  # plain: the value starts after `when: `
        ("when: '500 in event.amount'", 7 + 7),  # quoted: after the quote
        ('when: "500 in event.amount"', 7 + 7),
    ],
)
def test_the_column_points_inside_the_expression_as_written(written: str, shift: int) -> None:
    text = branch_doc("500 in event.amount").replace("when: 500 in event.amount", written)
    violation = only_error(check(text))
    assert violation.column == column_of(text, written) + shift


def test_an_expression_not_held_verbatim_is_reported_at_its_start() -> None:
    """A block scalar (or a quoted one with escapes) is not the source character for
    character: the column is the value's own."""
    plain = branch_doc("500 in event.amount")
    text = plain.replace("when: 500 in event.amount", "when: >-\n              500 in event.amount")
    violation = only_error(check(text))
    assert (violation.line, violation.column) == (line_of(text, "when: >-"), column_of(text, ">-"))
