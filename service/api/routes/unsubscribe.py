"""One-click unsubscribe (RFC 8058): GET and POST /v1/unsubscribe/{token}.

No API key: the signed token in the URL is the authority (`channels.unsubscribe`). The
GET only shows a confirmation page, because link scanners and previews follow GETs; only
the POST changes anything. Every answer is an HTML page for the person who clicked, a
bad link included (400).

Lives here: the pages and the routes. Not here: token signing (`channels.unsubscribe`),
the consent rules (`channels.policies`).
"""

from __future__ import annotations

import html
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, status
from fastapi.responses import HTMLResponse

from channels import policies
from channels.unsubscribe import SECRET_KEY_ENV, read_unsubscribe_token
from engine.audit import append, consent_record
from engine.settings import RuntimeSettings
from service.api.deps import SessionDep, SettingsDep

__all__ = ["UNSUBSCRIBE_SOURCE", "router"]

log = logging.getLogger(__name__)

UNSUBSCRIBE_SOURCE = "unsubscribe link"
"""The preference source an unsubscribe link records."""

router = APIRouter(prefix="/v1/unsubscribe", tags=["preferences"])

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


def _read_token(settings: RuntimeSettings, token: str) -> tuple[str, str] | HTMLResponse:
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


@router.get(
    "/{token}",
    summary="The unsubscribe confirmation page (no API key: the token is the authority)",
    response_class=HTMLResponse,
    responses=_HTML_RESPONSES,
)
def unsubscribe_page(token: UnsubscribeToken, settings: SettingsDep) -> HTMLResponse:
    """Shows a button that POSTs to this address; changes nothing (link scanners and
    previews follow GETs)."""
    read = _read_token(settings, token)
    if isinstance(read, HTMLResponse):
        return read
    _customer_id, channel = read
    return _page(
        f"Unsubscribe from {channel} messages?",
        f"Press the button and we will stop sending you {channel} messages.",
        form=True,
    )


@router.post(
    "/{token}",
    summary="One-click unsubscribe (RFC 8058; no API key: the token is the authority)",
    response_class=HTMLResponse,
    responses=_HTML_RESPONSES,
)
def unsubscribe(
    token: UnsubscribeToken, settings: SettingsDep, session: SessionDep
) -> HTMLResponse:
    """Opts the token's customer out of the token's channel (source `unsubscribe link`).
    Mail clients send `List-Unsubscribe=One-Click` form-encoded; the body is not
    required, a POST to a validly signed link is the intent. Idempotent."""
    read = _read_token(settings, token)
    if isinstance(read, HTMLResponse):
        return read
    customer_id, channel = read
    policies.set_preference(
        session, customer_id=customer_id, channel=channel, opted_in=False, source=UNSUBSCRIBE_SOURCE
    )
    append(
        session,
        [
            consent_record(
                customer=customer_id,
                channel=channel,
                opted_in=False,
                source=UNSUBSCRIBE_SOURCE,
                actor="customer:unsubscribe-link",
            )
        ],
    )
    return _page(
        "You are unsubscribed",
        f"You will no longer get {channel} messages from us.",
    )
