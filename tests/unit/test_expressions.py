"""Journey expressions: what designers may write, what they get back, and what is refused."""

from __future__ import annotations

import contextlib
import pickle
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import (
    CONTEXT_NAMES,
    FUNCTION_NAMES,
    EvaluationError,
    ExpressionError,
    compile_expression,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def evaluate(source: str, context: dict[str, Any] | None = None, **options: Any) -> Any:
    return compile_expression(source).evaluate(context or {"now": NOW}, **options)


def rejection(source: str, **options: Any) -> ExpressionError:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(source, **options)
    return caught.value


# --- what is refused at compile time ----------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message", "column"),
    [
        (
            "__import__('os')",
            "'__import__' is not allowed: names starting with '_' are private",
            0,
        ),
        (
            "x.__class__.__mro__",
            "'__class__' is not allowed: names starting with '_' are private",
            2,
        ),
        ("'{0.__class__}'.format(x)", "method calls are not allowed: .format()", 16),
        ("tags.append(1)", "method calls are not allowed: .append()", 5),
        ("rand()", "unknown function 'rand'", 0),
        ("'a' * 10**9", "string result too long (max 10000 chars)", 0),
        ("10**10**10", "power too large: exponent 10000000000 exceeds 100", 0),
        (
            "event.amount > 0 and 10**10**10",
            "power too large: exponent 10000000000 exceeds 100",
            21,
        ),
        ("10000**80", "power too large: the result would have more than 300 digits", 0),
        ("[0] * 5000", "list result too long (max 1000 items)", 0),
        ("event.amount > 1 / 0", "division by zero", 15),
        ("a; b", "only a single expression is allowed (no statements, assignments or ';')", 1),
        ("import os", "only a single expression is allowed (no statements, assignments or ';')", 0),
        ("event.flag | 1", "operator '|' is not allowed", 11),
        ("event.x is None", "operator 'is' is not allowed", 8),
        ("lambda: 1", "lambda is not allowed", 0),
        ("[x for x in event.items]", "comprehensions are not allowed", 0),
        ('f"{event.amount}"', "f-strings are not allowed", 0),
        ("(x := 1)", "assignment expressions (:=) are not allowed", 1),
        ("[*event.items]", "starred expressions (*) are not allowed", 1),
        ("{**event}", "dict unpacking (**) is not allowed", 3),
        ("round(event.amount, n=2)", "keyword arguments are not allowed", 20),
        ("b'raw'", "bytes literals are not allowed", 0),
        ("event.items[0]()", "only the allowed functions can be called, by name", 0),
        ("lower()", "lower() takes 1 argument (0 given)", 0),
        ("round(1, 2, 3)", "round() takes 1 or 2 arguments (3 given)", 0),
        ("min()", "min() takes at least 1 argument (0 given)", 0),
        ("local_hour(now)", "local_hour() takes no arguments (1 given)", 0),
        ("", "expression is empty", 0),
    ],
)
def test_unsafe_or_invalid_expressions_are_refused_with_a_precise_message(
    source: str, message: str, column: int
) -> None:
    error = rejection(source)
    assert error.message == message
    assert error.column == column


def test_simpleeval_default_functions_are_not_available() -> None:
    for source in ("int('1')", "float('1')", "str(1)", "randint(5)"):
        name = source.split("(")[0]
        assert rejection(source).message == f"unknown function '{name}'"


def test_unknown_name_suggests_the_closest_context_name() -> None:
    error = rejection("profle.segment == 'vip'")
    assert error.message == "unknown name 'profle'"
    assert error.hint == "did you mean 'profile'?"
    assert error.column == 0


def test_unknown_function_suggests_the_closest_allowed_function() -> None:
    error = rejection("lowr(profile.segment)")
    assert error.message == "unknown function 'lowr'"
    assert error.hint == "did you mean 'lower'?"


def test_names_can_be_restricted_per_expression() -> None:
    error = rejection("review.decision == 'approve'", names={"event", "profile"})
    assert error.message == "unknown name 'review'"
    assert error.hint == "available names: event, profile"


def test_syntax_error_reports_pythons_message_and_the_column() -> None:
    error = rejection("event.amount >= 10 and")
    assert error.message == "cannot parse expression: invalid syntax"
    assert error.column == 22
    unclosed = rejection("max(event.amount, 10")
    assert unclosed.message == "cannot parse expression: '(' was never closed"
    assert unclosed.column == 3


def test_syntax_error_column_counts_characters_not_bytes() -> None:
    assert rejection("profile.city == '서울' and and").column == 25


def test_multi_line_expression_needs_parentheses() -> None:
    error = rejection("event.amount > 0 and\nprofile.segment == 'vip'")
    assert error.message == "cannot parse expression: invalid syntax"
    assert error.hint == "to split an expression over several lines, wrap it in parentheses"
    spread = compile_expression("(event.amount > 0 and\n profile.segment == 'vip')")
    assert spread.evaluate({"event": {"amount": 1}, "profile": {"segment": "vip"}}) is True


def test_assignment_is_refused_with_a_hint_to_compare() -> None:
    error = rejection("profile.segment = 'vip'")
    assert (
        error.message == "only a single expression is allowed (no statements, assignments or ';')"
    )
    assert error.hint == "use == to compare"


def test_oversized_and_overly_nested_expressions_are_refused() -> None:
    assert rejection("1" * 1001).message == "expression is too long (1001 characters, max 1000)"
    assert (
        rejection("-" * 40 + "event.amount").message
        == "expression is nested too deeply (depth 42, max 30)"
    )
    wide = "[" + ", ".join(["event.a"] * 100) + "]"
    assert rejection(wide).message == "expression is too complex (201 nodes, max 200)"


def test_security_problems_are_reported_before_unknown_names() -> None:
    # `x` is unknown too, but the forbidden construct is what the designer must fix.
    assert rejection("x.__class__").message.startswith("'__class__' is not allowed")


def test_leading_whitespace_is_accepted() -> None:
    assert compile_expression("  event.amount > 1\n").evaluate({"event": {"amount": 2}}) is True


# --- what a compiled expression tells the validator -------------------------------------


def test_compiled_expression_lists_names_paths_and_functions() -> None:
    expression = compile_expression(
        "event.amount >= 10000 and profile['segment'] != 'vip' "
        "and days_since(profile.last_seen) > 3 and exists(event.customer.id)"
    )
    assert expression.names == frozenset({"event", "profile"})
    assert expression.attribute_paths == (
        ("event", "amount"),
        ("profile", "segment"),
        ("profile", "last_seen"),
        ("event", "customer", "id"),
    )
    assert expression.functions == frozenset({"days_since", "exists"})


def test_function_allow_list_is_exactly_the_contracts() -> None:
    assert sorted(FUNCTION_NAMES) == [
        "abs",
        "coalesce",
        "days_since",
        "exists",
        "hours_since",
        "len",
        "local_hour",
        "lower",
        "max",
        "min",
        "minutes_since",
        "round",
        "upper",
    ]
    assert sorted(CONTEXT_NAMES) == [
        "customer",
        "event",
        "journey",
        "now",
        "profile",
        "review",
        "scores",
        "trigger",
        "vars",
    ]


def test_expressions_compare_by_source_not_by_syntax_tree() -> None:
    first, second = compile_expression("event.a > 1"), compile_expression("event.a > 1")
    assert first == second
    assert hash(first) == hash(second)
    assert "_tree" not in repr(first)


def test_expression_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(rejection("profle.x")))
    assert (error.message, error.column, error.hint) == (
        "unknown name 'profle'",
        0,
        "did you mean 'profile'?",
    )


# --- None and missing values ------------------------------------------------------------


def test_missing_attribute_is_none() -> None:
    context = {"event": {"amount": 5}, "profile": None, "vars": "text"}
    assert evaluate("event.currency", context) is None
    assert evaluate("event.amount.value", context) is None  # attribute of a number
    assert evaluate("profile.segment", context) is None  # attribute of None
    assert evaluate("vars.upper", context) is None  # never a method of a str
    assert evaluate("scores.default_risk", context) is None  # name absent from context


def test_subscripts_read_keys_and_indexes_and_missing_ones_are_none() -> None:
    context = {"event": {"items": [10, 20, 30], "amount": 5, "_id": "x1"}}
    assert evaluate("event['amount']", context) == 5
    assert evaluate("event['_id']", context) == "x1"  # a key, not an attribute
    assert evaluate("event.items[1]", context) == 20
    assert evaluate("event.items[-1]", context) == 30
    assert evaluate("event.items[1:]", context) == [20, 30]
    assert evaluate("event.items[::2]", context) == [10, 30]
    assert evaluate("event.items[7]", context) is None
    assert evaluate("event['nope']", context) is None
    assert evaluate("event[['unhashable']]", context) is None
    assert evaluate("event.amount[0]", context) is None


@pytest.mark.parametrize(
    "source",
    [
        "event.missing == None",
        "event.missing != 'vip'",
        "event.missing < 3",
        "event.missing >= 3",
        "event.missing in ['a']",
        "event.missing not in ['a']",
        "'a' in event.missing",
        "3 > event.missing",
    ],
)
def test_a_comparison_with_none_is_false(source: str) -> None:
    assert evaluate(source, {"event": {}}) is False


def test_comparing_incomparable_types_is_false() -> None:
    assert evaluate("'a' < 1") is False
    assert evaluate("1 in 'abc'") is False
    assert evaluate("event.when > now", {"event": {"when": "2024-01-01"}, "now": NOW}) is False


def test_chained_comparisons_work() -> None:
    assert evaluate("1 < event.n <= 3", {"event": {"n": 3}}) is True
    assert evaluate("1 < event.n <= 3", {"event": {"n": 4}}) is False


def test_arithmetic_with_none_is_none() -> None:
    assert evaluate("event.missing + 1", {"event": {}}) is None
    assert evaluate("-event.missing", {"event": {}}) is None
    assert evaluate("event.missing * 2 > 1", {"event": {}}) is False


def test_boolean_operators_follow_python() -> None:
    assert evaluate("event.missing or 'fallback'", {"event": {}}) == "fallback"
    assert evaluate("event.n and event.n * 2", {"event": {"n": 4}}) == 8
    assert evaluate("not event.missing", {"event": {}}) is True
    assert evaluate("'big' if event.n > 3 else 'small'", {"event": {"n": 4}}) == "big"


def test_contract_example_entry_condition() -> None:
    entry = compile_expression('event.amount >= 10000 and profile.segment != "vip"')
    assert entry.evaluate({"event": {"amount": 12000}, "profile": {"segment": "mass"}}) is True
    assert entry.evaluate({"event": {"amount": 12000}, "profile": {"segment": "vip"}}) is False
    assert entry.evaluate({"event": {"amount": 12000}, "profile": {}}) is False


def test_literals_lists_and_dicts_evaluate() -> None:
    assert evaluate("profile.tier in ['gold', 'silver']", {"profile": {"tier": "gold"}}) is True
    assert evaluate("{'a': 1, 'b': [1, 2]}['b'][1]") == 2
    assert evaluate("(1, 2) + (3,)") == (1, 2, 3)


# --- run-time failures ------------------------------------------------------------------


def test_runtime_failure_is_an_evaluation_error_naming_the_expression() -> None:
    with pytest.raises(EvaluationError) as caught:
        evaluate("event.amount / event.count", {"event": {"amount": 1, "count": 0}})
    assert caught.value.message == "cannot evaluate 'event.amount / event.count': division by zero"


def test_runtime_caps_apply_to_values_from_the_context() -> None:
    with pytest.raises(EvaluationError) as caught:
        evaluate("event.text * event.n", {"event": {"text": "ab", "n": 10**9}})
    assert caught.value.message == (
        "cannot evaluate 'event.text * event.n': string result too long (max 10000 chars)"
    )
    with pytest.raises(EvaluationError) as power:
        evaluate("event.n ** event.n", {"event": {"n": 10**6}})
    assert power.value.message == (
        "cannot evaluate 'event.n ** event.n': power too large: exponent 1000000 exceeds 100"
    )
    with pytest.raises(EvaluationError) as formatting:
        evaluate("event.fmt % event.n", {"event": {"fmt": "%*d", "n": (10**9, 1)}})
    assert formatting.value.message == (
        "cannot evaluate 'event.fmt % event.n': "
        "'%' works on numbers only (string formatting is not allowed)"
    )


def test_time_functions_need_now_in_the_context() -> None:
    with pytest.raises(EvaluationError) as caught:
        evaluate("days_since(profile.seen) > 1", {"profile": {"seen": "2024-01-01"}})
    assert caught.value.message == (
        "cannot evaluate 'days_since(profile.seen) > 1': 'now' is missing from the context; "
        "days_since(), hours_since(), minutes_since() and local_hour() need it"
    )


def test_function_type_errors_are_evaluation_errors() -> None:
    with pytest.raises(EvaluationError) as caught:
        evaluate("lower(event.n)", {"event": {"n": 3}})
    assert (
        caught.value.message
        == "cannot evaluate 'lower(event.n)': lower() expects a string, got int"
    )
    with pytest.raises(EvaluationError) as bad_time:
        evaluate("days_since(event.at)", {"event": {"at": "yesterday"}, "now": NOW})
    assert bad_time.value.message == (
        "cannot evaluate 'days_since(event.at)': days_since() cannot read 'yesterday' as a time "
        "(expected ISO 8601, e.g. 2024-05-01T09:30:00Z)"
    )


def test_unknown_timezone_is_an_evaluation_error() -> None:
    with pytest.raises(EvaluationError) as caught:
        evaluate("local_hour()", {"now": NOW}, timezone="Mars/Olympus")
    assert caught.value.message == "cannot evaluate 'local_hour()': unknown timezone 'Mars/Olympus'"


# --- every function ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "seen",
    [
        datetime(2024, 4, 29, 12, 0, tzinfo=UTC),
        "2024-04-29T12:00:00Z",
        "2024-04-29T21:00:00+09:00",
        datetime(2024, 4, 29, 12, 0),  # naive: taken as UTC
        NOW.timestamp() - 2 * 86_400,
    ],
)
def test_days_hours_minutes_since_accept_datetimes_iso_strings_and_epoch_seconds(
    seen: object,
) -> None:
    context = {"profile": {"seen": seen}, "now": NOW}
    assert evaluate("days_since(profile.seen)", context) == pytest.approx(2.0)
    assert evaluate("hours_since(profile.seen)", context) == pytest.approx(48.0)
    assert evaluate("minutes_since(profile.seen)", context) == pytest.approx(2880.0)


def test_time_functions_read_now_as_an_iso_string_and_pass_none_through() -> None:
    context = {"profile": {"seen": date(2024, 4, 30)}, "now": "2024-05-01T06:00:00Z"}
    assert evaluate("hours_since(profile.seen)", context) == pytest.approx(30.0)
    assert evaluate("days_since(profile.missing)", context) is None


def test_local_hour_is_the_hour_of_now_in_the_given_timezone() -> None:
    assert evaluate("local_hour()", {"now": NOW}) == 12
    assert evaluate("local_hour()", {"now": NOW}, timezone="Asia/Seoul") == 21
    assert evaluate("local_hour()", {"now": NOW}, timezone="America/New_York") == 8


def test_text_functions() -> None:
    context = {"profile": {"name": "Kim Ha-eun", "tags": ["a", "b"]}}
    assert evaluate("lower(profile.name)", context) == "kim ha-eun"
    assert evaluate("upper(profile.name)", context) == "KIM HA-EUN"
    assert evaluate("lower(profile.missing)", context) is None
    assert evaluate("len(profile.name)", context) == 10
    assert evaluate("len(profile.tags)", context) == 2
    assert evaluate("len(profile)", context) == 2
    assert evaluate("len(profile.missing)", context) is None


def test_number_functions() -> None:
    assert evaluate("round(2.5)") == 3  # half away from zero, not banker's rounding
    assert evaluate("round(-2.5)") == -3
    assert evaluate("round(1.005, 2)") == 1.01
    assert evaluate("round(1234, -2)") == 1200
    assert evaluate("round(event.missing, 2)", {"event": {}}) is None
    assert evaluate("abs(-4)") == 4
    assert evaluate("abs(event.missing)", {"event": {}}) is None
    assert evaluate("min(3, 1, 2)") == 1
    assert evaluate("max(3, 1, 2)") == 3
    assert evaluate("max(event.scores)", {"event": {"scores": [0.2, 0.9]}}) == 0.9
    assert evaluate("min(event.missing, 5)", {"event": {}}) == 5  # None is skipped
    assert evaluate("max(event.missing)", {"event": {}}) is None


def test_exists_and_coalesce_handle_missing_values() -> None:
    context = {"profile": {"nickname": None, "name": "Ha-eun", "visits": 0}}
    assert evaluate("exists(profile.name)", context) is True
    assert evaluate("exists(profile.visits)", context) is True
    assert evaluate("exists(profile.nickname)", context) is False
    assert evaluate("coalesce(profile.nickname, profile.name, 'there')", context) == "Ha-eun"
    assert evaluate("coalesce(profile.nickname, profile.missing)", context) is None


# --- evaluate never raises anything but EvaluationError ---------------------------------

_KEYS = ["a", "b", "items", "at", "n"]
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.dates()
    | st.datetimes(timezones=st.none() | st.just(UTC))
    | st.timedeltas(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS), children, max_size=4)
    ),
    max_leaves=12,
)
_contexts = st.fixed_dictionaries({}, optional={name: _values for name in sorted(CONTEXT_NAMES)})

_ATOMS = [
    "event.a",
    "event.b.n",
    "event['items']",
    "event.items[0]",
    "event.items[1:]",
    "profile.at",
    "vars.n",
    "now",
    "trigger",
    "1",
    "0",
    "-3",
    "2.5",
    "'x'",
    "''",
    "None",
    "True",
    "[1, 'a']",
    "{'a': 1}",
]
_BINARY = ["+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", ">=", "in", "not in", "and", "or"]
_ONE_ARGUMENT = ["days_since", "hours_since", "minutes_since", "lower", "upper", "len", "abs"]
_ONE_ARGUMENT += ["exists", "round"]


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.tuples(children, st.sampled_from(_BINARY), children).map(
        lambda parts: f"({parts[0]} {parts[1]} {parts[2]})"
    )
    unary = st.tuples(st.sampled_from(["not ", "-"]), children).map("".join)
    call = st.tuples(st.sampled_from(_ONE_ARGUMENT), children).map(lambda p: f"{p[0]}({p[1]})")
    variadic = st.tuples(
        st.sampled_from(["min", "max", "coalesce", "round"]), children, children
    ).map(lambda p: f"{p[0]}({p[1]}, {p[2]})")
    subscript = st.tuples(children, children).map(lambda p: f"{p[0]}[{p[1]}]")
    attribute = st.tuples(children, st.sampled_from(_KEYS)).map(lambda p: f"({p[0]}).{p[1]}")
    return binary | unary | call | variadic | subscript | attribute


_sources = st.recursive(st.sampled_from(_ATOMS), _combine, max_leaves=8) | st.just("local_hour()")


@pytest.mark.slow  # in `make test`; ~2 s, out of `make test-fast`
@settings(max_examples=400, deadline=None)
@given(
    source=_sources,
    context=_contexts,
    timezone=st.sampled_from(["UTC", "Asia/Seoul", "No/Such_Zone"]),
)
def test_evaluate_never_raises_anything_but_evaluation_error(
    source: str, context: dict[str, Any], timezone: str
) -> None:
    try:
        expression = compile_expression(source)
    except ExpressionError:
        return
    with contextlib.suppress(EvaluationError):
        expression.evaluate(context, timezone=timezone)


@settings(max_examples=100, deadline=None)
@given(context=_contexts)
def test_time_expressions_never_raise_anything_but_evaluation_error(
    context: dict[str, Any],
) -> None:
    expression = compile_expression(
        "days_since(profile.at) > 1 or hours_since(event.a) < 2 or local_hour() >= 9"
    )
    with contextlib.suppress(EvaluationError):
        expression.evaluate(context, timezone="Asia/Seoul")


def test_evaluate_wraps_a_non_mapping_context() -> None:
    with pytest.raises(EvaluationError):
        compile_expression("event.a").evaluate([1, 2])  # type: ignore[arg-type]


def test_evaluation_is_independent_between_calls() -> None:
    expression = compile_expression("hours_since(event.at)")
    later = NOW + timedelta(hours=5)
    assert expression.evaluate({"event": {"at": NOW}, "now": later}) == pytest.approx(5.0)
    assert expression.evaluate({"event": {"at": NOW}, "now": NOW}) == pytest.approx(0.0)
