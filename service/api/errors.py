"""The API's one error body and the one way to answer with it.

Every error the JSON API sends (401, 403, 404, 409, 413, 422, 500) has the body
`ErrorResponse`: a one-line ``detail`` a person can read and, for invalid input, the
offending fields in ``errors``. Routes raise `HTTPException` or let the review desk's
`ReviewRefused` through (or return `problem` for a 422 they find themselves); the handlers installed by `install_error_handlers` turn both
FastAPI's own errors and those into this body. `ERROR_RESPONSES` documents it in OpenAPI.

Lives here: the error model, its builders, the exception handlers and the wording of
validation errors. Not here: when to refuse (the routes, `service.api.auth`). An error
never echoes an API key, an Authorization header or a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.auth import api_keys, unauthorized
from service.api.messages import MAX_JSON_DEPTH
from service.console.auth import basic_user
from service.review_desk import ReviewRefused

__all__ = [
    "ERROR_RESPONSES",
    "NO_NUL",
    "ErrorDetail",
    "ErrorResponse",
    "error_response",
    "install_error_handlers",
    "problem",
    "responses",
]

NO_NUL = r"^[^\x00]*$"
"""The pattern of every text query and path parameter: they end up in SQL, and PostgreSQL
refuses NUL characters in text. A mismatch is worded as such (`_error_message`)."""

# The tags of the events body's discriminated unions (`service.api.messages`): pydantic
# puts them in an error's location, where they mean nothing to the caller.
_UNION_TAGS = frozenset({"track", "identify", "batch-request"})
_MAX_LISTED_ERRORS = 50
_MAX_SUMMARISED_ERRORS = 10


class ErrorDetail(BaseModel):
    """One invalid field: where (``batch[1].userId``, ``body``) and what is wrong."""

    field: str
    message: str


class ErrorResponse(BaseModel):
    """The body of every error: ``detail`` for people, ``errors`` per field (may be empty)."""

    detail: str
    errors: list[ErrorDetail] = Field(default_factory=list)


_DESCRIPTIONS: dict[int, str] = {
    401: "Missing or invalid API key.",
    403: "The caller may not do this.",
    404: "Not found.",
    409: "Conflicts with the current state.",
    413: "Body too large.",
    422: "Invalid input; `detail` names the field.",
}


def responses(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these status codes, each with the `ErrorResponse` body.
    ``descriptions`` override the default wording, keyed ``_404="No such run."``."""
    return {
        code: {
            "model": ErrorResponse,
            "description": descriptions.get(f"_{code}", _DESCRIPTIONS.get(code, "Error.")),
        }
        for code in codes
    }


ERROR_RESPONSES = responses(401, 422)
"""What every /v1 route that needs an API key may answer besides its own errors."""


def error_response(
    status_code: int,
    detail: str,
    errors: Sequence[ErrorDetail] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The error answer: `ErrorResponse` as JSON with this status."""
    body = ErrorResponse(detail=detail, errors=list(errors))
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def problem(field: str, message: str) -> JSONResponse:
    """The 422 for one invalid field a route found itself (not through FastAPI)."""
    return error_response(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        f"{field}: {message}",
        [ErrorDetail(field=field, message=message)],
    )


# ----------------------------------------------------------------------------- wording


def _field_path(loc: Sequence[int | str]) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _UNION_TAGS:
            path += f".{part}" if path else part
    return path


def _error_message(error: dict[str, Any]) -> tuple[str, str]:
    """``(field, message)`` for one of pydantic's errors, in the API's words."""
    field_name = _field_path(error.get("loc", ()))
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid"))
    context = error.get("ctx") or {}
    if kind == "json_invalid":
        return "body", f"invalid JSON: {context.get('error', '')}".rstrip(": ")
    if kind == "message_type" and "batch" in field_name:
        field_name = f"{field_name}.type"
    if kind == "missing":
        message = "field required"
    if kind == "string_pattern_mismatch" and context.get("pattern") == NO_NUL:
        message = "must not contain NUL (\\x00) characters"
    return field_name or "body", message[:1].lower() + message[1:]


def _invalid_input(request: Request, error: Exception) -> list[ErrorDetail]:
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and "json" not in content_type.lower():
        # FastAPI hands a non-JSON body to validation as bytes; say what is wrong instead.
        return [ErrorDetail(field="body", message="send JSON with Content-Type: application/json")]
    errors = error.errors() if isinstance(error, RequestValidationError) else []
    return [ErrorDetail(field=f, message=m) for f, m in map(_error_message, errors)]


# ----------------------------------------------------------------------------- handlers


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    # FastAPI parses the body before it checks dependencies; a caller without a valid
    # key must learn nothing about its input, so the key is checked first here too.
    if request.url.path.startswith("/v1/") and not await _known_caller(request):
        refusal = unauthorized()
        return error_response(refusal.status_code, refusal.detail, headers=refusal.headers)
    details = _invalid_input(request, error)
    summary = "; ".join(f"{d.field}: {d.message}" for d in details[:_MAX_SUMMARISED_ERRORS])
    return error_response(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        summary or "invalid request",
        details[:_MAX_LISTED_ERRORS],
    )


async def _known_caller(request: Request) -> bool:
    """An API key's caller, or on the review API a person by HTTP Basic (as the review
    routes accept them): they learn what is wrong with their input."""
    authorization = request.headers.get("Authorization")
    if await api_keys(request).caller(authorization) is not None:
        return True
    if not request.url.path.startswith("/v1/reviews"):
        return False
    viewer = await asyncio.to_thread(basic_user, request.app.state.db, authorization)
    return viewer is not None


# What FastAPI says when reading the body raised something other than a JSON error (a
# document nested deeper than Python's JSON parser recurses: RecursionError), its cause
# chained: it names neither the field nor the fault.
_UNREADABLE_BODY = "There was an error parsing the body"


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    if error.status_code == status.HTTP_400_BAD_REQUEST and error.detail == _UNREADABLE_BODY:
        return await _unreadable_body(request, error)
    return error_response(error.status_code, str(error.detail), headers=error.headers)


async def _unreadable_body(request: Request, error: Exception) -> JSONResponse:
    """A body FastAPI could not parse, answered as the other invalid bodies are (422,
    field ``body``), and to a caller with a valid key only (`_validation_error`)."""
    if request.url.path.startswith("/v1/") and not await _known_caller(request):
        refusal = unauthorized()
        return error_response(refusal.status_code, refusal.detail, headers=refusal.headers)
    if isinstance(error.__cause__, RecursionError):
        message = f"JSON nested too deeply to read (at most {MAX_JSON_DEPTH} levels in properties and traits)"
    else:
        message = "the body could not be read as JSON"
    return error_response(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        f"body: {message}",
        [ErrorDetail(field="body", message=message)],
    )


async def _review_refused(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ReviewRefused)
    return error_response(error.status, error.message)


async def _server_fault(_request: Request, _error: Exception) -> JSONResponse:
    # Starlette re-raises the error after this response so that the server logs its
    # traceback (which holds no request headers); the client learns nothing about it.
    return error_response(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Make every error ``app`` answers an `ErrorResponse`."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ReviewRefused, _review_refused)
    app.add_exception_handler(Exception, _server_fault)
