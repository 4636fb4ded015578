"""Why a customer got a message, or did not: a run's recorded rows, explained in words.

`explain_run` reads what a run recorded (its `runs` row, its path in `run_path`, its
deliveries, the messages the outbox captured, its review tasks), with the plan version it
followed, the event that started it and the customer's profile, and returns an
`RunExplanation`: the entry event and the entry rule with the values it read, every
decision with its rule or table row and inputs, each score with its model, version,
features (those that took a default marked "not known (default 0)", as the case page
marks them) and fallback, each review decision with its reviewer and note, each wait
until when, and each send with its template, channel, policy checks (consent,
suppression, quiet hours, frequency cap, fallback), the message as rendered and the
address masked, or why it was not sent.

One model, three readers: `GET /v1/runs/{id}/explanation` and `GET /v1/explain` answer it
as JSON, `journeys explain` prints it (`render_text`), the console's run page shows it
("Why"). The content of a message is personal data: the API answers it to an API key, as
`GET /v1/outbox` does; the console shows it only to roles with `view_message_content`
(`without_content`).

Pure where it can be (`explain_run` on `RunRecords`, `render_text`); `load_records` and
the `explain_*` functions read the database. Not here: HTTP (service.api.routes.explain),
the page (service.console.runs), the command (service.cli.main).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from channels import policies
from engine import plan as p
from engine.database import (
    Delivery,
    EventRecord,
    OutboxMessage,
    PlanVersion,
    Profile,
    ReviewTask,
    Run,
    session_scope,
)
from engine.destinations import describe_seconds
from engine.localtime import quiet_hours_end, zone_named
from engine.personal import mask_properties, mask_traits, profile_marks
from engine.profiles import mask_address
from engine.run_path import path_length, read_path, run_without_path
from engine.timestamps import as_utc, utcnow
from rules import ExpressionError, compile_expression
from service.review_desk import format_score, plain

__all__ = [
    "MAX_PATH_ENTRIES",
    "MAX_RUNS",
    "Check",
    "Detail",
    "Explanation",
    "Item",
    "MessageExplained",
    "RunExplanation",
    "RunRecords",
    "explain_customer",
    "explain_message",
    "explain_run",
    "explain_run_id",
    "load_records",
    "render_text",
    "without_content",
]

MAX_PATH_ENTRIES = 2000
"""Path entries one explanation reads: a longer path is explained up to there, and says so."""
MAX_RUNS = 50
"""Runs of one customer explained, newest first."""

_CHANNELS = {"sms": "SMS", "email": "email", "push": "push", "ops": "ops"}
_DELIVERED = ("sent", "captured")
_NOT_SENT = {
    "no_address": "no address",
    "no_consent": "no consent",
    "suppressed": "the address is suppressed",
    "failed": "the provider refused it",
    "capped": "the frequency cap was full (the step skips a capped send)",
    "skipped": "skipped",
}


# ----------------------------------------------------------------------------- the model


class Detail(BaseModel):
    """One line under an item: ``label: text``; ``flag`` marks what a reader should notice
    (``defaulted``: a feature that took its default, ``failed``: a check that refused)."""

    label: str
    text: str
    flag: str | None = None


class Check(BaseModel):
    """One policy check of a send: ``passed`` None when it did not apply or was not reached."""

    name: str
    passed: bool | None
    text: str


class MessageExplained(BaseModel):
    """A send on one channel: its delivery, its checks and, when captured, its content."""

    delivery_id: int | None = None
    outbox_id: int | None = None
    channel: str
    template: str | None = None
    recipient: str | None = None
    status: str
    sent: bool
    not_sent_because: str | None = None
    checks: list[Check] = Field(default_factory=list)
    subject: str | None = None
    body: str | None = None
    content_hidden: bool = False


class Item(BaseModel):
    """One thing that happened in the run, in order: ``kind`` (entry, score, branch, decide,
    split, set, review, wait, send, call, event, holdout, end, error), the step, when (UTC
    and in the run's zone), a one-line ``headline`` and its ``details``."""

    kind: str
    step: str
    at: datetime | None = None
    local: str = ""
    headline: str
    details: list[Detail] = Field(default_factory=list)
    message: MessageExplained | None = None


class RunExplanation(BaseModel):
    run_id: str
    journey_id: str
    version: str
    customer_id: str
    status: str
    step: str | None = None
    outcome: str | None = None
    holdout: bool = False
    zone: str
    zone_source: str
    items: list[Item] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class Explanation(BaseModel):
    """What `GET /v1/explain` answers: the runs asked for (a customer's, newest first)."""

    customer_id: str | None = None
    runs: list[RunExplanation] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


# ----------------------------------------------------------------------------- the records


@dataclass
class RunRecords:
    """Everything recorded about one run that its explanation reads."""

    run: Run
    path: list[dict[str, Any]]
    deliveries: list[Delivery] = field(default_factory=list)
    outbox: list[OutboxMessage] = field(default_factory=list)
    tasks: list[ReviewTask] = field(default_factory=list)
    plan: p.Plan | None = None
    event: EventRecord | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    path_total: int | None = None
    now: datetime | None = None


def _plan(session: Session, run: Run) -> p.Plan | None:
    plan_json = session.exec(
        select(PlanVersion.plan_json).where(
            PlanVersion.journey_id == run.journey_id, PlanVersion.version == run.version
        )
    ).first()
    try:
        return p.Plan.model_validate_json(plan_json) if plan_json else None
    except ValueError:
        return None


def load_records(session: Session, run_id: str) -> RunRecords | None:
    """The run's records (None: no such run); at most `MAX_PATH_ENTRIES` path entries."""
    run = run_without_path(session, run_id)
    if run is None:
        return None
    deliveries = session.exec(
        select(Delivery).where(Delivery.run_id == run_id).order_by(col(Delivery.id))
    ).all()
    outbox = session.exec(
        select(OutboxMessage).where(OutboxMessage.run_id == run_id).order_by(col(OutboxMessage.id))
    ).all()
    tasks = session.exec(
        select(ReviewTask).where(ReviewTask.run_id == run_id).order_by(col(ReviewTask.created_at))
    ).all()
    event = session.get(EventRecord, run.trigger_message_id) if run.trigger_message_id else None
    profile = session.get(Profile, run.customer_id)
    return RunRecords(
        run=run,
        path=read_path(session, run_id, limit=MAX_PATH_ENTRIES),
        deliveries=list(deliveries),
        outbox=list(outbox),
        tasks=list(tasks),
        plan=_plan(session, run),
        event=event,
        traits=dict(profile.traits) if profile is not None else {},
        path_total=path_length(session, run_id),
    )


def explain_run_id(db: Engine, run_id: str) -> RunExplanation | None:
    with session_scope(db) as session:
        records = load_records(session, run_id)
    return explain_run(records) if records is not None else None


def explain_customer(db: Engine, customer_id: str) -> Explanation:
    """Every run of the customer (the newest `MAX_RUNS`), newest first."""
    with session_scope(db) as session:
        ids = session.exec(
            select(Run.run_id)
            .where(Run.customer_id == customer_id)
            .order_by(col(Run.started_at).desc(), col(Run.run_id).desc())
            .limit(MAX_RUNS + 1)
        ).all()
        found = [load_records(session, run_id) for run_id in ids[:MAX_RUNS]]
    notes = [f"only the newest {MAX_RUNS} runs are explained"] if len(ids) > MAX_RUNS else []
    runs = [explain_run(records) for records in found if records is not None]
    return Explanation(customer_id=customer_id, runs=runs, notes=notes)


def explain_message(db: Engine, message: str) -> Explanation | None:
    """The run that sent one message: ``message`` a delivery id (``12``) or a captured
    message's id (``outbox:12``), its explanation cut to that send (the sends of other
    steps and what came after left out). None: no such message."""
    kind, _, number = message.rpartition(":")
    if kind not in ("", "delivery", "outbox") or not number.isdigit():
        return None
    with session_scope(db) as session:
        row: Delivery | OutboxMessage | None = (
            session.get(OutboxMessage, int(number))
            if kind == "outbox"
            else session.get(Delivery, int(number))
        )
        records = load_records(session, row.run_id) if row is not None else None
    if row is None or records is None:
        return None
    explained = explain_run(records)
    wanted = ("outbox_id" if kind == "outbox" else "delivery_id", int(number))
    kept: list[Item] = []
    for item in explained.items:
        message_ = item.message
        if message_ is not None and getattr(message_, wanted[0]) == wanted[1]:
            kept.append(item)
            break
        if item.kind != "send" or item.step == row.step_id:
            kept.append(item)
    explained = explained.model_copy(update={"items": kept})
    return Explanation(customer_id=records.run.customer_id, runs=[explained])


def without_content(explanation: RunExplanation) -> RunExplanation:
    """The explanation with every message's subject and body taken out (``content_hidden``)."""
    items = []
    for item in explanation.items:
        if item.message is not None and (item.message.subject or item.message.body):
            hidden = item.message.model_copy(
                update={"subject": None, "body": None, "content_hidden": True}
            )
            item = item.model_copy(update={"message": hidden})
        items.append(item)
    return explanation.model_copy(update={"items": items})


# ----------------------------------------------------------------------------- explaining


@dataclass
class _Context:
    records: RunRecords
    zone: ZoneInfo
    now: datetime
    deliveries: dict[tuple[str, str], list[Delivery]]
    outbox: dict[tuple[str, int, str], OutboxMessage]
    deferred: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    tried: dict[str, list[str]] = field(default_factory=dict)

    @property
    def plan(self) -> p.Plan | None:
        return self.records.plan

    def local(self, moment: datetime | str | None) -> str:
        found = _moment(moment)
        if found is None:
            return ""
        return found.astimezone(self.zone).strftime("%Y-%m-%d %H:%M %Z")

    def step(self, step_id: str) -> p.PlanStep | None:
        return self.plan.steps.get(step_id) if self.plan is not None else None


def _moment(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str) and value:
        try:
            return as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def _zone(records: RunRecords) -> tuple[ZoneInfo, str]:
    """The zone the run's times read in: the customer's, else the journey's, else UTC."""
    customer = records.traits.get("timezone")
    if isinstance(customer, str) and customer.strip():
        zone = zone_named(customer.strip())
        if zone.key == customer.strip():
            return zone, "the customer's zone"
    if records.plan is not None:
        return zone_named(records.plan.settings.timezone), "the journey's zone"
    return ZoneInfo("UTC"), "no zone known"


def explain_run(records: RunRecords) -> RunExplanation:
    """The run's explanation from its records (no I/O)."""
    run = records.run
    zone, source = _zone(records)
    deliveries: dict[tuple[str, str], list[Delivery]] = {}
    for delivery in sorted(records.deliveries, key=lambda d: (d.visit, d.id or 0)):
        deliveries.setdefault((delivery.step_id, delivery.channel or ""), []).append(delivery)
    outbox = {(m.step_id, m.visit, m.channel): m for m in records.outbox}
    context = _Context(records, zone, records.now or utcnow(), deliveries, outbox)
    items: list[Item] = []
    for entry in records.path:
        item = _item(context, entry)
        if item is not None:
            item.at = _moment(entry.get("at"))
            item.local = context.local(item.at)
            items.append(item)
    items.extend(_unrecorded_sends(context))
    notes = []
    if records.plan is None:
        notes.append(f"the plan of {run.journey_id} version {run.version} is gone: rules not shown")
    total = records.path_total
    if total is not None and total > len(records.path):
        notes.append(f"the path has {total} entries: the first {len(records.path)} are explained")
    return RunExplanation(
        run_id=run.run_id,
        journey_id=run.journey_id,
        version=run.version,
        customer_id=run.customer_id,
        status=run.status,
        step=run.step,
        outcome=run.outcome,
        holdout=run.holdout,
        zone=zone.key,
        zone_source=source,
        items=items,
        notes=notes,
    )


def _item(context: _Context, entry: dict[str, Any]) -> Item | None:
    kind = str(entry.get("type") or "")
    step = str(entry.get("step") or "")
    detail = entry.get("detail") or {}
    outcome = entry.get("outcome")
    if kind == "entry":
        return _entry(context, detail)
    if kind in _BUILDERS:
        return _BUILDERS[kind](context, step, outcome, detail)
    if step == "end":
        return Item(kind="end", step=step, headline=_ending(kind, outcome))
    if kind == "error":
        return Item(kind="error", step=step, headline=f"failed: {detail.get('reason') or outcome}")
    return Item(kind=kind or "step", step=step, headline=f"{kind} → {outcome or '-'}")


def _ending(status: str, outcome: Any) -> str:
    if status == "exited":
        return f"the run ended: exited ({outcome}), an exit event came"
    if status == "expired":
        return f"the run ended: expired ({outcome}), its maximum duration passed"
    return f"the run ended: {status}" + (f" ({outcome})" if outcome and outcome != status else "")


# ----------------------------------------------------------------------------- entry


def _read(values: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = values
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _entry_values(records: RunRecords) -> dict[str, Any]:
    """What an entry rule reads, as anyone may see it: the stored event's properties and
    the customer's profile (now), personal values masked."""
    plan, event = records.plan, records.event
    personal = plan.personal if plan is not None else None
    declared = (personal.event_fields(event.name or "") if personal and event else None) or {}
    properties = mask_properties(event.properties, declared, None) if event else {}
    traits = mask_traits(records.traits, profile_marks(personal))
    return {
        "event": properties,
        "trigger": {"properties": properties, "name": event.name if event else None},
        "profile": traits,
        "customer": {
            "id": records.run.customer_id,
            "email": mask_address(records.traits.get("email"), "email"),
            "phone": mask_address(records.traits.get("phone"), "sms"),
        },
    }


def _reads(source: str, values: Mapping[str, Any]) -> list[str]:
    try:
        paths = compile_expression(source).attribute_paths
    except ExpressionError:
        return []
    return [f"{'.'.join(path)} = {plain(_read(values, path))}" for path in paths]


def _entry(context: _Context, detail: Mapping[str, Any]) -> Item:
    records, plan = context.records, context.plan
    event = str(detail.get("event") or (records.event.name if records.event else "an event"))
    message_id = detail.get("message_id") or records.run.trigger_message_id
    headline = f"entered {records.run.journey_id} on {event}" + (
        f" (message {message_id})" if message_id else ""
    )
    details: list[Detail] = []
    if plan is not None:
        values = _entry_values(records)
        if plan.entry.when:
            details.append(Detail(label="entry rule", text=f"{plan.entry.when}: true"))
            read = _reads(plan.entry.when, values)
            if read:
                details.append(Detail(label="it read", text="; ".join(read)))
            if records.event is None:
                details.append(Detail(label="note", text="the event is no longer stored"))
            if any(line.startswith(("profile.", "customer.")) for line in read):
                text = "profile values as they are now (the run does not record them at entry)"
                details.append(Detail(label="note", text=text))
        else:
            details.append(Detail(label="entry rule", text=f"none: every {event} enters"))
        if plan.entry.key:
            details.append(Detail(label="key", text=f"{plan.entry.key} = {records.run.key}"))
    return Item(kind="entry", step="entry", headline=headline, details=details)


# ----------------------------------------------------------------------------- decisions


def _score(context: _Context, step: str, outcome: Any, detail: Mapping[str, Any]) -> Item:
    model = str(detail.get("model") or step)
    version = _model_version(context.records.tasks, model)
    defaulted = set(detail.get("defaulted") or [])
    details = [
        Detail(
            label="model",
            text=f"{model}, version {version}" if version else f"{model} (version not recorded)",
        )
    ]
    for name, value in sorted((detail.get("features") or {}).items()):
        if name in defaulted:
            details.append(
                Detail(label=name, text=f"not known (default {plain(value)})", flag="defaulted")
            )
        else:
            details.append(Detail(label=name, text=plain(value)))
    if detail.get("fallback_used"):
        error = detail.get("error")
        text = "yes: the model failed" + (f" ({error})" if error else "") + ", its fallback score"
        details.append(Detail(label="fallback", text=text, flag="failed"))
    else:
        details.append(Detail(label="fallback", text="no: the model answered"))
    headline = f"{model} scored {format_score(outcome)}"
    return Item(kind="score", step=step, headline=headline, details=details)


def _model_version(tasks: Iterable[ReviewTask], model: str) -> str | None:
    """The model's version as a review case recorded it (the path does not record it)."""
    for task in tasks:
        scores = (task.case or {}).get("scores") or {}
        found = scores.get(model) if isinstance(scores, dict) else None
        if isinstance(found, dict) and found.get("model_version"):
            return str(found["model_version"])
    return None


def _reads_detail(detail: Mapping[str, Any]) -> list[Detail]:
    reads = detail.get("reads") or {}
    details = []
    if reads:
        text = "; ".join(f"{name} = {plain(value)}" for name, value in reads.items())
        details.append(Detail(label="it read", text=text))
    if detail.get("error"):
        details.append(Detail(label="error", text=str(detail["error"]), flag="failed"))
    return details


def _branch(context: _Context, step: str, outcome: Any, detail: Mapping[str, Any]) -> Item:
    plan_step = context.step(step)
    rule = detail.get("rule")
    if isinstance(rule, int):
        how = f"by rule {rule}"
        if isinstance(plan_step, p.BranchPlan) and 0 <= rule < len(plan_step.rules):
            how += f": {plan_step.rules[rule].when}"
    else:
        how = "by its else: no rule held"
    headline = f"went to {outcome} {how}"
    return Item(kind="branch", step=step, headline=headline, details=_reads_detail(detail))


def _decide(context: _Context, step: str, outcome: Any, detail: Mapping[str, Any]) -> Item:
    plan_step = context.step(step)
    rule = detail.get("rule")
    if isinstance(rule, int):
        how = f"row {rule}"
        if isinstance(plan_step, p.DecidePlan) and 0 <= rule < len(plan_step.rules):
            cells = plan_step.rules[rule].when
            how += " (" + (", ".join(f"{k} {v}" for k, v in cells.items()) or "any input") + ")"
    else:
        how = "no row: its else"
    details = []
    inputs = detail.get("inputs") or {}
    if inputs:
        text = "; ".join(f"{name} = {plain(value)}" for name, value in inputs.items())
        details.append(Detail(label="inputs", text=text))
    if detail.get("set"):
        details.append(Detail(label="set", text=plain(detail["set"])))
    if detail.get("error"):
        details.append(Detail(label="error", text=str(detail["error"]), flag="failed"))
    headline = f"decision table: {how} → {outcome}"
    return Item(kind="decide", step=step, headline=headline, details=details)


def _split(context: _Context, step: str, outcome: Any, detail: Mapping[str, Any]) -> Item:
    headline = f"split: arm {detail.get('arm') or outcome} (a stable hash of the customer)"
    return Item(kind="split", step=step, headline=headline)


def _set(context: _Context, step: str, outcome: Any, detail: Mapping[str, Any]) -> Item:
    values = detail.get("values") or {}
    text = "; ".join(f"{name} = {plain(value)}" for name, value in values.items())
    details = _reads_detail({"error": detail.get("error")})
    return Item(kind="set", step=step, headline=f"set {text or 'nothing'}", details=details)


def _review(context: _Context, step: str, outcome: Any, detail: Mapping[str, Any]) -> Item:
    task = next((t for t in context.records.tasks if t.id == detail.get("task_id")), None)
    details: list[Detail] = []
    if outcome == "opened":
        headline = f"opened a review task in {detail.get('queue')}"
    elif outcome == "escalated":
        headline = f"the review was not decided in time: escalated to {detail.get('queue')}"
    elif outcome == "timed_out":
        headline = "the review was not decided in time: the task expired"
    elif outcome == "closed":
        headline = f"the review task closed undecided: {detail.get('reason')}"
    else:
        reviewer = detail.get("reviewer") or (task.reviewer if task else None) or "unknown"
        headline = f"{reviewer} decided {outcome}"
        note = detail.get("note") if "note" in detail else (task.note if task else None)
        details.append(Detail(label="note", text=str(note) if note else "none"))
    return Item(kind="review", step=step, headline=headline, details=details)


# ----------------------------------------------------------------------------- waits


def _wait(context: _Context, step: str, outcome: Any, detail: Mapping[str, Any]) -> Item:
    until = _moment(detail.get("until"))
    plan_step = context.step(step)
    if outcome == "received":
        headline = f"{detail.get('event')} came (message {detail.get('message_id')})"
    elif outcome == "timed_out":
        event = plan_step.event if isinstance(plan_step, p.EventWaitPlan) else "the event"
        headline = f"no {event} came in time"
    elif outcome in ("missing", "past"):
        why = detail.get("reason") or outcome
        headline = f"did not wait: {why}"
    elif detail.get("event"):
        verb = "waited" if until is not None and until <= context.now else "waits"
        limit = f" until {context.local(until)}" if until else ", with no time limit"
        headline = f"{verb} for {detail['event']}{limit}"
    else:
        verb = "waited" if until is not None and until <= context.now else "waits"
        headline = f"{verb} until {context.local(until)}{_wait_why(plan_step, detail)}"
    return Item(kind="wait", step=step, headline=headline)


def _wait_why(step: p.PlanStep | None, detail: Mapping[str, Any]) -> str:
    if isinstance(step, p.UntilWaitPlan):
        return f" ({step.until} the customer's time)"
    if isinstance(step, p.TimerWaitPlan):
        return f" ({describe_seconds(step.seconds)})"
    if isinstance(step, p.DateWaitPlan) and detail.get("reason"):
        return f" ({detail['reason']})"
    return ""


def _event(context: _Context, step: str, outcome: Any, detail: Mapping[str, Any]) -> Item:
    name = detail.get("event") or "an event"
    headline = f"{name} {outcome or 'ignored'}: {detail.get('reason') or 'no reason recorded'}"
    return Item(kind="event", step=step, headline=headline)


def _call(context: _Context, step: str, outcome: Any, detail: Mapping[str, Any]) -> Item:
    if outcome == "failed":
        return Item(kind="call", step=step, headline=f"the call failed: {detail.get('reason')}")
    return Item(kind="call", step=step, headline=f"called out: HTTP {outcome}")


def _holdout(context: _Context, step: str, outcome: Any, detail: Mapping[str, Any]) -> Item:
    share = context.plan.holdout_percent if context.plan is not None else None
    group = f"the {share:g}% holdout" if share else "the holdout"
    headline = f"in {group}: a control group that gets no messages"
    details = [Detail(label="not sent because", text="the customer is in the holdout")]
    return Item(kind="holdout", step=step, headline=headline, details=details)


# ----------------------------------------------------------------------------- sends


def _channel(name: str) -> str:
    return _CHANNELS.get(name, name)


def _send(context: _Context, step: str, outcome: Any, detail: Mapping[str, Any]) -> Item:
    channel = str(detail.get("channel") or "")
    template = detail.get("template")
    if template is None:
        plan_step = context.step(step)
        template = plan_step.template if isinstance(plan_step, p.SendPlan) else None
    if outcome == "deferred":
        context.deferred.setdefault((step, channel), []).append(dict(detail))
        until = context.local(detail.get("until"))
        headline = f"{_channel(channel)} {template} held: {detail.get('reason')}, until {until}"
        return Item(kind="send", step=step, headline=headline)
    queue = context.deliveries.get((step, channel)) or []
    delivery = queue.pop(0) if queue and outcome != "capped" else None
    message = _message(context, step, channel, template, str(outcome), detail, delivery)
    return Item(kind="send", step=step, headline=_send_headline(message), message=message)


def _send_headline(message: MessageExplained) -> str:
    what = f"{_channel(message.channel)} {message.template or ''}".strip()
    to = f" to {message.recipient}" if message.recipient else ""
    if message.status == "captured":
        return f"{what} captured in the outbox{to} (no channel URL set: not sent out)"
    if message.sent:
        return f"{what} sent{to}"
    return f"{what} not sent: {message.not_sent_because}"


def _message(
    context: _Context,
    step: str,
    channel: str,
    template: str | None,
    status: str,
    detail: Mapping[str, Any],
    delivery: Delivery | None,
) -> MessageExplained:
    reason = detail.get("reason") or (delivery.reason if delivery else None)
    captured = context.outbox.get((step, delivery.visit, channel)) if delivery is not None else None
    recipient = delivery.recipient_masked if delivery is not None else None
    if recipient is None and captured is not None and captured.recipient:
        recipient = policies.mask(channel, captured.recipient)
    sent = status in _DELIVERED
    tried = context.tried.setdefault(step, [])
    checks = _checks(context, step, channel, status, str(reason or ""), delivery, list(tried))
    tried.append(f"{_channel(channel)}: {_NOT_SENT.get(status, status)}")
    if sent:
        context.tried[step] = []
    return MessageExplained(
        delivery_id=delivery.id if delivery is not None else None,
        outbox_id=captured.id if captured is not None else None,
        channel=channel,
        template=template,
        recipient=recipient,
        status=status,
        sent=sent,
        not_sent_because=None if sent else _because(status, reason),
        checks=checks,
        subject=captured.subject if captured is not None else None,
        body=captured.body if captured is not None else None,
    )


def _a(word: str) -> str:
    """``word`` with its article, as it is said: "an SMS", "an email", "a push"."""
    return f"an {word}" if word[:1].lower() in "aeio" or word == "SMS" else f"a {word}"


def _because(status: str, reason: Any) -> str:
    known = _NOT_SENT.get(status, status)
    return f"{known} ({reason})" if reason and str(reason) != known else known


def _checks(
    context: _Context,
    step: str,
    channel: str,
    status: str,
    reason: str,
    delivery: Delivery | None,
    tried: list[str],
) -> list[Check]:
    """The send's policy checks, in the order the send activity runs them: an address,
    consent, suppression, quiet hours, the frequency cap; and the fallback between
    channels. A check after the one that refused was not reached (``passed`` None)."""
    order = ("no_address", "no_consent", "suppressed")
    refused = order.index(status) if status in order else None

    def gate(index: int, name: str, ok: str) -> Check:
        if refused is None or index < refused:
            return Check(name=name, passed=True, text=ok)
        if index == refused:
            return Check(name=name, passed=False, text=reason or _NOT_SENT[status])
        return Check(name=name, passed=None, text="not reached")

    checks = [
        gate(0, "address", f"the customer has {_a(_channel(channel))} address"),
        gate(1, "consent", f"{_channel(channel)} allowed: not opted out"),
        gate(2, "suppression", "the address is not suppressed"),
    ]
    reached = refused is None
    checks.append(_quiet_check(context, step, channel, delivery, reached))
    checks.append(_cap_check(context, step, channel, status, reached))
    checks.append(_fallback_check(context, step, channel, status, tried))
    return checks


def _quiet_check(
    context: _Context, step: str, channel: str, delivery: Delivery | None, reached: bool
) -> Check:
    quiet = context.plan.settings.quiet_hours if context.plan is not None else None
    if quiet is None:
        return Check(name="quiet hours", passed=True, text="none set")
    hours = f"{quiet.start}-{quiet.end} in {context.zone.key}"
    held = [d for d in context.deferred.get((step, channel), []) if "quiet" in str(d.get("reason"))]
    if held:
        until = context.local(held[-1].get("until"))
        return Check(
            name="quiet hours", passed=True, text=f"{hours}: held until {until}, then sent"
        )
    if not reached:
        return Check(name="quiet hours", passed=None, text=f"{hours}: not reached")
    moment = as_utc(delivery.sent_at or delivery.created_at) if delivery is not None else None
    if moment is None:
        return Check(name="quiet hours", passed=True, text=f"{hours}: not in them")
    local = moment.astimezone(context.zone).strftime("%H:%M")
    if quiet_hours_end(moment, context.zone, quiet.start, quiet.end) is None:
        text = f"{hours}: not in them at {local}, sent at once"
        return Check(name="quiet hours", passed=True, text=text)
    return Check(name="quiet hours", passed=True, text=f"{hours}: {local} is in them")


def _cap_check(context: _Context, step: str, channel: str, status: str, reached: bool) -> Check:
    cap = context.plan.settings.frequency_cap if context.plan is not None else None
    if cap is None:
        return Check(name="frequency cap", passed=True, text="none set")
    limit = f"{cap.max} per {describe_seconds(cap.per_seconds)}"
    if status == "capped":
        return Check(name="frequency cap", passed=False, text=f"{limit}: full, the send skipped")
    held = [d for d in context.deferred.get((step, channel), []) if "cap" in str(d.get("reason"))]
    if held:
        until = context.local(held[-1].get("until"))
        return Check(name="frequency cap", passed=True, text=f"{limit}: full, held until {until}")
    if not reached:
        return Check(name="frequency cap", passed=None, text=f"{limit}: not reached")
    return Check(name="frequency cap", passed=True, text=f"{limit}: within it")


def _fallback_check(
    context: _Context, step: str, channel: str, status: str, tried: list[str]
) -> Check:
    plan_step = context.step(step)
    channels = plan_step.channels if isinstance(plan_step, p.SendPlan) else (channel,)
    if tried:
        return Check(name="fallback", passed=True, text=f"after {'; '.join(tried)}")
    rest = channels[channels.index(channel) + 1 :] if channel in channels else ()
    if status in _DELIVERED:
        return Check(name="fallback", passed=True, text="none needed")
    if rest:
        names = ", ".join(_channel(c) for c in rest)
        return Check(name="fallback", passed=True, text=f"next: {names}")
    if isinstance(plan_step, p.SendPlan) and plan_step.on_failure:
        return Check(
            name="fallback", passed=None, text=f"no other channel: on to {plan_step.on_failure}"
        )
    return Check(name="fallback", passed=None, text="no other channel")


def _unrecorded_sends(context: _Context) -> list[Item]:
    """Deliveries the path does not name yet (the run records its path a moment after a
    send): explained from their rows, so a message just sent is already explained."""
    items = []
    left = [d for queue in context.deliveries.values() for d in queue]
    for delivery in sorted(left, key=lambda d: d.id or 0):
        if delivery.status in ("pending", "sending", "retrying"):
            continue
        channel = delivery.channel or ""
        detail = {"reason": delivery.reason}
        message = _message(
            context, delivery.step_id, channel, delivery.template, delivery.status, detail, delivery
        )
        at = as_utc(delivery.sent_at or delivery.created_at)
        items.append(_unrecorded(context, message, delivery.step_id, at))
    named = {(d.step_id, d.visit, d.channel or "") for d in context.records.deliveries}
    for captured in context.records.outbox:
        key = (captured.step_id, captured.visit, captured.channel)
        if key in named or captured.channel == "ops":  # ops: a review's announcement
            continue
        message = MessageExplained(
            outbox_id=captured.id,
            channel=captured.channel,
            recipient=policies.mask(captured.channel, captured.recipient)
            if captured.recipient
            else None,
            status="captured",
            sent=True,
            subject=captured.subject,
            body=captured.body,
        )
        at = as_utc(captured.created_at)
        items.append(_unrecorded(context, message, captured.step_id, at))
    return items


def _unrecorded(context: _Context, message: MessageExplained, step: str, at: datetime) -> Item:
    if message.template is None:
        plan_step = context.step(step)
        if isinstance(plan_step, p.SendPlan):
            message.template = plan_step.template
    return Item(
        kind="send",
        step=step,
        at=at,
        local=context.local(at),
        headline=_send_headline(message),
        details=[Detail(label="recorded", text="by the delivery; the run's path not yet")],
        message=message,
    )


_BUILDERS = {
    "score": _score,
    "branch": _branch,
    "decide": _decide,
    "split": _split,
    "set": _set,
    "review": _review,
    "wait": _wait,
    "event": _event,
    "call": _call,
    "holdout": _holdout,
    "send": _send,
}


# ----------------------------------------------------------------------------- text


def _run_header(run: RunExplanation) -> list[str]:
    state = run.status
    if run.status == "running" and run.step:
        state += f", at {run.step}"
    elif run.outcome and run.outcome != run.status:
        state += f" ({run.outcome})"
    return [
        f"run {run.run_id}: {run.journey_id} (version {run.version}), customer {run.customer_id}, {state}",
        f"times in {run.zone} ({run.zone_source})",
    ]


def _message_lines(message: MessageExplained) -> list[str]:
    lines = []
    for check in message.checks:
        lines.append(f"      {check.name}: {check.text}")
    if message.content_hidden:
        lines.append("      message: hidden (it holds personal data)")
    elif message.body is not None:
        if message.subject:
            lines.append(f"      subject: {message.subject}")
        body = message.body.splitlines() or [""]
        lines.append(f"      message: {body[0]}")
        lines.extend(f"               {line}" for line in body[1:])
    return lines


def render_text(explanation: Explanation) -> str:
    """The explanation as `journeys explain` prints it."""
    lines: list[str] = []
    if explanation.customer_id is not None and len(explanation.runs) != 1:
        count = len(explanation.runs)
        lines.append(f"customer {explanation.customer_id}: {count} run{'' if count == 1 else 's'}")
    lines.extend(f"note: {note}" for note in explanation.notes)
    for run in explanation.runs:
        if lines:
            lines.append("")
        lines.extend(_run_header(run))
        for item in run.items:
            lines.append(f"  {item.local or '-'}  {item.step}: {item.headline}")
            lines.extend(f"      {d.label}: {d.text}" for d in item.details)
            if item.message is not None:
                lines.extend(_message_lines(item.message))
        lines.extend(f"  note: {note}" for note in run.notes)
    return "\n".join(lines)
