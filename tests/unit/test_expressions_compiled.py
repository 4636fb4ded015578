"""The compiled form of an expression (closures built from the checked tree) must agree
with the tree-walking evaluator on every expression and context: same values, same
``EvaluationError`` messages, the same caps (issue #20, item 5)."""

from __future__ import annotations

import ast
import copy
import pickle
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rules.expressions as expressions
from rules import EvaluationError, Expression, ExpressionError, compile_expression
from rules.functions import Clock

REFERENCE_RULE = (
    'event.amount > 1000 and profile.risk_score >= 0.7 and profile.country in ("KR", "JP")'
)
NOW = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)


def outcome(run: Any) -> tuple[str, str]:
    """What an evaluation gave, comparable across paths: the value's type and repr (so
    ``nan`` equals ``nan`` and ``1`` differs from ``1.0`` and ``True``), or the error."""
    try:
        value = run()
    except EvaluationError as error:
        return ("error", error.message)
    return (type(value).__name__, repr(value))


def both(source: str | Expression, context: Any, timezone: str = "UTC") -> tuple[Any, Any]:
    expression = compile_expression(source) if isinstance(source, str) else source
    compiled = outcome(lambda: expression.evaluate(context, timezone=timezone))
    interpreted = outcome(lambda: expression.evaluate_interpreted(context, timezone=timezone))
    return compiled, interpreted


# --- random expressions and contexts ------------------------------------------------------

_KEYS = ["amount", "risk_score", "country", "a", "items", "at", "n", "s"]
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**6), max_value=10**6)
    | st.sampled_from([0, 1, -1, 2, 1000, 1001, 10**30, 10**400 // 10**300])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["KR", "JP", "US", "", "abc", "2024-04-01T00:00:00Z", "ab" * 3000])
    | st.text(max_size=8)
    | st.datetimes(timezones=st.none() | st.just(UTC))
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.sampled_from(_KEYS), children, max_size=4)
    ),
    max_leaves=10,
)
# Records with most of the keys the atoms read, so that reads find values; sometimes a
# mapping that is no dict, or not a mapping at all.
_records = st.fixed_dictionaries({}, optional={key: _values for key in _KEYS})
_record_values = _records | _records.map(MappingProxyType) | _values
_contexts = st.fixed_dictionaries(
    {},
    optional={
        "event": _record_values,
        "profile": _record_values,
        "vars": _record_values,
        "now": st.just(NOW) | st.just("2024-05-01T09:30:00+09:00") | st.none() | st.just(3),
    },
)

_ATOMS = [
    "event",
    "profile",
    "event.amount",
    "event.a.n",
    "event.items",
    "event['items']",
    "event.items[0]",
    "event.items[-1]",
    "event.items[1:]",
    "event.items[::2]",
    "profile.risk_score",
    "profile.country",
    "profile['country']",
    "profile.s",
    "profile.at",
    "vars.n",
    "vars.a.a.a",
    "now",
    "local_hour()",
]
_CONSTANT_ATOMS = [
    "0",
    "1",
    "-3",
    "1000",
    "2.5",
    "0.7",
    "'KR'",
    "'ab'",
    "''",
    "None",
    "True",
    "False",
    "[1, 'a']",
    "['KR', 'JP']",
    "('KR', 'JP')",
    "{'a': 1, 'n': [2]}",
    "{1, 2}",
    "[]",
]
_BINARY = ["+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", "<=", ">", ">=", "==", "!="]
_BINARY += ["in", "not in", "and", "or"]
_ONE_ARGUMENT = ["lower", "upper", "len", "abs", "exists", "round"]
_ONE_ARGUMENT += ["days_since", "hours_since", "minutes_since"]
_MANY_ARGUMENTS = ["min", "max", "coalesce", "round"]


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.tuples(children, st.sampled_from(_BINARY), children).map(
        lambda p: f"({p[0]} {p[1]} {p[2]})"
    )
    chained = st.tuples(
        children, st.sampled_from(["<", "<=", "==", "!=", "in"]), children, children
    ).map(lambda p: f"({p[0]} {p[1]} {p[2]} < {p[3]})")
    triple = st.tuples(children, st.sampled_from(["and", "or"]), children, children).map(
        lambda p: f"({p[0]} {p[1]} {p[2]} {p[1]} {p[3]})"
    )
    unary = st.tuples(st.sampled_from(["not ", "-", "+"]), children).map(
        lambda p: f"({p[0]}{p[1]})"
    )
    choice = st.tuples(children, children, children).map(
        lambda p: f"({p[0]} if {p[1]} else {p[2]})"
    )
    call = st.tuples(st.sampled_from(_ONE_ARGUMENT), children).map(lambda p: f"{p[0]}({p[1]})")
    many = st.tuples(st.sampled_from(_MANY_ARGUMENTS), st.lists(children, min_size=2, max_size=3))
    variadic = many.map(lambda p: f"{p[0]}({', '.join(p[1])})")
    subscript = st.tuples(children, children).map(lambda p: f"({p[0]})[{p[1]}]")
    sliced = st.tuples(children, children).map(lambda p: f"({p[0]})[{p[1]}:]")
    attribute = st.tuples(children, st.sampled_from(_KEYS)).map(lambda p: f"({p[0]}).{p[1]}")
    collection = st.lists(children, min_size=1, max_size=3).flatmap(
        lambda items: st.sampled_from(
            [
                f"[{', '.join(items)}]",
                f"({', '.join(items)},)",
                f"{{{', '.join(items)}}}",
                f"{{{', '.join(f'{item}: {item}' for item in items)}}}",
            ]
        )
    )
    return (
        binary
        | chained
        | triple
        | unary
        | choice
        | call
        | variadic
        | subscript
        | sliced
        | attribute
        | collection
    )


_sources = st.recursive(
    st.sampled_from(_ATOMS) | st.sampled_from(_CONSTANT_ATOMS), _combine, max_leaves=8
)


@pytest.mark.slow  # in `make test`; over 2 s, out of `make test-fast`
@settings(max_examples=500, deadline=None)
@given(
    source=_sources,
    context=_contexts,
    timezone=st.sampled_from(["UTC", "Asia/Seoul", "No/Such_Zone"]),
)
def test_compiled_and_interpreted_evaluation_agree(
    source: str, context: dict[str, Any], timezone: str
) -> None:
    try:
        expression = compile_expression(source)
    except ExpressionError:
        return  # rejected at compile time (e.g. a constant part that always fails)
    compiled, interpreted = both(expression, context, timezone)
    assert compiled == interpreted


@settings(max_examples=100, deadline=None)
@given(context=_contexts)
def test_compiled_and_interpreted_agree_on_the_reference_rule(context: dict[str, Any]) -> None:
    compiled, interpreted = both(REFERENCE_RULE, context)
    assert compiled == interpreted


# --- explicit cases ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "context"),
    [
        (REFERENCE_RULE, {"event": {"amount": 1500}, "profile": {"risk_score": 0.9}}),
        (REFERENCE_RULE, {"event": {"amount": "lots"}, "profile": None}),
        ("event.amount in [1, 2]", {"event": {"amount": [1]}}),  # unhashable: not in, no error
        ("event.amount in 'abc'", {"event": {"amount": 1}}),
        ("'b' in event.s", {"event": {"s": "abc"}}),
        ("'a' in event", {"event": {"a": None}}),
        ("event.items[event.n]", {"event": {"items": [1, 2], "n": True}}),
        ("event.items[event.n]", {"event": {"items": {"x": 1}, "n": []}}),
        ("{event.a: 1}", {"event": {"a": []}}),  # unhashable key: an error in both
        ("{1: event.a, event.b: 2}", {"event": {"a": 1 / 3, "b": [1]}}),
        # the key and the value both fail: the value's error comes first, in both
        ("{event.a + 1: event.b + 1}", {"event": {"a": "x", "b": [1]}}),
        ("event.a.b", {"event": MappingProxyType({"a": MappingProxyType({"b": 2})})}),
        ("event < profile", {"event": {}, "profile": {}}),
        ("event.a != None", {"event": {"a": 1}}),
        ("event.a < event.b < 2", {"event": {"a": 1, "b": 3}}),
        ("1 < event.a < 3 < event.b", {"event": {"a": 2, "b": 4}}),
        ("1 < event.a < 3 < event.b", {"event": {"a": 2, "b": "x"}}),
        ("not event.a", {}),
        ("-event.a", {}),
        ("event.a % 2", {"event": {"a": "%s"}}),
        ("[1, 2]", [1, 2]),  # reads nothing, and the context is no mapping
        ("event.a", [1, 2]),
        ("local_hour()", {"now": NOW}),
        ("local_hour()", {}),
        ("days_since(event.at)", {"event": {"at": NOW - timedelta(days=2)}, "now": NOW}),
        ("round(event.a, event.b)", {"event": {"a": 2.5, "b": 99}}),
    ],
)
def test_compiled_and_interpreted_agree_on_edge_cases(source: str, context: Any) -> None:
    compiled, interpreted = both(source, context, "Asia/Seoul")
    assert compiled == interpreted


@pytest.mark.parametrize(
    ("source", "context", "message"),
    [
        ("event.s * event.n", {"event": {"s": "ab", "n": 10**6}}, "string result too long"),
        ("event.n * event.s", {"event": {"s": "ab", "n": 10**6}}, "string result too long"),
        ("event.s + event.s", {"event": {"s": "a" * 6000}}, "string result too long"),
        ("event.l * 2000", {"event": {"l": [1]}}, "list result too long"),
        ("event.n ** event.m", {"event": {"n": 10, "m": 10**9}}, "exponent 1000000000 exceeds"),
        ("event.n ** 80", {"event": {"n": 10_000}}, "more than 300 digits"),
        ("2 ** event.m", {"event": {"m": 101}}, "exponent 101 exceeds 100"),
        ("event.s % 3", {"event": {"s": "%s"}}, "'%' works on numbers only"),
    ],
)
def test_caps_hold_on_the_compiled_path(source: str, context: Any, message: str) -> None:
    compiled, interpreted = both(source, context)
    assert compiled == interpreted
    assert compiled[0] == "error"
    assert message in compiled[1]
    assert compiled[1].startswith(f"cannot evaluate {source!r}: ")


def test_the_reference_rule_takes_the_compiled_path(monkeypatch: pytest.MonkeyPatch) -> None:
    expression = compile_expression(REFERENCE_RULE)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tree-walking evaluator (or a Clock) was built")

    monkeypatch.setattr(expressions._SafeEvaluator, "__init__", refuse)
    monkeypatch.setattr(expressions, "Clock", refuse)
    context = {"event": {"amount": 1500}, "profile": {"risk_score": 0.8, "country": "JP"}}
    assert expression.evaluate(context) is True
    with pytest.raises(EvaluationError):  # the interpreter is what was refused
        expression.evaluate_interpreted(context)


def test_the_clock_is_built_only_when_a_time_function_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[object] = []

    def counting_clock(raw_now: object, timezone: str) -> Clock:
        built.append(raw_now)
        return Clock(raw_now, timezone)

    monkeypatch.setattr(expressions, "Clock", counting_clock)
    expression = compile_expression("event.skip or hours_since(event.at) > 1")
    assert expression.evaluate({"event": {"skip": True}}) is True
    assert built == []
    context = {"event": {"at": NOW - timedelta(hours=2)}, "now": NOW}
    assert expression.evaluate(context) is True
    assert built == [NOW]


def test_constant_parts_are_folded_but_mutable_results_are_fresh() -> None:
    expression = compile_expression("[1, 2] if event.a else {'k': [3]}")
    first = expression.evaluate({"event": {"a": True}})
    first.append(99)
    assert expression.evaluate({"event": {"a": True}}) == [1, 2]
    other = expression.evaluate({})
    other["k"].append(4)
    assert expression.evaluate({}) == {"k": [3]}


def test_compiled_expressions_copy_and_pickle() -> None:
    expression = compile_expression(REFERENCE_RULE)
    context = {"event": {"amount": 1001}, "profile": {"risk_score": 0.7, "country": "KR"}}
    for clone in (
        copy.copy(expression),
        copy.deepcopy(expression),
        pickle.loads(pickle.dumps(expression)),
    ):
        assert clone == expression
        assert clone.evaluate(context) is True


def test_a_node_without_a_closure_falls_back_to_the_interpreter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    without_ifexp = {
        kind: compiler
        for kind, compiler in expressions._NODE_COMPILERS.items()
        if kind is not ast.IfExp
    }
    monkeypatch.setattr(expressions, "_NODE_COMPILERS", without_ifexp)
    expression = compile_expression("event.a * 2 if event.b else 'no'")
    built: list[object] = []
    monkeypatch.setattr(expressions._SafeEvaluator, "__init__", _recording(built))
    assert expression.evaluate({"event": {"a": 21, "b": True}}) == 42
    assert len(built) == 1
    with pytest.raises(EvaluationError, match="string result too long"):
        expression.evaluate({"event": {"a": "x" * 6000, "b": True}})


def _recording(built: list[object]) -> Any:
    real = expressions._SafeEvaluator.__init__

    def record(self: Any, *args: Any) -> None:
        built.append(args)
        real(self, *args)

    return record
