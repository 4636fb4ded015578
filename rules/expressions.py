"""Journey expressions: compile once (parse and check), evaluate many times, safely.

Lives here: ``compile_expression`` (parse, static checks, constant checking), the frozen
``Expression`` plan with its ``evaluate``, the compiler from the checked tree to nested
closures that ``evaluate`` runs, the evaluator (a ``simpleeval`` subclass with our own
None-tolerant semantics and size caps) that ``evaluate_interpreted`` runs and the closures
must agree with, and the capped arithmetic that the template sandbox reuses. Must not live here: I/O, clock reads, ``temporalio`` imports,
and any global cache of compiled expressions (callers keep their ``Expression`` objects).

Semantics. Attribute access works on mappings only (``event.amount`` is
``event["amount"]``); a missing key, or an attribute of ``None`` or of a non-mapping, is
``None``. Subscripts work on mappings and on strings/lists/tuples (indexes and slices,
steps allowed); a missing key or index is ``None``. A comparison (``== != < <= > >= in
not in``) with ``None`` on either side, or between incomparable types, is ``False``.
Arithmetic with ``None`` is ``None``. ``and``/``or``/``not`` and ``a if c else b`` behave
as in Python. ``evaluate`` raises nothing but ``EvaluationError``.

Compile-time errors: ``ExpressionError.message`` is exactly one of these (``<...>`` filled
in); ``column`` is a 0-based character offset into the source.

- ``expression must be text, got <type>``
- ``expression is too long (<n> characters, max 1000)``
- ``expression is empty``
- ``cannot parse expression: <Python's message>`` (e.g. ``invalid syntax``, ``'(' was never
  closed``; for a multi-line source the hint says to wrap it in parentheses)
- ``only a single expression is allowed (no statements, assignments or ';')``: ``x = 1``,
  ``a; b``, ``import os``
- ``expression is nested too deeply (depth <n>, max 30)``
- ``expression is too complex (<n> nodes, max 200)``
- ``'<name>' is not allowed: names starting with '_' are private``: any name or attribute
  starting with ``_`` (``__import__('os')``, ``x.__class__``). String subscripts such as
  ``event["_id"]`` are allowed: they only ever read a mapping key.
- ``method calls are not allowed: .<name>()``: ``tags.append(1)``, ``'{0}'.format(x)``
- ``only the allowed functions can be called, by name``: ``event.items[0]()``
- ``unknown function '<name>'`` (hint: the closest allowed function)
- ``<name>() takes <arity> (<n> given)``, e.g. ``round() takes 1 or 2 arguments (3 given)``
- ``keyword arguments are not allowed``: ``round(x, n=2)``
- ``unknown name '<name>'`` (hint: the closest allowed name)
- ``operator '<op>' is not allowed``: ``& | ^ << >> @ ~ is`` and ``is not``
- ``lambda is not allowed``; ``comprehensions are not allowed``; ``f-strings are not
  allowed``; ``assignment expressions (:=) are not allowed``; ``starred expressions (*) are
  not allowed``; ``dict unpacking (**) is not allowed``
- ``<type> literals are not allowed``: ``b''``, ``1j``, ``...``
- ``<Node> is not allowed in expressions``: any other syntax
- from a part that reads no context and always fails: ``power too large: exponent <n>
  exceeds 100`` (``10**10**10``), ``power too large: the result would have more than 300
  digits`` (``10000**80``), ``string result too long (max 10000 chars)`` (``'a' * 10**9``),
  ``list result too long (max 1000 items)`` (also ``tuple``), or Python's own message
  (``division by zero``).

Slices, steps included, are allowed (``event.items[::2]``).

When several problems exist, forbidden constructs are reported before unknown names and
functions, and then the leftmost first. Any part of an expression that reads no context
name (and calls no time function) is evaluated at compile time, so ``10**10**10`` or
``1/0`` can never reach a running journey. At run time the same caps apply and every
failure is ``EvaluationError("cannot evaluate '<source>': <reason>")``.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, NamedTuple, cast

from simpleeval import EvalWithCompoundTypes  # type: ignore[import-untyped,unused-ignore]

from .functions import FUNCTION_NAMES, FUNCTIONS, Clock, describe_arity

__all__ = [
    "CONTEXT_NAMES",
    "EvaluationError",
    "Expression",
    "ExpressionError",
    "compile_expression",
]

CONTEXT_NAMES: Final[frozenset[str]] = frozenset(
    {"event", "trigger", "profile", "customer", "vars", "scores", "review", "journey", "now"}
)
"""The names an expression or template may read (the contract's Context table)."""

MESSAGE_NAMES: Final[frozenset[str]] = CONTEXT_NAMES | {"run"}
"""What a message template may read: the context, and ``run`` (``run.status_url``, the
customer's status link; only a send has it)."""

MAX_SOURCE_LENGTH: Final = 1000
MAX_DEPTH: Final = 30
MAX_NODES: Final = 200
MAX_EXPONENT: Final = 100
MAX_POWER_DIGITS: Final = 300
MAX_STRING_LENGTH: Final = 10_000
MAX_COLLECTION_ITEMS: Final = 1000

_STRING_TOO_LONG: Final = f"string result too long (max {MAX_STRING_LENGTH} chars)"
_STATEMENT: Final = "only a single expression is allowed (no statements, assignments or ';')"


class ExpressionError(ValueError):
    """An expression was rejected at compile time.

    ``column`` is a 0-based character offset into the source (best effort); ``hint``
    suggests a fix, e.g. ``"did you mean 'profile'?"``.
    """

    def __init__(self, message: str, *, column: int = 0, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.column = column
        self.hint = hint

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,), {"column": self.column, "hint": self.hint})


class EvaluationError(Exception):
    """Evaluating a compiled expression failed; the only error ``evaluate`` raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LimitExceededError(Exception):
    """An operation would build a value over the size caps (strings, lists, powers)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- capped arithmetic, shared with the template sandbox -------------------------------

_SIZED: Final = (str, list, tuple)


def _number_text(number: object) -> str:
    if isinstance(number, int) and abs(number) >= 10**21:
        try:
            return f"{float(number):.3g}"
        except OverflowError:
            return "beyond 1e308"
    return str(number)


def _check_size(sample: object, size: int) -> None:
    if isinstance(sample, str):
        if size > MAX_STRING_LENGTH:
            raise LimitExceededError(_STRING_TOO_LONG)
    elif size > MAX_COLLECTION_ITEMS:
        kind = type(sample).__name__
        raise LimitExceededError(f"{kind} result too long (max {MAX_COLLECTION_ITEMS} items)")


def capped_add(left: Any, right: Any) -> Any:
    """``left + right``, refusing strings and lists over the size caps."""
    if isinstance(left, _SIZED) and isinstance(right, _SIZED):
        _check_size(left, len(left) + len(right))
    return left + right


def capped_multiply(left: Any, right: Any) -> Any:
    """``left * right``, refusing repetition past the size caps (``'a' * 10**9``)."""
    if isinstance(left, _SIZED) and isinstance(right, int):
        _check_size(left, len(left) * max(right, 0))
    elif isinstance(right, _SIZED) and isinstance(left, int):
        _check_size(right, len(right) * max(left, 0))
    return left * right


def capped_power(base: Any, exponent: Any) -> Any:
    """``base ** exponent`` with ``|exponent| <= 100`` and at most 300 result digits."""
    if isinstance(exponent, int | float | Decimal) and not (
        -MAX_EXPONENT <= exponent <= MAX_EXPONENT
    ):
        raise LimitExceededError(
            f"power too large: exponent {_number_text(exponent)} exceeds {MAX_EXPONENT}"
        )
    if (
        isinstance(base, int | float | Decimal)
        and isinstance(exponent, int | float | Decimal)
        and exponent > 0
        and base not in (0, 1, -1)
        and float(exponent) * math.log10(base if base > 0 else -base) > MAX_POWER_DIGITS
    ):
        raise LimitExceededError(
            f"power too large: the result would have more than {MAX_POWER_DIGITS} digits"
        )
    return base**exponent


def numeric_modulo(left: Any, right: Any) -> Any:
    """``left % right`` for numbers; ``%`` string formatting could build huge strings."""
    if isinstance(left, str | bytes):
        raise TypeError("'%' works on numbers only (string formatting is not allowed)")
    return left % right


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """``"did you mean 'x'?"`` for the closest candidate, or ``None``."""
    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


# --- evaluator -----------------------------------------------------------------------


def _none_propagating(
    operation: Callable[[Any, Any], Any],
) -> Callable[[Any, Any], Any]:
    def apply(left: Any, right: Any) -> Any:
        if left is None or right is None:
            return None
        return operation(left, right)

    return apply


def _negate(value: Any) -> Any:
    return None if value is None else -value


def _plus(value: Any) -> Any:
    return None if value is None else +value


_OPERATORS: Final[Mapping[type[ast.AST], Callable[..., Any]]] = {
    ast.Add: _none_propagating(capped_add),
    ast.Sub: _none_propagating(operator.sub),
    ast.Mult: _none_propagating(capped_multiply),
    ast.Div: _none_propagating(operator.truediv),
    ast.FloorDiv: _none_propagating(operator.floordiv),
    ast.Mod: _none_propagating(numeric_modulo),
    ast.Pow: _none_propagating(capped_power),
    ast.Not: operator.not_,
    ast.USub: _negate,
    ast.UAdd: _plus,
}

_COMPARISONS: Final[Mapping[type[ast.cmpop], Callable[[Any, Any], Any]]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda item, container: item in container,
    ast.NotIn: lambda item, container: item not in container,
}

_Handler = Callable[[Any, Any], Any]


def _callee_name(node: ast.Call) -> str:
    """The called function's name; the checker guarantees every callee is a bare name."""
    return cast(ast.Name, node.func).id


def _constant_value(_evaluator: object, node: ast.Constant) -> Any:
    # Literals are at most MAX_SOURCE_LENGTH long, so no size check is needed here.
    return node.value


class _SafeEvaluator(EvalWithCompoundTypes):  # type: ignore[misc,unused-ignore]
    """simpleeval's evaluator with journey semantics; one short-lived instance per call.

    ``Expression.evaluate_interpreted`` runs it (``evaluate`` runs the compiled closures,
    which must agree with it); ``compile_expression`` runs it on the parts that read no
    context. A fresh instance per call keeps concurrent evaluations apart. The stock
    ``__init__`` costs ~9us (a warnings filter, a new node table, a scan of the function
    table), more than evaluating a typical expression, so this one only stores the
    per-call state and dispatches through the class-level ``_HANDLERS`` table. Values
    never reach ``getattr`` and callees are resolved by name from ``FUNCTIONS``, so
    simpleeval's per-node scan of results for dangerous callables is skipped too.
    """

    operators = _OPERATORS

    def __init__(self, context: Mapping[str, Any], clock: Clock, source: str) -> None:
        self.names = context
        self.clock = clock
        self.expr = source

    def _eval(self, node: ast.AST) -> Any:
        return _HANDLERS[type(node)](self, node)

    def _eval_name(self, node: ast.Name) -> Any:
        return self.names.get(node.id)

    def _eval_attribute(self, node: ast.Attribute) -> Any:
        value = self._eval(node.value)
        if isinstance(value, Mapping):
            return value.get(node.attr)
        return None

    def _eval_subscript(self, node: ast.Subscript) -> Any:
        container = self._eval(node.value)
        key = self._eval(node.slice)
        if container is None or key is None:
            return None
        if isinstance(container, Mapping):
            try:
                return container.get(key)
            except TypeError:  # unhashable key: it cannot be there
                return None
        if isinstance(container, str | list | tuple):
            if isinstance(key, slice):
                return container[key]
            if isinstance(key, int):
                try:
                    return container[key]
                except IndexError:
                    return None
        return None

    def _eval_compare(self, node: ast.Compare) -> bool:
        left = self._eval(node.left)
        for comparison, comparator in zip(node.ops, node.comparators, strict=True):
            right = self._eval(comparator)
            if left is None or right is None:
                return False
            try:
                holds = _COMPARISONS[type(comparison)](left, right)
            except TypeError:  # 'a' < 1, 1 in 'abc': incomparable means "no"
                return False
            if not holds:
                return False
            left = right
        return True

    def _eval_call(self, node: ast.Call) -> Any:
        spec = FUNCTIONS[_callee_name(node)]
        arguments = [self._eval(argument) for argument in node.args]
        if spec.reads_clock:
            return spec.implementation(self.clock, *arguments)
        return spec.implementation(*arguments)


_HANDLERS: Final[dict[type[ast.AST], _Handler]] = {
    ast.Name: _SafeEvaluator._eval_name,
    ast.Attribute: _SafeEvaluator._eval_attribute,
    ast.Subscript: _SafeEvaluator._eval_subscript,
    ast.Compare: _SafeEvaluator._eval_compare,
    ast.Call: _SafeEvaluator._eval_call,
    ast.Constant: _constant_value,
    ast.BinOp: _SafeEvaluator._eval_binop,
    ast.UnaryOp: _SafeEvaluator._eval_unaryop,
    ast.BoolOp: _SafeEvaluator._eval_boolop,
    ast.IfExp: _SafeEvaluator._eval_ifexp,
    ast.List: _SafeEvaluator._eval_list,
    ast.Tuple: _SafeEvaluator._eval_tuple,
    ast.Set: _SafeEvaluator._eval_set,
    ast.Dict: _SafeEvaluator._eval_dict,
    ast.Slice: _SafeEvaluator._eval_slice,
}


def _failure_reason(error: BaseException) -> str:
    if isinstance(error, LimitExceededError):
        return error.message
    return str(error) or type(error).__name__


# --- compiler: the checked tree to nested closures --------------------------------------
#
# ``Expression.evaluate`` runs closures built once from the checked tree: one per node,
# each ``(context, timezone) -> value``, so an evaluation costs a few Python calls instead
# of an evaluator instance and a dispatch per node. No source text is generated or exec'd:
# every closure is one of the fixed functions below, holding sub-closures, constants from
# the tree and functions from ``FUNCTIONS``. The semantics are the evaluator's, exactly
# (``tests/unit/test_expressions_compiled.py`` checks both agree on random expressions),
# including the order in which parts are evaluated, so the same failure surfaces first.

_Context = Mapping[str, Any]
_Closure = Callable[[_Context, str], Any]
"""A compiled node: ``(context, timezone) -> value``."""

_RAW_BINARY: Final[Mapping[type[ast.AST], Callable[[Any, Any], Any]]] = {
    ast.Add: capped_add,
    ast.Sub: operator.sub,
    ast.Mult: capped_multiply,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: numeric_modulo,
    ast.Pow: capped_power,
}
_IMMUTABLE: Final = (type(None), bool, int, float, str)


class _Unsupported(Exception):
    """A node the compiler has no closure for: the whole expression is interpreted."""


def _is_immutable(value: object) -> bool:
    if type(value) in _IMMUTABLE:
        return True
    if type(value) is tuple:
        return all(_is_immutable(item) for item in value)
    if type(value) is slice:
        return all(_is_immutable(part) for part in (value.start, value.stop, value.step))
    return False


def _reads_context(node: ast.AST) -> bool:
    """Whether ``node`` reads a context name or the clock (the callee's name is no read)."""
    if isinstance(node, ast.Name):
        return True
    if isinstance(node, ast.Call):
        if FUNCTIONS[_callee_name(node)].reads_clock:
            return True
        return any(_reads_context(argument) for argument in node.args)
    return any(
        _reads_context(child) for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr)
    )


def _static_value(node: ast.expr) -> tuple[bool, Any]:
    """``(True, value)`` for a part that reads nothing and gives an immutable value.

    ``compile_expression`` has already evaluated every such part once without error, so
    folding it changes nothing but the cost. Mutable results (lists, dicts, sets) are
    rebuilt on every evaluation: a caller may change what it gets back.
    """
    if isinstance(node, ast.Constant):
        return True, node.value
    if _reads_context(node):
        return False, None
    try:
        value = _SafeEvaluator({}, Clock(None, "UTC"), "")._eval(node)
    except Exception:  # never for a checked tree; then it fails at run time as before
        return False, None
    return (True, value) if _is_immutable(value) else (False, None)


def _compile(node: ast.expr) -> _Closure:
    known, value = _static_value(node)
    if known:

        def constant(c: _Context, t: str) -> Any:
            return value

        return constant
    compiler = _NODE_COMPILERS.get(type(node))
    if compiler is None:
        raise _Unsupported(type(node).__name__)
    return compiler(node)


def _compile_name(node: ast.expr) -> _Closure:
    name = cast(ast.Name, node).id

    def read_name(c: _Context, t: str) -> Any:
        return c.get(name)

    return read_name


def _read_path(base: _Closure, path: tuple[str, ...]) -> _Closure:
    def read_path(c: _Context, t: str) -> Any:
        value = base(c, t)
        for attribute in path:
            if type(value) is dict or isinstance(value, Mapping):
                value = value.get(attribute)
            else:
                return None
        return value

    return read_path


def _read_name_attribute(name: str, attribute: str) -> _Closure:
    """``name.attribute``, the commonest read, in one closure."""

    def read_name_attribute(c: _Context, t: str) -> Any:
        value = c.get(name)
        if type(value) is dict or isinstance(value, Mapping):
            return value.get(attribute)
        return None

    return read_name_attribute


def _compile_attribute(node: ast.expr) -> _Closure:
    path: list[str] = []
    base: ast.expr = node
    while isinstance(base, ast.Attribute):
        path.append(base.attr)
        base = base.value
    path.reverse()
    if isinstance(base, ast.Name) and len(path) == 1:
        return _read_name_attribute(base.id, path[0])
    return _read_path(_compile(base), tuple(path))


def _item(container: Any, key: Any) -> Any:
    """``container[key]`` with the evaluator's semantics (``_eval_subscript``)."""
    if container is None or key is None:
        return None
    if isinstance(container, Mapping):
        try:
            return container.get(key)
        except TypeError:  # unhashable key: it cannot be there
            return None
    if isinstance(container, str | list | tuple):
        if isinstance(key, slice):
            return container[key]
        if isinstance(key, int):
            try:
                return container[key]
            except IndexError:
                return None
    return None


def _compile_subscript(node: ast.expr) -> _Closure:
    subscript = cast(ast.Subscript, node)
    container_of, key_of = _compile(subscript.value), _compile(subscript.slice)

    def read_item(c: _Context, t: str) -> Any:
        return _item(container_of(c, t), key_of(c, t))

    return read_item


def _contains(item: Any, container: Any) -> bool:
    return item in container


def _not_contains(item: Any, container: Any) -> bool:
    return item not in container


_TESTS: Final[Mapping[type[ast.cmpop], Callable[[Any, Any], Any]]] = {
    **_COMPARISONS,
    ast.In: _contains,
    ast.NotIn: _not_contains,
}


def _compare_with_constant(
    left_of: _Closure, test: Callable[[Any, Any], Any], right: Any
) -> _Closure:
    def compare_with_constant(c: _Context, t: str) -> bool:
        left = left_of(c, t)
        if left is None:
            return False
        try:
            holds = test(left, right)
        except TypeError:  # 'a' < 1, 1 in 'abc': incomparable means "no"
            return False
        return True if holds else False  # noqa: SIM210 - bool() would be a call

    return compare_with_constant


def _compare_once(
    left_of: _Closure, test: Callable[[Any, Any], Any], right_of: _Closure
) -> _Closure:
    def compare_once(c: _Context, t: str) -> bool:
        left, right = left_of(c, t), right_of(c, t)
        if left is None or right is None:
            return False
        try:
            holds = test(left, right)
        except TypeError:
            return False
        return True if holds else False  # noqa: SIM210 - bool() would be a call

    return compare_once


def _compare_chain(
    left_of: _Closure, steps: tuple[tuple[Callable[[Any, Any], Any], _Closure], ...]
) -> _Closure:
    def compare_chain(c: _Context, t: str) -> bool:
        left = left_of(c, t)
        for test, right_of in steps:
            right = right_of(c, t)
            if left is None or right is None:
                return False
            try:
                holds = test(left, right)
            except TypeError:
                return False
            if not holds:
                return False
            left = right
        return True

    return compare_chain


def _compile_compare(node: ast.expr) -> _Closure:
    comparison = cast(ast.Compare, node)
    left_of = _compile(comparison.left)
    if len(comparison.ops) == 1:
        test = _TESTS[type(comparison.ops[0])]
        right_node = comparison.comparators[0]
        known, right = _static_value(right_node)
        if not known and isinstance(right_node, ast.List) and test in (_contains, _not_contains):
            # ``x in [1, 2]`` is ``x in (1, 2)``: membership is the same in both.
            known, right = _static_value(ast.Tuple(elts=right_node.elts, ctx=ast.Load()))
        if known and right is not None:
            return _compare_with_constant(left_of, test, right)
        return _compare_once(left_of, test, _compile(right_node))
    steps = tuple(
        (_TESTS[type(op)], _compile(right_node))
        for op, right_node in zip(comparison.ops, comparison.comparators, strict=True)
    )
    return _compare_chain(left_of, steps)


def _all_of(parts: tuple[_Closure, ...]) -> _Closure:
    if len(parts) == 2:
        first, second = parts

        def both(c: _Context, t: str) -> Any:
            return first(c, t) and second(c, t)

        return both
    if len(parts) == 3:
        first, second, third = parts

        def all_three(c: _Context, t: str) -> Any:
            return first(c, t) and second(c, t) and third(c, t)

        return all_three

    def all_of(c: _Context, t: str) -> Any:
        value: Any = False
        for part in parts:
            value = part(c, t)
            if not value:
                return value
        return value

    return all_of


def _any_of(parts: tuple[_Closure, ...]) -> _Closure:
    if len(parts) == 2:
        first, second = parts

        def either(c: _Context, t: str) -> Any:
            return first(c, t) or second(c, t)

        return either

    def any_of(c: _Context, t: str) -> Any:
        value: Any = False
        for part in parts:
            value = part(c, t)
            if value:
                return value
        return value

    return any_of


def _compile_boolop(node: ast.expr) -> _Closure:
    boolean = cast(ast.BoolOp, node)
    parts = tuple(_compile(value) for value in boolean.values)
    return _all_of(parts) if isinstance(boolean.op, ast.And) else _any_of(parts)


def _compile_unaryop(node: ast.expr) -> _Closure:
    unary = cast(ast.UnaryOp, node)
    operand_of = _compile(unary.operand)
    if isinstance(unary.op, ast.Not):

        def negation(c: _Context, t: str) -> bool:
            return not operand_of(c, t)

        return negation
    apply = _OPERATORS[type(unary.op)]  # _negate or _plus: None stays None

    def signed(c: _Context, t: str) -> Any:
        return apply(operand_of(c, t))

    return signed


def _compile_binop(node: ast.expr) -> _Closure:
    binary = cast(ast.BinOp, node)
    apply = _RAW_BINARY[type(binary.op)]
    left_of, right_of = _compile(binary.left), _compile(binary.right)

    def arithmetic(c: _Context, t: str) -> Any:
        left, right = left_of(c, t), right_of(c, t)
        if left is None or right is None:
            return None
        return apply(left, right)

    return arithmetic


def _compile_ifexp(node: ast.expr) -> _Closure:
    choice = cast(ast.IfExp, node)
    test_of, body_of, orelse_of = (
        _compile(choice.test),
        _compile(choice.body),
        _compile(choice.orelse),
    )

    def if_else(c: _Context, t: str) -> Any:
        return body_of(c, t) if test_of(c, t) else orelse_of(c, t)

    return if_else


def _compile_list(node: ast.expr) -> _Closure:
    items = tuple(_compile(item) for item in cast(ast.List, node).elts)

    def build_list(c: _Context, t: str) -> list[Any]:
        return [item(c, t) for item in items]

    return build_list


def _compile_tuple(node: ast.expr) -> _Closure:
    items = tuple(_compile(item) for item in cast(ast.Tuple, node).elts)

    def build_tuple(c: _Context, t: str) -> tuple[Any, ...]:
        return tuple(item(c, t) for item in items)

    return build_tuple


def _compile_set(node: ast.expr) -> _Closure:
    items = tuple(_compile(item) for item in cast(ast.Set, node).elts)

    def build_set(c: _Context, t: str) -> set[Any]:
        return {item(c, t) for item in items}

    return build_set


def _compile_dict(node: ast.expr) -> _Closure:
    mapping = cast(ast.Dict, node)
    pairs = tuple(
        (_compile(cast(ast.expr, key)), _compile(value))
        for key, value in zip(mapping.keys, mapping.values, strict=True)
    )

    def build_dict(c: _Context, t: str) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key_of, value_of in pairs:
            result[key_of(c, t)] = value_of(c, t)  # the value first, as the evaluator does
        return result

    return build_dict


def _compile_slice(node: ast.expr) -> _Closure:
    bounds = cast(ast.Slice, node)
    parts = tuple(
        None if part is None else _compile(part)
        for part in (bounds.lower, bounds.upper, bounds.step)
    )

    def build_slice(c: _Context, t: str) -> slice:
        lower, upper, step = (None if part is None else part(c, t) for part in parts)
        return slice(lower, upper, step)

    return build_slice


def _compile_call(node: ast.expr) -> _Closure:
    call = cast(ast.Call, node)
    spec = FUNCTIONS[_callee_name(call)]
    function = spec.implementation
    arguments = tuple(_compile(argument) for argument in call.args)
    if spec.reads_clock:

        def call_with_clock(c: _Context, t: str) -> Any:
            values = [argument(c, t) for argument in arguments]
            return function(Clock(c.get("now"), t), *values)

        return call_with_clock
    if len(arguments) == 1:
        (only,) = arguments

        def call_one(c: _Context, t: str) -> Any:
            return function(only(c, t))

        return call_one

    def call_many(c: _Context, t: str) -> Any:
        return function(*[argument(c, t) for argument in arguments])

    return call_many


_NODE_COMPILERS: Final[Mapping[type[ast.AST], Callable[[ast.expr], _Closure]]] = {
    ast.Name: _compile_name,
    ast.Attribute: _compile_attribute,
    ast.Subscript: _compile_subscript,
    ast.Compare: _compile_compare,
    ast.Call: _compile_call,
    ast.BinOp: _compile_binop,
    ast.UnaryOp: _compile_unaryop,
    ast.BoolOp: _compile_boolop,
    ast.IfExp: _compile_ifexp,
    ast.List: _compile_list,
    ast.Tuple: _compile_tuple,
    ast.Set: _compile_set,
    ast.Dict: _compile_dict,
    ast.Slice: _compile_slice,
}


def _interpreter(tree: ast.expr, source: str) -> _Closure:
    def interpret(c: _Context, t: str) -> Any:
        evaluator = _SafeEvaluator(c, Clock(c.get("now"), t), source)
        return evaluator.eval(source, previously_parsed=tree)

    return interpret


def _compile_tree(tree: ast.expr, source: str) -> _Closure:
    """The closure ``Expression.evaluate`` runs; the interpreter if a node has none."""
    try:
        root = _compile(tree)
    except _Unsupported:
        return _interpreter(tree, source)
    if _reads_context(tree):
        return root

    def context_checked(c: _Context, t: str) -> Any:
        # The evaluator reads context.get("now") first, so a context that is no mapping
        # fails even an expression that reads nothing; so must this one.
        c.get("now")
        return root(c, t)

    return context_checked


@dataclass(frozen=True)
class Expression:
    """A compiled expression: what it reads, and a parsed tree ready to evaluate.

    ``attribute_paths`` lists the longest dotted paths read from a context name, in
    source order, e.g. ``("event", "amount")`` for ``event.amount`` or
    ``event["amount"]``; a bare name read appears only in ``names``.
    """

    source: str
    names: frozenset[str]
    attribute_paths: tuple[tuple[str, ...], ...]
    functions: frozenset[str]
    _tree: ast.expr = field(repr=False, compare=False)
    whole_names: frozenset[str] = frozenset()
    """Context names read whole (``event``, ``event[key]`` with ``key`` not a constant),
    not only through a dotted path."""
    _run: _Closure = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_run", _compile_tree(self._tree, self.source))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_run"]  # closures do not pickle; rebuilt from the tree on loading
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_run", _compile_tree(self._tree, self.source))

    def evaluate(self, context: Mapping[str, Any], *, timezone: str = "UTC") -> Any:
        """Evaluate against ``context`` (a mapping of context names to values).

        ``context["now"]`` (an aware datetime or ISO-8601 string) is read only by the
        time functions; ``timezone`` (IANA name) is used by ``local_hour()``. Raises
        ``EvaluationError`` and nothing else.
        """
        try:
            return self._run(context, timezone)
        except Exception as error:
            raise EvaluationError(
                f"cannot evaluate {self.source!r}: {_failure_reason(error)}"
            ) from error

    def evaluate_interpreted(self, context: Mapping[str, Any], *, timezone: str = "UTC") -> Any:
        """``evaluate`` through the tree-walking evaluator instead of the compiled closures.

        The reference the compiled form is tested against (same values, same errors);
        slower, and not used by the engine.
        """
        try:
            evaluator = _SafeEvaluator(context, Clock(context.get("now"), timezone), self.source)
            return evaluator.eval(self.source, previously_parsed=self._tree)
        except Exception as error:
            raise EvaluationError(
                f"cannot evaluate {self.source!r}: {_failure_reason(error)}"
            ) from error


# --- compile-time checks --------------------------------------------------------------

_SINGLETONS = (ast.expr_context, ast.operator, ast.boolop, ast.unaryop, ast.cmpop)
_OPERATOR_SYMBOLS: Final[Mapping[type[ast.AST], str]] = {
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
    ast.Invert: "~",
    ast.Is: "is",
    ast.IsNot: "is not",
}
_OPERATOR_HINTS: Final[Mapping[str, str]] = {
    "&": "use 'and'",
    "|": "use 'or'",
    "^": "use ** for powers",
    "~": "use 'not'",
    "is": "use == to compare, or exists(x) to test for a missing value",
    "is not": "use != to compare, or exists(x) to test for a missing value",
}
_FORBIDDEN: Final[Mapping[type[ast.AST], str]] = {
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.NamedExpr: "assignment expressions (:=) are not allowed",
    ast.Starred: "starred expressions (*) are not allowed",
}
_PLAIN: Final = (
    ast.BoolOp,
    ast.IfExp,
    ast.List,
    ast.Tuple,
    ast.Set,
    ast.Subscript,
    ast.Slice,
    ast.Dict,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
)
_FORBIDDEN_RANK, _UNKNOWN_RANK = 0, 1


class _Problem(NamedTuple):
    rank: int
    column: int
    message: str
    hint: str | None


class _Source:
    """Maps ast positions (line, UTF-8 byte column) to character offsets in the source."""

    def __init__(self, source: str, lead: int) -> None:
        self.text = source
        body = source[lead:]
        self.lines = body.split("\n")
        self.starts: list[int] = []
        offset = lead
        for line in self.lines:
            self.starts.append(offset)
            offset += len(line) + 1

    def offset(self, lineno: int | None, byte_column: int | None) -> int:
        if lineno is None or not 1 <= lineno <= len(self.lines):
            return 0
        line = self.lines[lineno - 1]
        prefix = line.encode()[: byte_column or 0].decode(errors="ignore")
        return self.starts[lineno - 1] + len(prefix)

    def start_of(self, node: ast.AST) -> int:
        return self.offset(getattr(node, "lineno", None), getattr(node, "col_offset", None))

    def end_of(self, node: ast.AST) -> int:
        return self.offset(getattr(node, "end_lineno", None), getattr(node, "end_col_offset", None))

    def find(self, symbol: str, after: ast.AST, before: ast.AST, fallback: ast.AST) -> int:
        start, stop = self.end_of(after), self.start_of(before)
        found = self.text.find(symbol, start, stop)
        return found if found >= 0 else self.start_of(fallback)

    def attribute_column(self, node: ast.Attribute) -> int:
        return self.end_of(node) - len(node.attr)


class _Checker:
    """Walks a parsed expression, collecting what it reads and everything it may not do."""

    def __init__(self, source: _Source, names: Collection[str]) -> None:
        self.source = source
        self.allowed_names = names
        self.problems: list[_Problem] = []
        self.names_read: set[str] = set()
        self.functions_called: set[str] = set()

    def report(self, rank: int, column: int, message: str, hint: str | None = None) -> None:
        self.problems.append(_Problem(rank, column, message, hint))

    def report_private(self, name: str, column: int) -> None:
        self.report(
            _FORBIDDEN_RANK, column, f"'{name}' is not allowed: names starting with '_' are private"
        )

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            self.check_name(node)
        elif isinstance(node, ast.Call):
            self.check_call(node)
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                self.report_private(node.attr, self.source.attribute_column(node))
            self.visit(node.value)
        elif isinstance(node, ast.Constant):
            self.check_constant(node)
        elif type(node) in _FORBIDDEN:
            self.report(_FORBIDDEN_RANK, self.source.start_of(node), _FORBIDDEN[type(node)])
        elif isinstance(node, _PLAIN):
            self.check_operators(node)
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, _SINGLETONS):
                    self.visit(child)
        else:
            message = f"{type(node).__name__} is not allowed in expressions"
            self.report(_FORBIDDEN_RANK, self.source.start_of(node), message)

    def check_name(self, node: ast.Name) -> None:
        column = self.source.start_of(node)
        if node.id.startswith("_"):
            self.report_private(node.id, column)
        elif node.id not in self.allowed_names:
            hint = did_you_mean(node.id, self.allowed_names)
            if node.id in FUNCTION_NAMES:
                hint = f"'{node.id}' is a function: call it, e.g. {node.id}(...)"
            elif hint is None:
                hint = f"available names: {', '.join(sorted(self.allowed_names))}"
            self.report(_UNKNOWN_RANK, column, f"unknown name '{node.id}'", hint)
        else:
            self.names_read.add(node.id)

    def check_call(self, node: ast.Call) -> None:
        callee = node.func
        if isinstance(callee, ast.Name):
            self.check_function_name(node, callee)
        elif isinstance(callee, ast.Attribute):
            column = self.source.attribute_column(callee)
            if callee.attr.startswith("_"):
                self.report_private(callee.attr, column)
            hint = (
                f"call it as a function instead: {callee.attr}(...)"
                if callee.attr in FUNCTION_NAMES
                else f"allowed functions: {', '.join(sorted(FUNCTION_NAMES))}"
            )
            message = f"method calls are not allowed: .{callee.attr}()"
            self.report(_FORBIDDEN_RANK, column, message, hint)
            self.visit(callee.value)
        else:
            message = "only the allowed functions can be called, by name"
            self.report(_FORBIDDEN_RANK, self.source.start_of(node), message)
            self.visit(callee)
        for keyword in node.keywords:
            self.report(
                _FORBIDDEN_RANK,
                self.source.start_of(keyword),
                "keyword arguments are not allowed",
                "pass arguments by position, e.g. round(x, 2)",
            )
            self.visit(keyword.value)
        for argument in node.args:
            self.visit(argument)

    def check_function_name(self, node: ast.Call, callee: ast.Name) -> None:
        column = self.source.start_of(callee)
        name = callee.id
        if name.startswith("_"):
            self.report_private(name, column)
            return
        if name not in FUNCTION_NAMES:
            hint = did_you_mean(name, FUNCTION_NAMES)
            if name in self.allowed_names:
                hint = f"'{name}' is a value, not a function"
            elif hint is None:
                hint = f"allowed functions: {', '.join(sorted(FUNCTION_NAMES))}"
            self.report(_UNKNOWN_RANK, column, f"unknown function '{name}'", hint)
            return
        self.functions_called.add(name)
        spec = FUNCTIONS[name]
        given = len(node.args)
        too_many = spec.max_args is not None and given > spec.max_args
        if (given < spec.min_args or too_many) and not node.keywords:
            message = f"{name}() takes {describe_arity(spec)} ({given} given)"
            self.report(_UNKNOWN_RANK, column, message)

    def check_constant(self, node: ast.Constant) -> None:
        value = node.value
        if value is None or isinstance(value, str | int | float):  # bool is an int
            return
        kind = "Ellipsis" if value is Ellipsis else type(value).__name__
        message = f"{kind} literals are not allowed"
        self.report(_FORBIDDEN_RANK, self.source.start_of(node), message)

    def check_operators(self, node: ast.AST) -> None:
        pairs: list[tuple[ast.AST, ast.AST, ast.AST]]
        if isinstance(node, ast.BinOp):
            pairs = [(node.op, node.left, node.right)]
        elif isinstance(node, ast.UnaryOp):
            pairs = [(node.op, node, node.operand)]
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            pairs = [
                (comparison, operands[index], operands[index + 1])
                for index, comparison in enumerate(node.ops)
            ]
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if key is None:
                    column = self.source.start_of(value)
                    self.report(_FORBIDDEN_RANK, column, "dict unpacking (**) is not allowed")
            return
        else:
            return
        for op, before, after in pairs:
            symbol = _OPERATOR_SYMBOLS.get(type(op))
            if symbol is None:
                continue
            if before is node:  # unary: the operator is the node's first character
                column = self.source.start_of(node)
            else:
                column = self.source.find(symbol.split()[0], before, after, node)
            message = f"operator '{symbol}' is not allowed"
            self.report(_FORBIDDEN_RANK, column, message, _OPERATOR_HINTS.get(symbol))


def _measure(root: ast.AST) -> tuple[int, int, ast.AST]:
    """Node count, maximum depth and the first node at that depth (iteratively)."""
    count, deepest, deepest_node = 0, 0, root
    stack: list[tuple[ast.AST, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > deepest:
            deepest, deepest_node = depth, node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, _SINGLETONS):
                stack.append((child, depth + 1))
    return count, deepest, deepest_node


def _string_key(node: ast.Subscript) -> str | None:
    key = node.slice
    if isinstance(key, ast.Constant) and isinstance(key.value, str):
        return key.value
    return None


def _path_of(node: ast.AST) -> tuple[str, ...] | None:
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript) and (key := _string_key(node)) is not None:
            parts.append(key)
            node = node.value
        elif isinstance(node, ast.Name):
            parts.append(node.id)
            return tuple(reversed(parts))
        else:
            return None


def _extends_path(parent: ast.AST | None, child: ast.AST) -> bool:
    if isinstance(parent, ast.Attribute):
        return parent.value is child
    if isinstance(parent, ast.Subscript):
        return parent.value is child and _string_key(parent) is not None
    return False


def _attribute_paths(root: ast.expr) -> tuple[tuple[str, ...], ...]:
    found: dict[tuple[str, ...], tuple[int, int]] = {}
    stack: list[tuple[ast.AST, ast.AST | None]] = [(root, None)]
    while stack:
        node, parent = stack.pop()
        if isinstance(node, ast.Attribute | ast.Subscript) and not _extends_path(parent, node):
            path = _path_of(node)
            if path is not None and len(path) > 1:
                position = (node.lineno, node.col_offset)
                found[path] = min(found.get(path, position), position)
        stack.extend((child, node) for child in ast.iter_child_nodes(node))
    return tuple(sorted(found, key=found.__getitem__))


def _whole_names(root: ast.expr) -> frozenset[str]:
    found: set[str] = set()
    stack: list[tuple[ast.AST, ast.AST | None]] = [(root, None)]
    while stack:
        node, parent = stack.pop()
        if isinstance(node, ast.Name) and not _extends_path(parent, node):
            found.add(node.id)
        stack.extend((child, node) for child in ast.iter_child_nodes(node))
    return frozenset(found)


def _constant_parts(root: ast.expr) -> list[ast.expr]:
    """The largest subtrees that read no context name and no clock."""
    parts: list[ast.expr] = []

    def children(node: ast.AST) -> list[ast.expr]:
        if isinstance(node, ast.Call):
            return list(node.args)
        return [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr)]

    def is_constant(node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return False
        kids = children(node)
        verdicts = [is_constant(kid) for kid in kids]
        constant = all(verdicts)
        if isinstance(node, ast.Call) and FUNCTIONS[_callee_name(node)].reads_clock:
            constant = False
        if not constant:
            parts.extend(kid for kid, verdict in zip(kids, verdicts, strict=True) if verdict)
        return constant

    if is_constant(root):
        parts.append(root)
    return [part for part in parts if not isinstance(part, ast.Constant)]


def _syntax_error(source: str, lead: int, error: SyntaxError) -> ExpressionError:
    lines = source[lead:].split("\n")
    lineno = error.lineno if error.lineno and 1 <= error.lineno <= len(lines) else 1
    line = lines[lineno - 1]
    offset = error.offset if error.offset and 0 < error.offset <= len(line) + 1 else len(line) + 1
    column = lead + sum(len(previous) + 1 for previous in lines[: lineno - 1]) + offset - 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            statements = ast.parse(source[lead:], mode="exec").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        statements = []
    if statements:
        hint = "use == to compare" if isinstance(statements[0], ast.Assign) else None
        return ExpressionError(_STATEMENT, column=column, hint=hint)
    hint = None
    if "\n" in source.strip():
        hint = "to split an expression over several lines, wrap it in parentheses"
    return ExpressionError(f"cannot parse expression: {error.msg}", column=column, hint=hint)


def _parse(source: str) -> tuple[ast.expr, int]:
    if not isinstance(source, str):
        raise ExpressionError(f"expression must be text, got {type(source).__name__}")
    if len(source) > MAX_SOURCE_LENGTH:
        raise ExpressionError(
            f"expression is too long ({len(source)} characters, max {MAX_SOURCE_LENGTH})",
            column=MAX_SOURCE_LENGTH,
        )
    lead = len(source) - len(source.lstrip())
    if lead == len(source):
        raise ExpressionError("expression is empty")
    try:
        # Python accepts "1if x else 2" or an unknown escape like \d with only a warning,
        # which a validator run should not print. (Compile time only: filters are global.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return ast.parse(source[lead:], mode="eval").body, lead
    except SyntaxError as error:
        raise _syntax_error(source, lead, error) from None
    except (RecursionError, MemoryError):
        raise ExpressionError(f"expression is nested too deeply (max depth {MAX_DEPTH})") from None
    except ValueError as error:  # e.g. a NUL character
        raise ExpressionError(f"cannot parse expression: {error}") from None


def compile_expression(source: str, *, names: Collection[str] = CONTEXT_NAMES) -> Expression:
    """Parse and check ``source`` once; the result can be evaluated many times.

    ``names`` are the context names the expression may read. Raises ``ExpressionError``
    (see the module docstring for every message).
    """
    tree, lead = _parse(source)
    positions = _Source(source, lead)

    count, depth, deepest = _measure(tree)
    if depth > MAX_DEPTH:
        raise ExpressionError(
            f"expression is nested too deeply (depth {depth}, max {MAX_DEPTH})",
            column=positions.start_of(deepest),
        )
    if count > MAX_NODES:
        raise ExpressionError(f"expression is too complex ({count} nodes, max {MAX_NODES})")

    checker = _Checker(positions, names)
    checker.visit(tree)
    if checker.problems:
        first = min(checker.problems, key=lambda problem: (problem.rank, problem.column))
        raise ExpressionError(first.message, column=first.column, hint=first.hint)

    for part in _constant_parts(tree):
        try:
            _SafeEvaluator({}, Clock(None, "UTC"), source)._eval(part)
        except Exception as error:
            column = positions.start_of(part)
            raise ExpressionError(_failure_reason(error), column=column) from error

    return Expression(
        source=source,
        names=frozenset(checker.names_read),
        attribute_paths=_attribute_paths(tree),
        functions=frozenset(checker.functions_called),
        _tree=tree,
        whole_names=_whole_names(tree),
    )
