"""Run records and customer profiles: the database side of a run (activities)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from temporalio import activity

from engine.database import Profile, Run, session_scope, upsert_profile, utcnow
from engine.messages import CustomerContext, LoadProfileInput, RecordRunInput, UpdateProfileInput

__all__ = ["RunActivities", "customer_from_traits"]

_ADDRESS_TRAITS = ("email", "phone", "push_token", "timezone")


def customer_from_traits(customer_id: str, traits: dict[str, Any]) -> CustomerContext:
    """The `customer` an expression sees: id and channel addresses, from profile traits."""
    fields = {
        name: str(traits[name]) for name in _ADDRESS_TRAITS if traits.get(name) not in (None, "")
    }
    return CustomerContext(id=customer_id, traits=dict(traits), **fields)


class RunActivities:
    """Profile reads and writes, and the `runs` table a run keeps up to date."""

    def __init__(self, *, db: Engine) -> None:
        self.db = db

    @activity.defn(name="load_profile")
    def load_profile(self, request: LoadProfileInput) -> CustomerContext:
        """The customer's traits and addresses, read fresh."""
        with session_scope(self.db) as session:
            profile = session.get(Profile, request.customer_id)
            traits = dict(profile.traits) if profile is not None else {}
        return customer_from_traits(request.customer_id, traits)

    @activity.defn(name="update_profile")
    def update_profile(self, request: UpdateProfileInput) -> None:
        """A `set: {profile.x: ...}` step's writes."""
        with session_scope(self.db) as session:
            upsert_profile(session, customer_id=request.customer_id, traits=request.traits)

    @activity.defn(name="record_run")
    def record_run(self, request: RecordRunInput) -> None:
        """Upsert the run's row: status, step, outcome and path (idempotent)."""
        with session_scope(self.db) as session:
            run = session.get(Run, request.run_id)
            if run is None:
                run = Run(
                    run_id=request.run_id,
                    workflow_id=request.workflow_id,
                    journey_id=request.journey_id,
                    version=request.version,
                    customer_id=request.customer_id,
                    key=request.key,
                    trigger_message_id=request.trigger_message_id,
                )
            run.status = request.status
            run.step = request.step
            run.outcome = request.outcome
            run.holdout = request.holdout
            run.path = [entry.model_dump(mode="json") for entry in request.path]
            run.updated_at = utcnow()
            if request.status != "running" and run.ended_at is None:
                run.ended_at = utcnow()
            session.add(run)
