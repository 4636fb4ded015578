"""Health: GET /healthz, no auth, for load balancers and orchestrators.

The API is healthy when its database answers; Temporal's reachability is reported but
does not make it unhealthy (events are still accepted and stored, and routed once
Temporal is back).

Under `journeys up` (``JOURNEYS_STATE_DIR`` set and the supervisor's status file there,
written by the process that started this API) the answer also lists the supervised
processes, and is 503 ``degraded`` while one of them is down or restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Response, status
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.engine import Engine

from service.api.deps import DatabaseDep, TemporalClientDep
from service.cli.supervisor import STATUS_FILE, read_status

__all__ = ["ChildHealth", "Health", "router", "supervised_children"]


class ChildHealth(BaseModel):
    """One process `journeys up` supervises."""

    state: str
    restarts: int = 0
    last_exit: str | None = None
    since: str | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    database: Literal["ok", "unreachable"]
    temporal: Literal["ok", "unreachable"]
    children: dict[str, ChildHealth] | None = None
    """Only under `journeys up`: its processes (temporal, worker, api) and their states."""
    down: list[str] | None = None
    """The supervised processes that are not running, e.g. ``["worker is restarting"]``."""


router = APIRouter(tags=["health"])


def _database_answers(db: Engine) -> bool:
    try:
        with db.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def supervised_children() -> dict[str, ChildHealth] | None:
    """The states of `journeys up`'s processes, when it started this process: read from
    ``$JOURNEYS_STATE_DIR/supervisor.json`` (one small local file). A file another
    process wrote (a `journeys up` killed without cleaning up) is ignored."""
    state_dir = os.environ.get("JOURNEYS_STATE_DIR")
    if not state_dir:
        return None
    found = read_status(Path(state_dir) / STATUS_FILE, supervisor=os.getppid())
    if found is None:
        return None
    children: dict[str, ChildHealth] = {}
    for name, child in found["children"].items():
        if isinstance(child, dict):
            with contextlib.suppress(ValueError):
                children[str(name)] = ChildHealth.model_validate(_known_fields(child))
    return children


def _known_fields(child: dict[str, Any]) -> dict[str, Any]:
    return {key: child[key] for key in ChildHealth.model_fields if key in child}


@router.get(
    "/healthz",
    summary="Health of the API and what it depends on (no auth)",
    responses={
        503: {
            "model": Health,
            "description": "The database is unreachable, or (under `journeys up`) one of "
            "its processes is down or restarting.",
        }
    },
    response_model_exclude_none=True,
)
async def healthz(db: DatabaseDep, client: TemporalClientDep, response: Response) -> Health:
    """`temporal: unreachable` does not make the API unhealthy: events are still
    accepted and stored, and routed once Temporal is back. Under `journeys up`, a
    supervised process that is down makes it 503 ``degraded`` until it runs again."""
    database = await asyncio.to_thread(_database_answers, db)
    temporal = False
    if client is not None:
        with contextlib.suppress(Exception):
            temporal = await client.service_client.check_health(timeout=timedelta(seconds=2))
    children = supervised_children()
    down = [
        f"{name} is {child.state}" + (f" ({child.last_exit})" if child.last_exit else "")
        for name, child in (children or {}).items()
        if child.state != "running"
    ]
    verdict: Literal["ok", "degraded", "unavailable"] = "ok"
    if not database:
        verdict = "unavailable"
    elif down:
        verdict = "degraded"
    if verdict != "ok":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(
        status=verdict,
        database="ok" if database else "unreachable",
        temporal="ok" if temporal else "unreachable",
        children=children,
        down=down or None,
    )
