"""The console's journeys and template previews, for designers (``preview_templates``):
the active journeys with the templates their sends use (``/console/journeys``), and a
template's preview (``/console/journeys/{id}/templates/{name}/preview``): a form for
profile, event and variable values (``k=v`` lines) and each channel's rendering of the
template by `channels.preview`, the renderer sends use, from the active version's plan.

The form is a POST with the session's CSRF token, like every console form: the values may
be a real customer's and stay out of URLs and histories. The email's HTML shows in an
iframe's ``srcdoc``, escaped by the page's autoescape and sandboxed (no script, no same
origin); the frame keeps the console's security policy, so styles written in the email do
not apply there (the HTML file of `journeys preview` shows them).

Not here: sign-in, the page frame and refusals (`service.console.routes`), rendering
(`channels.preview`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from channels.preview import PairError, TemplatePreview, parse_pairs, preview_template
from engine.database import PlanVersion, session_scope
from engine.plan import Plan
from service.api.deps import DatabaseDep
from service.console.routes import _page, _posted, _refusal, _signed_in

__all__ = ["router"]

PERMISSION = "preview_templates"
MAX_VALUES = 4000
"""The most characters of each k=v box a preview takes."""

router = APIRouter(prefix="/console", include_in_schema=False)


@dataclass(frozen=True)
class ActiveJourney:
    """An active journey version, as the journeys list shows it."""

    journey_id: str
    name: str | None
    version: str
    entry: str
    templates: tuple[str, ...]
    plan: Plan


def active_plans(db: Engine) -> list[Plan]:
    """The active version's plan of every journey, by journey id; a plan this release
    cannot read is left out (not previewable, not counted)."""
    with session_scope(db) as session:
        rows = session.exec(
            select(PlanVersion)
            .where(col(PlanVersion.active).is_(True))
            .order_by(col(PlanVersion.journey_id))
        ).all()
    plans = []
    for row in rows:
        try:
            plans.append(Plan.model_validate_json(row.plan_json))
        except ValueError:
            continue
    return plans


def _active(db: Engine) -> list[ActiveJourney]:
    return [
        ActiveJourney(
            plan.journey_id,
            plan.name,
            plan.version,
            plan.entry.event,
            tuple(sorted(plan.templates)),
            plan,
        )
        for plan in active_plans(db)
    ]


def _journey(db: Engine, journey_id: str) -> ActiveJourney | None:
    return next((j for j in _active(db) if j.journey_id == journey_id), None)


@router.get("/journeys", response_class=HTMLResponse)
async def journeys_page(request: Request, db: DatabaseDep) -> Response:
    viewer = await _signed_in(request, PERMISSION)
    if isinstance(viewer, Response):
        return viewer
    journeys = await asyncio.to_thread(_active, db)
    return _page(request, "journeys.html", viewer=viewer, journeys=journeys)


async def _preview_target(
    request: Request, db: Engine, journey_id: str, name: str, viewer: Any
) -> ActiveJourney | Response:
    journey = await asyncio.to_thread(_journey, db, journey_id[:100])
    if journey is None:
        return _refusal(request, viewer, 404, f"No active journey {journey_id[:100]!r}.")
    if name not in journey.plan.templates:
        return _refusal(
            request,
            viewer,
            404,
            f"Journey {journey.journey_id!r} sends no template {name[:100]!r}.",
        )
    return journey


@router.get("/journeys/{journey_id}/templates/{name}/preview", response_class=HTMLResponse)
async def preview_page(request: Request, db: DatabaseDep, journey_id: str, name: str) -> Response:
    viewer = await _signed_in(request, PERMISSION)
    if isinstance(viewer, Response):
        return viewer
    journey = await _preview_target(request, db, journey_id, name, viewer)
    if isinstance(journey, Response):
        return journey
    return _preview_page(request, viewer, journey, name, values={}, preview=None, error=None)


@router.post("/journeys/{journey_id}/templates/{name}/preview", response_class=HTMLResponse)
async def preview(
    request: Request,
    db: DatabaseDep,
    journey_id: str,
    name: str,
    profile: Annotated[str, Form(max_length=MAX_VALUES)] = "",
    event: Annotated[str, Form(max_length=MAX_VALUES)] = "",
    variables: Annotated[str, Form(max_length=MAX_VALUES)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    viewer = await _posted(request, csrf, PERMISSION)
    if isinstance(viewer, Response):
        return viewer
    journey = await _preview_target(request, db, journey_id, name, viewer)
    if isinstance(journey, Response):
        return journey
    values = {"profile": profile, "event": event, "variables": variables}
    try:
        parsed = {
            box: parse_pairs(text.splitlines(), what=f"{box} line") for box, text in values.items()
        }
    except PairError as error:
        return _preview_page(
            request,
            viewer,
            journey,
            name,
            values=values,
            preview=None,
            error=str(error),
            status=422,
        )
    plan = journey.plan
    result = preview_template(
        name,
        plan.templates[name],
        profile=parsed["profile"],
        event=parsed["event"],
        variables=parsed["variables"],
        timezone=plan.settings.timezone,
        event_name=plan.entry.event,
        journey_id=plan.journey_id,
        version=plan.version,
    )
    return _preview_page(request, viewer, journey, name, values=values, preview=result, error=None)


def _preview_page(
    request: Request,
    viewer: Any,
    journey: ActiveJourney,
    name: str,
    *,
    values: dict[str, str],
    preview: TemplatePreview | None,
    error: str | None,
    status: int = 200,
) -> HTMLResponse:
    return _page(
        request,
        "preview.html",
        viewer=viewer,
        status_code=status,
        journey=journey,
        template_name=name,
        forms=sorted(journey.plan.templates[name]),
        values=values,
        preview=preview,
        error=error,
    )
