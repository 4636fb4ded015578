"""API-key authentication for the HTTP API, as a FastAPI dependency.

Event sources send their key either as ``Authorization: Bearer <key>`` or, as Segment and
RudderStack destinations do, as HTTP Basic with the key as the username and an empty
password. Keys are stored hashed (`engine.database.check_api_key`). The key and the
Authorization header are never logged, echoed in an error, or kept past the check; valid
keys are remembered for `API_KEY_CACHE_SECONDS` by their SHA-256 (`ApiKeys`).

Each key has scopes (`engine.database.API_KEY_SCOPES`): a route asks for one with
`require_ingest`, `require_read` or `require_admin`, and a valid key without it gets a 403
naming the scope (`missing_scope`); ``admin`` holds every scope. A missing, unknown or
revoked key is a 401 (`unauthorized`), whatever the route.
"""

from __future__ import annotations

import asyncio
import binascii
import time
from base64 import b64decode
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import (
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.engine import Engine

from engine.database import api_key_digest, check_api_key_digest, session_scope, split_scopes

__all__ = [
    "API_KEY_CACHE_SECONDS",
    "ApiCaller",
    "ApiKeys",
    "Scope",
    "api_key_from",
    "api_keys",
    "missing_scope",
    "require_admin",
    "require_api_key",
    "require_ingest",
    "require_read",
    "require_scope",
    "unauthorized",
]

# Longer than any key this service issues; longer input is refused without hashing it.
MAX_KEY_LENGTH = 512

API_KEY_CACHE_SECONDS = 5.0
"""How long the API trusts a key it found valid before reading `api_keys` again: a key
revoked (`journeys apikey revoke`, which writes the table from another process) or
deleted stops working within this time, in every API process."""

Scope = Literal["ingest", "read", "admin"]
"""What a route asks of a key (`engine.database.API_KEY_SCOPES`)."""

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
    """Who is calling: the name the key was created with (never the key), and its scopes."""

    key_name: str
    scopes: frozenset[str] = field(default_factory=frozenset)

    def allows(self, scope: Scope) -> bool:
        """Whether the key holds ``scope`` (``admin`` holds them all)."""
        return scope in self.scopes or "admin" in self.scopes


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

    def __init__(
        self,
        db: Engine,
        *,
        ttl: float = API_KEY_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.ttl = ttl
        self.clock = clock
        self._valid: dict[str, tuple[ApiCaller, float]] = {}

    async def caller(self, authorization: str | None) -> ApiCaller | None:
        """The caller named by a valid key in ``authorization``; None otherwise."""
        key = api_key_from(authorization)
        if key is None:
            return None
        digest = api_key_digest(key)
        now = self.clock()
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
            if record is None:
                return None
            return ApiCaller(key_name=record.name, scopes=split_scopes(record.scopes))


def api_keys(request: Request) -> ApiKeys:
    """The app's `ApiKeys` (made on first use, on the app's ``state.db``)."""
    keys: ApiKeys | None = getattr(request.app.state, "api_keys", None)
    if keys is None or keys.db is not request.app.state.db:
        keys = ApiKeys(request.app.state.db)
        request.app.state.api_keys = keys
    return keys


def missing_scope(scope: Scope) -> HTTPException:
    """The refusal of a valid key that lacks ``scope``: 403, naming the scope."""
    return HTTPException(
        status_code=status.HTTP_403_FORBIDDEN,
        detail=f"this API key lacks the {scope!r} scope this route needs "
        f"(make one with: journeys apikey add NAME --scope {scope})",
    )


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


def require_scope(scope: Scope) -> Callable[[ApiCaller], Awaitable[ApiCaller]]:
    """A dependency: the caller of a valid key holding ``scope``; a 401 without a valid
    key, a 403 (`missing_scope`) with a key that lacks it. Use the module's
    `require_ingest`, `require_read` and `require_admin`."""

    async def caller_with_scope(
        caller: Annotated[ApiCaller, Depends(require_api_key)],
    ) -> ApiCaller:
        if not caller.allows(scope):
            raise missing_scope(scope)
        return caller

    caller_with_scope.__name__ = f"require_{scope}"
    return caller_with_scope


require_ingest = require_scope("ingest")
"""Sending events: /v1/track, /v1/identify, /v1/batch, /v1/events, /v1/inbound/sms."""
require_read = require_scope("read")
"""Reading runs, journeys, messages, preferences, explanations and reviews."""
require_admin = require_scope("admin")
"""Changing what customers chose (preferences)."""
