"""Durations (`30s`, `15m`, `4h`, `3d`, `2w`, `1d12h`) and local times of day (`09:00`).

Pure parsing only; nothing here knows about journeys or Temporal.
"""

from __future__ import annotations

import re

__all__ = [
    "DurationError",
    "format_duration",
    "parse_duration",
    "parse_offset",
    "parse_time_of_day",
]

_UNIT_SECONDS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"^(?:\d+[wdhms])+$")
_PART = re.compile(r"(\d+)([wdhms])")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_MAX_SECONDS = 10 * 365 * 86400


class DurationError(ValueError):
    """A duration or time of day that does not parse; the message says what is accepted."""


def parse_duration(text: object) -> int:
    """Return the number of seconds in a duration such as ``3d`` or ``1d12h``."""
    if not isinstance(text, str):
        raise DurationError(
            f"duration must be text like '30s', '15m', '4h', '3d', '2w' or '1d12h', got {text!r}"
        )
    value = text.strip()
    if not _DURATION.match(value):
        raise DurationError(
            f"'{text}' is not a duration: use a number and a unit, s m h d w, "
            "such as '30s', '15m', '4h', '3d', '2w' or '1d12h'"
        )
    units = [unit for _, unit in _PART.findall(value)]
    if len(units) != len(set(units)) or units != sorted(units, key=list(_UNIT_SECONDS).index):
        raise DurationError(
            f"'{text}' is not a duration: give each unit once, largest first (like '1d12h')"
        )
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(value))
    if seconds <= 0:
        raise DurationError(f"'{text}' is not a duration: it must be longer than zero")
    if seconds > _MAX_SECONDS:
        raise DurationError(f"'{text}' is longer than the 10-year maximum")
    return seconds


def parse_offset(text: object) -> int:
    """Seconds in a signed duration such as ``-3d`` (before) or ``12h``/``+12h`` (after)."""
    if not isinstance(text, str):
        raise DurationError(f"offset must be text like '-3d' or '12h', got {text!r}")
    value = text.strip()
    sign = -1 if value.startswith("-") else 1
    try:
        return sign * parse_duration(value[1:] if value[:1] in ("+", "-") else value)
    except DurationError as error:
        raise DurationError(
            f"'{text}' is not an offset: use a duration with an optional sign, "
            "like '-3d' (3 days before), '12h' or '-1d6h'"
        ) from error


def format_duration(seconds: int) -> str:
    """The canonical text of a number of seconds, e.g. ``129600`` -> ``1d12h``."""
    parts: list[str] = []
    rest = seconds
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def parse_time_of_day(text: object) -> tuple[int, int]:
    """Return ``(hour, minute)`` for a 24-hour local time such as ``09:00``."""
    if not isinstance(text, str) or not _TIME.match(text.strip()):
        raise DurationError(f"{text!r} is not a time of day: use 24-hour 'HH:MM', like '09:00'")
    hour, minute = text.strip().split(":")
    return int(hour), int(minute)
