"""A channel's send rate, shared by every worker: a token bucket in the database.

Lives here: `take_token`, one short write transaction on the channel's `channel_rates` row
(on PostgreSQL the row is locked with ``SELECT ... FOR UPDATE``; on SQLite the transaction
begins with ``BEGIN IMMEDIATE``, SQLite's one writer lock). Not here: Temporal (the send
activity turns the answer into a wait or a retry), the catalogue (`journeys deploy` writes
each channel's rate into its row; `engine.deploy`).

The bucket. It holds at most ``burst`` tokens and refills at ``per_second``; a send takes
one. When none is left the next token is due in ``(1 - tokens) / per_second`` seconds. If
that is at most ``max_wait`` (default `MAX_INLINE_WAIT`, 1 s), the token is taken anyway
(the bucket goes below zero: it owes that token) and the caller is told how long to wait
before sending: callers that queue behind one another get successive moments, one every
``1 / per_second``, so no two are promised the same one. If it is longer, nothing is taken
and the caller is told how long until a token within ``max_wait`` can be promised, so at
most ``per_second * max_wait`` sends wait inside a worker at any time.

So in any window of ``t`` seconds a channel lets out at most ``burst + per_second * t``
sends, however many workers take tokens. A channel without a row (nothing deployed yet)
gets its default rate (`engine.spec.DEFAULT_RATES`); its row is made on its first send.
The clock is the caller's: ``updated_at`` never moves back, so a worker whose clock is
behind refills nothing rather than too much.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from engine.database import ChannelRate, dialect_insert, utcnow
from engine.spec import channel_rate, rate_burst
from engine.timestamps import as_utc

__all__ = ["MAX_INLINE_WAIT", "Pace", "take_token"]

MAX_INLINE_WAIT: Final = 1.0
"""Seconds a send may be promised a token ahead: it waits that long in the activity."""


@dataclass(frozen=True)
class Pace:
    """A bucket's answer: a token, to be used ``wait`` seconds from now (0: at once), or
    (``granted`` false) none, and how many seconds until asking again can get one."""

    granted: bool
    wait: float
    per_second: float


def take_token(
    engine: Engine,
    *,
    channel: str,
    now: datetime | None = None,
    max_wait: float = MAX_INLINE_WAIT,
) -> Pace:
    """Take one of ``channel``'s tokens, in one short transaction (see the module
    docstring for what ``wait`` means)."""
    at = as_utc(now or utcnow())
    dialect = engine.dialect.name
    with Session(engine) as session:
        try:
            if dialect == "sqlite":
                # pysqlite begins lazily and deferred; take the write lock up front.
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            row = _locked_row(session, dialect, channel, at)
            pace, tokens = _take(row, at, max_wait)
            if not pace.granted:
                session.rollback()
                return pace
            row.tokens = tokens
            row.updated_at = max(as_utc(row.updated_at), at)
            session.add(row)
            session.commit()
        except BaseException:
            session.rollback()
            raise
    return pace


def _locked_row(session: Session, dialect: str, channel: str, at: datetime) -> ChannelRate:
    """The channel's row, locked for this transaction; made (full, at its default rate)
    when there is none yet."""
    query = select(ChannelRate).where(ChannelRate.channel == channel).with_for_update()
    row = session.exec(query).first()
    if row is not None:
        return row
    per_second = channel_rate(channel, "")
    burst = rate_burst(per_second)
    session.execute(
        dialect_insert(dialect)(ChannelRate)
        .values(channel=channel, per_second=per_second, burst=burst, tokens=burst, updated_at=at)
        .on_conflict_do_nothing(index_elements=["channel"])
    )
    return session.exec(query).one()


def _take(row: ChannelRate, at: datetime, max_wait: float) -> tuple[Pace, float]:
    """The answer for a send asking at ``at``, and the tokens the row keeps if granted.

    The bucket's own time is the later of ``at`` and ``updated_at``: an asker whose clock
    is behind (another worker's, or a thread that read the clock before the one that took
    the lock first) refills nothing and waits out the difference too."""
    updated = as_utc(row.updated_at)
    base = max(at, updated)
    tokens = min(float(row.burst), row.tokens + (base - updated).total_seconds() * row.per_second)
    due = max(0.0, (1.0 - tokens) / row.per_second)
    behind = (base - at).total_seconds()
    if due <= max_wait:
        return Pace(granted=True, wait=behind + due, per_second=row.per_second), tokens - 1.0
    return Pace(granted=False, wait=behind + due - max_wait, per_second=row.per_second), tokens
