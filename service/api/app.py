"""The app factory: `create_app` builds the FastAPI app of the API and the ops console
(``uvicorn service.api.app:create_app --factory``).

On start the lifespan opens the database, seeds ``JOURNEYS_API_KEY``, connects to
Temporal (retrying in the background while it is unreachable: events are still accepted
and stored) and runs a loop that routes events accepted while Temporal was away.

Every answer carries the security headers (`service.api.middleware.SecurityHeaders`);
the console's script and style are files under ``/console/static``, so no page runs an
inline script. ``/docs``, ``/redoc`` and ``/openapi.json`` are served unless
``JOURNEYS_PUBLIC_DOCS=0``; the docs pages' one inline script runs by a per-answer nonce.
Creating the app puts the access-log redaction on uvicorn's access logger, whichever
command starts uvicorn.

Lives here: the lifespan and its background tasks, the middleware, the error handlers,
the docs pages and the routers the app includes. Not here: any route
(`service.api.routes.*`, `service.console.routes`), what routes depend on
(`service.api.deps`), the error body (`service.api.errors`). Nothing here logs an API key
or an Authorization header.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from temporalio.client import Client

from engine.database import ApiKey, create_api_key, make_engine, session_scope
from engine.migrate import DatabaseAhead, PartialSchema
from engine.settings import RuntimeSettings
from runtime.codec import KeyRing
from runtime.temporal import connect
from service.api.deps import ServiceState
from service.api.errors import install_error_handlers
from service.api.middleware import (
    MAX_BODY_BYTES,
    RequestBodyLimit,
    SecurityHeaders,
    docs_policy,
    install_access_log_redaction,
)
from service.api.routes import (
    codec,
    customers,
    events,
    explain,
    health,
    journeys,
    outbox,
    preferences,
    reviews,
    runs,
    status,
    unsubscribe,
)
from service.console.audit import router as console_audit_router
from service.console.auth import SessionKeys
from service.console.journey_stats import router as console_stats_router
from service.console.journeys import router as console_journeys_router
from service.console.routes import router as console_router
from service.console.runs import router as console_runs_router
from service.router import EventRouter

__all__ = ["create_app"]

log = logging.getLogger(__name__)

ROUTE_PENDING_EVERY_SECONDS = 2.0
ROUTE_PENDING_BATCH = 100
# The background loop leaves events younger than this to the request that accepted them.
ROUTE_PENDING_MIN_AGE_SECONDS = 5.0
TEMPORAL_CONNECT_TIMEOUT_SECONDS = 5.0
TEMPORAL_RETRY_MAX_SECONDS = 30.0
CONSOLE_STATIC = Path(__file__).resolve().parents[1] / "console" / "static"


async def _connect_until_reachable(service: ServiceState) -> None:
    delay = 1.0
    while service.router.client is None:
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows the app's
            # cancellation when the attempt fails at the same moment, and this loop then
            # retries forever while the lifespan waits for it to end.
            async with asyncio.timeout(TEMPORAL_CONNECT_TIMEOUT_SECONDS):
                service.router.client = await connect(service.settings)
            log.info("connected to Temporal at %s", service.settings.temporal_address)
            return
        except Exception as error:
            log.warning(
                "Temporal at %s unreachable (%s); retrying in %.0fs",
                service.settings.temporal_address,
                type(error).__name__,
                delay,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, TEMPORAL_RETRY_MAX_SECONDS)


async def _route_pending_forever(service: ServiceState) -> None:
    min_age = 0.0  # at startup, every unrouted event is left over from before
    while True:
        try:
            routed = await service.router.route_pending(
                limit=ROUTE_PENDING_BATCH, min_age_seconds=min_age
            )
        except Exception:
            log.exception("routing pending events failed; retrying")
            routed = 0
        min_age = ROUTE_PENDING_MIN_AGE_SECONDS
        if routed < ROUTE_PENDING_BATCH:
            await asyncio.sleep(ROUTE_PENDING_EVERY_SECONDS)


def _open_database(settings: RuntimeSettings) -> Engine:
    try:
        db = make_engine(settings.database_url)  # upgrades the schema to the code's head
    except (DatabaseAhead, PartialSchema) as error:
        # Said plainly first: the traceback uvicorn prints after it is about the lifespan.
        log.error("the API cannot start: %s", error)
        raise
    if settings.api_key:
        _seed_api_key(db, settings.api_key)
    with session_scope(db) as session:
        if session.exec(select(func.count()).select_from(ApiKey)).one() == 0:
            log.warning("no API keys yet: every /v1 request will get a 401 (set JOURNEYS_API_KEY)")
    return db


def _seed_api_key(db: Engine, key: str) -> None:
    """Store ``JOURNEYS_API_KEY`` (an admin key named "dev") unless it is stored already.

    API replicas started together on a new database race to insert it: the loser's insert
    fails on the unique hash, and its second try finds the key stored (seen with two
    replicas, `make test-scale`)."""
    for attempt in range(2):
        try:
            with session_scope(db) as session:
                create_api_key(session, name="dev", key=key, scopes=["admin"])
            return
        except IntegrityError:
            if attempt:
                raise


def _lifespan(
    settings: RuntimeSettings, client: Client | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = _open_database(settings)
        service = ServiceState(
            settings=settings,
            db=db,
            router=EventRouter(db=db, client=client, task_queue=settings.task_queue),
        )
        app.state.db = db  # what `service.api.auth.api_keys` checks keys against
        app.state.service = service
        if client is None:
            service.tasks.append(asyncio.create_task(_connect_until_reachable(service)))
        service.tasks.append(asyncio.create_task(_route_pending_forever(service)))
        try:
            yield
        finally:
            for task in service.tasks:
                task.cancel()
            await asyncio.gather(*service.tasks, return_exceptions=True)
            db.dispose()

    return lifespan


def _nonced(page: HTMLResponse) -> HTMLResponse:
    """A docs page whose inline script runs by a nonce of its own policy, and only it."""
    nonce = secrets.token_urlsafe(18)
    html = bytes(page.body).decode("utf-8").replace("<script", f'<script nonce="{nonce}"')
    return HTMLResponse(html, headers={"Content-Security-Policy": docs_policy(nonce)})


def _add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc, as FastAPI serves them but under a strict policy."""
    openapi_url = app.openapi_url or "/openapi.json"

    def schema_url(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/") + openapi_url

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        title = f"{app.title} - Swagger UI"
        return _nonced(get_swagger_ui_html(openapi_url=schema_url(request), title=title))

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        title = f"{app.title} - ReDoc"
        return _nonced(get_redoc_html(openapi_url=schema_url(request), title=title))


def create_app(settings: RuntimeSettings | None = None, *, client: Client | None = None) -> FastAPI:
    """The API app. ``settings`` default to the environment; a ``client`` given here is
    used as is (and not closed), otherwise the app connects, retrying in the background."""
    settings = settings or RuntimeSettings.from_env()
    KeyRing.from_settings(settings)  # a bad history key ring stops the start, named
    install_access_log_redaction()
    app = FastAPI(
        title="Journeys API",
        version="1",
        summary="Send events that start, advance and end customer journeys; inspect runs.",
        lifespan=_lifespan(settings, client),
        openapi_url="/openapi.json" if settings.public_docs else None,
        docs_url=None,  # served by `_add_docs`, with a nonce for their inline script
        redoc_url=None,
    )
    app.add_middleware(RequestBodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(SecurityHeaders)  # outermost: the body limit's refusals get them too
    install_error_handlers(app)
    if settings.public_docs:
        _add_docs(app)
    for module in (
        events,
        customers,
        runs,
        explain,
        journeys,
        preferences,
        outbox,
        unsubscribe,
        status,
        reviews,
        health,
        codec,
    ):
        app.include_router(module.router)
    app.mount("/console/static", StaticFiles(directory=CONSOLE_STATIC), name="console-static")
    app.include_router(console_router)
    app.include_router(console_runs_router)
    app.include_router(console_journeys_router)
    app.include_router(console_stats_router)
    app.include_router(console_audit_router)
    app.state.session_keys = SessionKeys.from_secret(
        settings.secret_key, public_url=settings.public_url
    )
    return app
