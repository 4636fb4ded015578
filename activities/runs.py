"""Run records and customer profiles: the database side of a run (activities).

Lives here: the `@activity.defn` wrappers that read and write the `runs` row and the
profile, and `upsert_run` (the send activity writes a run's final row with it; it also
writes the run's path tail to `run_path` and its split arms to `run_arms`). Must not
live here: deciding (`engine.decisions`), the customer view and masking of a profile
(`engine.profiles`): both are pure and used by the service too.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, or_
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from engine.audit import Record, append
from engine.conversion_counts import ends_converted, has_goals, recount
from engine.database import (
    EventRecord,
    ParkedEvent,
    Profile,
    Run,
    RunArm,
    dialect_insert,
    session_scope,
    upsert_profile,
    utcnow,
)
from engine.decisions import bucket_of, decide
from engine.errors import ErrorType
from engine.payloads import (
    ActivityName,
    BeginRunInput,
    BeginRunResult,
    CustomerContext,
    DecideResult,
    EventMessage,
    LoadEventsInput,
    LoadEventsResult,
    LoadProfileInput,
    ParkedBacklog,
    ParkEventsInput,
    PathEntry,
    RecordRunInput,
    UpdateProfileInput,
)
from engine.personal import run_event
from engine.profiles import customer_from_traits, masked_customer
from engine.run_path import write_path
from engine.timestamps import as_utc

__all__ = ["DECISIONS", "RunActivities", "decision_records", "upsert_run"]


class RunActivities:
    """Profile reads and writes, and the `runs` table a run keeps up to date."""

    def __init__(self, *, db: Engine) -> None:
        self.db = db

    @activity.defn(name=ActivityName.LOAD_PROFILE)
    def load_profile(self, request: LoadProfileInput) -> CustomerContext:
        """The customer's traits, read fresh, with addresses masked (see `masked_customer`)."""
        return masked_customer(self.read_customer(request.customer_id), request.profile_marks)

    def read_customer(self, customer_id: str) -> CustomerContext:
        """The customer with real addresses (for activities, never for a workflow)."""
        with session_scope(self.db) as session:
            profile = session.get(Profile, customer_id)
            traits = dict(profile.traits) if profile is not None else {}
        return customer_from_traits(customer_id, traits)

    @activity.defn(name=ActivityName.LOAD_EVENTS)
    def load_events(self, request: LoadEventsInput) -> LoadEventsResult:
        """A page of a run's carried backlog: the customer's events by message id, in the
        order asked (the router stored each before signalling it); with ``parked``, the
        ids are positions ``offset`` to ``offset + limit - 1`` of its parked queue."""
        message_ids = request.message_ids
        if request.parked is not None and request.run_id is not None:
            message_ids = self._parked_ids(
                request.run_id, request.parked.generation, request.offset, request.limit
            )
            request = request.model_copy(update={"message_ids": message_ids})
        with session_scope(self.db) as session:
            rows = session.exec(
                select(EventRecord).where(
                    col(EventRecord.message_id).in_(request.message_ids),
                    EventRecord.customer_id == request.customer_id,
                )
            ).all()
            found = {row.message_id: row for row in rows}
            events = [
                run_event(
                    EventMessage(
                        name=row.name or row.type,
                        customer_id=row.customer_id,
                        message_id=row.message_id,
                        timestamp=as_utc(row.timestamp),
                        properties=dict(row.properties),
                    ),
                    request.personal,
                )
                for mid in request.message_ids
                if (row := found.get(mid)) is not None
            ]
        missing = [mid for mid in request.message_ids if mid not in found]
        return LoadEventsResult(events=events, missing=missing)

    def _parked_ids(self, run_id: str, generation: int, offset: int, limit: int) -> list[str]:
        with session_scope(self.db) as session:
            return list(
                session.exec(
                    select(ParkedEvent.message_id)
                    .where(
                        ParkedEvent.run_id == run_id,
                        ParkedEvent.generation == generation,
                        col(ParkedEvent.position) >= offset,
                        col(ParkedEvent.position) < offset + limit,
                    )
                    .order_by(col(ParkedEvent.position))
                ).all()
            )

    @activity.defn(name=ActivityName.PARK_EVENTS)
    def park_events(self, request: ParkEventsInput) -> ParkedBacklog:
        """Write a run's queue for its next generation into `run_backlog`, in order: the
        front ids, the rest of this generation's parked queue, the tail ids. One
        transaction, idempotent (a retry rewrites the same rows); the rows of
        generations before this one are deleted (no run reads them again)."""
        with session_scope(self.db) as session:
            remainder: list[str] = []
            if request.remainder is not None:
                remainder = self._parked_ids(
                    request.run_id,
                    request.remainder.generation,
                    request.remainder_from,
                    request.remainder.count - request.remainder_from,
                )
            ids = [*request.front, *remainder, *request.tail]
            session.exec(
                delete(ParkedEvent).where(
                    col(ParkedEvent.run_id) == request.run_id,
                    or_(
                        col(ParkedEvent.generation) == request.generation,
                        col(ParkedEvent.generation) < request.generation - 1,
                    ),
                )
            )
            session.flush()
            for start in range(0, len(ids), 1000):
                session.execute(
                    insert(ParkedEvent),
                    [
                        {
                            "run_id": request.run_id,
                            "generation": request.generation,
                            "position": position,
                            "message_id": message_id,
                        }
                        for position, message_id in enumerate(ids[start : start + 1000], start)
                    ],
                )
        return ParkedBacklog(generation=request.generation, count=len(ids))

    @activity.defn(name=ActivityName.UPDATE_PROFILE)
    def update_profile(self, request: UpdateProfileInput) -> None:
        """A `set: {profile.x: ...}` step's writes."""
        with session_scope(self.db) as session:
            upsert_profile(session, customer_id=request.customer_id, traits=request.traits)

    @activity.defn(name=ActivityName.RECORD_RUN)
    def record_run(self, request: RecordRunInput) -> None:
        """Upsert the run's row (status, step, outcome) and add its path's tail (idempotent)."""
        with session_scope(self.db) as session:
            upsert_run(session, request)

    @activity.defn(name=ActivityName.BEGIN_RUN)
    def begin_run(self, request: BeginRunInput) -> BeginRunResult:
        """A run's start in one transaction: its `runs` row, the customer's profile (masked,
        as `load_profile` gives it) and, when the plan has a holdout, the stable bucket."""
        customer = request.customer
        if request.record is not None:
            customer = self._record_and_read(request.record, customer, request.profile_marks)
        elif customer is None and request.reload and request.customer_id is not None:
            customer = masked_customer(
                self.read_customer(request.customer_id), request.profile_marks
            )
        if customer is None:
            raise ApplicationError(
                "begin_run needs the run's record or the customer's profile",
                type=ErrorType.BAD_CONFIGURATION,
                non_retryable=True,
            )
        bucket = (
            bucket_of(request.holdout_salt, request.holdout_weights)
            if request.holdout_weights
            else None
        )
        decided = _first_walk(request, customer)
        return BeginRunResult(customer=customer, holdout_bucket=bucket, decided=decided)

    def _record_and_read(
        self, record: RecordRunInput, customer: CustomerContext | None, marks: dict[str, str]
    ) -> CustomerContext | None:
        """Write the run's row and, unless given, read the customer (masked), in one go."""
        with session_scope(self.db) as session:
            upsert_run(session, record)
            if customer is not None:
                return customer
            stored = (
                session.connection()
                .execute(_PROFILE_TRAITS, {"customer_id": record.customer_id})
                .scalar_one_or_none()
            )
        traits = dict(stored) if stored is not None else {}
        return masked_customer(customer_from_traits(record.customer_id, traits), marks)


def _first_walk(request: BeginRunInput, customer: CustomerContext) -> DecideResult | None:
    """The walk from the plan's first step, against the profile just read (and the
    customer's own zone, when they have one)."""
    if request.decide is None:
        return None
    context = dict(request.decide.context)
    context["profile"] = customer.traits
    context["customer"] = customer.expression_view()
    timezone = customer.timezone or request.decide.timezone
    return decide(request.decide.model_copy(update={"context": context, "timezone": timezone}))


def upsert_run(session: Session, request: RecordRunInput) -> None:
    """Insert the run's row or bring it up to date, in one statement where the database
    can (SQLite, PostgreSQL: ``INSERT ... ON CONFLICT DO UPDATE``), and add the path
    entries it carries (the tail not recorded yet) as `run_path` rows at ``path_start``
    on (`write_path`), in the same transaction. Both are idempotent: a retried record, or
    a tail sent again, changes nothing more. `runs.path` is no longer written (a new row
    gets `[]`)."""
    connection = session.connection()
    arms = [
        {"run_id": request.run_id, "step_id": entry.step, "arm": entry.detail["arm"]}
        for entry in request.path
        if entry.type == "split" and isinstance(entry.detail.get("arm"), str)
    ]

    def write() -> None:
        _write_run(connection, request, arms)

    if (request.status != "running" or arms) and has_goals(
        connection, request.journey_id, request.version
    ):
        # An end (an outcome goal) or an arm changes what the run's conversions count
        # (`engine.conversion_counts`); only an end with a goal's outcome converts.
        converts = request.status != "running" and ends_converted(
            connection, request.journey_id, request.version, request.outcome
        )
        recount(connection, [request.run_id], write, may_convert=converts)
    else:
        write()
    # Last: from here to the commit, other appends to the audit log wait.
    append(
        connection,
        decision_records(
            run_id=request.run_id,
            customer_id=request.customer_id,
            journey_id=request.journey_id,
            version=request.version,
            start=request.path_start,
            path=request.path,
        ),
    )


def _write_run(connection: Connection, request: RecordRunInput, arms: list[dict[str, Any]]) -> None:
    now = utcnow()
    ended = now if request.status != "running" else None
    dialect = connection.dialect.name
    connection.execute(
        _upsert_statement(dialect),
        {
            "run_id": request.run_id,
            "workflow_id": request.workflow_id,
            "journey_id": request.journey_id,
            "version": request.version,
            "customer_id": request.customer_id,
            "key": request.key,
            "trigger_message_id": request.trigger_message_id,
            "status": request.status,
            "step": request.step,
            "outcome": request.outcome,
            "holdout": request.holdout,
            "path": [],
            "started_at": now,
            "updated_at": now,
            "ended_at": ended,
            # A worker of the release before continue-as-new sends none: its run has one
            # generation, whose id is the run's.
            "current_run_id": request.current_run_id or request.run_id,
        },
    )
    write_path(connection, run_id=request.run_id, start=request.path_start, entries=request.path)
    if arms:
        # A run's arm at a split never changes (its bucket is stable), so rows written by
        # an earlier record of the same run are left as they are.
        connection.execute(_arms_statement(dialect), _distinct(arms))


DECISIONS = frozenset({"branch", "decide", "split", "score", "holdout"})
"""The path entries the audit log records as decisions (`engine.audit`)."""


def decision_records(
    *,
    run_id: str,
    customer_id: str,
    journey_id: str,
    version: str | None,
    start: int,
    path: Sequence[PathEntry],
) -> list[Record]:
    """The decisions among ``path`` (its first entry at position ``start``) as audit
    records, one per path position (``ref``): a retried record, or a tail sent again,
    logs nothing twice. What was decided and by which rule, never the values read (they
    may be personal)."""
    records: list[Record] = []
    for seq, entry in enumerate(path, start):
        if entry.type not in DECISIONS:
            continue
        details: dict[str, Any] = {
            "journey": journey_id,
            "version": version,
            "step": entry.step,
            "type": entry.type,
            "outcome": entry.outcome,
            "at": as_utc(entry.at).isoformat(),
        }
        for name in ("rule", "rules", "hit", "arm", "model", "fallback_used"):
            if name in entry.detail:
                details[name] = entry.detail[name]
        if entry.detail.get("error"):
            details["error"] = True
        records.append(
            Record(
                kind="decision",
                subject=f"run:{run_id}",
                actor="journeys",
                customer=customer_id,
                details=details,
                ref=f"path:{run_id}:{seq}",
            )
        )
    return records


def _distinct(arms: list[dict[str, str]]) -> list[dict[str, str]]:
    """One row per split, for a run that passed a split more than once (a loop)."""
    return list({row["step_id"]: row for row in arms}.values())


@functools.cache
def _arms_statement(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` into `run_arms` for ``dialect``, built once."""
    return dialect_insert(dialect)(RunArm.__table__).on_conflict_do_nothing()  # type: ignore[attr-defined]


@functools.cache
def _upsert_statement(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT (run_id) DO UPDATE`` for ``dialect``, built once: the values
    come as parameters, so each call skips building and compiling the statement (measured
    here: most of the cost of a run's record on a busy worker)."""
    table = Run.__table__  # type: ignore[attr-defined]
    statement = dialect_insert(dialect)(table)
    excluded = statement.excluded
    # Not `path`: the entries are `run_path` rows, and the column stays as it is (`[]`).
    changed = ("status", "step", "outcome", "holdout", "current_run_id", "updated_at")
    return statement.on_conflict_do_update(
        index_elements=[table.c.run_id],
        set_={
            **{name: excluded[name] for name in changed},
            "ended_at": func.coalesce(table.c.ended_at, excluded.ended_at),
        },
    )


_PROFILE_TRAITS = select(col(Profile.traits)).where(
    col(Profile.customer_id) == bindparam("customer_id")
)
