"""Event ingestion, Segment-compatible: /v1/track, /v1/identify, /v1/batch and /v1/events.

Each request stores its messages first (deduplicated by message id, in one transaction),
then routes them: starts the journeys they enter and signals the runs that wait for or
exit on them. The answer is sent only after the events are committed; when Temporal
cannot be reached in `ROUTING_TIMEOUT_SECONDS` it says ``routing: deferred`` and the
app's background loop routes them later.

Before anything is stored, a request is refused (422, naming each message's field) when
a timestamp is further ahead than ``JOURNEYS_MAX_FUTURE_SKEW``.

Lives here: the routes and their answer (`IngestResponse`). Not here: the message models
(`service.api.messages`), routing decisions (`service.router`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Literal

from fastapi import APIRouter, Depends, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from engine.database import EventRecord
from engine.durations import format_duration
from engine.settings import RuntimeSettings
from engine.timestamps import utcnow
from service.api.deps import EventRouterDep, SettingsDep, require_api_key
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

__all__ = ["ROUTING_TIMEOUT_SECONDS", "IngestResponse", "router"]

log = logging.getLogger(__name__)

# An ingestion request waits at most this long for Temporal before answering "deferred".
ROUTING_TIMEOUT_SECONDS = 10.0


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


router = APIRouter(
    prefix="/v1",
    tags=["events"],
    dependencies=[Depends(require_api_key)],
    responses={
        **ERROR_RESPONSES,
        **responses(413, _413=f"Body larger than {MAX_BODY_BYTES} bytes."),
    },
)


# ----------------------------------------------------------------------------- checks


def _field(*, in_batch: bool, index: int, name: str) -> str:
    """How an error names a message's field: ``batch[2].event``, or ``event`` alone."""
    return f"batch[{index}].{name}" if in_batch else name


def _refusals(
    messages: Sequence[TrackMessage | IdentifyMessage],
    *,
    settings: RuntimeSettings,
    in_batch: bool,
) -> JSONResponse | None:
    """The 422 for timestamps too far ahead."""
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
    if not found:
        return None
    errors = [error for _, error in sorted(found, key=lambda item: item[0])]
    return error_response(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        "; ".join(f"{error.field}: {error.message}" for error in errors[:10]),
        errors[:50],
    )


# ----------------------------------------------------------------------------- routing


async def _route_accepted(
    events: EventRouter, stored: Sequence[EventRecord], prepared: RoutingInputs | None
) -> IngestResponse:
    response = IngestResponse(accepted=len(stored), duplicates=0)
    try:
        with events.claimed([record.message_id for record in stored]):
            async with asyncio.timeout(ROUTING_TIMEOUT_SECONDS):
                outcomes = await events.route_in_order(stored, prepared)
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
    in_batch: bool = False,
) -> IngestResponse | JSONResponse:
    refusal = _refusals(messages, settings=settings, in_batch=in_batch)
    if refusal is not None:
        return refusal
    records = [message.to_record() for message in messages]
    outcome = await asyncio.to_thread(events.ingest, records, prepare=True)
    response = await _route_accepted(events, outcome.stored, outcome.prepared)
    response.duplicates = outcome.duplicates
    return response


@router.post(
    "/track",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IngestResponse,
    summary="Record an event (Segment `track`)",
)
async def track(
    message: TrackMessage, events: EventRouterDep, settings: SettingsDep
) -> IngestResponse | JSONResponse:
    """Stores the event, then starts the journeys it enters and signals the runs that
    wait for or exit on it. Answers only after the event is committed."""
    return await _ingest(events, [message], settings=settings)


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
    body: BatchRequest, events: EventRouterDep, settings: SettingsDep
) -> IngestResponse | JSONResponse:
    """All or nothing: one invalid message rejects the batch and nothing is stored."""
    return await _ingest(events, body.batch, settings=settings, in_batch=True)


@router.post(
    "/events",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IngestResponse,
    summary="Record a track or identify message, or a batch",
)
async def record_events(
    body: EventsBody, events: EventRouterDep, settings: SettingsDep
) -> IngestResponse | JSONResponse:
    """One endpoint for every shape: a message chosen by its `type`, or `{"batch": [...]}`."""
    in_batch = isinstance(body, BatchRequest)
    messages = body.batch if isinstance(body, BatchRequest) else [body]
    return await _ingest(events, messages, settings=settings, in_batch=in_batch)
