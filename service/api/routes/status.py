"""A run's status, for the customer: ``GET /v1/status/{token}`` (issue #18, item 4).

The token (`channels.status_links`, in a message as ``{{ run.status_url }}``) is the only
authority: no API key, no session. The page shows what the journey's `public:` texts say
about that one run: the public steps it has passed, the one it is at now, and when it
expects to move on (an open review's SLA, a wait's end). It never shows a score, a step
id, the journey's name, another customer's data or anything the designer did not write
for the customer. HTML by default; JSON with ``Accept: application/json`` or
``?format=json``. A bad, altered or unknown token is one and the same 404, so a token
for one run tells nothing about any other.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import col
from sqlmodel import select as select_rows

from channels.status_links import read_status_token
from channels.unsubscribe import SECRET_KEY_ENV
from engine.database import PlanVersion, Profile, ReviewTask, RunPathEntry, session_scope
from engine.plan import Plan
from engine.run_path import last_path, run_without_path
from engine.timestamps import as_utc
from service.api.deps import DatabaseDep, SettingsDep
from service.console.runs import clock_for, recorded_wait

__all__ = ["PublicStatus", "public_status", "router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/status", tags=["status"])

StatusToken = Annotated[
    str,
    Path(
        description="The signed token from the message's status link.",
        json_schema_extra={"pattern": r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$", "maxLength": 2048},
    ),
]
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}
_NOT_FOUND = "This status link is not valid, or the request it was for is no longer kept."


@dataclass(frozen=True)
class PublicStatus:
    """What the customer may see of one run."""

    state: str  # "in progress", "finished" or "stopped"
    passed: list[tuple[str, datetime]]  # public texts reached before the current one
    current: tuple[str, datetime] | None  # the last public text reached
    expected: datetime | None  # when it expects to move on, if it knows
    zone: str  # the customer's zone (else the journey's, else UTC): times show in it

    def as_json(self) -> dict[str, Any]:
        def moment(value: datetime | None) -> str | None:
            return as_utc(value).isoformat() if value is not None else None

        return {
            "state": self.state,
            "passed": [{"text": text, "at": moment(at)} for text, at in self.passed],
            "current": (
                {"text": self.current[0], "since": moment(self.current[1])}
                if self.current
                else None
            ),
            "expected_by": moment(self.expected),
            "timezone": self.zone,
        }


def public_status(db: Engine, run_id: str) -> PublicStatus | None:
    """The customer's view of ``run_id``; None when there is no such run."""
    with session_scope(db) as session:
        run = run_without_path(session, run_id)
        if run is None:
            return None
        stored = (
            session.connection()
            .execute(
                select(col(PlanVersion.plan_json)).where(
                    col(PlanVersion.journey_id) == run.journey_id,
                    col(PlanVersion.version) == run.version,
                )
            )
            .scalar()
        )
        plan = Plan.model_validate_json(stored) if stored else None
        public = plan.public if plan is not None else {}
        reached: list[tuple[str, datetime]] = []
        if public:
            rows = session.connection().execute(
                select(
                    col(RunPathEntry.step),
                    func.min(col(RunPathEntry.seq)),
                    func.min(col(RunPathEntry.at)),
                )
                .where(
                    col(RunPathEntry.run_id) == run_id,
                    col(RunPathEntry.step).in_(sorted(public)),
                )
                .group_by(RunPathEntry.step)
                .order_by(func.min(RunPathEntry.seq))
            )
            reached = [(public[step], as_utc(at)) for step, _seq, at in rows]
        tasks = list(
            session.exec(
                select_rows(ReviewTask).where(
                    col(ReviewTask.run_id) == run_id, col(ReviewTask.status) == "open"
                )
            ).all()
        )
        waiting = recorded_wait(run, last_path(session, run_id, 1), tasks)
        profile = session.get(Profile, run.customer_id)
        customer_zone = (profile.traits or {}).get("timezone") if profile else None
    clock = clock_for(customer_zone, plan.settings.timezone if plan else None)
    state = {"running": "in progress", "completed": "finished", "exited": "finished"}.get(
        run.status, "stopped"
    )
    current = reached[-1] if reached else None
    return PublicStatus(
        state=state,
        passed=reached[:-1] if state == "in progress" else reached,
        current=current if state == "in progress" else None,
        expected=waiting.until if waiting is not None else None,
        zone=clock.name,
    )


def _wants_json(request: Request, format: str | None) -> bool:
    if format is not None:
        return format == "json"
    return "application/json" in request.headers.get("accept", "")


def _not_found(as_json: bool) -> Response:
    if as_json:
        return JSONResponse(
            {"detail": _NOT_FOUND}, status_code=status.HTTP_404_NOT_FOUND, headers=_HEADERS
        )
    return _page("Status not found", [f"<p>{html.escape(_NOT_FOUND)}</p>"], status_code=404)


def _page(title: str, parts: list[str], *, status_code: int = 200) -> HTMLResponse:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;"
        "padding:0 1rem;line-height:1.5}ol{padding-left:1.25rem}li{margin:.25rem 0}"
        ".now{font-weight:600}.muted{color:#555}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>"
    )
    return HTMLResponse(document, status_code=status_code, headers=_HEADERS)


def _html(found: PublicStatus) -> HTMLResponse:
    clock = clock_for(found.zone, None)

    def when(moment: datetime) -> str:
        return html.escape(clock.local(moment))

    items = [
        f'<li data-passed>{html.escape(text)} <span class="muted">({when(at)})</span></li>'
        for text, at in found.passed
    ]
    if found.current is not None:
        text, since = found.current
        items.append(
            f'<li class="now" id="current">{html.escape(text)} '
            f'<span class="muted">(since {when(since)})</span></li>'
        )
    parts = [f'<p id="state">Status: {html.escape(found.state)}</p>']
    if items:
        parts.append(f"<ol>{''.join(items)}</ol>")
    if found.expected is not None and found.state == "in progress":
        parts.append(f'<p id="expected">Next update expected by {when(found.expected)}.</p>')
    return _page("Your request", parts)


@router.get(
    "/{token}",
    summary="A run's status for the customer (no API key: the token is the authority)",
    responses={
        200: {"content": {"text/html": {}, "application/json": {}}},
        404: {"description": "The token is malformed, altered, or its run is gone."},
    },
)
def status_page(
    token: StatusToken,
    request: Request,
    settings: SettingsDep,
    db: DatabaseDep,
    format: str | None = None,
) -> Response:
    as_json = _wants_json(request, format)
    if not settings.secret_key:
        log.warning("status link refused: %s is not set in this API process", SECRET_KEY_ENV)
        return _not_found(as_json)
    try:
        run_id = read_status_token(token, secret=settings.secret_key)
    except ValueError:
        return _not_found(as_json)
    found = public_status(db, run_id)
    if found is None:
        return _not_found(as_json)
    if as_json:
        return JSONResponse(found.as_json(), headers=_HEADERS)
    return _html(found)
