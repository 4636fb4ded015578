"""The messages event sources send, in Segment's shapes: `TrackMessage`,
`IdentifyMessage`, `BatchRequest`, and `EventsBody` (any of the three, for /v1/events).

Every field is checked so that what is accepted can be stored as is in SQLite and
PostgreSQL alike: text without NUL characters or lone surrogates, JSON no deeper than
`MAX_JSON_DEPTH`, integers within 64 bits, finite numbers, timestamps in range (kept in
UTC) and not before `EARLIEST_TIMESTAMP`. How far in the future a timestamp may be is a
setting (``JOURNEYS_MAX_FUTURE_SKEW``), so the routes check it (`too_far_ahead`). A
message becomes an `EventRecord` by `to_record`.

Lives here: the wire format and its checks. Not here: the routes (`routes.events`), what
an event does to journeys (`service.router`).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine.database import EventRecord
from engine.timestamps import as_utc, utcnow

__all__ = [
    "EARLIEST_TIMESTAMP",
    "MAX_BATCH_MESSAGES",
    "MAX_JSON_DEPTH",
    "BatchRequest",
    "EventsBody",
    "IdentifyMessage",
    "TrackMessage",
    "too_far_ahead",
]

MAX_BATCH_MESSAGES = 500
MAX_JSON_DEPTH = 32
MAX_JSON_INTEGER = 2**63 - 1
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)
"""No event happened before this: an earlier timestamp is a bug (a zero date, seconds
taken for milliseconds), refused rather than stored."""


# ----------------------------------------------------------------------------- input checks


def _text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "must not contain NUL (\\x00) characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def _check_text(value: str) -> str:
    problem = _text_problem(value)
    if problem:
        raise PydanticCustomError("text", problem)
    return value


def _json_problem(value: Any, where: str, depth: int) -> str | None:
    """Why ``value`` cannot be stored as JSON in SQLite and PostgreSQL alike (None: it can)."""
    if depth > MAX_JSON_DEPTH:
        return f"{where}: nested deeper than {MAX_JSON_DEPTH} levels"
    if isinstance(value, dict):
        return _object_problem(value, where, depth)
    if isinstance(value, list):
        return _first_problem(
            _json_problem(item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)
        )
    return _scalar_problem(value, where)


def _scalar_problem(value: Any, where: str) -> str | None:
    if isinstance(value, str):
        problem = _text_problem(value)
        return f"{where}: text {problem}" if problem else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return f"{where}: integer out of range" if abs(value) > MAX_JSON_INTEGER else None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where}: number must be finite"
    return f"{where}: not a JSON value"


def _object_problem(value: dict[Any, Any], where: str, depth: int) -> str | None:
    for name, item in value.items():
        if not isinstance(name, str):
            return f"{where}: keys must be text"
        problem = _text_problem(name)
        if problem:
            return f"{where}: key {problem}"
        problem = _json_problem(item, f"{where}.{name}", depth + 1)
        if problem:
            return problem
    return None


def _first_problem(problems: Iterable[str | None]) -> str | None:
    # A generator: the checks stop at the first problem, as a loop would.
    return next((problem for problem in problems if problem), None)


def _check_json_object(value: dict[str, Any]) -> dict[str, Any]:
    problem = _json_problem(value, "", 0)
    if problem:
        raise PydanticCustomError("json_value", "{problem}", {"problem": problem.lstrip(".:")})
    return value


def _empty_if_null(value: Any) -> Any:
    return {} if value is None else value


def _timestamp_in_utc(value: datetime | None) -> datetime | None:
    try:
        moment = as_utc(value)
    except OverflowError:  # a moment near datetime.min or .max, with a zone
        raise PydanticCustomError("timestamp", "timestamp is out of range") from None
    if moment is not None and moment < EARLIEST_TIMESTAMP:
        raise PydanticCustomError(
            "timestamp", "timestamp is before {earliest}", {"earliest": "2000-01-01T00:00:00Z"}
        )
    return moment


Text = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_check_text)]
JsonObject = Annotated[
    dict[str, Any], BeforeValidator(_empty_if_null), AfterValidator(_check_json_object)
]
Timestamp = Annotated[datetime | None, AfterValidator(_timestamp_in_utc)]


# ----------------------------------------------------------------------------- request models


class _SegmentMessage(BaseModel):
    """Fields every message shares. Field names are Segment's (camelCase) on purpose:
    they are the wire format. Other Segment fields (``context``, ``integrations``,
    ``sentAt`` ...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    userId: Text = Field(description="The customer id; `anonymousId` is used when absent.")
    anonymousId: Text | None = Field(default=None, description="Fallback for `userId`.")
    messageId: Text | None = Field(
        default=None,
        description="Deduplicates retries: a message id seen before is accepted and ignored. "
        "Generated (UUID4) when absent.",
    )
    timestamp: Timestamp = Field(
        default=None, description="ISO-8601; when the event happened (default: now)."
    )

    @model_validator(mode="before")
    @classmethod
    def _anonymous_id_stands_in_for_user_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("userId") in (None, "") and data.get("anonymousId"):
            return {**data, "userId": data["anonymousId"]}
        return data

    def _record(self, *, kind: str, name: str | None, properties: dict[str, Any]) -> EventRecord:
        # Every field given: a field left to its default costs SQLModel an
        # `inspect.signature` of the default factory per record (py-spy: a third of a
        # batch request's CPU). received_at stays one call per record (arrival order).
        now = utcnow()
        return EventRecord(
            message_id=self.messageId or str(uuid.uuid4()),
            type=kind,
            name=name,
            customer_id=self.userId,
            properties=properties,
            timestamp=self.timestamp or now,
            received_at=now,
            routed=False,
        )


class TrackMessage(_SegmentMessage):
    """Something a customer did (`payment_failed`): may start, advance or end journeys."""

    type: Literal["track"] = "track"
    event: Text = Field(description="The event name journeys refer to, e.g. `payment_failed`.")
    properties: JsonObject = Field(
        default_factory=dict, description="What expressions read as `event`."
    )

    def to_record(self) -> EventRecord:
        return self._record(kind="track", name=self.event, properties=self.properties)


class IdentifyMessage(_SegmentMessage):
    """Who a customer is: `traits` are merged into the profile (a null trait removes it)."""

    type: Literal["identify"] = "identify"
    traits: JsonObject = Field(
        default_factory=dict,
        description="Merged into the profile; `email`, `phone`, `push_token` and `timezone` "
        "are the customer's channel addresses and time zone.",
    )

    def to_record(self) -> EventRecord:
        return self._record(kind="identify", name=None, properties=self.traits)


def too_far_ahead(
    messages: Sequence[TrackMessage | IdentifyMessage], *, now: datetime, skew: timedelta
) -> list[tuple[int, datetime]]:
    """The messages (index, timestamp) whose timestamp is more than ``skew`` after ``now``."""
    latest = now + skew
    return [
        (index, message.timestamp)
        for index, message in enumerate(messages)
        if message.timestamp is not None and message.timestamp > latest
    ]


def _message_type(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in ("track", "identify") else None


SegmentMessage = Annotated[
    Annotated[TrackMessage, Tag("track")] | Annotated[IdentifyMessage, Tag("identify")],
    Discriminator(
        _message_type,
        custom_error_type="message_type",
        custom_error_message="field required: 'track' or 'identify'",
    ),
]


class BatchRequest(BaseModel):
    """Several messages at once; one bad message rejects the whole batch."""

    model_config = ConfigDict(extra="ignore")

    batch: list[SegmentMessage] = Field(min_length=1, max_length=MAX_BATCH_MESSAGES)


def _events_body_kind(value: Any) -> str | None:
    if isinstance(value, dict) and "batch" in value and "type" not in value:
        return "batch-request"
    if isinstance(value, BatchRequest):
        return "batch-request"
    return _message_type(value)


EventsBody = Annotated[
    Annotated[TrackMessage, Tag("track")]
    | Annotated[IdentifyMessage, Tag("identify")]
    | Annotated[BatchRequest, Tag("batch-request")],
    Discriminator(
        _events_body_kind,
        custom_error_type="message_type",
        custom_error_message='expected a track or identify message (by `type`) or {"batch": [...]}',
    ),
]
