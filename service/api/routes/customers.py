"""Erasing a customer: ``DELETE /v1/customers/{id}`` (admin scope).

What is erased and what is kept, by pseudonym, is `service.erasure`'s to say (and
docs/security.md's). The answer names the customer's pseudonym and the counts, never the
id. Temporal must be reachable: it ends and deletes the customer's runs there. If it is
not, the answer is a 503 and the customer's events are already refused; asking again
finishes the erasure.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, status
from pydantic import BaseModel, Field
from temporalio.service import RPCError

from service.api.deps import (
    SCOPE_REFUSED,
    ApiCallerDep,
    DatabaseDep,
    TemporalClientDep,
    require_admin,
    require_api_key,
)
from service.api.errors import ERROR_RESPONSES, NO_NUL, responses
from service.erasure import erase_customer

__all__ = ["ErasureAnswer", "router"]

log = logging.getLogger(__name__)

CustomerId = Annotated[
    str, Path(min_length=1, max_length=200, pattern=NO_NUL, description="The customer id")
]


class ErasureAnswer(BaseModel):
    """What an erasure did."""

    customer: str = Field(
        description="The customer's pseudonym (`cus_...`), as the audit log names them."
    )
    status: str = Field(description="`erased`.")
    erased_before: bool = Field(
        description="The customer had been erased before (this finished or repeated it)."
    )
    runs_ended: int = Field(description="Open runs ended in Temporal (outcome `erased`).")
    histories_deleted: int = Field(description="Workflow executions deleted from Temporal.")
    rows: dict[str, int] = Field(description="Rows deleted or scrubbed, per table.")


router = APIRouter(
    prefix="/v1",
    tags=["customers"],
    dependencies=[Depends(require_api_key)],
    responses={**ERROR_RESPONSES, **SCOPE_REFUSED},
)


@router.delete(
    "/customers/{customer_id}",
    summary="Erase a customer",
    dependencies=[Depends(require_admin)],
    response_model=ErasureAnswer,
    responses=responses(503, _503="Temporal could not be reached; ask again."),
)
async def erase(
    customer_id: CustomerId, db: DatabaseDep, client: TemporalClientDep, caller: ApiCallerDep
) -> dict[str, Any]:
    """Ends the customer's open runs (outcome `erased`), deletes their runs' executions
    from Temporal and their history key (their sealed histories can no longer be opened),
    deletes their profile, events, preferences and messages, and keeps counts under a
    pseudonym. From then on their events are not stored (`erased` in the ingest answer).
    Idempotent: asking again finishes an erasure that was interrupted."""
    if client is None:
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="Temporal is not connected; the customer was not erased, ask again",
        )
    try:
        report = await erase_customer(db, client, customer_id, actor=f"api-key:{caller.key_name}")
    except RPCError as error:
        log.warning("erasure stopped: Temporal answered %s", error.status.name)
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="Temporal could not end or delete the customer's runs; their events "
            "are refused already, ask again to finish",
        ) from None
    return report.as_json()
