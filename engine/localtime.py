"""Local times: the next time a customer's clock shows ``HH:MM``, and quiet hours.

Pure domain code, below the activities that use it (`local_time` for `wait: {until:}`,
`send_message` for quiet hours). Must not live here: the clock (callers pass ``now``),
Temporal, I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from engine.durations import parse_time_of_day

__all__ = ["next_local_time", "quiet_hours_end", "zone_named"]


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
