"""The ops console: server-rendered pages (Jinja2) for people, under ``/console``.

Pages: sign in (and set your own password after a one-time one), the review queue with
filters, a case page with why the case is here and the decision buttons, and the outbox
(the runs list and a run's page are `service.console.runs`, on the helpers here). Every
page needs a session; every POST needs the session's CSRF token. Light JS only (confirm
a rejection's note, disable buttons once clicked); everything works without it.

Not here: the rules of claiming and deciding (`service.review_desk`), sessions and CSRF
(`service.console.auth`), passwords and roles (`service.users`). No channel URL, API key
or customer address in clear reaches a page: addresses are masked.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from engine.database import (
    OutboxMessage,
    PlanVersion,
    Profile,
    session_scope,
)
from engine.personal import profile_marks
from engine.plan import Plan
from engine.profiles import mask_address
from engine.timestamps import as_utc, utcnow
from service.api.deps import (
    DatabaseDep,
    TemporalClientDep,
    service_state,
    session_keys,
)
from service.console.auth import client_address
from service.review_desk import (
    CustomerCard,
    ReviewRefused,
    TaskFilter,
    claim_task,
    customer_card,
    decide_task,
    format_score,
    humanize,
    is_breached,
    list_tasks,
    load_case,
    local_time,
    needs_note,
    plain,
    queues,
    reasons,
    release_task,
    restate_scores,
    risk_of,
)
from service.users import (
    MIN_PASSWORD_LENGTH,
    Permission,
    UserError,
    Viewer,
    can,
    change_password,
    check_password,
    short_password_message,
)

__all__ = ["router"]

_TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))


def _age(moment: datetime | None) -> str:
    if moment is None:
        return ""
    seconds = int((utcnow() - as_utc(moment)).total_seconds())
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 90:
        text = f"{seconds}s"
    elif seconds < 5400:
        text = f"{seconds // 60}m"
    elif seconds < 172800:
        text = f"{seconds // 3600}h {seconds % 3600 // 60}m"
    else:
        text = f"{seconds // 86400}d"
    return f"in {text}" if future else f"{text} ago"


def _when(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return as_utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=True)


_TEMPLATES.env.filters["age"] = _age
_TEMPLATES.env.filters["when"] = _when
_TEMPLATES.env.filters["pretty"] = _pretty
_TEMPLATES.env.filters["mask"] = mask_address
# The case page: one way to write a score, plain words for values, local relative times.
_TEMPLATES.env.filters["score"] = format_score
_TEMPLATES.env.filters["plain"] = plain
_TEMPLATES.env.filters["label"] = humanize
_TEMPLATES.env.filters["local"] = local_time

_FAVICON = Path(__file__).with_name("static") / "favicon.svg"


async def _viewer(request: Request) -> Viewer | None:
    return await asyncio.to_thread(session_keys(request).viewer, request, service_state(request).db)


def _page(
    request: Request,
    template: str,
    *,
    viewer: Viewer | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    csrf = session_keys(request).session_csrf(request) if viewer else None
    # What a redirect asked to say (``?notice=``), on whichever page it lands.
    context.setdefault("notice", _NOTICES.get(request.query_params.get("notice") or ""))
    return _TEMPLATES.TemplateResponse(
        request,
        template,
        {"viewer": viewer, "csrf": csrf, "now": utcnow(), **context},
        status_code=status_code,
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/console/login?{urlencode({'next': target})}", status_code=303)


def _refusal(request: Request, viewer: Viewer, status: int, message: str) -> HTMLResponse:
    return _page(request, "refused.html", viewer=viewer, status_code=status, message=message)


async def _signed_in(request: Request, permission: str | None = None) -> Viewer | Response:
    """The viewer, or the response to send instead (login, change password, 403)."""
    viewer = await _viewer(request)
    if viewer is None:
        return _to_login(request)
    if viewer.must_change_password:
        return RedirectResponse("/console/password", status_code=303)
    if permission is not None and not viewer.can(permission):  # type: ignore[arg-type]
        return _refusal(request, viewer, 403, f"Your role ({viewer.role}) may not open this page.")
    return viewer


async def _posted(
    request: Request, csrf: str | None, permission: str | None = None
) -> Viewer | Response:
    viewer = await _signed_in(request, permission)
    if isinstance(viewer, Response):
        return viewer
    if not session_keys(request).check_csrf(request, csrf):
        return _refusal(
            request,
            viewer,
            403,
            "This form expired or did not come from this console. Reload the page and try again.",
        )
    return viewer


router = APIRouter(prefix="/console", include_in_schema=False)


# ----------------------------------------------------------------------------- sign in


# Where each role lands: the first of these pages its role may open.
_LANDINGS: tuple[tuple[Permission, str], ...] = (
    ("view_reviews", "/console/reviews"),
    ("preview_templates", "/console/journeys"),
    ("view_runs", "/console/runs"),
    ("view_messages", "/console/outbox"),
)
_DEFAULT_NEXT = "/console/reviews"


def landing_for(role: str) -> str:
    """The page a user of ``role`` lands on after signing in (a designer has no review
    queue: their first page is the journeys list)."""
    return next((page for permission, page in _LANDINGS if can(role, permission)), _DEFAULT_NEXT)


@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> Response:
    viewer = await _viewer(request)
    target = landing_for(viewer.role) if viewer is not None else _DEFAULT_NEXT
    return RedirectResponse(target, status_code=303)


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/console") and "//" not in target and "\\" not in target:
        return target
    return _DEFAULT_NEXT


def _login_page(
    request: Request, *, next: str | None, error: str | None, status_code: int = 200
) -> HTMLResponse:
    keys = session_keys(request)
    token = keys.login_csrf(request)
    page = _page(
        request,
        "login.html",
        viewer=None,
        status_code=status_code,
        next=_safe_next(next),
        error=error,
        login_csrf=token,
    )
    keys.remember_login_csrf(page, token)
    return page


_PASSWORD_CHANGED = "password-changed"
_NOTICES = {
    _PASSWORD_CHANGED: "Your password was changed. Use it the next time you sign in;"
    " any other session of yours was signed out.",
}
"""What a page says after a redirect (``?notice=``): fixed texts, never the query's."""


@router.get("/favicon.svg", include_in_schema=False)
async def favicon() -> Response:
    """The console's icon (a file in static/), linked from every page."""
    return FileResponse(
        _FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"}
    )


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None) -> Response:
    return _login_page(request, next=next, error=None)


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    db: DatabaseDep,
    name: Annotated[str, Form(max_length=100)] = "",
    password: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=500)] = "/console/reviews",
) -> Response:
    keys = session_keys(request)
    if not keys.check_csrf(request, csrf, login=True):
        return _login_page(
            request,
            next=next,
            error="This sign-in form expired. Please try again.",
            status_code=403,
        )
    user = await asyncio.to_thread(lambda: check_password(db, name=name, password=password))
    if user is None:
        return _login_page(
            request, next=next, error="Wrong user name or password.", status_code=401
        )
    target = _safe_next(next)
    if target == _DEFAULT_NEXT:  # no page asked for: the user's own first page
        target = landing_for(user.role)
    if user.must_change_password:
        target = "/console/password"
    response = RedirectResponse(target, status_code=303)
    keys.start_session(response, user)
    return response


@router.post("/logout")
async def logout(request: Request, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    response = RedirectResponse("/console/login", status_code=303)
    if session_keys(request).check_csrf(request, csrf):
        session_keys(request).end_session(response)
    return response


@router.get("/password", response_class=HTMLResponse)
async def password_page(request: Request) -> Response:
    viewer = await _viewer(request)
    if viewer is None:
        return _to_login(request)
    return _page(
        request, "password.html", viewer=viewer, error=None, min_length=MIN_PASSWORD_LENGTH
    )


@router.post("/password", response_class=HTMLResponse)
async def set_password(
    request: Request,
    db: DatabaseDep,
    current: Annotated[str, Form(max_length=200)] = "",
    new: Annotated[str, Form(max_length=200)] = "",
    repeat: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    viewer = await _viewer(request)
    if viewer is None:
        return _to_login(request)
    if not session_keys(request).check_csrf(request, csrf):
        return _refusal(request, viewer, 403, "This form expired. Reload the page and try again.")
    error: str | None = None
    if len(new) < MIN_PASSWORD_LENGTH:  # the form says so too; the server decides
        error = short_password_message(len(new))
    elif new != repeat:
        error = "The two new passwords differ."
    if error is None:
        try:
            user = await asyncio.to_thread(
                lambda: change_password(db, user_id=viewer.id, current=current, new=new)
            )
        except UserError as refused:
            error = str(refused)
    if error is not None:
        return _page(
            request,
            "password.html",
            viewer=viewer,
            status_code=422,
            error=error,
            min_length=MIN_PASSWORD_LENGTH,
        )
    # The queue, in the new session, confirms the change (the old sessions were signed out).
    landing = landing_for(user.role)
    response = RedirectResponse(f"{landing}?notice={_PASSWORD_CHANGED}", status_code=303)
    session_keys(request).start_session(response, user)
    return response


# ----------------------------------------------------------------------------- reviews


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


@router.get("/reviews", response_class=HTMLResponse)
async def queue_page(
    request: Request,
    db: DatabaseDep,
    queue: str | None = None,
    status: str | None = "open",
    breached: str | None = None,
    min_risk: str | None = None,
    older_than_hours: str | None = None,
) -> Response:
    viewer = await _signed_in(request, "view_reviews")
    if isinstance(viewer, Response):
        return viewer
    status = (
        status if status in ("open", "decided", "expired", "closed", "deciding", "") else "open"
    )
    flt = TaskFilter(
        queue=(queue or None) if queue and len(queue) <= 100 else None,
        status=status or None,
        breached=True if breached == "yes" else (False if breached == "no" else None),
        min_risk=_float(min_risk),
        older_than_hours=_float(older_than_hours),
    )
    tasks = await asyncio.to_thread(list_tasks, db, flt)
    all_queues = await asyncio.to_thread(queues, db)
    rows = [{"task": task, "risk": risk_of(task), "breached": is_breached(task)} for task in tasks]
    return _page(
        request,
        "queue.html",
        viewer=viewer,
        rows=rows,
        queues=all_queues,
        filters={
            "queue": flt.queue or "",
            "status": status or "",
            "breached": breached or "",
            "min_risk": min_risk or "",
            "older_than_hours": older_than_hours or "",
        },
    )


def _customer(db: Engine, customer_id: str, journey_zone: str) -> CustomerCard:
    """The customer's card (`review_desk.customer_card`): personal traits masked or left
    out, by the live catalogue's `profile:` marks and by name and form (`engine.personal`)."""
    with session_scope(db) as session:
        row = session.get(Profile, customer_id)
        traits = dict(row.traits) if row is not None else {}
        plans = session.exec(select(PlanVersion.plan_json).where(col(PlanVersion.active))).all()
    marks: dict[str, str] = {}
    for plan_json in plans:
        try:
            marks.update(profile_marks(Plan.model_validate_json(plan_json).personal))
        except ValueError:
            continue
    return customer_card(traits, marks, journey_zone)


@router.get("/reviews/{task_id}", response_class=HTMLResponse)
async def case_page(
    request: Request, db: DatabaseDep, task_id: str, done: str | None = None
) -> Response:
    viewer = await _signed_in(request, "view_reviews")
    if isinstance(viewer, Response):
        return viewer
    try:
        case = await asyncio.to_thread(load_case, db, task_id[:64])
    except ReviewRefused as error:
        return _refusal(request, viewer, error.status, error.message)
    task = case.task
    card = await asyncio.to_thread(_customer, db, task.customer_id, case.timezone)
    scores = (task.case or {}).get("scores")
    return _page(
        request,
        "case.html",
        viewer=viewer,
        case=case,
        task=task,
        title=restate_scores(task.title, scores),
        details=restate_scores(task.details, scores) if task.details else None,
        risk=risk_of(task),
        breached=is_breached(task),
        why=reasons(task, case.plan),
        card=card,
        # Times on this page are on the customer's clock (their profile's zone, else the
        # journey's): the clock the journey's waits (`until: "09:00"`) keep.
        zone=card.timezone,
        destinations={d: dest.text for d, dest in case.destinations.items()},
        needs_note={d: needs_note(d) for d in task.decisions},
        done=done,
        may_act=viewer.can("decide_reviews")
        and task.status == "open"
        and task.claimed_by in (None, viewer.name),
        holds_claim=task.status == "open" and task.claimed_by == viewer.name,
    )


async def _act(request: Request, db: Engine, task_id: str, csrf: str, action: str) -> Response:
    # No permission check here: the review desk checks the role and audits a refusal.
    viewer = await _posted(request, csrf, "view_reviews")
    if isinstance(viewer, Response):
        return viewer
    work = claim_task if action == "claim" else release_task
    try:
        await asyncio.to_thread(
            lambda: work(
                db,
                task_id=task_id[:64],
                viewer=viewer,
                address=client_address(request),
            )
        )
    except ReviewRefused as error:
        return _refusal(request, viewer, error.status, error.message)
    return RedirectResponse(f"/console/reviews/{quote(task_id)}", status_code=303)


@router.post("/reviews/{task_id}/claim")
async def claim(
    request: Request, db: DatabaseDep, task_id: str, csrf: Annotated[str, Form(max_length=200)] = ""
) -> Response:
    return await _act(request, db, task_id, csrf, "claim")


@router.post("/reviews/{task_id}/release")
async def release(
    request: Request, db: DatabaseDep, task_id: str, csrf: Annotated[str, Form(max_length=200)] = ""
) -> Response:
    return await _act(request, db, task_id, csrf, "release")


@router.post("/reviews/{task_id}/decide")
async def decide(
    request: Request,
    db: DatabaseDep,
    client: TemporalClientDep,
    task_id: str,
    decision: Annotated[str, Form(max_length=100)] = "",
    note: Annotated[str, Form(max_length=2000)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    viewer = await _posted(request, csrf, "view_reviews")
    if isinstance(viewer, Response):
        return viewer
    try:
        await decide_task(
            db,
            client,
            task_id=task_id[:64],
            viewer=viewer,
            decision=decision,
            note=note,
            address=client_address(request),
            require_claim=True,
        )
    except ReviewRefused as error:
        return _refusal(request, viewer, error.status, error.message)
    return RedirectResponse(
        f"/console/reviews/{quote(task_id)}?{urlencode({'done': decision})}", status_code=303
    )


# ----------------------------------------------------------------------------- messages


@router.get("/outbox", response_class=HTMLResponse)
async def outbox_page(request: Request, db: DatabaseDep, customer: str | None = None) -> Response:
    viewer = await _signed_in(request, "view_messages")
    if isinstance(viewer, Response):
        return viewer

    def load() -> list[OutboxMessage]:
        with session_scope(db) as session:
            query = select(OutboxMessage)
            if customer:
                query = query.where(OutboxMessage.customer_id == customer[:200])
            return list(session.exec(query.order_by(col(OutboxMessage.id).desc()).limit(200)).all())

    messages = await asyncio.to_thread(load)
    return _page(request, "outbox.html", viewer=viewer, messages=messages, customer=customer or "")
