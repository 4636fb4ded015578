"""Erasing a customer: `journeys erase CUSTOMER` and ``DELETE /v1/customers/{id}``.

What it does, in this order (each step can be run again: an erasure that stopped half-way
is finished by asking again):

1. **Refuse their events from now on.** The customer's pseudonym (`engine.pseudonyms`) goes
   into `erased_customers` (status ``erasing``). Ingestion stores no event naming them and
   answers with its message id in ``erased`` (`engine.pseudonyms.erased_among`, read by `service.router.EventRouter.ingest`).
2. **Delete every execution** of each of their runs, every generation, from Temporal:
   workflow ids, search attributes and histories go. Temporal ends an open one first (so
   their open runs end); a closed one goes once Temporal has processed its close (about
   30 s after it on the dev server).
3. **Scrub the database** in one transaction:
   - deleted: stored events, the profile (traits and addresses), preferences, suppressions
     of their addresses, captured messages (`outbox`: theirs, and those their runs sent
     to others, such as an ops notice of their review), the parked backlog of their runs;
   - kept for counts, with the customer id replaced by the pseudonym (and the workflow id's
     customer segment too): `runs` (open ones end with status ``exited``, outcome
     ``erased``; path details emptied), `deliveries` (no recipient hash or mask, no
     reason), `review_tasks` (no title, details, note or case; open ones ``closed``),
     `cap_reservations`, `run_conversions` (no message id); `review_audit` notes and reasons of their tasks are emptied;
   - an audit entry ``customer.erased`` with who asked and the counts (the audit log
     names customers by pseudonym only, so no entry needs changing and the chain still
     verifies);
   - **crypto-shredding**: the customer's history key seed (`customer_keys`) is deleted,
     so any copy of their sealed histories (a backup, an export) can no longer be opened.
4. Steps 2-3 run once more, for a run that started or wrote while the first pass ran
   (an event routed just before step 1, an activity finishing after its run ended); then
   `erased_customers` says ``erased``.

What stays: an entry key (``key:``, e.g. an invoice or cart id) in the runs' workflow ids
and in the audit log; keys are business ids, and the validator refuses one read from a
personal field. Nothing here logs or returns the customer id: the report names the
pseudonym.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, delete, select, update
from sqlalchemy.engine import Connection, Engine
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from channels.policies import address_hash
from engine.audit import Record, append
from engine.database import (
    CapReservation,
    CustomerKey,
    Delivery,
    ErasedCustomer,
    EventRecord,
    OutboxMessage,
    ParkedEvent,
    Preference,
    Profile,
    ReviewAudit,
    ReviewTask,
    Run,
    RunConversion,
    RunPathEntry,
    Suppression,
    dialect_insert,
)
from engine.pseudonyms import customer_ref, pseudonym_key, pseudonymize_text
from engine.timestamps import utcnow
from runtime.customer_keys import forget_everywhere

__all__ = ["ERASED_OUTCOME", "ErasureReport", "erase_customer"]

log = logging.getLogger(__name__)

ERASED_OUTCOME = "erased"

_ERASED: Table = ErasedCustomer.__table__  # type: ignore[attr-defined]
_RUNS: Table = Run.__table__  # type: ignore[attr-defined]
_EVENTS: Table = EventRecord.__table__  # type: ignore[attr-defined]
_PROFILES: Table = Profile.__table__  # type: ignore[attr-defined]
_PREFERENCES: Table = Preference.__table__  # type: ignore[attr-defined]
_SUPPRESSIONS: Table = Suppression.__table__  # type: ignore[attr-defined]
_OUTBOX: Table = OutboxMessage.__table__  # type: ignore[attr-defined]
_BACKLOG: Table = ParkedEvent.__table__  # type: ignore[attr-defined]
_PATH: Table = RunPathEntry.__table__  # type: ignore[attr-defined]
_DELIVERIES: Table = Delivery.__table__  # type: ignore[attr-defined]
_REVIEWS: Table = ReviewTask.__table__  # type: ignore[attr-defined]
_REVIEW_AUDIT: Table = ReviewAudit.__table__  # type: ignore[attr-defined]
_CAPS: Table = CapReservation.__table__  # type: ignore[attr-defined]
_KEYS: Table = CustomerKey.__table__  # type: ignore[attr-defined]
_CONVERSIONS: Table = RunConversion.__table__  # type: ignore[attr-defined]

_CHANNELS = ("email", "sms", "push")


@dataclass
class ErasureReport:
    """What an erasure did, by pseudonym (never the id)."""

    customer: str  # the pseudonym
    runs_ended: int = 0
    histories_deleted: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    erased_before: bool = False

    def add(self, rows: dict[str, int]) -> None:
        for table, count in rows.items():
            self.rows[table] = self.rows.get(table, 0) + count

    def as_json(self) -> dict[str, Any]:
        return {
            "customer": self.customer,
            "status": "erased",
            "erased_before": self.erased_before,
            "runs_ended": self.runs_ended,
            "histories_deleted": self.histories_deleted,
            "rows": dict(sorted(self.rows.items())),
        }


async def erase_customer(
    db: Engine, client: Client | None, customer_id: str, *, actor: str
) -> ErasureReport:
    """Erase ``customer_id`` (see the module's doc); what was done. ``client``: Temporal,
    to end and delete the customer's runs (None: the database only, for tests of it)."""
    ref = customer_ref(customer_id, pseudonym_key(db))
    report = ErasureReport(customer=ref)
    with db.begin() as connection:
        before = connection.execute(select(_ERASED.c.status).where(_ERASED.c.ref == ref)).scalar()
        report.erased_before = before is not None
        if before is None:
            connection.execute(
                dialect_insert(db.dialect.name)(_ERASED)
                .values(
                    ref=ref, status="erasing", actor=actor[:200], requested_at=utcnow(), counts={}
                )
                .on_conflict_do_nothing()
            )
    log.info("erasing customer %s (asked by %s)", ref, actor)
    for _ in range(2):  # the second pass: what started or wrote during the first
        ended, deleted = await _end_in_temporal(db, client, customer_id)
        report.runs_ended += ended
        report.histories_deleted += deleted
        report.add(_scrub(db, customer_id, ref))
    forget_everywhere(ref)  # this process's cached seed; others drop theirs within 60 s
    with db.begin() as connection:
        counts = report.as_json()
        append(
            connection,
            [
                Record(
                    kind="customer.erased",
                    subject=f"customer:{customer_id}",
                    actor=actor,
                    customer=customer_id,
                    details={
                        "runs_ended": report.runs_ended,
                        "histories_deleted": report.histories_deleted,
                        "rows": counts["rows"],
                        "again": report.erased_before,
                    },
                )
            ],
        )
        connection.execute(
            update(_ERASED)
            .where(_ERASED.c.ref == ref)
            .values(status="erased", erased_at=utcnow(), counts=counts)
        )
    log.info(
        "erased customer %s: %d runs ended, %d executions deleted",
        ref,
        report.runs_ended,
        report.histories_deleted,
    )
    return report


# ----------------------------------------------------------------------------- Temporal


async def _end_in_temporal(db: Engine, client: Client | None, customer_id: str) -> tuple[int, int]:
    """Delete every execution of the customer's runs: (open runs ended, executions
    deleted). Temporal ends an open execution it is asked to delete (and then deletes it
    right away); a closed one is deleted once its close is processed (about 30 s later on
    the dev server)."""
    with db.connect() as connection:
        rows = connection.execute(
            select(
                _RUNS.c.run_id, _RUNS.c.workflow_id, _RUNS.c.current_run_id, _RUNS.c.ended_at
            ).where(_RUNS.c.customer_id == customer_id)
        ).all()
    if client is None or not rows:
        return 0, 0
    ended = deleted = 0
    for workflow_id in sorted({row.workflow_id for row in rows}):
        mine = [row for row in rows if row.workflow_id == workflow_id]
        known = {run for row in mine for run in (row.run_id, row.current_run_id) if run}
        count = await _delete_executions(client, workflow_id, known)
        deleted += count
        if count:
            ended += sum(1 for row in mine if row.ended_at is None)
    return ended, deleted


async def _delete_executions(client: Client, workflow_id: str, known: set[str]) -> int:
    """Delete every execution (generation) of ``workflow_id``: those visibility lists and
    those the runs table knows (visibility may not list a just-started one yet)."""
    quoted = workflow_id.replace("\\", "\\\\").replace('"', '\\"')
    runs = set(known)
    async for execution in client.list_workflows(f'WorkflowId = "{quoted}"'):
        runs.add(execution.run_id)
    deleted = 0
    for run_id in sorted(runs):
        request = DeleteWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
        )
        try:
            await client.workflow_service.delete_workflow_execution(request)
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                continue
            raise
        deleted += 1
    return deleted


# ----------------------------------------------------------------------------- database


def _addresses(traits: dict[str, Any]) -> list[str]:
    """Every string trait: what could have been an address (suppressions are by hash)."""
    return [value for value in traits.values() if isinstance(value, str) and value.strip()]


def _suppression_hashes(traits: dict[str, Any]) -> set[str]:
    hashes: set[str] = set()
    for value in _addresses(traits):
        for channel in _CHANNELS:
            try:
                hashes.add(address_hash(channel, value))
            except ValueError:
                continue
    return hashes


class _Counts(dict[str, int]):
    def add(self, table: str, rowcount: int) -> None:
        if rowcount > 0:
            self[table] = self.get(table, 0) + rowcount


def _scrub(db: Engine, customer_id: str, ref: str) -> dict[str, int]:
    """The database part of an erasure, in one transaction: rows touched per table."""
    counts = _Counts()
    with db.begin() as connection:
        _delete_personal(connection, customer_id, counts)
        _pseudonymize_runs(connection, customer_id, ref, counts)
        _pseudonymize_reviews(connection, customer_id, ref, counts)
        _pseudonymize_deliveries(connection, customer_id, ref, counts)
        counts.add(
            "cap_reservations",
            connection.execute(
                update(_CAPS).where(_CAPS.c.customer_id == customer_id).values(customer_id=ref)
            ).rowcount,
        )
        counts.add(
            "customer_keys",
            connection.execute(delete(_KEYS).where(_KEYS.c.ref == ref)).rowcount,
        )
    return dict(counts)


def _delete_personal(connection: Connection, customer_id: str, counts: _Counts) -> None:
    """The profile, the suppressions of its addresses, events, preferences, messages."""
    traits = connection.execute(
        select(_PROFILES.c.traits).where(_PROFILES.c.customer_id == customer_id)
    ).scalar()
    hashes = _suppression_hashes(traits) if isinstance(traits, dict) else set()
    if hashes:
        counts.add(
            "suppressions",
            connection.execute(
                delete(_SUPPRESSIONS).where(_SUPPRESSIONS.c.address_hash.in_(hashes))
            ).rowcount,
        )
    for name, table in (
        ("profiles", _PROFILES),
        ("events", _EVENTS),
        ("preferences", _PREFERENCES),
        ("outbox", _OUTBOX),
    ):
        counts.add(
            name,
            connection.execute(delete(table).where(table.c.customer_id == customer_id)).rowcount,
        )
    # Messages their runs sent to others (an ops notice of their review) name the run.
    runs = select(_RUNS.c.run_id).where(_RUNS.c.customer_id == customer_id)
    counts.add(
        "outbox", connection.execute(delete(_OUTBOX).where(_OUTBOX.c.run_id.in_(runs))).rowcount
    )


def _pseudonymize_runs(connection: Connection, customer_id: str, ref: str, counts: _Counts) -> None:
    """Runs keep their journey, steps and outcome for counts; the open ones end."""
    now = utcnow()
    runs = connection.execute(
        select(_RUNS.c.run_id, _RUNS.c.workflow_id, _RUNS.c.ended_at).where(
            _RUNS.c.customer_id == customer_id
        )
    ).all()
    run_ids = [row.run_id for row in runs]
    if run_ids:
        counts.add(
            "run_backlog",
            connection.execute(delete(_BACKLOG).where(_BACKLOG.c.run_id.in_(run_ids))).rowcount,
        )
        counts.add(
            "run_conversions",
            connection.execute(
                update(_CONVERSIONS)
                .where(_CONVERSIONS.c.run_id.in_(run_ids))
                .values(message_id=None)
            ).rowcount,
        )
        counts.add(
            "run_path",
            connection.execute(
                update(_PATH).where(_PATH.c.run_id.in_(run_ids)).values(detail={})
            ).rowcount,
        )
    for row in runs:
        values: dict[str, Any] = {
            "customer_id": ref,
            "workflow_id": pseudonymize_text(row.workflow_id, customer_id, ref),
            "path": [],
            "updated_at": now,
        }
        if row.ended_at is None:
            values |= {"status": "exited", "outcome": ERASED_OUTCOME, "ended_at": now}
        connection.execute(update(_RUNS).where(_RUNS.c.run_id == row.run_id).values(values))
    counts.add("runs", len(runs))


def _pseudonymize_reviews(
    connection: Connection, customer_id: str, ref: str, counts: _Counts
) -> None:
    """Review tasks keep their queue, decision and times; open ones are closed."""
    now = utcnow()
    tasks = connection.execute(
        select(_REVIEWS.c.id, _REVIEWS.c.workflow_id, _REVIEWS.c.status).where(
            _REVIEWS.c.customer_id == customer_id
        )
    ).all()
    for task in tasks:
        values: dict[str, Any] = {
            "customer_id": ref,
            "workflow_id": pseudonymize_text(task.workflow_id, customer_id, ref),
            "title": "(erased)",
            "details": None,
            "note": None,
            "case": {},
        }
        if task.status in ("open", "deciding"):
            values |= {"status": "closed", "decided_at": now}
        connection.execute(update(_REVIEWS).where(_REVIEWS.c.id == task.id).values(values))
    counts.add("review_tasks", len(tasks))
    if tasks:
        counts.add(
            "review_audit",
            connection.execute(
                update(_REVIEW_AUDIT)
                .where(_REVIEW_AUDIT.c.task_id.in_([task.id for task in tasks]))
                .values(note=None, reason=None)
            ).rowcount,
        )


def _pseudonymize_deliveries(
    connection: Connection, customer_id: str, ref: str, counts: _Counts
) -> None:
    """Deliveries keep their channel, template, status and times: no recipient, no reason."""
    deliveries = connection.execute(
        select(_DELIVERIES.c.id, _DELIVERIES.c.workflow_id).where(
            _DELIVERIES.c.customer_id == customer_id
        )
    ).all()
    for delivery in deliveries:
        connection.execute(
            update(_DELIVERIES)
            .where(_DELIVERIES.c.id == delivery.id)
            .values(
                customer_id=ref,
                workflow_id=pseudonymize_text(delivery.workflow_id, customer_id, ref),
                recipient_hash=None,
                recipient_masked=None,
                reason=None,
            )
        )
    counts.add("deliveries", len(deliveries))
