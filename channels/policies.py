"""The sending policies a message passes before a provider sees it: consent, suppression
and the frequency cap, plus the address hashing that keeps recipients out of logs, the
console and the API (masking is `engine.profiles.mask_address`, the one masker; `mask`
here applies it to a channel's address).

Lives here: keyword-only functions over a SQLModel `Session` (consent, suppression,
preferences) or an `Engine` (the cap, which runs its own short transaction so that its
lock is held for as little time as possible). Not here: Temporal (these are called from
the send activity and the API), rendering, delivery, quiet hours.

Consent (`consent`) says no when any of these does; an opt-out anywhere wins:

- a `Preference` row for the channel with ``opted_in`` false (preferences API, the
  unsubscribe link, an SMS STOP);
- profile trait ``unsubscribed`` true: opted out of every channel;
- profile trait ``<channel>_opt_out`` true (``email_opt_out``, ``sms_opt_out``...);
- profile trait ``<channel>_opt_in`` false (``email_opt_in: false``); absent means in.

Trait values count as true when they are ``true``, ``1`` or the text ``"true"``/``"yes"``/
``"1"`` (CDPs often send text), and as false for ``false``, ``0``, ``"false"``/``"no"``/
``"0"``; anything else is ignored.

The frequency cap counts a customer's reservations across all journeys in the window
``(now - per_seconds, now]`` (reservations stamped later than ``now``, by an attempt on
another worker, count too): a reservation exactly ``per_seconds`` old has expired, so
``retry_at`` is a time at which a retry is granted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from engine.database import CapReservation, Preference, Suppression, dialect_insert, utcnow
from engine.profiles import mask_address, normalise_address
from engine.pseudonyms import erased_among
from engine.timestamps import as_utc

__all__ = [
    "DEFAULT_CHANNELS",
    "CapDecision",
    "ChannelPreference",
    "address_hash",
    "consent",
    "is_suppressed",
    "mask",
    "normalise_address",
    "preferences",
    "release_cap_slot",
    "reserve_cap_slot",
    "set_preference",
    "suppress",
    "unsuppress",
]

DEFAULT_CHANNELS = ("email", "sms", "push")
"""The channels every customer has a preference for (opted in unless a row says not)."""

_TRUE_TEXT = frozenset({"true", "yes", "1"})
_FALSE_TEXT = frozenset({"false", "no", "0"})


# ----------------------------------------------------------------------------- addresses


def address_hash(channel: str, address: str) -> str:
    """SHA-256 (hex) of the channel and the normalised address: what suppressions and
    deliveries store instead of the address."""
    key = f"{channel.strip().lower()}:{normalise_address(channel, address)}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def mask(channel: str, address: str) -> str:
    """An address as the console and the API show it (`engine.profiles.mask_address`, the
    one masker: the same rules as workflow histories)."""
    return str(mask_address(address, channel))


# ----------------------------------------------------------------------------- consent


def _trait_is(value: Any, wanted: bool) -> bool:
    if isinstance(value, bool):
        return value is wanted
    if isinstance(value, int | float):
        return value == (1 if wanted else 0)
    if isinstance(value, str):
        return value.strip().lower() in (_TRUE_TEXT if wanted else _FALSE_TEXT)
    return False


def consent(
    session: Session, *, customer_id: str, channel: str, traits: Mapping[str, Any]
) -> tuple[bool, str | None]:
    """Whether the customer may get messages on ``channel``; when not, why (for the
    delivery record and the audit). See the module docstring for the traits honoured."""
    row = session.get(Preference, (customer_id, channel))
    if row is not None and not row.opted_in:
        return False, f"opted out of {channel} ({row.source})"
    if _trait_is(traits.get("unsubscribed"), True):
        return False, "profile trait unsubscribed is true"
    if _trait_is(traits.get(f"{channel}_opt_out"), True):
        return False, f"profile trait {channel}_opt_out is true"
    if _trait_is(traits.get(f"{channel}_opt_in"), False):
        return False, f"profile trait {channel}_opt_in is false"
    return True, None


@dataclass(frozen=True)
class ChannelPreference:
    """A customer's choice for one channel as the API shows it."""

    opted_in: bool
    source: str
    updated_at: datetime | None


def preferences(session: Session, *, customer_id: str) -> dict[str, ChannelPreference]:
    """The customer's preference per channel, by channel name: the stored rows, and for
    each default channel without one: opted in, source ``default``, no ``updated_at``."""
    rows = session.exec(select(Preference).where(Preference.customer_id == customer_id)).all()
    found = {
        row.channel: ChannelPreference(
            opted_in=row.opted_in, source=row.source, updated_at=row.updated_at
        )
        for row in rows
    }
    for channel in DEFAULT_CHANNELS:
        found.setdefault(
            channel, ChannelPreference(opted_in=True, source="default", updated_at=None)
        )
    return dict(sorted(found.items()))


def set_preference(
    session: Session, *, customer_id: str, channel: str, opted_in: bool, source: str
) -> bool:
    """Store the customer's choice for a channel (insert or update, race-free). False, and
    nothing stored, for a customer who was erased (`engine.pseudonyms.erased_among`)."""
    if erased_among(session.connection(), [customer_id]):
        return False
    values = {
        "customer_id": customer_id,
        "channel": channel,
        "opted_in": opted_in,
        "source": source[:50],
        "updated_at": utcnow(),
    }
    insert = dialect_insert(session.get_bind().dialect.name)(Preference).values(**values)
    session.execute(
        insert.on_conflict_do_update(
            index_elements=["customer_id", "channel"],
            set_={
                "opted_in": opted_in,
                "source": values["source"],
                "updated_at": values["updated_at"],
            },
        )
    )
    session.expire_all()
    return True


# ----------------------------------------------------------------------------- suppression


def is_suppressed(session: Session, *, channel: str, address: str) -> str | None:
    """Why ``address`` must not get messages on ``channel``; None when it may."""
    row = session.get(Suppression, (channel, address_hash(channel, address)))
    return row.reason if row is not None else None


def suppress(session: Session, *, channel: str, address: str, reason: str) -> bool:
    """Suppress an address on a channel. Idempotent: an address already suppressed keeps
    its first reason. True when this call added the suppression."""
    insert = dialect_insert(session.get_bind().dialect.name)(Suppression).values(
        channel=channel,
        address_hash=address_hash(channel, address),
        reason=reason[:400],
        created_at=utcnow(),
    )
    # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING.
    result = session.execute(
        insert.on_conflict_do_nothing(index_elements=["channel", "address_hash"]).returning(
            Suppression.channel
        )
    )
    return result.first() is not None


def unsuppress(session: Session, *, channel: str, address: str, reason: str | None = None) -> bool:
    """Lift a suppression; with ``reason``, only one made for that reason (a START lifts a
    STOP, not a hard bounce). True when one was lifted."""
    statement = delete(Suppression).where(
        col(Suppression.channel) == channel,
        col(Suppression.address_hash) == address_hash(channel, address),
    )
    if reason is not None:
        statement = statement.where(col(Suppression.reason) == reason)
    result = session.execute(statement)
    session.expire_all()
    return bool(getattr(result, "rowcount", 0))


# ----------------------------------------------------------------------------- frequency cap


@dataclass(frozen=True)
class CapDecision:
    """The answer to a cap reservation: granted, or refused until ``retry_at``.

    ``used`` is how many of the customer's slots the window holds, this one included when
    granted.
    """

    granted: bool
    retry_at: datetime | None
    used: int


def _customer_lock_key(customer_id: str) -> int:
    """A signed 64-bit key for `pg_advisory_xact_lock`, stable across processes."""
    digest = hashlib.sha256(f"journeys-cap:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def reserve_cap_slot(
    engine: Engine,
    *,
    customer_id: str,
    run_id: str,
    step_id: str,
    visit: int,
    max_count: int,
    per_seconds: float,
    now: datetime,
) -> CapDecision:
    """Take one of the customer's ``max_count`` slots per ``per_seconds``, atomically
    across processes and journeys: of two racing reservations for the last slot exactly
    one is granted.

    The count and the insert run in one transaction under a per-customer lock
    (`pg_advisory_xact_lock` on PostgreSQL, `BEGIN IMMEDIATE` on SQLite). Idempotent per
    ``(run_id, step_id, visit)``: a retried attempt gets its slot back, not a second one.
    """
    if max_count < 1 or per_seconds <= 0:
        raise ValueError("a frequency cap needs max_count >= 1 and per_seconds > 0")
    at = as_utc(now)
    window_start = at - timedelta(seconds=per_seconds)
    with Session(engine) as session:
        _lock_customer(session, engine.dialect.name, customer_id)
        try:
            mine = session.exec(
                select(CapReservation).where(
                    CapReservation.run_id == run_id,
                    CapReservation.step_id == step_id,
                    CapReservation.visit == visit,
                )
            ).first()
            times = _reserved_since(session, customer_id, window_start)
            if mine is not None:
                session.rollback()
                return CapDecision(granted=True, retry_at=None, used=len(times))
            if len(times) >= max_count:
                session.rollback()
                # The slot that frees up next: enough of the oldest must expire.
                frees_at = times[len(times) - max_count] + timedelta(seconds=per_seconds)
                return CapDecision(granted=False, retry_at=frees_at, used=len(times))
            session.add(
                CapReservation(
                    customer_id=customer_id,
                    run_id=run_id,
                    step_id=step_id,
                    visit=visit,
                    reserved_at=at,
                )
            )
            session.commit()
        except BaseException:
            session.rollback()
            raise
    return CapDecision(granted=True, retry_at=None, used=len(times) + 1)


def _lock_customer(session: Session, dialect: str, customer_id: str) -> None:
    """Begin the reservation's transaction holding the customer's lock, so that no other
    writer can count between our count and our insert."""
    connection = session.connection()
    if dialect == "sqlite":
        # pysqlite begins transactions lazily and deferred; take the write lock up front.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _customer_lock_key(customer_id)}
        )
    else:
        raise RuntimeError(f"unsupported database dialect {dialect!r}: use SQLite or PostgreSQL")


def _reserved_since(session: Session, customer_id: str, window_start: datetime) -> list[datetime]:
    """When the customer's slots still in the window were taken, oldest first."""
    query = (
        select(CapReservation.reserved_at)
        .where(
            CapReservation.customer_id == customer_id,
            col(CapReservation.reserved_at) > window_start,
        )
        .order_by(col(CapReservation.reserved_at))
    )
    return [as_utc(moment) for moment in session.exec(query).all()]


def release_cap_slot(engine: Engine, *, run_id: str, step_id: str, visit: int) -> bool:
    """Give back the slot of a send that was not sent after all (a permanent failure, a
    template error). True when there was one."""
    with Session(engine) as session:
        result = session.execute(
            delete(CapReservation).where(
                col(CapReservation.run_id) == run_id,
                col(CapReservation.step_id) == step_id,
                col(CapReservation.visit) == visit,
            )
        )
        session.commit()
    return bool(getattr(result, "rowcount", 0))
