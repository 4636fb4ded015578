"""The `call` step's activity: an outbound HTTP call, retried durably by Temporal.

A 4xx answer (other than 408 and 429) is the other system saying no: not retried. 5xx,
timeouts and connection errors are retried under the step's retry policy.
"""

from __future__ import annotations

from typing import Any

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from engine.environment import MissingVariableError, resolve_env
from engine.errors import ErrorType
from engine.payloads import ActivityName, CallHttpInput, CallHttpResult
from rules import RenderError
from rules.cache import cached_template

__all__ = ["call_http"]

MAX_RESPONSE = 256 * 1024


def _render(text: str, context: dict[str, Any]) -> str:
    try:
        return resolve_env(cached_template(text).render(context, max_length=8192))
    except MissingVariableError as error:
        raise ApplicationError(
            str(error), type=ErrorType.BAD_CONFIGURATION, non_retryable=True
        ) from None
    except RenderError as error:
        raise ApplicationError(
            error.message, type=ErrorType.TEMPLATE_ERROR, non_retryable=True
        ) from None


def refuse_error_status(method: str, status: int) -> None:
    """An error answer as the step takes it: a 4xx other than 408 or 429 is refused for
    good (the run takes the step's on_error), any other error is retried."""
    if 400 <= status < 500 and status not in (408, 429):
        raise ApplicationError(
            f"{method} answered {status}", type=ErrorType.HTTP_CALL_REJECTED, non_retryable=True
        )
    if status >= 400:
        raise ApplicationError(f"{method} answered {status}", type=ErrorType.HTTP_CALL_FAILED)


@activity.defn(name=ActivityName.CALL_HTTP)
async def call_http(request: CallHttpInput) -> CallHttpResult:
    """Make the call; the JSON answer (or text) becomes `vars.<step id>`."""
    url = _render(request.url, request.context)
    headers = {name: _render(value, request.context) for name, value in request.headers.items()}
    headers.setdefault(
        "Idempotency-Key", f"{request.workflow_id}:{request.step_id}:{request.visit}"
    )
    try:
        async with httpx.AsyncClient(
            timeout=request.timeout_seconds, follow_redirects=False
        ) as client:
            response = await client.request(
                request.method, url, json=request.json_body, headers=headers
            )
    except httpx.HTTPError as error:
        raise ApplicationError(
            f"{request.method} to the {request.step_id} endpoint failed: {type(error).__name__}",
            type=ErrorType.HTTP_CALL_FAILED,
        ) from None
    status = response.status_code
    refuse_error_status(request.method, status)
    content = response.content[:MAX_RESPONSE]
    body: Any
    try:
        body = (
            response.json()
            if content and len(response.content) <= MAX_RESPONSE
            else content.decode("utf-8", "replace")
        )
    except ValueError:
        body = content.decode("utf-8", "replace")
    return CallHttpResult(status_code=status, body=body)
