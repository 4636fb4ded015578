"""The functions a journey expression may call, and the time conversions they share.

Lives here: the allow-list of callable functions (``FUNCTIONS``/``FUNCTION_NAMES``) with
each one's arity, their implementations, ``Clock`` (the evaluation's "now" and timezone)
and the conversions of datetimes, ISO-8601 strings and epoch seconds to aware datetimes
that the template filters reuse.

Must not live here: parsing or evaluating expressions (``rules.expressions``), any I/O, and
any read of the real clock: "now" always comes from the caller's context, because inside a
workflow only the workflow's deterministic clock may be used.

Every function treats ``None`` as a missing value: ``None`` in gives ``None`` out (``min``
and ``max`` skip ``None`` items, ``coalesce`` and ``exists`` exist to test for it). Any other
bad input raises ``TypeError``/``ValueError`` with a message naming the function; the
evaluator turns it into an ``EvaluationError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, localcontext
from types import MappingProxyType
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "FUNCTIONS",
    "FUNCTION_NAMES",
    "Clock",
    "FunctionSpec",
    "describe_arity",
    "load_zone",
    "to_aware_datetime",
]

_MAX_ROUND_DIGITS = 20
_SECONDS_PER_UNIT = {"days_since": 86_400.0, "hours_since": 3_600.0, "minutes_since": 60.0}


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def load_zone(name: str) -> ZoneInfo:
    """The IANA timezone ``name``; ``ValueError("unknown timezone 'X'")`` if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):  # OSError: a folder
        raise ValueError(f"unknown timezone {_preview(name)}") from None


def to_aware_datetime(value: object, who: str) -> datetime | None:
    """Read ``value`` as an aware datetime; ``None`` stays ``None``.

    Accepts a datetime (naive ones are taken as UTC), a date (midnight UTC), an ISO-8601
    string (``2024-05-01``, ``2024-05-01T09:30:00Z``, ``...+09:00``) or epoch seconds.
    ``who`` starts the error message, e.g. ``"days_since()"``.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.utcoffset() is not None else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{who} cannot read {_preview(value)} as a time "
                "(expected ISO 8601, e.g. 2024-05-01T09:30:00Z)"
            ) from None
        return parsed if parsed.utcoffset() is not None else parsed.replace(tzinfo=UTC)
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(float(value), tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"{who} cannot read {_preview(value)} as epoch seconds") from None
    raise TypeError(
        f"{who} expects a time (datetime, ISO-8601 string or epoch seconds), "
        f"got {type(value).__name__}"
    )


class Clock:
    """The evaluation's "now" (read from the context) and the customer's timezone.

    Both are parsed lazily, so an expression that never asks for the time never fails
    because ``now`` or the timezone is missing or malformed.
    """

    __slots__ = ("_now", "_raw_now", "_timezone", "_zone")

    def __init__(self, raw_now: object, timezone: str) -> None:
        self._raw_now = raw_now
        self._timezone = timezone
        self._now: datetime | None = None
        self._zone: ZoneInfo | None = None

    def now(self) -> datetime:
        """The context's ``now`` as an aware datetime."""
        if self._now is None:
            parsed = to_aware_datetime(self._raw_now, "context 'now':")
            if parsed is None:
                raise ValueError(
                    "'now' is missing from the context; days_since(), hours_since(), "
                    "minutes_since() and local_hour() need it"
                )
            self._now = parsed
        return self._now

    def zone(self) -> ZoneInfo:
        """The timezone passed to ``evaluate``."""
        if self._zone is None:
            self._zone = load_zone(self._timezone)
        return self._zone


def _elapsed(name: str) -> Callable[[Clock, object], float | None]:
    unit = _SECONDS_PER_UNIT[name]

    def elapsed(clock: Clock, moment: object) -> float | None:
        since = to_aware_datetime(moment, f"{name}()")
        if since is None:
            return None
        return (clock.now() - since).total_seconds() / unit

    elapsed.__name__ = name
    elapsed.__doc__ = f"Time from ``moment`` to the context's ``now``, in {name.split('_')[0]}."
    return elapsed


def _local_hour(clock: Clock) -> int:
    """The hour (0-23) of ``now`` in the evaluation's timezone."""
    return clock.now().astimezone(clock.zone()).hour


def _text(name: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{name}() expects a string, got {type(value).__name__}")


def _lower(value: object) -> str | None:
    """``value`` in lower case."""
    text = _text("lower", value)
    return None if text is None else text.lower()


def _upper(value: object) -> str | None:
    """``value`` in upper case."""
    text = _text("upper", value)
    return None if text is None else text.upper()


def _length(value: object) -> int | None:
    """Length of a string, list or mapping."""
    if value is None:
        return None
    if isinstance(value, str | list | tuple | set | frozenset | Mapping):
        return len(value)
    raise TypeError(f"len() expects a string, list or mapping, got {type(value).__name__}")


def _round(value: object, digits: object = 0) -> int | float | None:
    """Round half away from zero (2.5 -> 3); a whole number when ``digits`` is 0."""
    if value is None or digits is None:
        return None
    if isinstance(digits, bool) or not isinstance(digits, int):
        raise TypeError(f"round() expects a whole number of digits, got {_preview(digits)}")
    if abs(digits) > _MAX_ROUND_DIGITS:
        limit = _MAX_ROUND_DIGITS
        raise ValueError(f"round() digits must be between -{limit} and {limit}")
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise TypeError(f"round() expects a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        return value
    exact = Decimal(value) if isinstance(value, int) else Decimal(str(value))
    with localcontext() as decimal_context:
        decimal_context.prec = max(28, len(exact.as_tuple().digits) + _MAX_ROUND_DIGITS + 2)
        rounded = exact.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return int(rounded) if digits <= 0 else float(rounded)


def _candidates(values: tuple[object, ...]) -> list[Any]:
    if len(values) == 1 and isinstance(values[0], list | tuple | set | frozenset):
        values = tuple(values[0])
    return [value for value in values if value is not None]


def _minimum(*values: object) -> Any:
    """The smallest argument (or item of a single list argument), ignoring ``None``."""
    present = _candidates(values)
    return min(present) if present else None


def _maximum(*values: object) -> Any:
    """The largest argument (or item of a single list argument), ignoring ``None``."""
    present = _candidates(values)
    return max(present) if present else None


def _absolute(value: object) -> Any:
    """The absolute value of a number."""
    if value is None:
        return None
    if isinstance(value, int | float | Decimal):
        return abs(value)
    raise TypeError(f"abs() expects a number, got {type(value).__name__}")


def _exists(value: object) -> bool:
    """``True`` unless ``value`` is missing (``None``); empty strings and 0 exist."""
    return value is not None


def _coalesce(*values: object) -> object:
    """The first argument that is not ``None``, else ``None``."""
    for value in values:
        if value is not None:
            return value
    return None


class FunctionSpec(NamedTuple):
    """One callable function: implementation and arity checked at compile time."""

    implementation: Callable[..., Any]
    min_args: int
    max_args: int | None  # None: any number
    reads_clock: bool  # called with the evaluation's Clock as first argument


FUNCTIONS: Mapping[str, FunctionSpec] = MappingProxyType(
    {
        "days_since": FunctionSpec(_elapsed("days_since"), 1, 1, True),
        "hours_since": FunctionSpec(_elapsed("hours_since"), 1, 1, True),
        "minutes_since": FunctionSpec(_elapsed("minutes_since"), 1, 1, True),
        "lower": FunctionSpec(_lower, 1, 1, False),
        "upper": FunctionSpec(_upper, 1, 1, False),
        "len": FunctionSpec(_length, 1, 1, False),
        "round": FunctionSpec(_round, 1, 2, False),
        "min": FunctionSpec(_minimum, 1, None, False),
        "max": FunctionSpec(_maximum, 1, None, False),
        "abs": FunctionSpec(_absolute, 1, 1, False),
        "exists": FunctionSpec(_exists, 1, 1, False),
        "coalesce": FunctionSpec(_coalesce, 1, None, False),
        "local_hour": FunctionSpec(_local_hour, 0, 0, True),
    }
)
"""Every function an expression can call; nothing else is reachable."""

FUNCTION_NAMES: frozenset[str] = frozenset(FUNCTIONS)
"""Names of the callable functions (the contract's list, exactly)."""


def describe_arity(spec: FunctionSpec) -> str:
    """How many arguments ``spec`` takes, in words: "1 argument", "1 or 2 arguments"..."""

    def count(number: int) -> str:
        return f"{number} argument" if number == 1 else f"{number} arguments"

    if spec.max_args is None:
        return f"at least {count(spec.min_args)}"
    if spec.max_args == 0:
        return "no arguments"
    if spec.min_args == spec.max_args:
        return count(spec.min_args)
    return f"{spec.min_args} or {count(spec.max_args)}"
