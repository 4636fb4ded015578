"""Customers' channel preferences: GET and PUT /v1/customers/{id}/preferences, and
POST /v1/inbound/sms, where an SMS gateway forwards what customers text (STOP, START).

Every route needs an API key. Preferences may be stored for customers the service has
not seen yet (an imported opt-out list must hold before the first `identify`).

Lives here: request and response models and the routes. Not here: the consent rules and
the suppression list (`channels.policies`), the unsubscribe links
(`service.api.routes.unsubscribe`). Phone numbers are logged masked, never in clear.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool
from pydantic_core import PydanticCustomError
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from channels import policies
from engine.audit import append, consent_record
from engine.database import Profile, session_scope
from engine.pseudonyms import erased_among
from engine.timestamps import as_utc
from service.api.deps import (
    SCOPE_REFUSED,
    ApiCallerDep,
    DatabaseDep,
    SessionDep,
    require_admin,
    require_api_key,
    require_ingest,
    require_read,
)
from service.api.errors import ERROR_RESPONSES, NO_NUL, problem

__all__ = [
    "SMS_START_KEYWORDS",
    "SMS_STOP_KEYWORDS",
    "SMS_STOP_REASON",
    "ChannelPreferenceView",
    "InboundSmsResult",
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

MAX_CHANNELS_PER_UPDATE = 50
MAX_SMS_TEXT = 1600
MAX_PHONE_LENGTH = 40
_CHANNEL_NAME = r"^[a-z0-9_]{1,50}$"


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


# ----------------------------------------------------------------------------- routes

CustomerId = Annotated[
    str, Path(min_length=1, max_length=200, pattern=NO_NUL, description="The customer id")
]


def _preferences_view(session: Session, customer_id: str) -> PreferencesView:
    found = policies.preferences(session, customer_id=customer_id)
    return PreferencesView(
        customer_id=customer_id,
        channels={
            channel: ChannelPreferenceView(
                opted_in=choice.opted_in,
                source=choice.source,
                updated_at=as_utc(choice.updated_at),
            )
            for channel, choice in found.items()
        },
    )


router = APIRouter(
    prefix="/v1",
    # Every route also names its scope: a key is checked once, whichever asks.
    dependencies=[Depends(require_api_key)],
    responses={**ERROR_RESPONSES, **SCOPE_REFUSED},
)


@router.get(
    "/customers/{customer_id}/preferences",
    summary="A customer's channel preferences",
    dependencies=[Depends(require_read)],
)
def get_preferences(customer_id: CustomerId, session: SessionDep) -> PreferencesView:
    """Opted in or out per channel, and who decided. Channels without a recorded choice
    show as opted in with source `default`."""
    return _preferences_view(session, customer_id)


@router.put(
    "/customers/{customer_id}/preferences",
    summary="Opt a customer in or out of channels",
    dependencies=[Depends(require_admin)],
)
def put_preferences(
    customer_id: CustomerId, update: PreferencesUpdate, session: SessionDep, caller: ApiCallerDep
) -> PreferencesView:
    """Stores each named channel's choice (source `api`) and answers with all of them.
    Sends already under way re-check consent just before the provider call. A customer
    who was erased gets a 410: nothing is kept about them."""
    if erased_among(session.connection(), [customer_id]):
        raise HTTPException(
            status_code=status.HTTP_410_GONE,
            detail=f"customer {customer_id!r} was erased: no preferences are kept for them",
        )
    for channel, opted_in in update.channels.items():
        policies.set_preference(
            session, customer_id=customer_id, channel=channel, opted_in=opted_in, source="api"
        )
    records = [
        consent_record(
            customer=customer_id,
            channel=channel,
            opted_in=opted_in,
            source="api",
            actor=f"api-key:{caller.key_name}",
        )
        for channel, opted_in in update.channels.items()
    ]
    append(session, records)  # in the choices' transaction, committed with them
    return _preferences_view(session, customer_id)


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


@router.post(
    "/inbound/sms",
    summary="An SMS a customer sent (STOP, START...), from an SMS gateway",
    response_model=InboundSmsResult,
    openapi_extra=_INBOUND_SMS_BODY,
    dependencies=[Depends(require_ingest)],
)
async def inbound_sms(request: Request, db: DatabaseDep) -> InboundSmsResult | JSONResponse:
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
    count = await asyncio.to_thread(_apply_sms_keyword, db, sender, opted_in)
    log.info("inbound sms %s from %s: %d customers", keyword, policies.mask("sms", sender), count)
    return InboundSmsResult(opted_out=not opted_in, opted_in=opted_in, customers=count)


def _apply_sms_keyword(db: Engine, sender: str, opted_in: bool) -> int:
    """Opt the sender's customers in or out of sms and (un)suppress the number; how many
    customers had that number."""
    with session_scope(db) as session:
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
        # The number is not logged: the customers are, and the suppression is the number's.
        records = [
            consent_record(
                customer=customer_id,
                channel="sms",
                opted_in=opted_in,
                source=source,
                actor="sms:inbound",
            )
            for customer_id in customers
        ]
        append(session, records)
        return len(customers)


def _inbound_fields(content_type: str, body: bytes) -> tuple[str, str] | JSONResponse:
    """``(sender, text)`` from a JSON or form body, or the 422 that says what is wrong."""
    data = _inbound_data(content_type.split(";")[0].strip().lower(), body)
    if isinstance(data, JSONResponse):
        return data
    sender = data.get("from", data.get("From"))
    text = data.get("text", data.get("Body", data.get("body")))
    if sender is None:
        return problem("from", "field required")
    if not isinstance(sender, str) or "\x00" in sender:
        return problem("from", "must be a phone number as text")
    if not 1 <= len(policies.normalise_address("sms", sender)) <= MAX_PHONE_LENGTH:
        return problem("from", f"must be a phone number of 1-{MAX_PHONE_LENGTH} characters")
    if text is None:
        return problem("text", "field required")
    if not isinstance(text, str) or "\x00" in text or len(text) > MAX_SMS_TEXT:
        return problem("text", f"must be text of at most {MAX_SMS_TEXT} characters")
    try:
        (sender + text).encode("utf-8")
    except UnicodeEncodeError:
        return problem("body", "must be valid Unicode (no lone surrogates)")
    return sender, text


def _inbound_data(kind: str, body: bytes) -> dict[str, Any] | JSONResponse:
    """The fields of a JSON object or a url-encoded form (by media type ``kind``)."""
    if kind == "application/json" or kind.endswith("+json"):
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            return problem("body", "invalid JSON")
        if not isinstance(parsed, dict):
            return problem("body", 'expected a JSON object {"from": ..., "text": ...}')
        return parsed
    if kind == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
        except (UnicodeDecodeError, ValueError):
            return problem("body", "invalid form: expected UTF-8 url-encoded fields")
        return {name: values[0] for name, values in form.items()}
    return problem(
        "body",
        'send JSON {"from", "text"} (application/json) or a form with From and Body '
        "(application/x-www-form-urlencoded)",
    )


def _customers_with_phone(session: Session, sender: str) -> list[str]:
    # Normalised in SQL as `policies.normalise_address` does, so no profile is loaded whole.
    phone: Any = col(Profile.traits)["phone"].as_string()
    for formatting in (" ", "-", ".", "(", ")"):
        phone = func.replace(phone, formatting, "")
    wanted = policies.normalise_address("sms", sender)
    return list(session.exec(select(Profile.customer_id).where(phone == wanted)).all())
