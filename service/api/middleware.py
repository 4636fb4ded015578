"""The request body limit: ASGI middleware that refuses oversized bodies before any of
them is parsed (`RequestBodyLimit`, at `MAX_BODY_BYTES` for the API).

Lives here: the limit and its refusals (413, or 400 for a Content-Length that is not a
number), in the API's error body. Not here: what a body may contain (the models).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response

__all__ = ["MAX_BODY_BYTES", "RequestBodyLimit"]

MAX_BODY_BYTES = 256 * 1024


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
