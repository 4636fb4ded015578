"""Local times: the next time a customer's clock shows ``HH:MM``, a date read from the run
moved to a local time, the next weekday, and quiet hours.

Pure domain code, below the activities that use it (`local_time` for `wait: {until:}`,
`date_wait` for `wait: {until: {date:}}` and `{until: {weekday:}}`, `send_message` for
quiet hours). Must not live here: the clock (callers pass ``now``), Temporal, I/O.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from engine.durations import parse_time_of_day

__all__ = [
    "WEEKDAYS",
    "DateOutcome",
    "date_fire_at",
    "date_wait_fire_at",
    "next_local_time",
    "next_weekday",
    "quiet_hours_end",
    "read_date",
    "zone_named",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Weekday names as a journey writes them, Monday first (`date.weekday()` order)."""

DateOutcome = Literal["waiting", "missing", "past"]
"""What a wait on a date found: a time ahead to wait for, no readable date, or one gone by."""


def zone_named(name: str) -> ZoneInfo:
    """The zone called ``name``; UTC for a name that is not one (never fails a run)."""
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        return ZoneInfo("UTC")


def next_local_time(now: datetime, zone: ZoneInfo, hhmm: str) -> datetime:
    """The next instant (after ``now``) when the local clock in ``zone`` shows ``hhmm``.

    Across a DST change the wall-clock time is kept (09:00 stays 09:00 local); a time that
    does not exist that day (inside a spring-forward gap) is shifted by the gap, as clocks
    are: 02:30 on the night of 02:00 -> 03:00 fires at 03:30.
    """
    hour, minute = parse_time_of_day(hhmm)
    local_now = now.astimezone(zone)
    for days in range(0, 3):
        day = (local_now + timedelta(days=days)).date()
        candidate = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
        instant = candidate.astimezone(UTC)
        if instant > now:
            return instant
    raise AssertionError("unreachable: a local time recurs within two days")


def quiet_hours_end(now: datetime, zone: ZoneInfo, start: str, end: str) -> datetime | None:
    """When the quiet hours around ``now`` end, or None when ``now`` is not in them."""
    start_h, start_m = parse_time_of_day(start)
    end_h, end_m = parse_time_of_day(end)
    local = now.astimezone(zone)
    minutes = local.hour * 60 + local.minute
    begin, finish = start_h * 60 + start_m, end_h * 60 + end_m
    quiet = begin <= minutes < finish if begin < finish else minutes >= begin or minutes < finish
    if not quiet:
        return None
    return next_local_time(now, zone, end)


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a naive local wall-clock time in ``zone``. A time inside a
    spring-forward gap is shifted by the gap (fold 0), as in `next_local_time`."""
    return wall.replace(tzinfo=zone).astimezone(UTC)


def read_date(value: object) -> date | datetime | None:
    """``value`` as a date or a datetime, None when missing or unreadable (never fails).

    Reads dates and datetimes as they are, ISO-8601 text (``2027-03-17``,
    ``2027-03-17T09:00:00+09:00``, ``...Z``) and epoch seconds (as the expression
    functions do)."""
    if isinstance(value, date):  # a datetime is a date too
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(float(value), tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
    except ValueError:
        return None


def date_fire_at(
    value: date | datetime, zone: ZoneInfo, *, offset_seconds: int = 0, at: str | None = None
) -> datetime:
    """When a wait on ``value`` fires (UTC), for a customer in ``zone``.

    A date-only value is that day in ``zone`` at ``at`` (default 00:00); a naive datetime is
    a wall-clock time in ``zone``; an aware one keeps its instant. ``at`` replaces the local
    time of day. The offset moves the local wall clock, not the instant, so "3 days before,
    at 09:00" is 09:00 local even when a DST change lies in between.
    """
    if isinstance(value, datetime) and value.utcoffset() is not None:
        if at is None and offset_seconds == 0:
            return value.astimezone(UTC)  # its instant, even inside a fall-back hour
        wall = value.astimezone(zone).replace(tzinfo=None)
    elif isinstance(value, datetime):
        wall = value
    else:
        wall = datetime(value.year, value.month, value.day)
    if at is not None:
        hour, minute = parse_time_of_day(at)
        wall = wall.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return _instant(wall + timedelta(seconds=offset_seconds), zone)


def date_wait_fire_at(
    now: datetime, zone: ZoneInfo, value: object, *, offset_seconds: int = 0, at: str | None = None
) -> tuple[datetime | None, DateOutcome]:
    """When to wake for ``value`` (a date read from the run), and what was found: a time
    ahead (``waiting``), no readable date (``missing``) or one at or before ``now``
    (``past``, returned with the instant it had)."""
    read = read_date(value)
    if read is None:
        return None, "missing"
    try:
        fire = date_fire_at(read, zone, offset_seconds=offset_seconds, at=at)
    except OverflowError:  # beyond year 9999 after the offset: no date a run can wait for
        return None, "missing"
    return fire, "waiting" if fire > now else "past"


def next_weekday(now: datetime, zone: ZoneInfo, weekday: str, at: str = "00:00") -> datetime:
    """The next instant (after ``now``) when it is ``weekday`` (``mon`` .. ``sun``) at
    ``at`` in ``zone``: today if that time is still ahead, else within a week."""
    hour, minute = parse_time_of_day(at)
    target = WEEKDAYS.index(weekday)
    today = now.astimezone(zone).date()
    for days in range(0, 8):
        day = today + timedelta(days=days)
        if day.weekday() == target:
            instant = _instant(datetime(day.year, day.month, day.day, hour, minute), zone)
            if instant > now:
                return instant
    raise AssertionError("unreachable: a weekday recurs within eight days")
