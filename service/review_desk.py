"""The review desk: listing, claiming, releasing and deciding review tasks, for the
console and the review API alike, with every attempt audited.

A decision is taken once: the task row moves `open -> deciding` in one conditional update
(so a double click, or two reviewers, cannot both pass), then the run's `decide_review`
Update carries it to the workflow, whose validator refuses a task it no longer has open
(timed out, escalated and expired, or `closed` because its run ended). Only then is the
row `decided`; a refused Update puts it back. Who, when, what, and from which address go
to `review_audit`, refusals included.

Not here: HTTP (the console and API modules), the workflow side (workflows/journey_run.py).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col, select
from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError

from engine import plan as p
from engine.audit import Record, append, digest
from engine.database import (
    Delivery,
    OutboxMessage,
    PlanVersion,
    ReviewAudit,
    ReviewTask,
    Run,
    session_scope,
)
from engine.destinations import Destination, decision_destinations
from engine.localtime import zone_named
from engine.payloads import UPDATE_REVIEW, ReviewDecision, ReviewDecisionResult
from engine.personal import kind_of, mask_traits
from engine.run_path import run_without_path
from engine.timestamps import as_utc, utcnow
from service.users import Viewer

__all__ = [
    "MAX_NOTE_LENGTH",
    "CaseFile",
    "CustomerCard",
    "Reason",
    "ReviewRefused",
    "TaskFilter",
    "claim_task",
    "customer_card",
    "decide_task",
    "format_score",
    "humanize",
    "is_breached",
    "list_tasks",
    "load_case",
    "local_time",
    "needs_note",
    "plain",
    "queues",
    "reasons",
    "release_task",
    "restate_scores",
    "risk_of",
    "run_messages",
]

MAX_NOTE_LENGTH = 2000
UPDATE_TIMEOUT_SECONDS = 40.0
"""How long the desk waits for the run to take a decision. Almost always milliseconds; a
worker that dies inside `open_review_task` after writing the task leaves the run without
the task's id until the activity's 30 s start-to-close has passed and another worker has
run it again, and a decision sent meanwhile waits for that."""
_REJECTING = ("reject", "deny", "decline", "refuse")
UNCONFIRMED = (
    "the run has not confirmed the decision yet and may still take it (a worker may be "
    "restarting): look at the task again in a minute before deciding again"
)


class ReviewRefused(Exception):
    """An action on a review task that is not allowed; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class TaskFilter:
    """What the queue shows: all fields optional."""

    queue: str | None = None
    status: str | None = "open"
    breached: bool | None = None
    min_risk: float | None = None
    older_than_hours: float | None = None
    customer: str | None = None
    limit: int = 200


@dataclass(frozen=True)
class CaseFile:
    """Everything a reviewer needs on one page: the task, its run, its messages, its audit."""

    task: ReviewTask
    run: Run | None
    deliveries: list[Delivery]
    outbox: list[OutboxMessage]
    audit: list[ReviewAudit]
    plan: p.Plan | None = None
    """The plan the run follows (its journey version's), None if it is gone."""

    @property
    def destinations(self) -> dict[str, Destination]:
        """Each decision with where it leads in the run's plan (`engine.destinations`)."""
        if self.plan is None:
            return {}
        return decision_destinations(self.plan, self.task.step_id)

    @property
    def timezone(self) -> str:
        """The zone the case page shows times in: the journey's (its plan's settings)."""
        return self.plan.settings.timezone if self.plan is not None else "UTC"


def needs_note(decision: str) -> bool:
    """Rejecting decisions need the reviewer's note."""
    return any(word in decision.lower() for word in _REJECTING)


def risk_of(task: ReviewTask) -> float | None:
    """The highest model score the run had when the task opened (None: no score step)."""
    scores = (task.case or {}).get("scores") or {}
    values = [
        float(entry["score"])
        for entry in scores.values()
        if isinstance(entry, dict) and isinstance(entry.get("score"), int | float)
    ]
    return max(values) if values else None


def is_breached(task: ReviewTask, now: datetime | None = None) -> bool:
    due = as_utc(task.due_at)
    return task.status == "open" and due is not None and due < (now or utcnow())


def list_tasks(db: Engine, flt: TaskFilter) -> list[ReviewTask]:
    """Tasks matching ``flt``, oldest first (the order they should be worked in)."""
    now = utcnow()
    with session_scope(db) as session:
        query = select(ReviewTask)
        if flt.queue:
            query = query.where(ReviewTask.queue == flt.queue)
        if flt.status:
            query = query.where(ReviewTask.status == flt.status)
        if flt.customer:
            query = query.where(ReviewTask.customer_id == flt.customer)
        if flt.older_than_hours is not None:
            query = query.where(
                col(ReviewTask.created_at) <= now - timedelta(hours=flt.older_than_hours)
            )
        rows = list(session.exec(query.order_by(col(ReviewTask.created_at)).limit(2000)).all())
    if flt.breached is not None:
        rows = [row for row in rows if is_breached(row, now) == flt.breached]
    if flt.min_risk is not None:
        rows = [row for row in rows if (risk_of(row) or 0.0) >= flt.min_risk]
    return rows[: flt.limit]


def queues(db: Engine) -> list[str]:
    """Every queue a task was ever opened in."""
    with session_scope(db) as session:
        return sorted(set(session.exec(select(ReviewTask.queue).distinct()).all()))


def load_task(db: Engine, task_id: str) -> ReviewTask:
    with session_scope(db) as session:
        task = session.get(ReviewTask, task_id)
    if task is None:
        raise ReviewRefused(404, f"no review task {task_id!r}")
    return task


def run_messages(db: Engine, run_id: str) -> tuple[list[Delivery], list[OutboxMessage]]:
    """A run's delivery attempts and the messages its outbox captured, oldest first."""
    with session_scope(db) as session:
        deliveries = list(
            session.exec(
                select(Delivery).where(Delivery.run_id == run_id).order_by(col(Delivery.id))
            ).all()
        )
        outbox = list(
            session.exec(
                select(OutboxMessage)
                .where(OutboxMessage.run_id == run_id)
                .order_by(col(OutboxMessage.id))
            ).all()
        )
    return deliveries, outbox


def load_case(db: Engine, task_id: str) -> CaseFile:
    """The task with its run, the messages the run sent, and its audit trail."""
    task = load_task(db, task_id)
    deliveries, outbox = run_messages(db, task.run_id)
    with session_scope(db) as session:
        run = run_without_path(session, task.run_id)  # the case holds the path it shows
        audit = list(
            session.exec(
                select(ReviewAudit)
                .where(ReviewAudit.task_id == task_id)
                .order_by(col(ReviewAudit.id))
            ).all()
        )
        plan = _plan_of(session, run)
    return CaseFile(
        task=task, run=run, deliveries=deliveries, outbox=outbox, audit=audit, plan=plan
    )


def _plan_of(session: Any, run: Run | None) -> p.Plan | None:
    if run is None:
        return None
    plan_json = session.exec(
        select(PlanVersion.plan_json).where(
            PlanVersion.journey_id == run.journey_id, PlanVersion.version == run.version
        )
    ).first()
    try:
        return p.Plan.model_validate_json(plan_json) if plan_json else None
    except ValueError:
        return None


# ----------------------------------------------------------------------------- the case as shown


SCORE_DECIMALS = 3


def format_score(value: Any) -> str:
    """A score (or any fraction) as the console shows it: three decimals, cut, never
    rounded up (0.998 stays 0.998, never 1.0; 0.7650700807 is 0.765)."""
    try:
        number = Decimal(str(float(value)))
    except (TypeError, ValueError, InvalidOperation):
        return plain(value)
    if not number.is_finite():
        return str(value)
    return str(number.quantize(Decimal(1).scaleb(-SCORE_DECIMALS), rounding=ROUND_DOWN))


def plain(value: Any) -> str:
    """A value as text a person reads: yes/no for flags, "not known" for a missing value,
    whole numbers without ".0", other numbers as `format_score` does, lists and mappings
    spelled out; never Python's ``True``/``False``/``None``."""
    if value is None:
        return "not known"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format_score(value)
    if isinstance(value, list | tuple):
        return ", ".join(plain(item) for item in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} = {plain(v)}" for k, v in value.items()) or "none"
    return str(value)


_NUMBER = re.compile(r"(?<![\d.])\d+\.\d+(?!\.?\d)")


def restate_scores(text: str, scores: dict[str, Any] | None) -> str:
    """``text`` (a task's title or details, as the journey's template rendered them) with
    every number that is one of the case's scores, rounded (`round(2)` makes 0.998 read
    1.0), written as `format_score` writes it, so the page shows a score one way."""
    values = [
        float(entry["score"])
        for entry in (scores or {}).values()
        if isinstance(entry, dict)
        and isinstance(entry.get("score"), int | float)
        and not isinstance(entry.get("score"), bool)
    ]

    def restate(found: re.Match[str]) -> str:
        token = found.group(0)
        decimals = len(token.split(".")[1])
        for score in values:
            if token in (repr(score), f"{score:g}") or float(token) == round(score, decimals):
                return format_score(score)
        return token

    return _NUMBER.sub(restate, text) if values else text


def humanize(name: str) -> str:
    """A snake_case name as a label: ``tenure_months`` -> "Tenure months"."""
    words = name.replace("_", " ").replace(".", " ").split()
    text = " ".join(words)
    return text[:1].upper() + text[1:] if text else name


@dataclass(frozen=True)
class Reason:
    """One path entry that sent the run here, with what the page says about it: the rule
    as written in the plan (``rule_text``) and which features took a default."""

    entry: dict[str, Any]
    rule_text: str | None = None
    rules_total: int = 0
    defaulted: list[str] = field(default_factory=list)


def _rule_text(step: p.PlanStep | None, index: int | None) -> tuple[str | None, int]:
    if isinstance(step, p.BranchPlan):
        rules = [rule.when for rule in step.rules]
    elif isinstance(step, p.DecidePlan):
        rules = [
            ", ".join(f"{name} {cell}" for name, cell in rule.when.items()) or "any input"
            for rule in step.rules
        ]
    else:
        return None, 0
    if index is None or not 0 <= index < len(rules):
        return None, len(rules)
    return rules[index], len(rules)


def reasons(task: ReviewTask, plan: p.Plan | None) -> list[Reason]:
    """The path entries that sent the run here (scores, branch, split and table decisions,
    an awaited event), each with its rule's text from the plan."""
    found: list[Reason] = []
    for entry in (task.case or {}).get("path") or []:
        if not isinstance(entry, dict):
            continue
        kind = entry.get("type")
        detail = entry.get("detail") or {}
        if kind in ("branch", "decide"):
            step = plan.steps.get(str(entry.get("step"))) if plan is not None else None
            rule = detail.get("rule")
            text, total = _rule_text(step, rule if isinstance(rule, int) else None)
            found.append(Reason(entry, rule_text=text, rules_total=total))
        elif kind == "score":
            found.append(Reason(entry, defaulted=list(detail.get("defaulted") or [])))
        elif kind == "split" or (kind == "wait" and entry.get("outcome") == "received"):
            found.append(Reason(entry))
    return found


_NAME_TRAITS = ("first_name", "last_name", "name", "full_name")


@dataclass(frozen=True)
class CustomerCard:
    """The customer as the case page shows them: the name, the traits that are not
    personal (labels from their names), email and phone masked; ``hidden`` counts the
    personal (pii) and secret traits left out."""

    name: str | None
    facts: list[tuple[str, str]]
    hidden: int
    timezone: str


def customer_card(
    traits: dict[str, Any], marks: dict[str, str], fallback_zone: str
) -> CustomerCard:
    """The card for a customer with ``traits``, by the catalogue's `profile:` ``marks``
    (`engine.personal`): the name in clear (a reviewer must know whom they decide for; the
    task's title names them too), email and phone masked, every other personal or secret
    trait left out."""
    first = " ".join(
        str(traits[k]).strip() for k in ("first_name", "last_name") if traits.get(k)
    ).strip()
    name = first or str(traits.get("name") or traits.get("full_name") or "").strip() or None
    masked = mask_traits(traits, marks)
    facts: list[tuple[str, str]] = []
    hidden = 0
    for key in sorted(traits):
        if key in _NAME_TRAITS:
            continue
        kind = kind_of(key, marks)
        if kind in ("pii", "secret"):
            hidden += 1
            continue
        facts.append((humanize(key), plain(masked.get(key))))
    zone = traits.get("timezone")
    timezone = zone_named(zone).key if isinstance(zone, str) and zone else fallback_zone
    return CustomerCard(name=name, facts=facts, hidden=hidden, timezone=timezone)


def local_time(moment: datetime | str | None, zone: str, now: datetime | None = None) -> str:
    """``moment`` (or its ISO text) relative to now and on the clock of ``zone``: "2 min
    ago, 14:35 KST" (another day: "3 days ago, Dec 1 14:35 KST")."""
    if moment is None or moment == "":
        return ""
    if isinstance(moment, str):
        try:
            parsed = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            return moment
        moment = parsed
    moment = as_utc(moment)
    now = now or utcnow()
    seconds = int((now - moment).total_seconds())
    ahead = seconds < 0
    seconds = abs(seconds)
    if seconds < 60:
        span = "just now" if not ahead else "in under a minute"
    else:
        if seconds < 3600:
            amount = f"{seconds // 60} min"
        elif seconds < 86400:
            hours, minutes = divmod(seconds // 60, 60)
            amount = f"{hours} h {minutes} min" if minutes else f"{hours} h"
        else:
            days = seconds // 86400
            amount = f"{days} day{'' if days == 1 else 's'}"
        span = f"in {amount}" if ahead else f"{amount} ago"
    local = moment.astimezone(ZoneInfo(zone_named(zone).key))
    same_day = local.date() == now.astimezone(local.tzinfo).date()
    clock = local.strftime("%H:%M %Z") if same_day else local.strftime("%b %-d %H:%M %Z")
    return f"{span}, {clock}"


def _audit(
    db: Engine,
    *,
    task_id: str,
    viewer: Viewer,
    action: str,
    outcome: str,
    address: str | None,
    decision: str | None = None,
    note: str | None = None,
    reason: str | None = None,
) -> None:
    with session_scope(db) as session:
        session.add(
            ReviewAudit(
                task_id=task_id,
                actor=viewer.name,
                role=viewer.role,
                action=action,
                outcome=outcome,
                decision=decision,
                note=note,
                reason=reason,
                address=(address or "")[:100] or None,
            )
        )
        session.flush()
        # The hash-chained log: who, what, the note's SHA-256 (never its text or the address).
        append(
            session,
            [
                Record(
                    kind=f"review.{_DONE.get(action, action)}"
                    if outcome == "done"
                    else "review.refused",
                    subject=f"review:{task_id}",
                    actor=f"user:{viewer.name}",
                    details={
                        "action": action,
                        "role": viewer.role,
                        "decision": decision,
                        "note_sha256": digest(note),
                        "reason": reason,
                    },
                )
            ],
        )


_DONE = {"claim": "claimed", "release": "released", "decide": "decided"}


def _refuse(
    db: Engine,
    error: ReviewRefused,
    *,
    task_id: str,
    viewer: Viewer,
    action: str,
    address: str | None,
    decision: str | None = None,
) -> ReviewRefused:
    _audit(
        db,
        task_id=task_id,
        viewer=viewer,
        action=action,
        outcome="refused",
        address=address,
        decision=decision,
        reason=error.message,
    )
    return error


def _closed_message(task: ReviewTask) -> str:
    if task.status == "decided":
        return f"this task was decided already ({task.decision} by {task.reviewer})"
    if task.status == "expired":
        return "this task expired: its SLA ran out and the run went on without a decision"
    if task.status == "closed":
        return (
            f"this task was closed: {task.note or 'its run ended'}, so nothing waits for a decision"
        )
    if task.status == "deciding":
        return "this task is being decided by someone else right now"
    return f"this task is {task.status}"


def _check_may_act(task: ReviewTask, viewer: Viewer) -> None:
    if not viewer.can("decide_reviews"):
        raise ReviewRefused(
            403, f"role {viewer.role!r} may not work review tasks (ops or supervisor)"
        )
    if task.status != "open":
        raise ReviewRefused(409, _closed_message(task))
    if task.claimed_by and task.claimed_by != viewer.name:
        raise ReviewRefused(409, f"this task is claimed by {task.claimed_by}")


def claim_task(db: Engine, *, task_id: str, viewer: Viewer, address: str | None) -> ReviewTask:
    """Claim an open task for ``viewer`` (idempotent for its claimer)."""
    task = load_task(db, task_id)
    try:
        _check_may_act(task, viewer)
        with session_scope(db) as session:
            changed = session.execute(
                update(ReviewTask)
                .where(
                    col(ReviewTask.id) == task_id,
                    col(ReviewTask.status) == "open",
                    (col(ReviewTask.claimed_by).is_(None))
                    | (col(ReviewTask.claimed_by) == viewer.name),
                )
                .values(claimed_by=viewer.name)
            )
            if changed.rowcount != 1:  # type: ignore[attr-defined]
                raise ReviewRefused(409, _closed_message(load_task(db, task_id)))
    except ReviewRefused as error:
        raise _refuse(
            db, error, task_id=task_id, viewer=viewer, action="claim", address=address
        ) from None
    _audit(db, task_id=task_id, viewer=viewer, action="claim", outcome="done", address=address)
    return load_task(db, task_id)


def release_task(db: Engine, *, task_id: str, viewer: Viewer, address: str | None) -> ReviewTask:
    """Give a claimed task back to the queue (its claimer, or a supervisor)."""
    task = load_task(db, task_id)
    try:
        if not viewer.can("decide_reviews"):
            raise ReviewRefused(403, f"role {viewer.role!r} may not work review tasks")
        if task.status != "open":
            raise ReviewRefused(409, _closed_message(task))
        if task.claimed_by not in (None, viewer.name) and viewer.role != "supervisor":
            raise ReviewRefused(
                409,
                f"this task is claimed by {task.claimed_by}; only they or a supervisor may release it",
            )
        with session_scope(db) as session:
            session.execute(
                update(ReviewTask)
                .where(col(ReviewTask.id) == task_id, col(ReviewTask.status) == "open")
                .values(claimed_by=None)
            )
    except ReviewRefused as error:
        raise _refuse(
            db, error, task_id=task_id, viewer=viewer, action="release", address=address
        ) from None
    _audit(db, task_id=task_id, viewer=viewer, action="release", outcome="done", address=address)
    return load_task(db, task_id)


def _validate_decision(task: ReviewTask, decision: str, note: str | None) -> str | None:
    if decision not in task.decisions:
        raise ReviewRefused(
            422,
            f"{decision!r} is not a decision of this task: choose one of {', '.join(task.decisions)}",
        )
    note = (note or "").strip() or None
    if note is not None and len(note) > MAX_NOTE_LENGTH:
        raise ReviewRefused(422, f"the note is longer than {MAX_NOTE_LENGTH} characters")
    if needs_note(decision) and note is None:
        raise ReviewRefused(422, f"'{decision}' needs a note saying why")
    return note


async def decide_task(
    db: Engine,
    client: Client | None,
    *,
    task_id: str,
    viewer: Viewer,
    decision: str,
    note: str | None,
    address: str | None,
    require_claim: bool = False,
) -> ReviewTask:
    """Decide ``task_id`` once, through the run's Update; refusals raise `ReviewRefused`.
    ``require_claim`` (the console): only the reviewer who holds the claim may decide."""
    task = await asyncio.to_thread(load_task, db, task_id)
    try:
        claimed = task.claimed_by is not None
        if require_claim and viewer.can("decide_reviews") and task.status == "open" and not claimed:
            raise ReviewRefused(409, "claim this case first: only its claimer decides it")
        note = await _decide(db, client, task, viewer=viewer, decision=decision, note=note)
    except ReviewRefused as error:
        raise await asyncio.to_thread(
            _refuse,
            db,
            error,
            task_id=task_id,
            viewer=viewer,
            action="decide",
            address=address,
            decision=decision,
        ) from None
    await asyncio.to_thread(
        _audit,
        db,
        task_id=task_id,
        viewer=viewer,
        action="decide",
        outcome="done",
        address=address,
        decision=decision,
        note=note,
    )
    return await asyncio.to_thread(load_task, db, task_id)


async def _decide(
    db: Engine,
    client: Client | None,
    task: ReviewTask,
    *,
    viewer: Viewer,
    decision: str,
    note: str | None,
) -> str | None:
    """Check, mark the task deciding, send the Update, mark it decided; the note kept."""
    _check_may_act(task, viewer)
    note = _validate_decision(task, decision, note)
    if client is None:
        raise ReviewRefused(503, "Temporal is not reachable right now; try again in a moment")
    if not await asyncio.to_thread(_begin_deciding, db, task.id, viewer.name):
        raise ReviewRefused(409, _closed_message(await asyncio.to_thread(load_task, db, task.id)))
    try:
        await _send_update(client, task, viewer=viewer, decision=decision, note=note)
    except ReviewRefused:
        await asyncio.to_thread(_end_deciding, db, task.id, None)
        raise
    decided = {"decision": decision, "reviewer": viewer.name, "note": note}
    await asyncio.to_thread(_end_deciding, db, task.id, decided)
    return note


def _begin_deciding(db: Engine, task_id: str, name: str) -> bool:
    with session_scope(db) as session:
        changed = session.execute(
            update(ReviewTask)
            .where(
                col(ReviewTask.id) == task_id,
                col(ReviewTask.status) == "open",
                (col(ReviewTask.claimed_by).is_(None)) | (col(ReviewTask.claimed_by) == name),
            )
            .values(status="deciding", claimed_by=name)
        )
        return bool(changed.rowcount == 1)  # type: ignore[attr-defined]


def _end_deciding(db: Engine, task_id: str, decided: dict[str, Any] | None) -> None:
    """`deciding` -> `decided` with the decision, or back to `open` (the Update was refused).
    Conditional, so an expiry the workflow recorded meanwhile is never overwritten."""
    values: dict[str, Any] = (
        {"status": "decided", "decided_at": utcnow(), **decided}
        if decided is not None
        else {"status": "open"}
    )
    with session_scope(db) as session:
        session.execute(
            update(ReviewTask)
            .where(col(ReviewTask.id) == task_id, col(ReviewTask.status) == "deciding")
            .values(**values)
        )


async def _send_update(
    client: Client, task: ReviewTask, *, viewer: Viewer, decision: str, note: str | None
) -> ReviewDecisionResult:
    # The task's run id is its run's first generation's: the Update goes to whichever
    # generation runs now (a run continues as new), and to none of another run of the
    # same workflow id.
    handle = client.get_workflow_handle(task.workflow_id, first_execution_run_id=task.run_id)
    try:
        return await asyncio.wait_for(
            handle.execute_update(
                UPDATE_REVIEW,
                ReviewDecision(task_id=task.id, decision=decision, reviewer=viewer.name, note=note),
                result_type=ReviewDecisionResult,
                rpc_timeout=timedelta(seconds=UPDATE_TIMEOUT_SECONDS),
            ),
            UPDATE_TIMEOUT_SECONDS + 2,
        )
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        message = getattr(cause, "message", None) or str(cause or error)
        raise ReviewRefused(409, f"the run refused the decision: {message}") from None
    except RPCError as error:
        if "not found" in str(error).lower() or "completed" in str(error).lower():
            raise ReviewRefused(
                409, "the run has ended: this task can no longer be decided"
            ) from None
        raise ReviewRefused(
            503, "Temporal did not take the decision; try again in a moment"
        ) from None
    except (WorkflowUpdateRPCTimeoutOrCancelledError, TimeoutError):
        # The Update may be with the run, waiting (a worker restarting): it can still be
        # taken, so the reviewer is not told to decide again.
        raise ReviewRefused(503, UNCONFIRMED) from None
