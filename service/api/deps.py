"""What routes ask FastAPI for: the app's shared state as `Annotated` dependencies.

A route names what it needs by type: ``db: DatabaseDep`` (the engine, for work done in a
thread), ``session: SessionDep`` (a session committed before the answer is sent: for
plain ``def`` routes only, which FastAPI runs in a thread), ``settings: SettingsDep``,
``client: TemporalClientDep``, ``router: EventRouterDep``, and who calls:
``caller: ApiCallerDep`` (an API key) or ``caller: ReviewCallerDep`` (a person by HTTP
Basic, or an API key). A router or route names the API-key scope it needs with
``dependencies=[Depends(require_ingest)]`` (or `require_read`, `require_admin`): every
/v1 route that takes a key names one (docs/security.md has the table). Routes do not
read ``request.app.state``: this module does (and `service.api.auth.api_keys`, for the
key cache); the console's helpers call the plain functions here (`service_state`,
`session_keys`).

Lives here: `ServiceState` and the dependencies. Not here: how keys and passwords are
checked (`service.api.auth`, `service.console.auth`), the app's lifecycle
(`service.api.app`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.client import Client

from engine.database import session_scope
from engine.settings import RuntimeSettings
from service.api.auth import (
    ApiCaller,
    api_keys,
    require_admin,
    require_api_key,
    require_ingest,
    require_read,
    unauthorized,
)
from service.api.errors import responses
from service.console.auth import SessionKeys, basic_user
from service.router import EventRouter
from service.users import Viewer

__all__ = [
    "SCOPE_REFUSED",
    "ApiCallerDep",
    "DatabaseDep",
    "EventRouterDep",
    "ReviewCallerDep",
    "ServiceDep",
    "ServiceState",
    "SessionDep",
    "SettingsDep",
    "TemporalClientDep",
    "require_admin",
    "require_api_key",
    "require_ingest",
    "require_read",
    "service_state",
    "session_keys",
]


@dataclass
class ServiceState:
    """What the routes share, made by the app's lifespan: settings, the database, the
    event router (which holds the Temporal client) and the background tasks."""

    settings: RuntimeSettings
    db: Engine
    router: EventRouter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def client(self) -> Client | None:
        """Temporal, or None while it has not been reached yet."""
        return self.router.client


def service_state(request: Request) -> ServiceState:
    """The app's `ServiceState` (set by the lifespan, so present in every request)."""
    state: ServiceState = request.app.state.service
    return state


def session_keys(request: Request) -> SessionKeys:
    """The console's cookie keys (made with the app)."""
    keys: SessionKeys = request.app.state.session_keys
    return keys


# Async although they do no I/O: FastAPI would run a plain function in a thread.
async def _service(request: Request) -> ServiceState:
    return service_state(request)


ServiceDep = Annotated[ServiceState, Depends(_service)]


async def _settings(service: ServiceDep) -> RuntimeSettings:
    return service.settings


async def _database(service: ServiceDep) -> Engine:
    return service.db


async def _temporal_client(service: ServiceDep) -> Client | None:
    return service.client


async def _event_router(service: ServiceDep) -> EventRouter:
    return service.router


SettingsDep = Annotated[RuntimeSettings, Depends(_settings)]
DatabaseDep = Annotated[Engine, Depends(_database)]
TemporalClientDep = Annotated[Client | None, Depends(_temporal_client)]
EventRouterDep = Annotated[EventRouter, Depends(_event_router)]


def _session(db: DatabaseDep) -> Iterator[Session]:
    with session_scope(db) as session:
        yield session


SessionDep = Annotated[Session, Depends(_session, scope="function")]
"""``scope="function"``: the session commits when the route returns, before the answer
is sent, so a caller never reads back less than it was told was stored."""


SCOPE_REFUSED = responses(403, _403="The API key lacks the scope this route needs.")
"""The 403 of a route that asks for a scope, for its OpenAPI ``responses``."""


ApiCallerDep = Annotated[ApiCaller, Depends(require_api_key)]
"""The caller of a valid API key; a 401 otherwise."""


async def _review_caller(request: Request, db: DatabaseDep) -> Viewer | ApiCaller:
    authorization = request.headers.get("Authorization")
    viewer = await asyncio.to_thread(basic_user, db, authorization)
    if viewer is not None:
        return viewer
    caller = await api_keys(request).caller(authorization)
    if caller is None:
        raise unauthorized()
    return caller


ReviewCallerDep = Annotated[Viewer | ApiCaller, Depends(_review_caller)]
"""A console user by HTTP Basic ``name:password``, or else an API key; a 401 otherwise."""
