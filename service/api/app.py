"""The HTTP API: event ingestion (Segment's shapes), runs, journeys and health.

`create_app` builds the FastAPI app (``uvicorn service.api.app:create_app --factory``). On
start it opens the database, seeds ``JOURNEYS_API_KEY``, connects to Temporal (retrying in
the background while it is unreachable: events are still accepted and stored) and runs a
loop that routes events accepted while Temporal was away.

Lives here: request and response models, input limits, the endpoints and the app's
lifecycle. Not here: routing decisions (`service.router`), authentication
(`service.api.auth`), the database models (`engine.database`). Nothing here logs an API key
or an Authorization header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    status,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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
from sqlalchemy import func, text
from sqlalchemy.engine import Engine
from sqlmodel import col, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client

from engine.database import (
    ApiKey,
    EventRecord,
    Run,
    active_plans,
    create_api_key,
    make_engine,
    session_scope,
    utcnow,
)
from engine.payloads import QUERY_STATE
from engine.plan import Plan
from engine.settings import RuntimeSettings
from runtime.temporal import connect
from service.api.auth import api_keys, require_api_key, unauthorized
from service.api.routes.preferences import router as preferences_router
from service.api.routes.reviews import router as reviews_router
from service.console.auth import SessionKeys
from service.console.routes import router as console_router
from service.router import EventRouter, RouteResult, RoutingInputs, SkippedStart

__all__ = [
    "MAX_BATCH_MESSAGES",
    "MAX_BODY_BYTES",
    "BatchRequest",
    "IdentifyMessage",
    "IngestResponse",
    "RequestBodyLimit",
    "TrackMessage",
    "create_app",
]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
MAX_BATCH_MESSAGES = 500
MAX_JSON_DEPTH = 32
MAX_JSON_INTEGER = 2**63 - 1
ROUTE_PENDING_EVERY_SECONDS = 2.0
# The background loop leaves events younger than this to the request that accepted them.
ROUTE_PENDING_MIN_AGE_SECONDS = 5.0
# An ingestion request waits at most this long for Temporal before answering "deferred".
ROUTING_TIMEOUT_SECONDS = 10.0
TEMPORAL_CONNECT_TIMEOUT_SECONDS = 5.0
TEMPORAL_QUERY_TIMEOUT_SECONDS = 3.0


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
    if isinstance(value, str):
        problem = _text_problem(value)
        return f"{where}: text {problem}" if problem else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return f"{where}: integer out of range" if abs(value) > MAX_JSON_INTEGER else None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where}: number must be finite"
    if isinstance(value, dict):
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
    if isinstance(value, list):
        for index, item in enumerate(value):
            problem = _json_problem(item, f"{where}[{index}]", depth + 1)
            if problem:
                return problem
        return None
    return f"{where}: not a JSON value"


def _check_json_object(value: dict[str, Any]) -> dict[str, Any]:
    problem = _json_problem(value, "", 0)
    if problem:
        raise PydanticCustomError("json_value", "{problem}", {"problem": problem.lstrip(".:")})
    return value


def _empty_if_null(value: Any) -> Any:
    return {} if value is None else value


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("timestamp", "timestamp is out of range") from None


Text = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_check_text)]
JsonObject = Annotated[
    dict[str, Any], BeforeValidator(_empty_if_null), AfterValidator(_check_json_object)
]
Timestamp = Annotated[datetime | None, AfterValidator(_as_utc)]


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
        return EventRecord(
            message_id=self.messageId or str(uuid.uuid4()),
            type=kind,
            name=name,
            customer_id=self.userId,
            properties=properties,
            timestamp=self.timestamp or utcnow(),
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
_UNION_TAGS = frozenset({"track", "identify", "batch-request"})

# Query and path parameters end up in SQL; PostgreSQL refuses NUL characters in text.
_NO_NUL = r"^[^\x00]*$"


# ----------------------------------------------------------------------------- response models


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


class RunSummary(BaseModel):
    """A run as the runs table records it."""

    run_id: str
    workflow_id: str
    journey_id: str
    version: str
    customer_id: str
    key: str | None
    status: str
    step: str | None
    outcome: str | None
    holdout: bool
    trigger_message_id: str | None
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None

    @classmethod
    def from_row(cls, row: Run) -> RunSummary:
        return cls.model_validate(row.model_dump(exclude={"path"}))


class RunList(BaseModel):
    runs: list[RunSummary]


class LiveRunState(BaseModel):
    """What the running workflow says about itself (its `state` query)."""

    model_config = ConfigDict(extra="ignore")

    status: str | None = None
    outcome: str | None = None
    current_step: str | None = None
    waiting_for: str | None = None
    path: list[dict[str, Any]] = Field(default_factory=list)
    vars: dict[str, Any] = Field(default_factory=dict)
    scores: dict[str, Any] = Field(default_factory=dict)


class RunDetail(RunSummary):
    """One run: the stored row, its recorded path, and its live state when reachable."""

    path: list[dict[str, Any]]
    live: LiveRunState | None = Field(
        default=None, description="Null when the workflow could not be queried."
    )
    temporal_ui: str | None = Field(default=None, description="The run in Temporal's Web UI.")


class JourneySummary(BaseModel):
    id: str
    name: str | None
    version: str
    entry_event: str
    steps: int
    activated_at: datetime | None
    running: dict[str, int] = Field(
        description="Running runs per plan version (older versions keep theirs)."
    )


class JourneyList(BaseModel):
    journeys: list[JourneySummary]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: Literal["ok", "unreachable"]
    temporal: Literal["ok", "unreachable"]


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    detail: str
    errors: list[ErrorDetail] = Field(default_factory=list)


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key."},
    422: {"model": ErrorResponse, "description": "Invalid input; `detail` names the field."},
}
_TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": f"Body larger than {MAX_BODY_BYTES} bytes."}
}


# ----------------------------------------------------------------------------- body limit


class RequestBodyLimit:
    """Refuses bodies over ``max_bytes`` with a 413, by Content-Length and by bytes read.

    The body is read in full before the app sees it (it is small by construction), so a
    body that lies about its length is caught before any of it is parsed.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await self._refuse(scope, receive, send, 400, "invalid Content-Length header")
                return
            if too_large:
                await self._refuse_too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse_too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse_too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._refuse(
            scope, receive, send, 413, f"request body is larger than {self.max_bytes} bytes"
        )

    @staticmethod
    async def _refuse(
        scope: Scope, receive: Receive, send: Send, status_code: int, detail: str
    ) -> None:
        response = JSONResponse({"detail": detail}, status_code=status_code)
        await response(scope, receive, send)


# ----------------------------------------------------------------------------- errors


def _field_path(loc: Sequence[int | str]) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _UNION_TAGS:
            path += f".{part}" if path else part
    return path


def _error_message(error: dict[str, Any]) -> tuple[str, str]:
    field_name = _field_path(error.get("loc", ()))
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid"))
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        return "body", f"invalid JSON: {reason}".rstrip(": ")
    if kind == "message_type" and "batch" in field_name:
        field_name = f"{field_name}.type"
    if kind == "missing":
        message = "field required"
    if kind == "string_pattern_mismatch" and (error.get("ctx") or {}).get("pattern") == _NO_NUL:
        message = "must not contain NUL (\\x00) characters"
    return field_name or "body", message[:1].lower() + message[1:]


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    # FastAPI parses the body before it checks dependencies; a caller without a valid
    # key must learn nothing about its input, so the key is checked first here too.
    if request.url.path.startswith("/v1/"):
        authorization = request.headers.get("Authorization")
        if await api_keys(request).caller(authorization) is None:
            refusal = unauthorized()
            return JSONResponse(
                {"detail": refusal.detail}, status_code=refusal.status_code, headers=refusal.headers
            )
    errors = error.errors() if isinstance(error, RequestValidationError) else []
    details = [ErrorDetail(field=f, message=m) for f, m in map(_error_message, errors)]
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and "json" not in content_type.lower():
        # FastAPI hands a non-JSON body to validation as bytes; say what is wrong instead.
        details = [
            ErrorDetail(field="body", message="send JSON with Content-Type: application/json")
        ]
    summary = "; ".join(f"{d.field}: {d.message}" for d in details[:10]) or "invalid request"
    return JSONResponse(
        ErrorResponse(detail=summary, errors=details[:50]).model_dump(), status_code=422
    )


async def _server_fault(_request: Request, _error: Exception) -> JSONResponse:
    # Starlette re-raises the error after this response so that the server logs its
    # traceback (which holds no request headers); the client learns nothing about it.
    return JSONResponse({"detail": "internal server error"}, status_code=500)


# ----------------------------------------------------------------------------- the service


@dataclass
class ServiceState:
    """What the endpoints share: settings, the database, the router and background tasks."""

    settings: RuntimeSettings
    db: Engine
    router: EventRouter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def client(self) -> Client | None:
        return self.router.client


def _service(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


Service = Annotated[ServiceState, Depends(_service)]


async def _connect_until_reachable(service: ServiceState) -> None:
    delay = 1.0
    while service.router.client is None:
        try:
            service.router.client = await asyncio.wait_for(
                connect(service.settings), TEMPORAL_CONNECT_TIMEOUT_SECONDS
            )
            log.info("connected to Temporal at %s", service.settings.temporal_address)
            return
        except Exception as error:
            log.warning(
                "Temporal at %s unreachable (%s); retrying in %.0fs",
                service.settings.temporal_address,
                type(error).__name__,
                delay,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)


async def _route_pending_forever(service: ServiceState) -> None:
    min_age = 0.0  # at startup, every unrouted event is left over from before
    while True:
        try:
            routed = await service.router.route_pending(limit=100, min_age_seconds=min_age)
        except Exception:
            log.exception("routing pending events failed; retrying")
            routed = 0
        min_age = ROUTE_PENDING_MIN_AGE_SECONDS
        if routed < 100:
            await asyncio.sleep(ROUTE_PENDING_EVERY_SECONDS)


async def _route_accepted(
    service: ServiceState, stored: Sequence[EventRecord], prepared: RoutingInputs | None
) -> IngestResponse:
    response = IngestResponse(accepted=len(stored), duplicates=0)
    try:
        async with asyncio.timeout(ROUTING_TIMEOUT_SECONDS):
            for record in stored:
                result: RouteResult = await service.router.route(record, prepared)
                response.started += result.started
                response.signalled += result.signalled
                response.skipped += result.skipped
    except Exception as error:
        # Stored is what matters: the background loop routes what is left.
        log.warning("routing deferred: %s", type(error).__name__)
        response.routing = "deferred"
    return response


async def _ingest(
    service: ServiceState, messages: Sequence[TrackMessage | IdentifyMessage]
) -> IngestResponse:
    records = [message.to_record() for message in messages]
    outcome = await asyncio.to_thread(service.router.ingest, records, prepare=True)
    response = await _route_accepted(service, outcome.stored, outcome.prepared)
    response.duplicates = outcome.duplicates
    return response


def _build_v1_routes() -> APIRouter:
    v1 = APIRouter(
        prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERROR_RESPONSES
    )

    @v1.post(
        "/track",
        status_code=status.HTTP_202_ACCEPTED,
        responses=_TOO_LARGE,
        summary="Record an event (Segment `track`)",
        tags=["events"],
    )
    async def track(message: TrackMessage, service: Service) -> IngestResponse:
        """Stores the event, then starts the journeys it enters and signals the runs that
        wait for or exit on it. Answers only after the event is committed."""
        return await _ingest(service, [message])

    @v1.post(
        "/identify",
        status_code=status.HTTP_202_ACCEPTED,
        responses=_TOO_LARGE,
        summary="Update a customer's profile (Segment `identify`)",
        tags=["events"],
    )
    async def identify(message: IdentifyMessage, service: Service) -> IngestResponse:
        """Stores the message and merges its `traits` into the customer's profile."""
        return await _ingest(service, [message])

    @v1.post(
        "/batch",
        status_code=status.HTTP_202_ACCEPTED,
        responses=_TOO_LARGE,
        summary="Record up to 500 messages at once (Segment `batch`)",
        tags=["events"],
    )
    async def batch(body: BatchRequest, service: Service) -> IngestResponse:
        """All or nothing: one invalid message rejects the batch and nothing is stored."""
        return await _ingest(service, body.batch)

    @v1.post(
        "/events",
        status_code=status.HTTP_202_ACCEPTED,
        responses=_TOO_LARGE,
        summary="Record a track or identify message, or a batch",
        tags=["events"],
    )
    async def events(body: EventsBody, service: Service) -> IngestResponse:
        """One endpoint for every shape: a message chosen by its `type`, or `{"batch": [...]}`."""
        messages = body.batch if isinstance(body, BatchRequest) else [body]
        return await _ingest(service, messages)

    @v1.get("/runs", summary="List runs, newest first", tags=["runs"])
    def list_runs(
        service: Service,
        customer: Annotated[str | None, Query(max_length=200, pattern=_NO_NUL)] = None,
        journey: Annotated[str | None, Query(max_length=100, pattern=_NO_NUL)] = None,
        run_status: Annotated[
            Literal["running", "completed", "exited", "expired", "failed"] | None,
            Query(alias="status"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> RunList:
        """Runs from the runs table, filtered by customer id, journey id and status."""
        query = select(Run)
        if customer is not None:
            query = query.where(Run.customer_id == customer)
        if journey is not None:
            query = query.where(Run.journey_id == journey)
        if run_status is not None:
            query = query.where(Run.status == run_status)
        query = query.order_by(col(Run.started_at).desc(), col(Run.run_id)).limit(limit)
        with session_scope(service.db) as session:
            rows = session.exec(query).all()
        return RunList(runs=[RunSummary.from_row(row) for row in rows])

    @v1.get(
        "/runs/{run_id}",
        summary="One run, with its live state",
        tags=["runs"],
        responses={404: {"model": ErrorResponse, "description": "No such run."}},
    )
    async def get_run(
        run_id: Annotated[
            str, Path(min_length=1, max_length=100, pattern=_NO_NUL, description="Temporal run id")
        ],
        service: Service,
    ) -> RunDetail:
        """The stored row and, when the workflow answers its `state` query, its current
        step, path, variables and scores."""

        def load() -> Run | None:
            with session_scope(service.db) as session:
                return session.get(Run, run_id)

        row = await asyncio.to_thread(load)
        if row is None:
            raise HTTPException(status_code=404, detail=f"no run with id {run_id!r}")
        settings = service.settings
        detail = RunDetail(
            **RunSummary.from_row(row).model_dump(),
            path=list(row.path),
            temporal_ui=f"{settings.temporal_ui}/namespaces/{quote(settings.temporal_namespace)}"
            f"/workflows/{quote(row.workflow_id, safe='')}/{quote(row.run_id, safe='')}/history",
        )
        detail.live = await _live_state(service.client, row)
        return detail

    @v1.get("/journeys", summary="Active journeys and their running runs", tags=["journeys"])
    def list_journeys(service: Service) -> JourneyList:
        """Each active plan (id, name, version, entry event, steps) and how many runs are
        running on each of its versions."""
        with session_scope(service.db) as session:
            plans = active_plans(session)
            counts = session.exec(
                select(Run.journey_id, Run.version, func.count())
                .where(Run.status == "running")
                .group_by(col(Run.journey_id), col(Run.version))
            ).all()
        running: dict[str, dict[str, int]] = {}
        for journey_id, version, count in counts:
            running.setdefault(journey_id, {})[version] = int(count)
        journeys = []
        for row in sorted(plans, key=lambda r: r.journey_id):
            plan = Plan.model_validate_json(row.plan_json)
            journeys.append(
                JourneySummary(
                    id=plan.journey_id,
                    name=plan.name,
                    version=plan.version,
                    entry_event=plan.entry.event,
                    steps=len(plan.steps),
                    activated_at=row.activated_at,
                    running=running.get(plan.journey_id, {}),
                )
            )
        return JourneyList(journeys=journeys)

    return v1


async def _live_state(client: Client | None, row: Run) -> LiveRunState | None:
    if client is None:
        return None
    try:
        handle = client.get_workflow_handle(row.workflow_id, run_id=row.run_id)
        answer = await asyncio.wait_for(
            handle.query(
                QUERY_STATE, rpc_timeout=timedelta(seconds=TEMPORAL_QUERY_TIMEOUT_SECONDS)
            ),
            TEMPORAL_QUERY_TIMEOUT_SECONDS + 1,
        )
        return LiveRunState.model_validate(answer)
    except Exception as error:
        # Closed long ago, no worker, Temporal down: the row alone still answers.
        log.info("state query for %s failed: %s", row.workflow_id, type(error).__name__)
        return None


async def _health(service: ServiceState) -> tuple[Health, int]:
    def database_ok() -> bool:
        try:
            with service.db.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    database = await asyncio.to_thread(database_ok)
    temporal = False
    if service.client is not None:
        with contextlib.suppress(Exception):
            temporal = await service.client.service_client.check_health(
                timeout=timedelta(seconds=2)
            )
    health = Health(
        status="ok" if database else "unavailable",
        database="ok" if database else "unreachable",
        temporal="ok" if temporal else "unreachable",
    )
    return health, 200 if database else 503


def create_app(settings: RuntimeSettings | None = None, *, client: Client | None = None) -> FastAPI:
    """The API app. ``settings`` default to the environment; a ``client`` given here is
    used as is (and not closed), otherwise the app connects, retrying in the background."""
    settings = settings or RuntimeSettings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = make_engine(settings.database_url)
        with session_scope(db) as session:
            if settings.api_key:
                create_api_key(session, name="dev", key=settings.api_key)
            if session.exec(select(func.count()).select_from(ApiKey)).one() == 0:
                log.warning(
                    "no API keys yet: every /v1 request will get a 401 (set JOURNEYS_API_KEY)"
                )
        service = ServiceState(
            settings=settings,
            db=db,
            router=EventRouter(db=db, client=client, task_queue=settings.task_queue),
        )
        app.state.db = db
        app.state.service = service
        if client is None:
            service.tasks.append(asyncio.create_task(_connect_until_reachable(service)))
        service.tasks.append(asyncio.create_task(_route_pending_forever(service)))
        try:
            yield
        finally:
            for task in service.tasks:
                task.cancel()
            await asyncio.gather(*service.tasks, return_exceptions=True)
            db.dispose()

    app = FastAPI(
        title="Journeys API",
        version="1",
        summary="Send events that start, advance and end customer journeys; inspect runs.",
        lifespan=lifespan,
    )
    app.add_middleware(RequestBodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _server_fault)
    app.include_router(_build_v1_routes())
    app.include_router(preferences_router)
    app.include_router(reviews_router)
    app.include_router(console_router)
    app.state.session_keys = SessionKeys.from_secret(
        settings.secret_key, public_url=settings.public_url
    )

    @app.get(
        "/healthz",
        summary="Health of the API and what it depends on (no auth)",
        tags=["health"],
        responses={503: {"model": Health, "description": "The database is unreachable."}},
    )
    async def healthz(service: Service, response: Response) -> Health:
        """`temporal: unreachable` does not make the API unhealthy: events are still
        accepted and stored, and routed once Temporal is back."""
        health, response.status_code = await _health(service)
        return health

    return app
