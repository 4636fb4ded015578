"""API-key authentication for the HTTP API, as a FastAPI dependency.

Event sources send their key either as ``Authorization: Bearer <key>`` or, as Segment and
RudderStack destinations do, as HTTP Basic with the key as the username and an empty
password. Keys are stored hashed (`engine.database.check_api_key`). The key and the
Authorization header are never logged, echoed in an error, or kept past the check.
"""

from __future__ import annotations

import binascii
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

from engine.database import check_api_key, session_scope

__all__ = [
    "ApiCaller",
    "Authenticated",
    "api_key_from",
    "authenticate",
    "require_api_key",
    "unauthorized",
]

# Longer than any key this service issues; longer input is refused without hashing it.
MAX_KEY_LENGTH = 512


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


def authenticate(db: Engine, authorization: str | None) -> ApiCaller | None:
    """The caller named by a valid key in ``authorization``; None otherwise. Blocking."""
    key = api_key_from(authorization)
    if key is None:
        return None
    with session_scope(db) as session:
        record = check_api_key(session, key)
        return ApiCaller(key_name=record.name) if record is not None else None


def unauthorized() -> HTTPException:
    """The one refusal: 401 with a Bearer challenge, saying nothing about the key sent."""
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="missing or invalid API key: send 'Authorization: Bearer <key>'",
        headers={"WWW-Authenticate": "Bearer"},
    )


def require_api_key(
    request: Request,
    _bearer_scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    _basic_scheme: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
) -> ApiCaller:
    """The caller, if the request carries a valid API key; otherwise a 401.

    Runs in FastAPI's thread pool (it reads the database): the engine is the app's
    ``app.state.db``.
    """
    caller = authenticate(request.app.state.db, request.headers.get("Authorization"))
    if caller is None:
        raise unauthorized()
    return caller


Authenticated = Annotated[ApiCaller, Depends(require_api_key)]
"""Use as a parameter type (or ``dependencies=[Depends(require_api_key)]``) on /v1 routes."""
