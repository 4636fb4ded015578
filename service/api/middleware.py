"""What wraps every request: the body limit, the security headers, the access log's
redaction.

`RequestBodyLimit` refuses oversized bodies before any of them is parsed (at
`MAX_BODY_BYTES` for the API). `SecurityHeaders` gives every answer, API and console
alike, a Content-Security-Policy that runs no inline script and forbids framing, and
``X-Content-Type-Options``, ``X-Frame-Options`` and ``Referrer-Policy``; a route that
sets one of them itself keeps its own (the docs pages: their policy carries a nonce).
`install_access_log_redaction` puts `AccessLogRedaction` on uvicorn's access logger, so
that no launcher's access log shows a query string's values (``?api_key=[redacted]``)
or an Authorization credential.

Lives here: the limit and its refusals (413, or 400 for a Content-Length that is not a
number), in the API's error body; the headers and the policies; the log filter. Not
here: what a body may contain (the models), which pages exist (`service.api.app`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "MAX_BODY_BYTES",
    "AccessLogRedaction",
    "RequestBodyLimit",
    "SecurityHeaders",
    "docs_policy",
    "install_access_log_redaction",
    "redact_request_target",
]

MAX_BODY_BYTES = 256 * 1024

# ----------------------------------------------------------------------------- headers

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""Every answer's policy: scripts and styles from the app's own files only (the console's
are under /console/static), nothing inline, and no page of it in anyone's frame."""

# The unsubscribe and status pages are built with their style inline (and no script).
_UNSUBSCRIBE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
_POLICIES_BY_PREFIX = (
    ("/v1/unsubscribe/", _UNSUBSCRIBE_POLICY),
    ("/v1/status/", _UNSUBSCRIBE_POLICY),
)

_DOCS_CDN = "https://cdn.jsdelivr.net"


def docs_policy(nonce: str) -> str:
    """The policy of /docs and /redoc: their one inline script by ``nonce`` and their
    bundles from the CDN FastAPI loads them from. Styles may be inline: both UIs set
    them from script (no script can be injected through a style)."""
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}' {_DOCS_CDN}; "
        f"style-src 'unsafe-inline' {_DOCS_CDN} https://fonts.googleapis.com; "
        "font-src https://fonts.gstatic.com; img-src 'self' data: https:; "
        "connect-src 'self'; worker-src blob:; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


_SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


class SecurityHeaders:
    """Adds the security headers to every HTTP answer that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        policy = next(
            (policy for prefix, policy in _POLICIES_BY_PREFIX if path.startswith(prefix)),
            CONTENT_SECURITY_POLICY,
        )
        wanted = ((b"content-security-policy", policy.encode("latin-1")), *_SECURITY_HEADERS)

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in wanted if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            # Starlette answers an unhandled error outside every middleware, so that answer
            # would go without the headers: give it here, then let the error be logged.
            if not started:
                fault = error_response(500, "internal server error")
                await fault(scope, receive, send_with_headers)
            raise


# ----------------------------------------------------------------------------- access log

ACCESS_LOGGER = "uvicorn.access"
_REDACTED = "[redacted]"
_CREDENTIAL = re.compile(r"\b(Bearer|Basic)(\s+|%20)[^\s\"&]+", re.IGNORECASE)


def redact_request_target(target: str) -> str:
    """``/path?api_key=sk&x`` -> ``/path?api_key=[redacted]&[redacted]``: the names of the
    query's parameters stay, their values never show."""
    path, question, query = target.partition("?")
    if not question or not query:
        return target
    redacted = (
        f"{name}={_REDACTED}" if equals else (_REDACTED if name else name)
        for name, equals, _value in (piece.partition("=") for piece in query.split("&"))
    )
    return f"{path}?{'&'.join(redacted)}"


def _scrubbed(value: object) -> object:
    if not isinstance(value, str):
        return value
    return _CREDENTIAL.sub(lambda found: f"{found.group(1)} {_REDACTED}", value)


class AccessLogRedaction(logging.Filter):
    """Rewrites uvicorn's access records (``client, method, target, version, status``) so
    that the target shows no query values and no argument an Authorization credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            shown = [_scrubbed(arg) for arg in args]
            if len(shown) >= 3 and isinstance(shown[2], str):
                shown[2] = redact_request_target(shown[2])
            record.args = tuple(shown)
        if isinstance(record.msg, str):
            record.msg = _scrubbed(record.msg)
        return True


def install_access_log_redaction(loggers: Iterable[str] = (ACCESS_LOGGER,)) -> None:
    """Put `AccessLogRedaction` on ``loggers`` (uvicorn's access logger), once each.

    On the logger, not a handler: a log configuration uvicorn applies later (``--log-config``,
    its default one) replaces handlers but keeps a logger's filters."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(found, AccessLogRedaction) for found in logger.filters):
            logger.addFilter(AccessLogRedaction())


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
        await error_response(status_code, detail)(scope, receive, send)
