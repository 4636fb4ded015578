"""The messaging endpoints: customers' channel preferences, one-click unsubscribe
(RFC 8058), inbound SMS keywords (STOP/START), the dev outbox and the delivery log.

Every route needs an API key except the two unsubscribe routes, where the signed token in
the URL is the authority (`channels.unsubscribe`); their GET only shows a confirmation
page, because link scanners follow GETs, and only their POST changes anything.
Preferences may be stored for customers the service has not seen yet (an imported
opt-out list must hold before the first `identify`).

Lives here: request and response models and the routes (one `router`, included by
`service.api.create_app`). Not here: the consent rules and the suppression list
(`channels.policies`), token signing (`channels.unsubscribe`). Recipients leave this
module masked, never in clear.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Path, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool
from pydantic_core import PydanticCustomError
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from channels import policies
from channels.unsubscribe import SECRET_KEY_ENV, read_unsubscribe_token
from engine.database import Delivery, OutboxMessage, Profile, session_scope
from engine.settings import RuntimeSettings
from service.api.auth import require_api_key

__all__ = [
    "SMS_START_KEYWORDS",
    "SMS_STOP_KEYWORDS",
    "SMS_STOP_REASON",
    "ChannelPreferenceView",
    "DeliveryList",
    "DeliveryView",
    "InboundSmsResult",
    "OutboxList",
    "OutboxView",
    "PreferencesUpdate",
    "PreferencesView",
    "router",
]

log = logging.getLogger(__name__)

SMS_STOP_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "END", "QUIT", "CANCEL"})
"""Texts (trimmed, any case, trailing ``.`` or ``!`` ignored) that opt the sender out of SMS."""
SMS_START_KEYWORDS = frozenset({"START", "UNSTOP"})
"""Texts that opt the sender back in (and lift a suppression made by STOP, nothing else)."""
SMS_STOP_REASON = "sms STOP"
"""The preference source and suppression reason an SMS STOP records."""
UNSUBSCRIBE_SOURCE = "unsubscribe link"

MAX_CHANNELS_PER_UPDATE = 50
MAX_SMS_TEXT = 1600
MAX_PHONE_LENGTH = 40
_NO_NUL = r"^[^\x00]*$"
_CHANNEL_NAME = r"^[a-z0-9_]{1,50}$"

T = TypeVar("T")


# ----------------------------------------------------------------------------- models


def _check_channel_names(value: dict[str, bool]) -> dict[str, bool]:
    for name in value:
        if not re.fullmatch(_CHANNEL_NAME, name):
            raise PydanticCustomError(
                "channel_name",
                "channel name {name!r} must be 1-50 of a-z, 0-9 and _ (e.g. 'email', 'sms')",
                {"name": name[:60]},
            )
    return value


class ChannelPreferenceView(BaseModel):
    """One channel's choice. ``source`` says who made it: ``default`` (no choice
    recorded), ``api``, ``unsubscribe link``, ``sms STOP``, ``sms START``..."""

    opted_in: bool
    source: str
    updated_at: datetime | None = Field(description="Null for the default.")


class PreferencesView(BaseModel):
    """A customer's preferences: email, sms and push always, plus any other channel with
    a recorded choice."""

    customer_id: str
    channels: dict[str, ChannelPreferenceView]


class PreferencesUpdate(BaseModel):
    """Channels to opt in (true) or out (false); channels not named keep their state."""

    model_config = ConfigDict(extra="forbid")

    channels: Annotated[
        dict[str, StrictBool],
        Field(max_length=MAX_CHANNELS_PER_UPDATE),
        AfterValidator(_check_channel_names),
    ] = Field(
        description="Channel name (`[a-z0-9_]+`, custom channels allowed) to opted in.",
        examples=[{"email": False, "sms": True}],
    )


class InboundSmsResult(BaseModel):
    """What an inbound text did. ``customers``: profiles whose `phone` trait matched."""

    opted_out: bool
    opted_in: bool = False
    customers: int = 0


class OutboxView(BaseModel):
    """A message the dev outbox captured instead of sending (recipient masked)."""

    id: int
    journey_id: str
    customer_id: str
    channel: str
    recipient: str | None
    subject: str | None
    body: str
    created_at: datetime
    run_id: str
    step_id: str


class OutboxList(BaseModel):
    messages: list[OutboxView]


class DeliveryView(BaseModel):
    """One send step visit on one channel: its status and why (recipient masked)."""

    id: int
    workflow_id: str
    run_id: str
    step_id: str
    visit: int
    journey_id: str
    customer_id: str
    channel: str | None
    template: str | None
    recipient: str | None
    status: str
    reason: str | None
    attempts: int
    created_at: datetime
    sent_at: datetime | None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryView]


class _Problem(BaseModel):
    field: str
    message: str


class _ProblemResponse(BaseModel):
    detail: str
    errors: list[_Problem] = Field(default_factory=list)


_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": _ProblemResponse, "description": "Missing or invalid API key."},
    422: {"model": _ProblemResponse, "description": "Invalid input; `detail` names the field."},
}


# ----------------------------------------------------------------------------- plumbing


def _db(request: Request) -> Engine:
    engine: Engine = request.app.state.db
    return engine


Database = Annotated[Engine, Depends(_db)]
CustomerId = Annotated[
    str, Path(min_length=1, max_length=200, pattern=_NO_NUL, description="The customer id")
]


def _as_utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _in_session(db: Engine, work: Callable[[Session], T]) -> T:
    with session_scope(db) as session:
        return work(session)


def _preferences_view(session: Session, customer_id: str) -> PreferencesView:
    found = policies.preferences(session, customer_id=customer_id)
    return PreferencesView(
        customer_id=customer_id,
        channels={
            channel: ChannelPreferenceView(
                opted_in=choice.opted_in,
                source=choice.source,
                updated_at=_as_utc(choice.updated_at),
            )
            for channel, choice in found.items()
        },
    )


def _problem(field: str, message: str) -> JSONResponse:
    return JSONResponse(
        _ProblemResponse(
            detail=f"{field}: {message}", errors=[_Problem(field=field, message=message)]
        ).model_dump(),
        status_code=422,
    )


# ----------------------------------------------------------------------------- with an API key

_keyed = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_AUTH_ERRORS)


@_keyed.get(
    "/customers/{customer_id}/preferences",
    summary="A customer's channel preferences",
    tags=["preferences"],
)
def get_preferences(customer_id: CustomerId, db: Database) -> PreferencesView:
    """Opted in or out per channel, and who decided. Channels without a recorded choice
    show as opted in with source `default`."""
    return _in_session(db, lambda session: _preferences_view(session, customer_id))


@_keyed.put(
    "/customers/{customer_id}/preferences",
    summary="Opt a customer in or out of channels",
    tags=["preferences"],
)
def put_preferences(
    customer_id: CustomerId, update: PreferencesUpdate, db: Database
) -> PreferencesView:
    """Stores each named channel's choice (source `api`) and answers with all of them.
    Sends already under way re-check consent just before the provider call."""

    def store(session: Session) -> PreferencesView:
        for channel, opted_in in update.channels.items():
            policies.set_preference(
                session, customer_id=customer_id, channel=channel, opted_in=opted_in, source="api"
            )
        return _preferences_view(session, customer_id)

    return _in_session(db, store)


_INBOUND_SMS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["from", "text"],
                    "properties": {
                        "from": {"type": "string", "description": "The sender's number."},
                        "text": {"type": "string", "description": "What they texted."},
                    },
                }
            },
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["From", "Body"],
                    "properties": {"From": {"type": "string"}, "Body": {"type": "string"}},
                }
            },
        },
    }
}


@_keyed.post(
    "/inbound/sms",
    summary="An SMS a customer sent (STOP, START...), from an SMS gateway",
    tags=["preferences"],
    response_model=InboundSmsResult,
    openapi_extra=_INBOUND_SMS_BODY,
)
async def inbound_sms(request: Request, db: Database) -> InboundSmsResult | JSONResponse:
    """JSON `{"from", "text"}` or a form with Twilio's `From` and `Body`. STOP, STOPALL,
    UNSUBSCRIBE, END, QUIT or CANCEL opts every customer whose `phone` trait is the
    sender's number out of sms and suppresses the number (even when no profile matches);
    START or UNSTOP opts them back in and lifts that suppression. Other texts change
    nothing. Numbers match after removing spaces, dashes, dots and parentheses: store
    phones in E.164 (`+8210...`)."""
    fields = _inbound_fields(request.headers.get("content-type", ""), await request.body())
    if isinstance(fields, JSONResponse):
        return fields
    sender, text = fields
    keyword = text.strip().rstrip(".!").strip().upper()
    if keyword in SMS_STOP_KEYWORDS:
        opted_in = False
    elif keyword in SMS_START_KEYWORDS:
        opted_in = True
    else:
        return InboundSmsResult(opted_out=False)

    def apply(session: Session) -> int:
        customers = _customers_with_phone(session, sender)
        source = SMS_STOP_REASON if not opted_in else "sms START"
        for customer_id in customers:
            policies.set_preference(
                session, customer_id=customer_id, channel="sms", opted_in=opted_in, source=source
            )
        if opted_in:
            policies.unsuppress(session, channel="sms", address=sender, reason=SMS_STOP_REASON)
        else:
            policies.suppress(session, channel="sms", address=sender, reason=SMS_STOP_REASON)
        return len(customers)

    count = await asyncio.to_thread(_in_session, db, apply)
    log.info("inbound sms %s from %s: %d customers", keyword, policies.mask("sms", sender), count)
    return InboundSmsResult(opted_out=not opted_in, opted_in=opted_in, customers=count)


def _inbound_fields(content_type: str, body: bytes) -> tuple[str, str] | JSONResponse:
    """``(sender, text)`` from a JSON or form body, or the 422 that says what is wrong."""
    kind = content_type.split(";")[0].strip().lower()
    data: dict[str, Any]
    if kind == "application/json" or kind.endswith("+json"):
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            return _problem("body", "invalid JSON")
        if not isinstance(parsed, dict):
            return _problem("body", 'expected a JSON object {"from": ..., "text": ...}')
        data = parsed
    elif kind == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
        except (UnicodeDecodeError, ValueError):
            return _problem("body", "invalid form: expected UTF-8 url-encoded fields")
        data = {name: values[0] for name, values in form.items()}
    else:
        return _problem(
            "body",
            'send JSON {"from", "text"} (application/json) or a form with From and Body '
            "(application/x-www-form-urlencoded)",
        )
    sender = data.get("from", data.get("From"))
    text = data.get("text", data.get("Body", data.get("body")))
    if sender is None:
        return _problem("from", "field required")
    if not isinstance(sender, str) or "\x00" in sender:
        return _problem("from", "must be a phone number as text")
    if not 1 <= len(policies.normalise_address("sms", sender)) <= MAX_PHONE_LENGTH:
        return _problem("from", f"must be a phone number of 1-{MAX_PHONE_LENGTH} characters")
    if text is None:
        return _problem("text", "field required")
    if not isinstance(text, str) or "\x00" in text or len(text) > MAX_SMS_TEXT:
        return _problem("text", f"must be text of at most {MAX_SMS_TEXT} characters")
    try:
        (sender + text).encode("utf-8")
    except UnicodeEncodeError:
        return _problem("body", "must be valid Unicode (no lone surrogates)")
    return sender, text


def _customers_with_phone(session: Session, sender: str) -> list[str]:
    # Normalised in SQL as `policies.normalise_address` does, so no profile is loaded whole.
    phone: Any = col(Profile.traits)["phone"].as_string()
    for formatting in (" ", "-", ".", "(", ")"):
        phone = func.replace(phone, formatting, "")
    wanted = policies.normalise_address("sms", sender)
    return list(session.exec(select(Profile.customer_id).where(phone == wanted)).all())


@_keyed.get("/outbox", summary="Messages the dev outbox captured, newest first", tags=["messages"])
def list_outbox(
    db: Database,
    customer: Annotated[str | None, Query(max_length=200, pattern=_NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> OutboxList:
    """What would have been sent with no channel URL set; recipients masked."""
    query = select(OutboxMessage)
    if customer is not None:
        query = query.where(OutboxMessage.customer_id == customer)
    query = query.order_by(col(OutboxMessage.created_at).desc(), col(OutboxMessage.id).desc())

    def load(session: Session) -> list[OutboxView]:
        return [
            OutboxView(
                id=row.id or 0,
                journey_id=row.journey_id,
                customer_id=row.customer_id,
                channel=row.channel,
                recipient=policies.mask(row.channel, row.recipient) if row.recipient else None,
                subject=row.subject,
                body=row.body,
                created_at=_as_utc(row.created_at) or row.created_at,
                run_id=row.run_id,
                step_id=row.step_id,
            )
            for row in session.exec(query.limit(limit)).all()
        ]

    return OutboxList(messages=_in_session(db, load))


@_keyed.get("/deliveries", summary="Delivery records, newest first", tags=["messages"])
def list_deliveries(
    db: Database,
    customer: Annotated[str | None, Query(max_length=200, pattern=_NO_NUL)] = None,
    run_id: Annotated[str | None, Query(max_length=100, pattern=_NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DeliveryList:
    """Each send step visit per channel: `sent`, `captured`, `no_consent`, `suppressed`,
    `failed`... with the reason. Recipients are only ever stored masked."""
    query = select(Delivery)
    if customer is not None:
        query = query.where(Delivery.customer_id == customer)
    if run_id is not None:
        query = query.where(Delivery.run_id == run_id)
    query = query.order_by(col(Delivery.created_at).desc(), col(Delivery.id).desc())

    def load(session: Session) -> list[DeliveryView]:
        return [
            DeliveryView(
                **row.model_dump(
                    exclude={"recipient_hash", "recipient_masked", "created_at", "sent_at"}
                ),
                recipient=row.recipient_masked,
                created_at=_as_utc(row.created_at) or row.created_at,
                sent_at=_as_utc(row.sent_at),
            )
            for row in session.exec(query.limit(limit)).all()
        ]

    return DeliveryList(deliveries=_in_session(db, load))


# ----------------------------------------------------------------------------- by token

_public = APIRouter(prefix="/v1")
# The format is documented, not validated by FastAPI: a failed validation under /v1 answers
# 401 (no API key), and every bad link must get the same 400 page instead.
UnsubscribeToken = Annotated[
    str,
    Path(
        description="The signed token from the message's unsubscribe link.",
        json_schema_extra={"pattern": r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$", "maxLength": 2048},
    ),
]
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}
_HTML_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/html": {}}, "description": "A page for the person who clicked."},
    400: {"content": {"text/html": {}}, "description": "The link is malformed or altered."},
}


def _page(
    title: str, paragraph: str, *, form: bool = False, status_code: int = 200
) -> HTMLResponse:
    button = (
        '<form method="post">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
        if form
        else ""
    )
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;"
        "padding:0 1rem;line-height:1.5}button{font-size:1rem;padding:.5rem 1.25rem}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><p>{html.escape(paragraph)}</p>{button}"
        "</body></html>"
    )
    return HTMLResponse(document, status_code=status_code, headers=_PAGE_HEADERS)


def _read_token(request: Request, token: str) -> tuple[str, str] | HTMLResponse:
    settings: RuntimeSettings = request.app.state.service.settings
    if not settings.secret_key:
        # No link this service could have signed: refuse, and tell the operator why.
        log.warning("unsubscribe link refused: %s is not set in this API process", SECRET_KEY_ENV)
        return _page(
            "Invalid unsubscribe link",
            "This unsubscribe link cannot be checked right now. Please use the preferences "
            "in your account or reply to the message to unsubscribe.",
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    try:
        return read_unsubscribe_token(token, secret=settings.secret_key)
    except ValueError as error:
        message = str(error)
        return _page(
            "Invalid unsubscribe link",
            message[:1].upper() + message[1:] + ". Nothing was changed.",
            status_code=status.HTTP_400_BAD_REQUEST,
        )


@_public.get(
    "/unsubscribe/{token}",
    summary="The unsubscribe confirmation page (no API key: the token is the authority)",
    tags=["preferences"],
    response_class=HTMLResponse,
    responses=_HTML_RESPONSES,
)
def unsubscribe_page(token: UnsubscribeToken, request: Request) -> HTMLResponse:
    """Shows a button that POSTs to this address; changes nothing (link scanners and
    previews follow GETs)."""
    read = _read_token(request, token)
    if isinstance(read, HTMLResponse):
        return read
    _customer_id, channel = read
    return _page(
        f"Unsubscribe from {channel} messages?",
        f"Press the button and we will stop sending you {channel} messages.",
        form=True,
    )


@_public.post(
    "/unsubscribe/{token}",
    summary="One-click unsubscribe (RFC 8058; no API key: the token is the authority)",
    tags=["preferences"],
    response_class=HTMLResponse,
    responses=_HTML_RESPONSES,
)
def unsubscribe(token: UnsubscribeToken, request: Request, db: Database) -> HTMLResponse:
    """Opts the token's customer out of the token's channel (source `unsubscribe link`).
    Mail clients send `List-Unsubscribe=One-Click` form-encoded; the body is not
    required, a POST to a validly signed link is the intent. Idempotent."""
    read = _read_token(request, token)
    if isinstance(read, HTMLResponse):
        return read
    customer_id, channel = read

    def store(session: Session) -> None:
        policies.set_preference(
            session,
            customer_id=customer_id,
            channel=channel,
            opted_in=False,
            source=UNSUBSCRIBE_SOURCE,
        )

    _in_session(db, store)
    return _page(
        "You are unsubscribed",
        f"You will no longer get {channel} messages from us.",
    )


router = APIRouter()
"""Every route of this module; `service.api.create_app` includes it."""
router.include_router(_keyed)
router.include_router(_public)
