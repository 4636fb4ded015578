"""API-key authentication for the HTTP API, as a FastAPI dependency.

Event sources send their key either as ``Authorization: Bearer <key>`` or, as Segment and
RudderStack destinations do, as HTTP Basic with the key as the username and an empty
password. Keys are stored hashed (`engine.database.check_api_key`). The key and the
Authorization header are never logged, echoed in an error, or kept past the check; valid
keys are remembered for a few seconds by their SHA-256 (`ApiKeys`).
"""

from __future__ import annotations

import asyncio
import binascii
import time
from base64 import b64decode
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import (
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.engine import Engine

from engine.database import api_key_digest, check_api_key_digest, session_scope

__all__ = [
    "API_KEY_CACHE_SECONDS",
    "ApiCaller",
    "ApiKeys",
    "api_key_from",
    "api_keys",
    "require_api_key",
    "unauthorized",
]

# Longer than any key this service issues; longer input is refused without hashing it.
MAX_KEY_LENGTH = 512

API_KEY_CACHE_SECONDS = 10.0
"""How long the API trusts a key it found valid before reading `api_keys` again: a key
deleted from the table stops working within this time."""

_MAX_REMEMBERED_KEYS = 1024


class _DocumentedBasic(HTTPBasic):
    """Declares the Basic scheme in the OpenAPI document and nothing else: the header is
    parsed once, by `api_key_from`, so every refusal is the same 401 with a Bearer
    challenge (FastAPI's HTTPBasic answers malformed input with its own)."""

    async def __call__(self, request: Request) -> HTTPBasicCredentials | None:  # type: ignore[override]
        return None


# Both schemes are declared for the OpenAPI document (and its "Authorize" button).
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKeyBearer",
    description="`Authorization: Bearer <API key>`",
)
_basic = _DocumentedBasic(
    auto_error=False,
    scheme_name="ApiKeyBasic",
    description="HTTP Basic with the API key as username and an empty password "
    "(Segment's convention)",
)


@dataclass(frozen=True)
class ApiCaller:
    """Who is calling: the name the key was created with (never the key)."""

    key_name: str


def api_key_from(authorization: str | None) -> str | None:
    """The key in an Authorization header (Bearer, or Basic's username), if any."""
    scheme, param = get_authorization_scheme_param(authorization)
    if scheme.lower() == "bearer":
        key = param
    elif scheme.lower() == "basic":
        try:
            key = b64decode(param, validate=True).decode("utf-8").partition(":")[0]
        except (ValueError, UnicodeDecodeError, binascii.Error):
            return None
    else:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or "\x00" in key:
        return None
    return key


class ApiKeys:
    """Checks API keys against the database, remembering the valid ones for
    `API_KEY_CACHE_SECONDS`: every /v1 request is checked, and without this each would
    cost a database read in a thread. What is remembered is the key's SHA-256 (what the
    table stores), never the key; an unknown key is not remembered, so a new key works at
    once. One per app (`api_keys`)."""

    def __init__(self, db: Engine, *, ttl: float = API_KEY_CACHE_SECONDS) -> None:
        self.db = db
        self.ttl = ttl
        self._valid: dict[str, tuple[ApiCaller, float]] = {}

    async def caller(self, authorization: str | None) -> ApiCaller | None:
        """The caller named by a valid key in ``authorization``; None otherwise."""
        key = api_key_from(authorization)
        if key is None:
            return None
        digest = api_key_digest(key)
        now = time.monotonic()
        remembered = self._valid.get(digest)
        if remembered is not None and remembered[1] > now:
            return remembered[0]
        caller = await asyncio.to_thread(self._check, digest)
        if caller is None:
            self._valid.pop(digest, None)
            return None
        if len(self._valid) >= _MAX_REMEMBERED_KEYS:
            self._valid = {d: entry for d, entry in self._valid.items() if entry[1] > now}
            if len(self._valid) >= _MAX_REMEMBERED_KEYS:
                self._valid.clear()
        self._valid[digest] = (caller, now + self.ttl)
        return caller

    def _check(self, digest: str) -> ApiCaller | None:
        with session_scope(self.db) as session:
            record = check_api_key_digest(session, digest)
            return ApiCaller(key_name=record.name) if record is not None else None


def api_keys(request: Request) -> ApiKeys:
    """The app's `ApiKeys` (made on first use, on the app's ``state.db``)."""
    keys: ApiKeys | None = getattr(request.app.state, "api_keys", None)
    if keys is None or keys.db is not request.app.state.db:
        keys = ApiKeys(request.app.state.db)
        request.app.state.api_keys = keys
    return keys


def unauthorized() -> HTTPException:
    """The one refusal: 401 with a Bearer challenge, saying nothing about the key sent."""
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="missing or invalid API key: send 'Authorization: Bearer <key>'",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def require_api_key(
    request: Request,
    _bearer_scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    _basic_scheme: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
) -> ApiCaller:
    """The caller, if the request carries a valid API key; otherwise a 401."""
    caller = await api_keys(request).caller(request.headers.get("Authorization"))
    if caller is None:
        raise unauthorized()
    return caller
