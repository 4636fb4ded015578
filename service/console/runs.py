"""The console's runs: the runs list (``/console/runs``: search by customer, journey,
status or step, newest first, a page at a time) and a run's page (``/console/runs/{id}``:
what the run waits for and until when, why it did what it did (`service.explain`, as
`journeys explain` prints it), its path in pages, its messages, its review tasks).

Times show in the customer's zone (their profile's ``timezone`` trait), else the zone of
the journey's settings (the run's plan version), else UTC; with the zone's name and how
far away they are ("in 10 h", "2 min ago").

What a run waits for comes from what it recorded: its last path entry (a wait entry holds
when it wakes, an event wait also the event), or its open review task (the SLA). Only when
neither says, the running workflow is asked (its ``state`` query, briefly); without
Temporal the page still answers from the rows. Not here: sign-in, the page frame and the
other pages (`service.console.routes`), the messages themselves (`service.review_desk`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col
from sqlmodel import select as select_rows
from temporalio.client import Client

from engine.database import (
    Delivery,
    OutboxMessage,
    PlanVersion,
    Profile,
    ReviewTask,
    Run,
    session_scope,
)
from engine.payloads import QUERY_STATE
from engine.profiles import mask_address
from engine.run_path import (
    RUN_COLUMNS,
    PathPage,
    last_path,
    path_length,
    read_path_page,
    run_without_path,
)
from engine.timestamps import as_utc, utcnow
from service.api.deps import DatabaseDep, SettingsDep, TemporalClientDep
from service.api.routes.runs import temporal_ui_url
from service.console.routes import _page, _refusal, _signed_in
from service.explain import RunExplanation, explain_run, load_records, without_content
from service.review_desk import run_messages

__all__ = ["RUNS_PAGE_SIZE", "router"]

log = logging.getLogger(__name__)

RUNS_PAGE_SIZE = 50
"""Runs on one page of the runs list; the next ones on the next page (`?page=`)."""
RUNS_LAST_PAGE = 2000
"""The furthest page the list goes to (a narrower search finds an older run)."""
RUN_PAGE_PATH_ENTRIES = 500
"""Path entries on one run page; a longer path goes on on the next (`?after=`)."""
STATE_QUERY_SECONDS = 2.0
"""How long the run page waits for the workflow's answer, when the rows do not say."""
STATUSES = ("running", "completed", "exited", "expired", "failed")

router = APIRouter(prefix="/console", include_in_schema=False)


# ----------------------------------------------------------------------------- times


def _zone(name: Any) -> ZoneInfo | None:
    if not isinstance(name, str) or not name.strip():
        return None
    try:
        return ZoneInfo(name.strip())
    except (KeyError, ValueError):
        return None


@functools.lru_cache(maxsize=256)
def _plan_zone_of(plan_json: str) -> str | None:
    try:
        settings = json.loads(plan_json).get("settings") or {}
    except (ValueError, AttributeError):
        return None
    zone = settings.get("timezone") if isinstance(settings, dict) else None
    return zone if isinstance(zone, str) else None


def _plan_zones(session: Session, runs: Sequence[Run]) -> dict[tuple[str, str], str | None]:
    """The zone of each run's plan version's settings, by (journey, version)."""
    wanted = {(run.journey_id, run.version) for run in runs}
    if not wanted:
        return {}
    rows = session.connection().execute(
        select(
            col(PlanVersion.journey_id), col(PlanVersion.version), col(PlanVersion.plan_json)
        ).where(
            or_(
                *(
                    and_(
                        col(PlanVersion.journey_id) == journey, col(PlanVersion.version) == version
                    )
                    for journey, version in sorted(wanted)
                )
            )
        )
    )
    return {
        (row.journey_id, row.version): _plan_zone_of(row.plan_json)
        for row in rows
        if (row.journey_id, row.version) in wanted
    }


def _profile_zones(session: Session, customers: set[str]) -> dict[str, str | None]:
    if not customers:
        return {}
    rows = session.exec(select_rows(Profile).where(col(Profile.customer_id).in_(customers)))
    return {row.customer_id: (row.traits or {}).get("timezone") for row in rows}


@dataclass(frozen=True)
class Clock:
    """Times as a page shows them: in ``zone`` (named, with where it comes from) and
    relative to ``now``."""

    zone: ZoneInfo
    source: str
    now: datetime

    @property
    def name(self) -> str:
        return self.zone.key

    def local(self, moment: datetime | str | None) -> str:
        """``2026-12-04 09:00 KST``"""
        moment = _moment(moment)
        if moment is None:
            return ""
        return as_utc(moment).astimezone(self.zone).strftime("%Y-%m-%d %H:%M %Z")

    def iso(self, moment: datetime | str | None) -> str:
        moment = _moment(moment)
        return "" if moment is None else as_utc(moment).isoformat()

    def relative(self, moment: datetime | str | None) -> str:
        """``in 10 h``, ``2 min ago``, ``just now``."""
        moment = _moment(moment)
        if moment is None:
            return ""
        seconds = (as_utc(moment) - self.now).total_seconds()
        ahead, seconds = seconds > 0, abs(seconds)
        if seconds < 45:
            return "in a moment" if ahead else "just now"
        if seconds < 5400:
            text = f"{max(round(seconds / 60), 1)} min"
        elif seconds < 129600:
            text = f"{round(seconds / 3600)} h"
        else:
            text = f"{round(seconds / 86400)} d"
        return f"in {text}" if ahead else f"{text} ago"

    def past(self, moment: datetime | None) -> bool:
        return moment is not None and as_utc(moment) <= self.now


def clock_for(customer_zone: Any, plan_zone: Any, now: datetime | None = None) -> Clock:
    """The customer's zone when their profile names a real one, else the journey's, else UTC."""
    now = now or utcnow()
    for name, source in ((customer_zone, "the customer's zone"), (plan_zone, "the journey's zone")):
        zone = _zone(name)
        if zone is not None:
            return Clock(zone, source, now)
    return Clock(ZoneInfo("UTC"), "no zone known", now)


def _moment(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return as_utc(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


# ----------------------------------------------------------------------------- the runs list


@dataclass(frozen=True)
class RunSearch:
    customer: str = ""
    journey: str = ""
    status: str = ""
    step: str = ""
    page: int = 1

    @classmethod
    def of(cls, **given: str | None) -> RunSearch:
        def text(name: str, longest: int) -> str:
            value = (given.get(name) or "").strip()
            return value[:longest] if "\x00" not in value else ""

        status = text("status", 20)
        try:
            page = min(max(int(given.get("page") or 1), 1), RUNS_LAST_PAGE)
        except ValueError:
            page = 1
        return cls(
            customer=text("customer", 200),
            journey=text("journey", 100),
            status=status if status in STATUSES else "",
            step=text("step", 100),
            page=page,
        )

    def link(self, page: int) -> str:
        query = {k: v for k, v in self.__dict__.items() if v and k != "page"}
        if page > 1:
            query["page"] = page
        return "/console/runs" + (f"?{urlencode(query)}" if query else "")

    @staticmethod
    def customer_link(customer: str) -> str:
        return f"/console/runs?{urlencode({'customer': customer})}"


@dataclass(frozen=True)
class RunRow:
    run: Run
    clock: Clock


@dataclass(frozen=True)
class RunsPage:
    rows: list[RunRow]
    more: bool
    journeys: list[str]


def _search_runs(db: Engine, search: RunSearch) -> RunsPage:
    query = select(*RUN_COLUMNS)
    if search.customer:
        # The id or its beginning ("cust-12" finds cust-12 and cust-123), case as typed:
        # a substring compare, the same on SQLite and PostgreSQL (LIKE is not: SQLite's
        # ignores case, and either needs its wildcards escaped).
        prefix = func.substr(col(Run.customer_id), 1, len(search.customer))
        query = query.where(prefix == search.customer)
    for column, value in (
        (Run.journey_id, search.journey),
        (Run.status, search.status),
        (Run.step, search.step),
    ):
        if value:
            query = query.where(col(column) == value)
    query = (
        query.order_by(col(Run.started_at).desc(), col(Run.run_id).desc())
        .offset((search.page - 1) * RUNS_PAGE_SIZE)
        .limit(RUNS_PAGE_SIZE + 1)
    )
    with session_scope(db) as session:
        runs = [Run(**row) for row in session.connection().execute(query).mappings()]
        more, runs = len(runs) > RUNS_PAGE_SIZE, runs[:RUNS_PAGE_SIZE]
        customers = _profile_zones(session, {run.customer_id for run in runs})
        plans = _plan_zones(session, runs)
        journeys: list[str] = sorted(
            session.connection().execute(select(col(PlanVersion.journey_id)).distinct()).scalars()
        )
    now = utcnow()
    rows = [
        RunRow(
            run,
            clock_for(
                customers.get(run.customer_id), plans.get((run.journey_id, run.version)), now
            ),
        )
        for run in runs
    ]
    return RunsPage(rows=rows, more=more, journeys=journeys)


@router.get("/runs", response_class=HTMLResponse)
async def runs_page(
    request: Request,
    db: DatabaseDep,
    customer: str | None = None,
    journey: str | None = None,
    status: str | None = None,
    step: str | None = None,
    page: str | None = None,
) -> Response:
    viewer = await _signed_in(request, "view_runs")
    if isinstance(viewer, Response):
        return viewer
    search = RunSearch.of(customer=customer, journey=journey, status=status, step=step, page=page)
    found = await asyncio.to_thread(_search_runs, db, search)
    return _page(
        request,
        "runs.html",
        viewer=viewer,
        search=search,
        found=found,
        statuses=STATUSES,
        page_size=RUNS_PAGE_SIZE,
    )


# ----------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class Waiting:
    """What a running run waits for: ``what`` (an event, a review; None: only time) until
    ``until`` (None: no time limit), with a ``note`` (why a send waits, what the workflow
    said); ``source``: where the page read it (``recorded``, ``workflow``)."""

    what: str | None
    until: datetime | None
    note: str | None
    source: str


@dataclass(frozen=True)
class Message:
    """A delivery attempt or a captured message, or both (a capture records a delivery too)."""

    at: datetime | None
    channel: str
    step: str
    status: str
    recipient: str
    reason: str | None = None
    subject: str | None = None
    body: str | None = None
    captured: bool = False

    @property
    def personal(self) -> bool:
        """Whether the content may hold personal data (all but the ops channel's)."""
        return self.channel != "ops"


def _messages(deliveries: list[Delivery], outbox: list[OutboxMessage]) -> list[Message]:
    """One list, oldest first: each delivery, with the message its capture kept, then the
    captured messages no delivery row names (a review's escalation to ops)."""
    kept = {(m.step_id, m.visit, m.channel): m for m in outbox}
    messages = []
    for d in deliveries:
        m = kept.pop((d.step_id, d.visit, d.channel or ""), None)
        messages.append(
            Message(
                at=d.sent_at or d.created_at,
                channel=d.channel or "",
                step=d.step_id,
                status=d.status,
                recipient=d.recipient_masked or "",
                reason=d.reason,
                subject=m.subject if m else None,
                body=m.body if m else None,
                captured=m is not None,
            )
        )
    for m in kept.values():
        messages.append(
            Message(
                at=m.created_at,
                channel=m.channel,
                step=m.step_id,
                status=m.status,
                recipient=str(
                    (m.recipient if m.channel == "ops" else mask_address(m.recipient, m.channel))
                    or ""
                ),
                subject=m.subject,
                body=m.body,
                captured=True,
            )
        )
    return sorted(messages, key=lambda m: as_utc(m.at) if m.at else utcnow())


def recorded_wait(run: Run, last: list[dict[str, Any]], tasks: list[ReviewTask]) -> Waiting | None:
    """What the rows say the run waits for: an open review task at its step, or its last
    path entry when that is its step's wait (or a send's deferral) still waiting."""
    if run.status != "running":
        return None
    for task in tasks:
        if task.status == "open" and task.step_id == run.step:
            return Waiting(f"a review in {task.queue}", task.due_at, None, "recorded")
    if not last:
        return None
    entry = last[-1]
    detail = entry.get("detail") or {}
    if entry.get("step") != run.step or entry.get("outcome") not in ("waiting", "deferred"):
        return None
    until = _moment(detail.get("until"))
    if entry.get("outcome") == "deferred":
        return Waiting(None, until, detail.get("reason"), "recorded")
    event = detail.get("event")
    if event:
        return Waiting(str(event), until, None, "recorded")
    return Waiting(None, until, None, "recorded") if until is not None else None


async def _asked_wait(client: Client | None, run: Run) -> Waiting | None:
    """What the running workflow says it waits for (its ``state`` query), or None when it
    does not answer in time (no worker, Temporal down, the run ended)."""
    if client is None or run.status != "running":
        return None
    try:
        handle = client.get_workflow_handle(
            run.workflow_id, run_id=run.current_run_id or run.run_id
        )
        state = await asyncio.wait_for(
            handle.query(QUERY_STATE, rpc_timeout=timedelta(seconds=STATE_QUERY_SECONDS)),
            STATE_QUERY_SECONDS + 0.5,
        )
    except Exception as error:
        log.info("state query for %s failed: %s", run.workflow_id, type(error).__name__)
        return None
    if not isinstance(state, dict) or not state.get("waiting_for"):
        return None
    return Waiting(None, _moment(state.get("wake_at")), str(state["waiting_for"]), "workflow")


@dataclass(frozen=True)
class RunView:
    run: Run | None
    path: PathPage
    path_total: int
    messages: list[Message]
    tasks: list[ReviewTask]
    waiting: Waiting | None
    clock: Clock
    why: RunExplanation | None = None


def _position(value: str | None) -> int:
    """A path position from the query string (-1, from the first, when it is not one)."""
    try:
        return min(max(int(value or -1), -1), 2**31 - 1)
    except ValueError:
        return -1


def _run_view(db: Engine, run_id: str, after: int) -> RunView:
    deliveries, outbox = run_messages(db, run_id)
    with session_scope(db) as session:
        run = run_without_path(session, run_id)
        page = read_path_page(session, run_id, after=after, limit=RUN_PAGE_PATH_ENTRIES)
        total = path_length(session, run_id)
        last = last_path(session, run_id, 1)
        tasks = list(
            session.exec(
                select_rows(ReviewTask)
                .where(col(ReviewTask.run_id) == run_id)
                .order_by(col(ReviewTask.created_at))
            ).all()
        )
        customer = _profile_zones(session, {run.customer_id}) if run else {}
        plan = _plan_zones(session, [run]) if run else {}
        records = load_records(session, run_id) if run else None
    clock = clock_for(
        customer.get(run.customer_id) if run else None,
        plan.get((run.journey_id, run.version)) if run else None,
    )
    waiting = recorded_wait(run, last, tasks) if run else None
    why = explain_run(records) if records is not None else None
    return RunView(run, page, total, _messages(deliveries, outbox), tasks, waiting, clock, why)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run_page(
    request: Request,
    db: DatabaseDep,
    settings: SettingsDep,
    client: TemporalClientDep,
    run_id: str,
    after: str | None = None,
) -> Response:
    viewer = await _signed_in(request, "view_runs")
    if isinstance(viewer, Response):
        return viewer
    view = await asyncio.to_thread(_run_view, db, run_id[:100], _position(after))
    if view.run is None:
        return _refusal(request, viewer, 404, f"No run with id {run_id[:100]!r}.")
    waiting = view.waiting or await _asked_wait(client, view.run)
    why = view.why
    if why is not None and not viewer.can("view_message_content"):
        why = without_content(why)  # a message's content holds personal data
    return _page(
        request,
        "run.html",
        viewer=viewer,
        run=view.run,
        path_page=view.path,
        path_total=view.path_total,
        messages=view.messages,
        tasks=view.tasks,
        waiting=waiting,
        clock=view.clock,
        why=why,
        temporal_ui=temporal_ui_url(settings, view.run),
    )
