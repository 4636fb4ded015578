"""What the validator finds wrong with a decision table's rules: overlaps and numeric gaps.

Works on cells already parsed by `engine.unary` (by input name; an input a rule leaves out
matches anything). `overlapping` finds rule pairs some input values match both of (wrong
under ``hit: unique``); `gaps` finds numeric input values between the table's bounds that
no rule matches (wrong without an ``else``). Pure: no I/O.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from engine.unary import AnyValue, NumberRange, UnaryTest, matches, numeric_bounds
from engine.unary import overlaps as cells_overlap

__all__ = ["Gap", "gaps", "overlapping"]

Rule = dict[str, UnaryTest]
MAX_POINTS = 20_000  # probes per table; past this a table is not searched for gaps
MAX_GAPS = 5


@dataclass(frozen=True)
class Gap:
    """Input values no rule matches, described (``risk between 0.3 and 0.5``), and the
    rule that misses them on the fewest inputs (the one to widen), by index."""

    description: str
    nearest: int


def _test(rule: Rule, name: str) -> UnaryTest:
    return rule.get(name, AnyValue())


def overlapping(names: list[str], rules: list[Rule]) -> list[tuple[int, int]]:
    """Pairs (earlier, later) of rules that some input values match both of."""
    return [
        (i, j)
        for i, j in itertools.combinations(range(len(rules)), 2)
        if all(cells_overlap(_test(rules[i], n), _test(rules[j], n)) for n in names)
    ]


@dataclass(frozen=True, order=True)
class _Probe:
    """A value to try for a numeric input, and the stretch of numbers it stands for: a
    bound itself, or the open stretch between two bounds."""

    value: float
    low: float
    high: float
    closed: bool


def _probes(name: str, rules: list[Rule]) -> list[_Probe]:
    """Values worth trying for a numeric input: every bound, and a point between each two
    (none: the input is not tested numerically)."""
    tests = [_test(rule, name) for rule in rules]
    if not any(isinstance(t, NumberRange) for t in tests):
        return []
    bounds = sorted({b for t in tests for b in numeric_bounds(t)})
    probes = [_Probe(b, b, b, closed=True) for b in bounds]
    probes += [
        _Probe((low + high) / 2, low, high, closed=False)
        for low, high in itertools.pairwise(bounds)
    ]
    return sorted(probes)


def _stretch(name: str, run: list[_Probe]) -> str:
    """Consecutive probes no rule matches, in the table's own interval syntax."""
    first, last = run[0], run[-1]
    if first is last and first.closed:
        return f"{name} = {first.value:g}"
    left = "[" if first.closed else "("
    right = "]" if last.closed else ")"
    return f"{name} in {left}{first.low:g}..{last.high:g}{right}"


def _misses(rule: Rule, names: list[str], point: tuple[_Probe, ...]) -> tuple[int, float]:
    """How far ``rule`` is from matching ``point``: the inputs it misses on, then by how
    much (so the rule to widen is the one beside the gap)."""
    missed, distance = 0, 0.0
    for name, probe in zip(names, point, strict=True):
        test = _test(rule, name)
        if not matches(test, probe.value):
            missed += 1
            bounds = numeric_bounds(test)
            distance += min((abs(probe.value - b) for b in bounds), default=0.0)
    return missed, distance


def gaps(names: list[str], rules: list[Rule]) -> list[Gap]:
    """Numeric input values (between the smallest and the largest bound the rules name)
    that no rule matches, whatever the other inputs are: the numeric inputs alone are
    searched (other cells count as holding), so a table keyed on a segment and a score
    reports only holes in the score. Neighbouring holes along the last numeric input are
    one gap."""
    probed = {name: _probes(name, rules) for name in names}
    numeric = [name for name in names if probed[name]]
    if not numeric or math.prod(len(probed[n]) for n in numeric) > MAX_POINTS:
        return []
    *outer, last = numeric
    found: list[Gap] = []
    for fixed in itertools.product(*(probed[n] for n in outer)):
        run: list[_Probe] = []
        nearest = 0
        for probe in [*probed[last], None]:
            misses = [] if probe is None else [_misses(r, numeric, (*fixed, probe)) for r in rules]
            if probe is not None and min(misses)[0] > 0:
                nearest = nearest if run else misses.index(min(misses))
                run.append(probe)
                continue
            if run:
                where = [_stretch(n, [p]) for n, p in zip(outer, fixed, strict=True)]
                found.append(Gap(", ".join([*where, _stretch(last, run)]), nearest))
                run = []
            if len(found) >= MAX_GAPS:
                return found
    return found
