"""Instants as the product stores and compares them: timezone-aware, in UTC.

One `as_utc` for every boundary where a datetime comes in (a database that drops the zone,
an event with a naive timestamp, a Temporal scheduled time): a naive value is taken as UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload

__all__ = ["as_utc", "utcnow"]


def utcnow() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(UTC)


@overload
def as_utc(moment: datetime) -> datetime: ...
@overload
def as_utc(moment: None) -> None: ...
def as_utc(moment: datetime | None) -> datetime | None:
    """``moment`` in UTC; a naive value is taken as UTC already. None stays None."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
