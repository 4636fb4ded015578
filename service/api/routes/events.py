"""Event ingestion, Segment-compatible: /v1/track, /v1/identify, /v1/batch and /v1/events.

Each request stores its messages first (deduplicated by message id, in one transaction),
then routes them: starts the journeys they enter and signals the runs that wait for or
exit on them. The answer is sent only after the events are committed; when Temporal
cannot be reached in `ROUTING_TIMEOUT_SECONDS` it says ``routing: deferred`` and the
app's background loop routes them later.

Before anything is stored, a request is refused (422, naming each message's field) when
a timestamp is further ahead than ``JOURNEYS_MAX_FUTURE_SKEW``, or, with ``?strict=true``,
when it holds an event no journey listens to. The answer names those events
(``unrouted``) and the repeated message ids that another customer's event holds
(``conflicts``: deduplication is by message id alone, as Segment's is); both are left out
when empty.

Lives here: the routes and their answer (`IngestResponse`), and which events journeys
listen to (`listened_events`). Not here: the message models (`service.api.messages`),
routing decisions (`service.router`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import Table
from sqlalchemy import select as core_select
from sqlalchemy.engine import Engine

from engine.database import EventRecord, PlanVersion
from engine.durations import format_duration
from engine.plan import EventGoalPlan, Plan
from engine.settings import RuntimeSettings
from engine.timestamps import utcnow
from service.api.deps import SCOPE_REFUSED, EventRouterDep, SettingsDep, require_ingest
from service.api.errors import ERROR_RESPONSES, ErrorDetail, error_response, responses
from service.api.messages import (
    MAX_BATCH_MESSAGES,
    BatchRequest,
    EventsBody,
    IdentifyMessage,
    TrackMessage,
    too_far_ahead,
)
from service.api.middleware import MAX_BODY_BYTES
from service.router import EventRouter, RoutingInputs, SkippedStart

__all__ = [
    "CONFLICT_REASON",
    "ROUTING_TIMEOUT_SECONDS",
    "IngestResponse",
    "MessageConflict",
    "listened_events",
    "router",
]

log = logging.getLogger(__name__)

# An ingestion request waits at most this long for Temporal before answering "deferred".
ROUTING_TIMEOUT_SECONDS = 10.0


CONFLICT_REASON = "messageId already used by another customer"

_EVENTS: Table = EventRecord.__table__  # type: ignore[attr-defined]
_PLAN_VERSIONS: Table = PlanVersion.__table__  # type: ignore[attr-defined]


class MessageConflict(BaseModel):
    """A repeated message id whose stored event is another customer's: this message was
    ignored as a duplicate (deduplication is by message id alone)."""

    message_id: str
    reason: str = Field(description=f"`{CONFLICT_REASON}`")


def _when_empty(value: list[object]) -> bool:
    return not value


class IngestResponse(BaseModel):
    """The answer to an accepted request, sent only after its events are committed."""

    accepted: int = Field(description="Messages stored now.")
    duplicates: int = Field(description="Messages whose messageId was seen before (ignored).")
    started: list[str] = Field(default_factory=list, description="Workflow ids started.")
    signalled: list[str] = Field(default_factory=list, description="Workflow ids signalled.")
    skipped: list[SkippedStart] = Field(default_factory=list)
    routing: Literal["done", "deferred"] = Field(
        default="done",
        description="`deferred`: Temporal could not be reached; the events are stored and "
        "will be routed in the background.",
    )
    unrouted: list[str] = Field(
        default_factory=list,
        exclude_if=_when_empty,
        description="Names of track events no journey listens to (none enters, waits for "
        "or exits on them): stored, but they do nothing. Absent when there are none; "
        "`?strict=true` refuses them instead.",
    )
    erased: list[str] = Field(
        default_factory=list,
        exclude_if=_when_empty,
        description="Message ids naming a customer who was erased (`DELETE "
        "/v1/customers/{id}`): not stored, they start and change nothing. Absent when "
        "there are none.",
    )
    conflicts: list[MessageConflict] = Field(
        default_factory=list,
        exclude_if=_when_empty,
        description="Duplicates whose messageId another customer's event already holds; "
        "absent when there are none.",
    )


router = APIRouter(
    prefix="/v1",
    tags=["events"],
    dependencies=[Depends(require_ingest)],
    responses={
        **ERROR_RESPONSES,
        **SCOPE_REFUSED,
        **responses(413, _413=f"Body larger than {MAX_BODY_BYTES} bytes."),
    },
)


StrictQuery = Annotated[
    bool,
    Query(
        description="Refuse (422, storing nothing) a request holding a track event no "
        "journey listens to, instead of storing it and naming it in `unrouted`."
    ),
]


# ----------------------------------------------------------------------------- listened to


@dataclass
class _Listened:
    """Per database: what each stored plan version listens to, read once per version
    (versions are immutable): its entry event, and the events its runs wait for or exit on."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    versions: dict[int, tuple[str, frozenset[str]]] = field(default_factory=dict)


_LISTENED: weakref.WeakKeyDictionary[Engine, _Listened] = weakref.WeakKeyDictionary()
_LISTENED_LOCK = threading.Lock()


def listened_events(db: Engine) -> frozenset[str]:
    """The event names some journey listens to: the active versions' entry events, and
    what the runs of every stored version wait for, exit on or count as a goal (a run of
    a superseded version still hears them, as `EventRouter` routes them). Blocking: one small read,
    plus each version's plan the first time it is seen."""
    with _LISTENED_LOCK:
        cache = _LISTENED.setdefault(db, _Listened())
    with db.connect() as connection:
        rows = connection.execute(core_select(_PLAN_VERSIONS.c.id, _PLAN_VERSIONS.c.active)).all()
        with cache.lock:
            unseen = [row.id for row in rows if row.id not in cache.versions]
        if unseen:
            plans = connection.execute(
                core_select(_PLAN_VERSIONS.c.id, _PLAN_VERSIONS.c.plan_json).where(
                    _PLAN_VERSIONS.c.id.in_(unseen)
                )
            ).all()
            read = {row.id: _listens_to(row.plan_json) for row in plans}
            with cache.lock:
                cache.versions.update(read)
    names: set[str] = set()
    with cache.lock:
        for row in rows:
            entry, heard = cache.versions.get(row.id, ("", frozenset()))
            names.update(heard)
            if row.active and entry:
                names.add(entry)
    return frozenset(names)


def _listens_to(plan_json: str) -> tuple[str, frozenset[str]]:
    try:
        plan = Plan.model_validate_json(plan_json)
    except ValueError:
        return "", frozenset()  # the router logs it; it routes nothing either
    goals = {goal.event for goal in plan.goals if isinstance(goal, EventGoalPlan)}
    return plan.entry.event, frozenset(plan.correlations()) | goals  # goals: they convert


# ----------------------------------------------------------------------------- checks


def _field(*, in_batch: bool, index: int, name: str) -> str:
    """How an error names a message's field: ``batch[2].event``, or ``event`` alone."""
    return f"batch[{index}].{name}" if in_batch else name


def _refusals(
    messages: Sequence[TrackMessage | IdentifyMessage],
    *,
    settings: RuntimeSettings,
    unrouted: Sequence[tuple[int, str]],
    strict: bool,
    in_batch: bool,
) -> JSONResponse | None:
    """The 422 for timestamps too far ahead and, when ``strict``, events nothing hears."""
    skew = settings.max_future_skew
    found: list[tuple[int, ErrorDetail]] = [
        (
            index,
            ErrorDetail(
                field=_field(in_batch=in_batch, index=index, name="timestamp"),
                message=f"{moment.isoformat()} is more than "
                f"{format_duration(int(skew.total_seconds()))} in the future",
            ),
        )
        for index, moment in too_far_ahead(messages, now=utcnow(), skew=skew)
    ]
    if strict:
        found += [
            (
                index,
                ErrorDetail(
                    field=_field(in_batch=in_batch, index=index, name="event"),
                    message=f"no journey listens to {name!r} (refused: strict=true)",
                ),
            )
            for index, name in unrouted
        ]
    if not found:
        return None
    errors = [error for _, error in sorted(found, key=lambda item: item[0])]
    return error_response(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        "; ".join(f"{error.field}: {error.message}" for error in errors[:10]),
        errors[:50],
    )


def _conflicts(
    db: Engine, records: Sequence[EventRecord], stored: Sequence[EventRecord]
) -> list[MessageConflict]:
    """The repeats whose message id is held by another customer's event. Blocking."""
    kept = {id(record) for record in stored}
    repeats = [record for record in records if id(record) not in kept]
    if not repeats:
        return []
    with db.connect() as connection:
        rows = connection.execute(
            core_select(_EVENTS.c.message_id, _EVENTS.c.customer_id).where(
                _EVENTS.c.message_id.in_({record.message_id for record in repeats})
            )
        ).all()
    owners = {message_id: customer_id for message_id, customer_id in rows}
    conflicts: dict[str, MessageConflict] = {}
    for record in repeats:
        owner = owners.get(record.message_id)
        if owner is not None and owner != record.customer_id:
            conflicts.setdefault(
                record.message_id,
                MessageConflict(message_id=record.message_id, reason=CONFLICT_REASON),
            )
    return list(conflicts.values())


# ----------------------------------------------------------------------------- routing


async def _route_accepted(
    events: EventRouter, stored: Sequence[EventRecord], prepared: RoutingInputs | None
) -> IngestResponse:
    response = IngestResponse(accepted=len(stored), duplicates=0)
    to_route = [record for record in stored if not record.routed]  # the rest route nowhere
    if not to_route:
        return response
    try:
        with events.claimed([record.message_id for record in to_route]):
            async with asyncio.timeout(ROUTING_TIMEOUT_SECONDS):
                outcomes = await events.route_in_order(to_route, prepared)
    except Exception as error:
        # Stored is what matters: the background loop routes what is left.
        log.warning("routing deferred: %s", type(error).__name__)
        response.routing = "deferred"
        return response
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            if response.routing != "deferred":
                log.warning("routing deferred: %s", type(outcome).__name__)
            response.routing = "deferred"
            continue
        response.started += outcome.started
        response.signalled += outcome.signalled
        response.skipped += outcome.skipped
    return response


async def _ingest(
    events: EventRouter,
    messages: Sequence[TrackMessage | IdentifyMessage],
    *,
    settings: RuntimeSettings,
    strict: bool = False,
    in_batch: bool = False,
) -> IngestResponse | JSONResponse:
    tracked = [
        (index, message.event)
        for index, message in enumerate(messages)
        if isinstance(message, TrackMessage)
    ]
    unrouted: list[tuple[int, str]] = []
    if tracked and strict:  # refused before anything is stored
        listened = await asyncio.to_thread(listened_events, events.db)
        unrouted = [(index, name) for index, name in tracked if name not in listened]
    refusal = _refusals(
        messages, settings=settings, unrouted=unrouted, strict=strict, in_batch=in_batch
    )
    if refusal is not None:
        return refusal
    records = [message.to_record() for message in messages]
    outcome = await events.store(records, prepare=True)
    if tracked and not strict:  # only named in the answer: read when they were stored
        unrouted = [(index, name) for index, name in tracked if name not in outcome.listened]
    response = await _route_accepted(events, outcome.stored, outcome.prepared)
    response.duplicates = outcome.duplicates
    response.unrouted = list(dict.fromkeys(name for _, name in unrouted))
    response.erased = outcome.erased
    if outcome.erased:
        refused = set(outcome.erased)
        records = [record for record in records if record.message_id not in refused]
    if outcome.duplicates:
        response.conflicts = await asyncio.to_thread(_conflicts, events.db, records, outcome.stored)
    if response.conflicts and settings.message_id_scope == "customer":
        await _store_scoped(events, records, outcome.stored, response)
    return response


def scoped_message_id(message_id: str, customer_id: str) -> str:
    """The id a message is stored under when ids are scoped per customer and another
    customer's event already holds ``message_id``: stable, so a retry is a duplicate."""
    digest = hashlib.sha256(f"{customer_id}\x00{message_id}".encode()).hexdigest()[:16]
    return f"{message_id[:180]}~{digest}"


async def _store_scoped(
    events: EventRouter,
    records: Sequence[EventRecord],
    stored: Sequence[EventRecord],
    response: IngestResponse,
) -> None:
    """`JOURNEYS_MESSAGE_ID_SCOPE=customer`: the messages whose id another customer's event
    holds are stored (and routed) under their scoped id; a retry of one is a duplicate."""
    taken = {conflict.message_id for conflict in response.conflicts}
    kept = {id(record) for record in stored}
    again = [
        EventRecord(
            **{
                **{name: getattr(record, name) for name in EventRecord.model_fields},
                "message_id": scoped_message_id(record.message_id, record.customer_id),
            }
        )
        for record in records
        if id(record) not in kept and record.message_id in taken
    ]
    outcome = await events.store(again, prepare=True)
    routed = await _route_accepted(events, outcome.stored, outcome.prepared)
    response.accepted += routed.accepted
    response.duplicates -= routed.accepted
    response.started += routed.started
    response.signalled += routed.signalled
    response.skipped += routed.skipped
    if routed.routing == "deferred":
        response.routing = "deferred"
    response.conflicts = []


@router.post(
    "/track",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IngestResponse,
    summary="Record an event (Segment `track`)",
)
async def track(
    message: TrackMessage,
    events: EventRouterDep,
    settings: SettingsDep,
    strict: StrictQuery = False,
) -> IngestResponse | JSONResponse:
    """Stores the event, then starts the journeys it enters and signals the runs that
    wait for or exit on it. Answers only after the event is committed."""
    return await _ingest(events, [message], settings=settings, strict=strict)


@router.post(
    "/identify",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IngestResponse,
    summary="Update a customer's profile (Segment `identify`)",
)
async def identify(
    message: IdentifyMessage, events: EventRouterDep, settings: SettingsDep
) -> IngestResponse | JSONResponse:
    """Stores the message and merges its `traits` into the customer's profile."""
    return await _ingest(events, [message], settings=settings)


@router.post(
    "/batch",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IngestResponse,
    summary=f"Record up to {MAX_BATCH_MESSAGES} messages at once (Segment `batch`)",
)
async def batch(
    body: BatchRequest, events: EventRouterDep, settings: SettingsDep, strict: StrictQuery = False
) -> IngestResponse | JSONResponse:
    """All or nothing: one invalid message rejects the batch and nothing is stored."""
    return await _ingest(events, body.batch, settings=settings, strict=strict, in_batch=True)


@router.post(
    "/events",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IngestResponse,
    summary="Record a track or identify message, or a batch",
)
async def record_events(
    body: EventsBody, events: EventRouterDep, settings: SettingsDep, strict: StrictQuery = False
) -> IngestResponse | JSONResponse:
    """One endpoint for every shape: a message chosen by its `type`, or `{"batch": [...]}`."""
    in_batch = isinstance(body, BatchRequest)
    messages = body.batch if isinstance(body, BatchRequest) else [body]
    return await _ingest(events, messages, settings=settings, strict=strict, in_batch=in_batch)
