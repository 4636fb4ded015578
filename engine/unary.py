"""Unary tests: the cells of a decision table (`decide:` steps), parsed once into a small model.

A cell tests one input value: ``-`` (or an empty cell) matches anything; ``< 0.3``,
``>= 30`` compare a number; ``[0.3..0.7)`` is an interval whose ends are closed ``[ ]`` or
open ``( )`` (DMN's outward brackets ``]0..1[`` are open too); ``"gold", "silver"`` or
``1, 2`` match any of the listed literals (``= 5`` is the one-literal list). The validator
and the walk (`engine.decisions`) both parse through `parse_test`, so a cell means the same
at design time and at run time; the validator also asks `overlaps` (two cells can match one
value) and `numeric_bounds` (where numeric cells start and end, to look for gaps).
Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "HELP",
    "AnyValue",
    "Literals",
    "NumberRange",
    "UnaryTest",
    "UnaryTestError",
    "matches",
    "numeric_bounds",
    "overlaps",
    "parse_test",
]

Literal = str | float | bool


class UnaryTestError(ValueError):
    """A cell that is not a unary test; the message says what one looks like."""


@dataclass(frozen=True)
class AnyValue:
    """``-``: any value, even a missing one."""


@dataclass(frozen=True)
class NumberRange:
    """Numbers from ``low`` to ``high`` (infinite: unbounded), each end closed or open."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool

    def holds(self, value: float) -> bool:
        above = value > self.low or (self.low_closed and value == self.low)
        below = value < self.high or (self.high_closed and value == self.high)
        return above and below


@dataclass(frozen=True)
class Literals:
    """One of these literals (texts, numbers, booleans)."""

    values: frozenset[Literal]


UnaryTest = AnyValue | NumberRange | Literals

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_COMPARISON = re.compile(rf"^(<=|>=|<|>|=)\s*({_NUMBER}|\"[^\"]*\"|'[^']*'|true|false)$")
_INTERVAL = re.compile(rf"^([\[(\]])\s*({_NUMBER})\s*\.\.\s*({_NUMBER})\s*([\])\[])$")
_LITERAL = re.compile(rf"\s*(\"[^\"]*\"|'[^']*'|{_NUMBER}|true|false)\s*(,|$)")
HELP = 'a cell is -, a comparison like < 0.3 or >= 30, an interval like [0.3..0.7), or literals like "gold", "silver"'


def _literal(text: str) -> Literal:
    if text[0] in "\"'":
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    return float(text)


@lru_cache(maxsize=4096)
def parse_test(cell: str) -> UnaryTest:
    """The test a cell's text stands for (cached: a plan's cells are parsed once)."""
    text = cell.strip()
    if text in ("", "-"):
        return AnyValue()
    comparison = _COMPARISON.match(text)
    if comparison:
        op, raw = comparison.groups()
        value = _literal(raw)
        if op == "=":
            return Literals(frozenset([value]))
        if not isinstance(value, float):
            raise UnaryTestError(f"'{cell}': {op} compares numbers only")
        low, high = (-math.inf, value) if op.startswith("<") else (value, math.inf)
        return NumberRange(low, high, op == ">=", op == "<=")
    interval = _INTERVAL.match(text)
    if interval:
        left, start, end, right = interval.groups()
        if float(start) > float(end):
            raise UnaryTestError(f"'{cell}': the interval's low end is above its high end")
        return NumberRange(float(start), float(end), left == "[", right == "]")
    return _literals(cell, text)


def _literals(cell: str, text: str) -> Literals:
    values: list[Literal] = []
    position = 0
    while position < len(text):
        found = _LITERAL.match(text, position)
        if found is None or found.end() == position:
            raise UnaryTestError(f"'{cell}' is not a unary test")
        values.append(_literal(found.group(1)))
        position = found.end()
    return Literals(frozenset(values))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def matches(test: UnaryTest, value: object) -> bool:
    """Whether ``value`` (an input's value in a run) passes ``test``."""
    if isinstance(test, AnyValue):
        return True
    number = _number(value)
    if isinstance(test, NumberRange):
        return number is not None and test.holds(number)
    if number is not None:
        return any(_number(v) == number for v in test.values)
    return any(type(v) is type(value) and v == value for v in test.values)


def overlaps(first: UnaryTest, second: UnaryTest) -> bool:
    """Whether some value passes both tests."""
    if isinstance(first, AnyValue) or isinstance(second, AnyValue):
        return True
    if isinstance(first, Literals):
        return any(matches(second, value) for value in first.values)
    if isinstance(second, Literals):
        return any(matches(first, value) for value in second.values)
    low = max(first.low, second.low)
    high = min(first.high, second.high)
    if low < high:
        return True
    return low == high and first.holds(low) and second.holds(low)


def numeric_bounds(test: UnaryTest) -> list[float]:
    """The finite numbers where a numeric test starts or stops holding."""
    if isinstance(test, NumberRange):
        return [b for b in (test.low, test.high) if math.isfinite(b)]
    if isinstance(test, Literals):
        return [n for n in (_number(v) for v in test.values) if n is not None]
    return []
