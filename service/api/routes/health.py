"""Health: GET /healthz, no auth, for load balancers and orchestrators.

The API is healthy when its database answers; Temporal's reachability is reported but
does not make it unhealthy (events are still accepted and stored, and routed once
Temporal is back).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Literal

from fastapi import APIRouter, Response, status
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.engine import Engine

from service.api.deps import DatabaseDep, TemporalClientDep

__all__ = ["Health", "router"]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: Literal["ok", "unreachable"]
    temporal: Literal["ok", "unreachable"]


router = APIRouter(tags=["health"])


def _database_answers(db: Engine) -> bool:
    try:
        with db.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


@router.get(
    "/healthz",
    summary="Health of the API and what it depends on (no auth)",
    responses={503: {"model": Health, "description": "The database is unreachable."}},
)
async def healthz(db: DatabaseDep, client: TemporalClientDep, response: Response) -> Health:
    """`temporal: unreachable` does not make the API unhealthy: events are still
    accepted and stored, and routed once Temporal is back."""
    database = await asyncio.to_thread(_database_answers, db)
    temporal = False
    if client is not None:
        with contextlib.suppress(Exception):
            temporal = await client.service_client.check_health(timeout=timedelta(seconds=2))
    if not database:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(
        status="ok" if database else "unavailable",
        database="ok" if database else "unreachable",
        temporal="ok" if temporal else "unreachable",
    )
