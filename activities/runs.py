"""Run records and customer profiles: the database side of a run (activities)."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import bindparam, func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.decisions import bucket_of, decide
from engine.database import Profile, Run, dialect_insert, session_scope, upsert_profile, utcnow
from engine.errors import ErrorType
from engine.payloads import (
    BeginRunInput,
    BeginRunResult,
    CustomerContext,
    LoadProfileInput,
    RecordRunInput,
    UpdateProfileInput,
)

__all__ = [
    "RunActivities",
    "customer_from_traits",
    "mask_address",
    "masked_customer",
    "upsert_run",
]

_ADDRESS_TRAITS = ("email", "phone", "push_token", "timezone")


def customer_from_traits(customer_id: str, traits: dict[str, Any]) -> CustomerContext:
    """The `customer` an expression sees: id and channel addresses, from profile traits."""
    fields = {
        name: str(traits[name]) for name in _ADDRESS_TRAITS if traits.get(name) not in (None, "")
    }
    return CustomerContext(id=customer_id, traits=dict(traits), **fields)


def is_address_trait(name: str) -> bool:
    """Traits that hold a way to reach the customer (kept out of workflow histories)."""
    lowered = name.lower()
    return lowered in ("phone", "push_token") or "email" in lowered or "phone" in lowered


def mask_address(value: Any) -> Any:
    """``ana@example.com`` -> ``a***@example.com``; ``+821012345678`` -> ``+82******5678``."""
    if not isinstance(value, str) or not value:
        return value
    if "@" in value:
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    if len(value) <= 6:
        return "***"
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


def masked_customer(customer: CustomerContext) -> CustomerContext:
    """The customer as a workflow holds it: addresses masked. Activities that need the real
    address (sending) read it from the database by customer id, so no history carries it."""
    traits = {k: mask_address(v) if is_address_trait(k) else v for k, v in customer.traits.items()}
    return customer.model_copy(
        update={
            "traits": traits,
            "email": mask_address(customer.email),
            "phone": mask_address(customer.phone),
            "push_token": mask_address(customer.push_token),
        }
    )


class RunActivities:
    """Profile reads and writes, and the `runs` table a run keeps up to date."""

    def __init__(self, *, db: Engine) -> None:
        self.db = db

    @activity.defn(name="load_profile")
    def load_profile(self, request: LoadProfileInput) -> CustomerContext:
        """The customer's traits, read fresh, with addresses masked (see `masked_customer`)."""
        return masked_customer(self.read_customer(request.customer_id))

    def read_customer(self, customer_id: str) -> CustomerContext:
        """The customer with real addresses (for activities, never for a workflow)."""
        with session_scope(self.db) as session:
            profile = session.get(Profile, customer_id)
            traits = dict(profile.traits) if profile is not None else {}
        return customer_from_traits(customer_id, traits)

    @activity.defn(name="update_profile")
    def update_profile(self, request: UpdateProfileInput) -> None:
        """A `set: {profile.x: ...}` step's writes."""
        with session_scope(self.db) as session:
            upsert_profile(session, customer_id=request.customer_id, traits=request.traits)

    @activity.defn(name="record_run")
    def record_run(self, request: RecordRunInput) -> None:
        """Upsert the run's row: status, step, outcome and path (idempotent)."""
        with session_scope(self.db) as session:
            upsert_run(session, request)

    @activity.defn(name="begin_run")
    def begin_run(self, request: BeginRunInput) -> BeginRunResult:
        """A run's start in one transaction: its `runs` row, the customer's profile (masked,
        as `load_profile` gives it) and, when the plan has a holdout, the stable bucket."""
        customer = request.customer
        if request.record is not None:
            with session_scope(self.db) as session:
                upsert_run(session, request.record)
                if customer is None:
                    customer_id = request.record.customer_id
                    stored = (
                        session.connection()
                        .execute(_PROFILE_TRAITS, {"customer_id": customer_id})
                        .scalar_one_or_none()
                    )
                    traits = dict(stored) if stored is not None else {}
                    customer = masked_customer(customer_from_traits(customer_id, traits))
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
        decided = None
        if request.decide is not None:
            context = dict(request.decide.context)
            context["profile"] = customer.traits
            context["customer"] = customer.expression_view()
            decided = decide(
                request.decide.model_copy(
                    update={
                        "context": context,
                        "timezone": customer.timezone or request.decide.timezone,
                    }
                )
            )
        return BeginRunResult(customer=customer, holdout_bucket=bucket, decided=decided)


def upsert_run(session: Session, request: RecordRunInput) -> None:
    """Insert the run's row or bring it up to date, in one statement where the database
    can (SQLite, PostgreSQL: ``INSERT ... ON CONFLICT DO UPDATE``)."""
    now = utcnow()
    ended = now if request.status != "running" else None
    path = [entry.model_dump(mode="json") for entry in request.path]
    dialect = session.get_bind().dialect.name
    session.connection().execute(
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
            "path": path,
            "started_at": now,
            "updated_at": now,
            "ended_at": ended,
        },
    )


@functools.cache
def _upsert_statement(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT (run_id) DO UPDATE`` for ``dialect``, built once: the values
    come as parameters, so each call skips building and compiling the statement (measured
    here: most of the cost of a run's record on a busy worker)."""
    table = Run.__table__  # type: ignore[attr-defined]
    statement = dialect_insert(dialect)(table)
    excluded = statement.excluded
    changed = ("status", "step", "outcome", "holdout", "path", "updated_at")
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
