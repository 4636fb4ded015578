"""Experiment results (issue #19): is one arm of a split, or the journey against its
holdout, converting better, and by how much? Pure functions over counts, no database:
`engine.stats` counts the entries and conversions per arm, `compare` does the statistics,
`describe` says it in one line. The shapes are `engine.stats_models`' `ArmStats` and
`ExperimentStats`; docs/operations.md ("Experiment results") explains them to users.

**Per arm.** ``rate`` = conversions / entries; a 95% Wilson score interval
(``ci_low``, ``ci_high``: unlike the plain "rate ± 1.96·SE" it stays inside [0, 1] and
is honest at 0% and 100%); ``lift`` = (rate − control rate) / control rate, only when a
control is named (None for the control itself, and when the control's rate is 0 or
unknown). A split has no natural control: with ``control=None`` no lift is given (the
caller may name one, e.g. the plan's first arm); for the holdout the caller passes
``control="control"``.

**The test.** Two arms: the pooled two-proportion z-test, two-sided. More arms: Pearson's
chi-square test of independence on the k×2 table (converted / not converted per arm),
k − 1 degrees of freedom, its survival function computed exactly for integer degrees of
freedom (`chi_square_sf`). Arms with no entries take no part in it. The p-value is None
when it is undefined: fewer than two arms with entries, or no conversion at all, or every
entry converted (nothing varies, so there is nothing to test).

**The winner**, only when all of these hold: the p-value is below ``alpha``; every arm has
at least ``min_per_arm`` entries (else ``warning`` says which arm is short, and the p-value
is still given, for information); one arm has the highest rate; and, with more than two
arms, that arm also beats every other arm in a pairwise two-proportion test at
alpha / (k − 1) (Bonferroni over its k − 1 comparisons), so "b wins" never rests on "the
arms differ somewhere". When the arms differ but no single arm beats all others, the
``warning`` says so. The winner may be the control (the journey does worse than leaving
customers alone).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist

from engine.stats_models import ArmStats, ExperimentStats

__all__ = ["CHI_SQUARE", "NO_TEST", "TWO_PROPORTION", "chi_square_sf", "compare", "describe"]

TWO_PROPORTION = "two-proportion z-test"
CHI_SQUARE = "chi-square test"
NO_TEST = "none"  # fewer than two arms: nothing to compare

_Z95 = NormalDist().inv_cdf(0.975)  # 1.959963984540054: the Wilson interval is always 95%


def compare(
    arms: Mapping[str, tuple[int, int]],
    *,
    control: str | None = None,
    alpha: float = 0.05,
    min_per_arm: int = 100,
) -> ExperimentStats:
    """The statistics of one experiment. ``arms`` maps each arm's name to its
    ``(entries, conversions)``, in the plan's order (kept in the result). See the module's
    docstring for the test, the interval, the lift and when a winner is called.

    Raises ValueError on counts that cannot be (negative, more conversions than entries),
    a ``control`` that is not an arm, or ``alpha`` outside (0, 1)."""
    _check(arms, control, alpha, min_per_arm)
    counts = dict(arms)
    control_rate = _rate(*counts[control]) if control is not None else None
    per_arm = {
        name: _arm(entries, conversions, None if name == control else control_rate)
        for name, (entries, conversions) in counts.items()
    }
    if len(counts) < 2:
        return ExperimentStats(
            arms=per_arm,
            control=control,
            test=NO_TEST,
            warning="fewer than two arms: nothing to compare",
        )
    test = TWO_PROPORTION if len(counts) == 2 else CHI_SQUARE
    p_value = _p_value(counts)
    warning = _small_sample(counts, min_per_arm)
    winner = None
    if warning is None and p_value is not None and p_value < alpha:
        winner = _winner(counts, alpha)
        if winner is None:
            warning = "the arms differ, but no one arm beats every other yet"
    return ExperimentStats(
        arms=per_arm, control=control, p_value=p_value, winner=winner, test=test, warning=warning
    )


def describe(stats: ExperimentStats) -> str:
    """One line for a CX lead: who wins and by how much, or why nobody does yet."""
    rated = {name: arm for name, arm in stats.arms.items() if arm.rate is not None}
    if len(stats.arms) < 2:
        return "nothing to compare: fewer than two arms"
    if stats.warning is not None and stats.warning.endswith("too few to call"):
        return f"too few entries to call ({stats.warning.removesuffix(': too few to call')})"
    if stats.p_value is None:
        if all(arm.conversions == 0 for arm in rated.values()):
            return "nothing to compare yet: no arm has a conversion"
        return "nothing to compare: every entry converted in every arm"
    p = _format_p(stats.p_value)
    if stats.winner is None:
        if stats.warning is not None:
            best = max(rated, key=lambda name: rated[name].rate or 0.0)
            return f"{stats.warning} ({p}); best so far: {best} at {_pct(rated[best].rate)}"
        return f"no significant difference yet ({p})"
    winner = rated[stats.winner]
    others = [f"{_pct(arm.rate)} for {name}" for name, arm in rated.items() if name != stats.winner]
    others_text = " and ".join([", ".join(others[:-1]), others[-1]] if len(others) > 2 else others)
    lift = f", a {winner.lift * 100:.3g}% lift" if winner.lift is not None else ""
    return f"{stats.winner} converts {_pct(winner.rate)} vs {others_text}{lift} ({p}): {stats.winner} wins"


def chi_square_sf(x: float, df: int) -> float:
    """P(X ≥ x) for X chi-square with ``df`` (a positive integer) degrees of freedom: the
    regularized upper gamma function Q(df/2, x/2), in closed form for integer df. With
    h = x/2, from Q(a + 1, h) = Q(a, h) + h^a·e^(−h) / Γ(a + 1):

    - even df = 2m: Q = e^(−h) · Σ_{i=0}^{m−1} h^i / i!
    - odd df = 2m + 1: Q = erfc(√h) + Σ_{i=1}^{m} h^(i−½)·e^(−h) / Γ(i + ½)

    Each term is computed through its logarithm, so neither large x nor large df
    overflows."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, not {df}")
    if x <= 0:
        return 1.0
    h = x / 2
    log_h = math.log(h)
    if df % 2 == 0:
        total = sum(math.exp(-h + i * log_h - math.lgamma(i + 1)) for i in range(df // 2))
    else:
        total = math.erfc(math.sqrt(h)) + sum(
            math.exp(-h + (i - 0.5) * log_h - math.lgamma(i + 0.5)) for i in range(1, df // 2 + 1)
        )
    return min(1.0, max(0.0, total))


def _check(
    arms: Mapping[str, tuple[int, int]], control: str | None, alpha: float, min_per_arm: int
) -> None:
    for name, (entries, conversions) in arms.items():
        if entries < 0 or not 0 <= conversions <= entries:
            raise ValueError(f"arm {name}: {conversions} conversions of {entries} entries")
    if control is not None and control not in arms:
        raise ValueError(f"control {control!r} is not one of the arms {sorted(arms)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    if min_per_arm < 0:
        raise ValueError(f"min_per_arm must be 0 or more, not {min_per_arm}")


def _rate(entries: int, conversions: int) -> float | None:
    return conversions / entries if entries else None


def _arm(entries: int, conversions: int, control_rate: float | None) -> ArmStats:
    rate = _rate(entries, conversions)
    low, high = _wilson(entries, conversions)
    lift = None
    if rate is not None and control_rate:  # None, or 0: no lift against nothing
        lift = (rate - control_rate) / control_rate
    return ArmStats(
        entries=entries, conversions=conversions, rate=rate, ci_low=low, ci_high=high, lift=lift
    )


def _wilson(entries: int, conversions: int) -> tuple[float | None, float | None]:
    """The 95% Wilson score interval of conversions / entries (None with no entries):
    (p + z²/2n ± z·√(p(1−p)/n + z²/4n²)) / (1 + z²/n)."""
    if entries == 0:
        return None, None
    n, rate, z2 = entries, conversions / entries, _Z95 * _Z95
    center = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At 0% and 100% the bound equals the rate; rounding must not put the rate outside.
    return max(0.0, min(center - half, rate)), min(1.0, max(center + half, rate))


def _z_test(first: tuple[int, int], second: tuple[int, int]) -> float | None:
    """The pooled two-proportion z-test's two-sided p-value; None when undefined (an arm
    without entries, or a pooled rate of 0 or 1)."""
    (n1, x1), (n2, x2) = first, second
    if n1 == 0 or n2 == 0:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return None
    z = (x1 / n1 - x2 / n2) / math.sqrt(variance)
    return min(1.0, math.erfc(abs(z) / math.sqrt(2)))  # 2·(1 − Φ(|z|)), exact in the tails


def _chi_square(rows: list[tuple[int, int]]) -> float | None:
    """Pearson's chi-square test of independence on the k×2 table of (entries,
    conversions) rows; arms without entries are left out. None when undefined."""
    rows = [row for row in rows if row[0] > 0]
    total = sum(entries for entries, _ in rows)
    converted = sum(conversions for _, conversions in rows)
    if len(rows) < 2 or converted in (0, total):
        return None
    statistic = 0.0
    for entries, conversions in rows:
        for observed, column in (
            (conversions, converted),
            (entries - conversions, total - converted),
        ):
            expected = entries * column / total
            statistic += (observed - expected) ** 2 / expected
    return chi_square_sf(statistic, len(rows) - 1)


def _p_value(counts: dict[str, tuple[int, int]]) -> float | None:
    rows = list(counts.values())
    return _z_test(rows[0], rows[1]) if len(rows) == 2 else _chi_square(rows)


def _small_sample(counts: dict[str, tuple[int, int]], min_per_arm: int) -> str | None:
    """The minimum-sample warning: an arm below ``min_per_arm`` entries (or with none at
    all, whatever the minimum) is too few to call."""
    short = [name for name, (entries, _) in counts.items() if entries < max(min_per_arm, 1)]
    if not short:
        return None
    arms = f"arm {short[0]}" if len(short) == 1 else f"arms {', '.join(short)}"
    if min_per_arm <= 1:
        return f"no entries in {arms}: too few to call"
    return f"fewer than {min_per_arm} entries in {arms}: too few to call"


def _winner(counts: dict[str, tuple[int, int]], alpha: float) -> str | None:
    """The arm with the highest rate, if it is alone there and (with more than two arms)
    beats every other arm pairwise at alpha / (k − 1)."""
    rates = {
        name: entries and conversions / entries for name, (entries, conversions) in counts.items()
    }
    best = max(rates, key=rates.__getitem__)
    if sum(rate == rates[best] for rate in rates.values()) > 1:
        return None
    if len(counts) == 2:
        return best
    threshold = alpha / (len(counts) - 1)
    for name, row in counts.items():
        if name != best:
            p = _z_test(counts[best], row)
            if p is None or p >= threshold:
                return None
    return best


def _format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.1%}"
