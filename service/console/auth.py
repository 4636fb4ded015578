"""Who is calling the console and the review API: signed session cookies, CSRF tokens, and
HTTP Basic for people using the API as themselves.

A session is a cookie signed with `JOURNEYS_SECRET_KEY` (itsdangerous) that holds the
user's id, their `session_version` and the session's CSRF token; it is HttpOnly,
SameSite=Lax and expires after `SESSION_HOURS`. A password change or reset raises the
version, which ends every other session. Every form carries the CSRF token of the session
(the login form: of a signed pre-login cookie), and every POST checks it.

Not here: passwords and roles (`service.users`), the pages (`service.console`).
"""

from __future__ import annotations

import binascii
import hmac
import logging
import secrets
from base64 import b64decode
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.engine import Engine

from engine.database import User, session_scope
from service.users import Viewer, check_password

__all__ = [
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "SESSION_HOURS",
    "SessionKeys",
    "basic_user",
    "client_address",
]

log = logging.getLogger(__name__)

SESSION_COOKIE = "journeys_session"
LOGIN_COOKIE = "journeys_login"
SESSION_HOURS = 12
_LOGIN_MINUTES = 30


@dataclass(frozen=True)
class SessionKeys:
    """Signs and reads the console's cookies."""

    secret: str
    secure: bool = False

    @classmethod
    def from_secret(cls, secret: str | None, *, public_url: str) -> SessionKeys:
        if not secret:
            log.warning(
                "JOURNEYS_SECRET_KEY is not set: console sessions last only as long as this "
                "process and are not shared with other API processes"
            )
            secret = secrets.token_urlsafe(32)
        return cls(secret=secret, secure=public_url.startswith("https://"))

    def _serializer(self, salt: str) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self.secret, salt=salt)

    # ------------------------------------------------------------------ sessions

    def start_session(self, response: Response, user: User) -> None:
        assert user.id is not None
        payload = {"uid": user.id, "v": user.session_version, "csrf": secrets.token_urlsafe(24)}
        response.set_cookie(
            SESSION_COOKIE,
            self._serializer("session").dumps(payload),
            max_age=SESSION_HOURS * 3600,
            httponly=True,
            samesite="lax",
            secure=self.secure,
            path="/",
        )
        response.delete_cookie(LOGIN_COOKIE, path="/")

    def end_session(self, response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/")

    def _session(self, request: Request) -> dict[str, Any] | None:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw or len(raw) > 4000:
            return None
        try:
            payload = self._serializer("session").loads(raw, max_age=SESSION_HOURS * 3600)
        except BadSignature:
            return None
        return payload if isinstance(payload, dict) else None

    def viewer(self, request: Request, db: Engine) -> Viewer | None:
        """The signed-in, enabled user of this request's session, if any. Blocking."""
        payload = self._session(request)
        if payload is None or not isinstance(payload.get("uid"), int):
            return None
        with session_scope(db) as session:
            user = session.get(User, payload["uid"])
            if user is None or user.disabled or user.session_version != payload.get("v"):
                return None
            assert user.id is not None
            return Viewer(
                id=user.id,
                name=user.name,
                role=user.role,
                must_change_password=user.must_change_password,
            )

    def session_csrf(self, request: Request) -> str | None:
        payload = self._session(request)
        token = payload.get("csrf") if payload else None
        return token if isinstance(token, str) else None

    # ------------------------------------------------------------------ the login form

    def login_csrf(self, request: Request) -> str:
        """The pre-login CSRF token: the one in this browser's login cookie, or a new one
        (then `remember_login_csrf` must set the cookie on the response)."""
        return self._login_token(request) or secrets.token_urlsafe(24)

    def remember_login_csrf(self, response: Response, token: str) -> None:
        response.set_cookie(
            LOGIN_COOKIE,
            self._serializer("login").dumps(token),
            max_age=_LOGIN_MINUTES * 60,
            httponly=True,
            samesite="strict",
            secure=self.secure,
            path="/",
        )

    def _login_token(self, request: Request) -> str | None:
        raw = request.cookies.get(LOGIN_COOKIE)
        if not raw or len(raw) > 1000:
            return None
        try:
            token = self._serializer("login").loads(raw, max_age=_LOGIN_MINUTES * 60)
        except BadSignature:
            return None
        return token if isinstance(token, str) else None

    def check_csrf(self, request: Request, submitted: str | None, *, login: bool = False) -> bool:
        """Whether a form's token is the one of this session (or of the login cookie)."""
        expected = self._login_token(request) if login else self.session_csrf(request)
        return bool(
            expected and submitted and hmac.compare_digest(expected.encode(), submitted.encode())
        )


def basic_user(db: Engine, authorization: str | None) -> Viewer | None:
    """A person calling the API with HTTP Basic ``name:password`` (a non-empty password:
    Basic with an empty password is an API key, Segment's convention). Blocking."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return None
    name, _, password = decoded.partition(":")
    if not password:
        return None
    user = check_password(db, name=name, password=password)
    if user is None or user.id is None:
        return None
    if user.must_change_password:
        return None  # a one-time password only opens the console's change-password page
    return Viewer(id=user.id, name=user.name, role=user.role)


def client_address(request: Request) -> str | None:
    """The caller's address as the server saw it (what the audit trail records)."""
    return request.client.host if request.client else None
