"""The codec server: ``POST /codec/decode`` and ``POST /codec/encode``, for Temporal's Web UI
and CLI (``--codec-endpoint http://.../codec``), so people allowed to can read the sealed
histories (`runtime.codec`) there.

The protocol is Temporal's: the body is a ``Payloads`` message in protobuf's JSON form
(``{"payloads": [{"metadata": {...}, "data": "<base64>"}]}``), sent with ``Content-Type:
application/json`` (anything else gets a 415, which also means a browser always asks
first, CORS preflight); the answer is the same shape, each payload decoded (or encoded).
A payload that cannot be opened (unknown key id, altered) gets a 400 naming its key id.

Payloads sealed under a customer's key (`runtime.customer_keys`) open with the seeds in the
app database (the process's `shared_store`, the one its Temporal client uses). One whose
customer was erased can never be opened again, and that is not an error of the request:
the answer keeps that payload as it came (still sealed, its metadata naming the
customer's pseudonym and the encryption) and opens the others, with a 200. The Web UI
sends an event's payloads in one request and shows nothing of them when the answer is
an error; this way it shows an erased customer's payloads as sealed bytes and the rest
of the history as usual. `/codec/encode` has no workflow id (the protocol sends none),
so what it seals is sealed under the ring's key.

Who may: a console user with the auditor or ops role (`CODEC_ROLES`), by the console's
session cookie (the Web UI sends it when its codec setting "include cross-origin
credentials" is on) or by HTTP Basic ``name:password``. Histories hold profiles: an API key
names a system, not a person, so it gets a 403. No cookie is accepted from an origin that
is not allowed.

CORS: the allowed origins are ``JOURNEYS_CODEC_ORIGINS`` or else the Web UI's
(``JOURNEYS_TEMPORAL_UI``, which `journeys up` sets to its dev UI); each answer to an
allowed origin carries the CORS headers with credentials allowed, refusals included, so the
UI can tell a 401 from a network failure.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from engine.settings import RuntimeSettings
from runtime.codec import CustomerKeyErased, HistoryCodec, HistoryDecodeError, KeyRing
from runtime.customer_keys import shared_store
from service.api.auth import api_keys
from service.api.deps import DatabaseDep, SettingsDep, session_keys
from service.console.auth import basic_user
from service.users import Viewer

__all__ = ["CODEC_ROLES", "router"]

CODEC_ROLES = frozenset({"auditor", "ops"})
"""Who may read sealed histories: auditors (who read everything) and ops (who work runs)."""

_ALLOWED_HEADERS = "Authorization, Content-Type, X-Namespace"

router = APIRouter(prefix="/codec", tags=["codec"], include_in_schema=False)


@functools.lru_cache(maxsize=4)
def _codec(
    history_keys: str | None, history_keys_file: Path | None, database_url: str
) -> HistoryCodec:
    return HistoryCodec(
        KeyRing.load(history_keys, history_keys_file),
        customer_keys=shared_store(database_url),
    )


def _codec_of(settings: RuntimeSettings) -> HistoryCodec:
    return _codec(settings.history_keys, settings.history_keys_file, settings.database_url)


async def _decoded(codec: HistoryCodec, payloads: Sequence[Payload]) -> list[Payload]:
    """Each payload opened; one whose customer's key was erased kept as it is (sealed)."""
    opened: list[Payload] = []
    for payload in payloads:
        try:
            opened.extend(await codec.decode([payload]))
        except CustomerKeyErased:
            opened.append(payload)
    return opened


def _cors_headers(request: Request, settings: RuntimeSettings) -> dict[str, str]:
    origin = request.headers.get("Origin")
    if origin is None or origin.rstrip("/") not in settings.allowed_codec_origins:
        return {"Vary": "Origin"}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": _ALLOWED_HEADERS,
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


def _own_origin(request: Request, settings: RuntimeSettings) -> bool:
    """The request comes from a page of this API itself (the console), or from no page."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    own = {str(request.base_url).rstrip("/"), settings.api_url, settings.public_url}
    return origin.rstrip("/") in own


async def _viewer(request: Request, settings: RuntimeSettings, db: DatabaseDep) -> Viewer:
    """The person calling, allowed to read histories; a 401 or 403 (with CORS headers)."""
    cors = _cors_headers(request, settings)
    authorization = request.headers.get("Authorization")
    viewer: Viewer | None = None
    if "Access-Control-Allow-Origin" in cors or _own_origin(request, settings):
        viewer = await asyncio.to_thread(session_keys(request).viewer, request, db)
    if viewer is None:
        viewer = await asyncio.to_thread(basic_user, db, authorization)
    if viewer is None:
        if authorization and await api_keys(request).caller(authorization) is not None:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "histories hold customers' data and are read by people: sign in to the "
                "console (or use HTTP Basic) as an auditor or ops user, not with an API key",
                headers=cors,
            )
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "sign in to the console, or send HTTP Basic as an auditor or ops user",
            headers={**cors, "WWW-Authenticate": 'Basic realm="journeys"'},
        )
    if viewer.role not in CODEC_ROLES or viewer.must_change_password:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"role {viewer.role!r} may not read histories (auditor or ops may)",
            headers=cors,
        )
    return viewer


async def _payloads(request: Request, cors: dict[str, str]) -> Payloads:
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "send the payloads as Content-Type: application/json",
            headers=cors,
        )
    message = Payloads()
    try:
        json_format.Parse(await request.body(), message)
    except (json_format.ParseError, UnicodeDecodeError, ValueError):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            'the body is not a Payloads message as JSON ({"payloads": [...]})',
            headers=cors,
        ) from None
    return message


async def _convert(
    request: Request, settings: RuntimeSettings, db: DatabaseDep, way: Literal["decode", "encode"]
) -> JSONResponse:
    cors = _cors_headers(request, settings)
    await _viewer(request, settings, db)
    message = await _payloads(request, cors)
    codec = _codec_of(settings)
    try:
        if way == "decode":
            converted = await _decoded(codec, message.payloads)
        else:
            converted = await codec.encode(message.payloads)
    except HistoryDecodeError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error), headers=cors) from None
    body = json_format.MessageToDict(Payloads(payloads=converted))
    return JSONResponse(body, headers={**cors, "Cache-Control": "no-store"})


@router.post("/decode")
async def decode(request: Request, settings: SettingsDep, db: DatabaseDep) -> JSONResponse:
    """The payloads opened: what the Web UI and ``temporal workflow show`` display."""
    return await _convert(request, settings, db, "decode")


@router.post("/encode")
async def encode(request: Request, settings: SettingsDep, db: DatabaseDep) -> JSONResponse:
    """The payloads sealed: what the Web UI sends when a person signals or starts a run."""
    return await _convert(request, settings, db, "encode")


@router.options("/decode")
@router.options("/encode")
async def preflight(request: Request, settings: SettingsDep) -> Response:
    """CORS preflight: the allowed origins get the headers, others none (the browser then
    refuses the request itself)."""
    return Response(
        status_code=status.HTTP_204_NO_CONTENT, headers=_cors_headers(request, settings)
    )
