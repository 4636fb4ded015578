"""Why a customer got a message, or did not: GET /v1/runs/{run_id}/explanation (one run)
and GET /v1/explain (a customer's runs, one run, or the run of one message), as
`service.explain` builds them from the recorded rows. `journeys explain` prints the same.

A message's content (its subject and body) is in the answer, as in GET /v1/outbox: an
API key reads captured messages already. Recipients are masked, as everywhere.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from fastapi.responses import JSONResponse

from service.api.deps import SCOPE_REFUSED, DatabaseDep, require_read
from service.api.errors import ERROR_RESPONSES, NO_NUL, problem, responses
from service.explain import (
    Explanation,
    RunExplanation,
    explain_customer,
    explain_message,
    explain_run_id,
)

__all__ = ["router"]

router = APIRouter(
    prefix="/v1",
    tags=["runs"],
    dependencies=[Depends(require_read)],
    responses={**ERROR_RESPONSES, **SCOPE_REFUSED},
)


@router.get(
    "/runs/{run_id}/explanation",
    summary="Why a run did what it did, in words",
    responses=responses(404, _404="No such run."),
)
async def run_explanation(
    db: DatabaseDep,
    run_id: Annotated[str, Path(max_length=100, pattern=NO_NUL)],
) -> RunExplanation:
    """The run's entry, decisions, scores, reviews, waits and sends (with their policy
    checks and content), or why a send did not go out."""
    found = await asyncio.to_thread(explain_run_id, db, run_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run with id {run_id!r}")
    return found


@router.get(
    "/explain",
    summary="Why a customer got (or did not get) a message",
    response_model=Explanation,
    responses=responses(404, _404="No such run or message."),
)
async def explain(
    db: DatabaseDep,
    customer: Annotated[
        str | None, Query(max_length=200, pattern=NO_NUL, description="Every run of a customer.")
    ] = None,
    run: Annotated[
        str | None, Query(max_length=100, pattern=NO_NUL, description="One run.")
    ] = None,
    message: Annotated[
        str | None,
        Query(
            max_length=40,
            pattern=r"^(delivery:|outbox:)?[0-9]+$",
            description="A delivery id (`12`) or a captured message's (`outbox:12`).",
        ),
    ] = None,
) -> Explanation | JSONResponse:
    """Exactly one of ``customer`` (their runs, newest first), ``run`` or ``message``."""
    pairs = (("customer", customer), ("run", run), ("message", message))
    given = [name for name, value in pairs if value]
    if len(given) != 1:
        return problem("customer", "give exactly one of customer, run or message")
    if customer is not None:
        return await asyncio.to_thread(explain_customer, db, customer)
    if run is not None:
        one = await asyncio.to_thread(explain_run_id, db, run)
        if one is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run with id {run!r}")
        return Explanation(customer_id=one.customer_id, runs=[one])
    assert message is not None
    found = await asyncio.to_thread(explain_message, db, message)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no message with id {message!r}")
    return found
