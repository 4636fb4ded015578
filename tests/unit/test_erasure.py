"""The database part of an erasure (`service.erasure`), row by row, on every table that
holds a customer: what goes, what stays under the pseudonym, and that another customer's
rows are left exactly as they were. The Temporal part is tested through the API
(tests/api/test_erasure_api.py) and on a running system (tests/e2e/test_erasure.py)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from channels.policies import address_hash
from engine.audit import verify_chain
from engine.database import (
    CapReservation,
    CustomerKey,
    Delivery,
    EventRecord,
    OutboxMessage,
    Preference,
    Profile,
    ReviewAudit,
    ReviewTask,
    Run,
    RunPathEntry,
    Suppression,
    session_scope,
)
from engine.payloads import workflow_id_for
from engine.pseudonyms import customer_ref, pseudonym_key, pseudonymize_text
from engine.timestamps import utcnow
from service.erasure import erase_customer

EMAIL = "ivy.erased@unit-erase.test"
PHONE = "+821077788899"
NAME = "Ivy Erasmus-Quell"
NOTE = "spoke to Ivy, she will pay Friday"
TRAIT = "Heliotrope-6610"


def _customer_rows(
    session: Any,
    customer: str,
    *,
    email: str,
    run_id: str,
    phone: str = PHONE,
    name: str = NAME,
    note: str = NOTE,
    trait: str = TRAIT,
) -> None:
    """One of everything a customer leaves behind."""
    now = utcnow()
    workflow_id = workflow_id_for("recovery", customer, "inv-1")
    session.add(
        Profile(
            customer_id=customer,
            traits={"email": email, "phone": phone, "first_name": name, "colour": trait},
        )
    )
    session.add(
        EventRecord(
            message_id=f"m-{customer}",
            type="track",
            name="payment_failed",
            customer_id=customer,
            properties={"payer": name},
            timestamp=now,
        )
    )
    session.add(Preference(customer_id=customer, channel="sms", opted_in=False))
    session.add(
        Suppression(
            channel="email", address_hash=address_hash("email", email), reason="hard bounce"
        )
    )
    session.add(
        Run(
            run_id=run_id,
            workflow_id=workflow_id,
            journey_id="recovery",
            version="v1",
            customer_id=customer,
            key="inv-1",
        )
    )
    session.add(
        RunPathEntry(
            run_id=run_id,
            seq=0,
            step="score",
            type="score",
            at=now,
            detail={"score": 0.91, "read": {"profile.first_name": name}},
        )
    )
    session.add(
        OutboxMessage(
            workflow_id=workflow_id,
            run_id=run_id,
            step_id="offer",
            visit=1,
            journey_id="recovery",
            customer_id=customer,
            channel="email",
            recipient=email,
            subject=f"Hello {name}",
            body=f"Dear {name}",
        )
    )
    session.add(
        OutboxMessage(
            workflow_id=workflow_id,
            run_id=run_id,
            step_id="review:t:opened",
            visit=1,
            journey_id="recovery",
            customer_id="ops:collections",
            channel="ops",
            body=f"New review for {customer}",
        )
    )
    task_id = f"task-{run_id}"
    session.add(
        ReviewTask(
            id=task_id,
            workflow_id=workflow_id,
            run_id=run_id,
            journey_id="recovery",
            customer_id=customer,
            step_id="review",
            visit=1,
            queue="collections",
            title=f"Grace offer for {name}",
            details=f"{name} owes",
            status="decided",
            decision="approve",
            reviewer="ana",
            note=note,
            case={"name": name},
        )
    )
    session.add(
        ReviewAudit(task_id=task_id, actor="ana", action="decide", outcome="done", note=note)
    )
    session.add(
        Delivery(
            workflow_id=workflow_id,
            run_id=run_id,
            step_id="offer",
            visit=1,
            journey_id="recovery",
            customer_id=customer,
            channel="email",
            recipient_hash=address_hash("email", email),
            recipient_masked="i***@unit-erase.test",
            status="sent",
            reason=f"sent to {email}",
        )
    )
    session.add(
        CapReservation(
            customer_id=customer,
            run_id=run_id,
            step_id="offer",
            visit=1,
            reserved_at=now - timedelta(minutes=1),
        )
    )
    session.add(
        CustomerKey(ref=customer_ref(customer, pseudonym_key(session.connection())), seed=b"s" * 32)
    )


def _dump(db: Engine) -> str:
    with db.connect() as connection:
        return "\n".join(
            f"{table.name}: {[tuple(row) for row in connection.execute(select(table)).all()]!r}"
            for table in SQLModel.metadata.sorted_tables
        )


def _other_rows(db: Engine) -> dict[str, list[Any]]:
    """Everything naming the other customer (or its run), per table."""
    with db.connect() as connection:
        return {
            table.name: sorted(
                repr(tuple(row))
                for row in connection.execute(select(table)).all()
                if "c-other" in repr(tuple(row)) or "r-other" in repr(tuple(row))
            )
            for table in SQLModel.metadata.sorted_tables
        }


def test_the_scrub_leaves_counts_under_the_pseudonym_and_nothing_personal(db: Engine) -> None:
    with session_scope(db) as session:
        _customer_rows(session, "c/ivy%1", email=EMAIL, run_id="r-ivy")
        _customer_rows(
            session,
            "c-other",
            email="other@unit-erase.test",
            run_id="r-other",
            phone="+821011122233",
            name="Otto Other",
            note="Otto will pay",
            trait="Chartreuse-1234",
        )
    others_before = _other_rows(db)
    assert NOTE in _dump(db) and TRAIT in _dump(db)

    report = asyncio.run(erase_customer(db, None, "c/ivy%1", actor="cli:test"))

    ref = customer_ref("c/ivy%1", pseudonym_key(db))
    assert report.customer == ref
    dump = _dump(db)
    for value in (EMAIL, "ivy.erased", "77788899", "Erasmus", NOTE, TRAIT, "c/ivy%1", "c%2Fivy"):
        assert value not in dump, f"{value!r} is left"
    assert report.rows["profiles"] == 1 and report.rows["events"] == 1
    assert report.rows["outbox"] == 2 and report.rows["suppressions"] == 1
    assert report.rows["customer_keys"] == 1 and report.rows["review_audit"] == 1
    with session_scope(db) as session:
        run = session.get(Run, "r-ivy")
        assert run is not None
        assert (run.customer_id, run.status, run.outcome) == (ref, "exited", "erased")
        assert run.workflow_id == f"journey/recovery/{ref}/inv-1"
        task = session.get(ReviewTask, "task-r-ivy")
        assert task is not None and (task.customer_id, task.decision) == (ref, "approve")
        (delivery,) = [d for d in session.query(Delivery).all() if d.run_id == "r-ivy"]
        assert (delivery.customer_id, delivery.status, delivery.channel) == (ref, "sent", "email")
    assert _other_rows(db) == others_before  # the other customer is untouched
    assert verify_chain(db).ok
    assert "customer.erased" in dump


def test_workflow_ids_and_subjects_take_the_pseudonym_in_the_customers_place() -> None:
    for customer in ("c1", "a/b", "50%", "journey"):
        workflow_id = workflow_id_for("recovery", customer)
        keyed = workflow_id_for("recovery", customer, "k/1")
        assert pseudonymize_text(workflow_id, customer, "cus_x") == "journey/recovery/cus_x"
        assert pseudonymize_text(keyed, customer, "cus_x") == "journey/recovery/cus_x/k/1"
        assert pseudonymize_text(f"run:{keyed}", customer, "cus_x").endswith("/cus_x/k/1")
        assert pseudonymize_text(f"customer:{customer}", customer, "cus_x") == "customer:cus_x"
    # Only the customer's own segment: not a journey named like them, not someone else.
    assert pseudonymize_text("journey/c1/c2", "c1", "cus_x") == "journey/c1/c2"
    assert pseudonymize_text("journey/j/c10", "c1", "cus_x") == "journey/j/c10"
