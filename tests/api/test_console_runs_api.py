"""The console's runs over HTTP, as a signed-in user reads them: the runs list (search by
customer, journey, status and step, newest first, in pages, linked from the navigation)
and a run's page (what it waits for and until when, in the customer's zone or else the
journey's, its deliveries and captured messages in one list, its review decisions).

Runs are recorded as a journey's `record_run` would record them
(`activities.runs.upsert_run`); the run page reads them without Temporal, and asks the
workflow (a stand-in client here) only when the rows do not say what it waits for."""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client

from activities.runs import upsert_run
from engine.database import (
    Delivery,
    OutboxMessage,
    PlanVersion,
    Profile,
    ReviewTask,
    Run,
    session_scope,
)
from engine.payloads import PathEntry, RecordRunInput
from engine.timestamps import utcnow
from service.api.app import create_app
from service.console import runs as console_runs
from service.users import add_user, change_password, check_password
from tests.api.conftest import api_settings, running_api

pytestmark = pytest.mark.asyncio(loop_scope="session")

PASSWORD = "a-good-long-password"


# ----------------------------------------------------------------------------- helpers


@asynccontextmanager
async def signed_in(
    database_url: str, db: Engine, *, role: str = "ops", client: Any = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The app (with ``client`` as its Temporal client) and an httpx client signed in as a
    new user of ``role``."""
    name = f"user-{role}"
    first = add_user(db, name=name, role=role)
    user = check_password(db, name=name, password=first)
    assert user is not None and user.id is not None
    change_password(db, user_id=user.id, current=first, new=PASSWORD)
    settings = api_settings(database_url=database_url, task_queue="unused").model_copy(
        update={"secret_key": "console-secret-for-tests"}
    )
    async with running_api(create_app(settings, client=cast(Client, client))) as running:
        page = await running.http.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        answer = await running.http.post(
            "/console/login", data={"name": name, "password": PASSWORD, "csrf": csrf.group(1)}
        )
        assert answer.status_code == 303
        yield running.http


class NoTemporal:
    """A Temporal client that knows no workflow: every query fails at once."""

    def get_workflow_handle(self, workflow_id: str, **_: Any) -> Any:
        raise RuntimeError("no such workflow")


def text_of(page: httpx.Response) -> str:
    """The page as a reader sees it: no tags, no script, whitespace collapsed."""
    assert page.status_code == 200, page.text
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", page.text, flags=re.S)
    body = re.sub(r"<[^>]+>", " ", body)
    text = re.sub(r"\s+", " ", html.unescape(body)).strip()
    return re.sub(r" ([;,.:])(?=\s|$)", r"\1", text)  # a tag's end before punctuation


def record(
    db: Engine,
    run_id: str,
    *,
    customer: str = "cust-1",
    journey: str = "payment_recovery",
    version: str = "v1",
    status: str = "running",
    step: str | None = None,
    path: list[PathEntry] | None = None,
) -> None:
    with session_scope(db) as session:
        upsert_run(
            session,
            RecordRunInput(
                run_id=run_id,
                workflow_id=f"journey/{journey}/{run_id}",
                journey_id=journey,
                version=version,
                customer_id=customer,
                status=status,  # type: ignore[arg-type]
                step=step,
                path=path or [],
                path_start=0,
            ),
        )


def waiting_entry(step: str, until: datetime, **detail: Any) -> PathEntry:
    return PathEntry(
        step=step,
        type="wait",
        at=utcnow(),
        outcome="waiting",
        detail={"until": until.isoformat(), **detail},
    )


def add(db: Engine, *rows: Any) -> None:
    with session_scope(db) as session:
        for row in rows:
            session.add(row)


def local(moment: datetime, zone: str) -> str:
    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %Z")


# ----------------------------------------------------------------------------- what a run waits for


async def test_a_run_waiting_for_the_morning_says_until_when_in_the_customers_zone(
    database_url: str, db: Engine
) -> None:
    wake = utcnow() + timedelta(hours=10)
    add(db, Profile(customer_id="cust-seoul", traits={"timezone": "Asia/Seoul"}))
    record(
        db,
        "run-morning",
        customer="cust-seoul",
        step="wait_for_morning",
        path=[waiting_entry("wait_for_morning", wake, local="09:00")],
    )

    async with signed_in(database_url, db, client=NoTemporal()) as http:
        page = text_of(await http.get("/console/runs/run-morning"))

    assert f"Waiting until {local(wake, 'Asia/Seoul')} (in 10 h)" in page
    assert local(wake, "Asia/Seoul").endswith(" KST")
    assert "at step wait_for_morning" in page
    assert "Times in Asia/Seoul (the customer's zone)." in page


async def test_the_paths_times_are_in_the_runs_zone_too(database_url: str, db: Engine) -> None:
    entry = waiting_entry("wait_for_morning", utcnow() + timedelta(hours=10), local="09:00")
    add(db, Profile(customer_id="cust-path", traits={"timezone": "Asia/Seoul"}))
    record(db, "run-path-times", customer="cust-path", step="wait_for_morning", path=[entry])

    async with signed_in(database_url, db, client=NoTemporal()) as http:
        page = text_of(await http.get("/console/runs/run-path-times"))

    assert f"{local(entry.at, 'Asia/Seoul')} (just now)" in page
    assert entry.at.isoformat() not in page, page


async def test_an_event_wait_says_the_event_and_until_when_in_the_journeys_zone(
    database_url: str, db: Engine
) -> None:
    timeout = utcnow() + timedelta(days=3)
    plan = {"journey_id": "payment_recovery", "settings": {"timezone": "Europe/Berlin"}}
    add(
        db,
        PlanVersion(
            journey_id="payment_recovery",
            version="v2",
            plan_json=json.dumps(plan),
            source_yaml="",
            active=True,
        ),
        # a zone that is none: the journey's zone is taken instead
        Profile(customer_id="cust-nowhere", traits={"timezone": "Mars/Olympus"}),
    )
    record(
        db,
        "run-payment",
        customer="cust-nowhere",
        version="v2",
        step="wait_for_payment",
        path=[waiting_entry("wait_for_payment", timeout, event="payment_received")],
    )

    async with signed_in(database_url, db, client=NoTemporal()) as http:
        page = text_of(await http.get("/console/runs/run-payment"))

    zone = local(timeout, "Europe/Berlin")
    assert f"Waiting for payment_received until {zone} (in 3 d)" in page
    assert "Times in Europe/Berlin (the journey's zone)." in page


async def test_a_run_with_no_known_zone_shows_utc_and_a_wait_without_a_limit(
    database_url: str, db: Engine
) -> None:
    entry = PathEntry(
        step="listening",
        type="wait",
        at=utcnow(),
        outcome="waiting",
        detail={"event": "payment_received", "until": None},
    )
    record(db, "run-open", step="listening", path=[entry])

    async with signed_in(database_url, db, client=NoTemporal()) as http:
        page = text_of(await http.get("/console/runs/run-open"))

    assert "Waiting for payment_received with no time limit" in page
    assert "Times in UTC (no zone known)." in page


async def test_a_wait_gone_by_says_the_run_has_not_moved_on_yet(
    database_url: str, db: Engine
) -> None:
    wake = utcnow() - timedelta(minutes=2)
    record(db, "run-late", step="wait_for_morning", path=[waiting_entry("wait_for_morning", wake)])

    async with signed_in(database_url, db, client=NoTemporal()) as http:
        page = text_of(await http.get("/console/runs/run-late"))

    assert (
        f"Waited until {local(wake, 'UTC')} (2 min ago); the run has not recorded its next "
        "step yet." in page
    )


async def test_a_send_held_for_quiet_hours_says_until_when_and_why(
    database_url: str, db: Engine
) -> None:
    retry = utcnow() + timedelta(hours=8)
    reason = "quiet hours 21:00-08:00 in Asia/Seoul"
    add(db, Profile(customer_id="cust-night", traits={"timezone": "Asia/Seoul"}))
    deferred = PathEntry(
        step="grace_sms",
        type="send",
        at=utcnow(),
        outcome="deferred",
        detail={"channel": "sms", "until": retry.isoformat(), "reason": reason},
    )
    record(db, "run-night", customer="cust-night", step="grace_sms", path=[deferred])

    async with signed_in(database_url, db, client=NoTemporal()) as http:
        page = text_of(await http.get("/console/runs/run-night"))

    assert f"Waiting until {local(retry, 'Asia/Seoul')} (in 8 h) {reason}" in page


async def test_an_open_review_says_the_queue_and_the_sla(database_url: str, db: Engine) -> None:
    due = utcnow() + timedelta(hours=4)
    record(db, "run-review", step="manual_review")
    add(db, review_task("run-review", status="open", due_at=due, claimed_by="ana"))

    async with signed_in(database_url, db, client=NoTemporal()) as http:
        page = text_of(await http.get("/console/runs/run-review"))

    assert f"Waiting for a review in collections until {local(due, 'UTC')} (in 4 h)" in page
    assert f"Claimed by ana · due {local(due, 'UTC')} (in 4 h)" in page


class Answering:
    """A Temporal client whose workflow answers its state query with ``state`` (after
    ``delay`` seconds)."""

    def __init__(self, state: dict[str, Any], delay: float = 0.0) -> None:
        self.state, self.delay, self.asked = state, delay, 0

    def get_workflow_handle(self, workflow_id: str, **_: Any) -> Any:
        client = self

        class Handle:
            async def query(self, name: str, **__: Any) -> dict[str, Any]:
                client.asked += 1
                await asyncio.sleep(client.delay)
                return client.state

        return Handle()


async def test_when_the_rows_do_not_say_the_workflow_is_asked(
    database_url: str, db: Engine
) -> None:
    deadline = utcnow() + timedelta(days=30)
    held = PathEntry(step="holdout", type="holdout", at=utcnow(), outcome="held_out")
    record(db, "run-held", step="holdout", path=[held])
    client = Answering(
        {"waiting_for": "holdout: exit events only", "wake_at": deadline.isoformat()}
    )

    async with signed_in(database_url, db, client=client) as http:
        page = text_of(await http.get("/console/runs/run-held"))
        recorded = text_of(await http.get("/console/runs/run-held"))

    assert f"Waiting until {local(deadline, 'UTC')} (in 30 d) holdout: exit events only" in page
    assert client.asked == 2 and recorded == page


async def test_a_workflow_that_does_not_answer_in_time_leaves_the_rows(
    database_url: str, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_runs, "STATE_QUERY_SECONDS", 0.2)
    record(db, "run-slow", step="score_risk")
    slow = Answering({"waiting_for": "never seen"}, delay=30)

    async with signed_in(database_url, db, client=slow) as http:
        started = asyncio.get_running_loop().time()
        page = text_of(await http.get("/console/runs/run-slow"))
        took = asyncio.get_running_loop().time() - started

    assert "at step score_risk" in page and "Waiting" not in page and "never seen" not in page
    assert took < 5


async def test_an_ended_run_neither_waits_nor_asks(database_url: str, db: Engine) -> None:
    wake = utcnow() + timedelta(hours=1)
    record(
        db,
        "run-done",
        status="completed",
        step="wait_for_morning",
        path=[waiting_entry("wait_for_morning", wake)],
    )
    client = Answering({"waiting_for": "should not be asked"})

    async with signed_in(database_url, db, client=client) as http:
        page = text_of(await http.get("/console/runs/run-done"))

    assert "Status completed" in page and "Waiting" not in page and client.asked == 0


# ----------------------------------------------------------------------------- messages and reviews


def review_task(run_id: str, **fields: Any) -> ReviewTask:
    values: dict[str, Any] = {
        "id": f"task-{run_id}",
        "workflow_id": f"journey/payment_recovery/{run_id}",
        "run_id": run_id,
        "journey_id": "payment_recovery",
        "customer_id": "cust-1",
        "step_id": "manual_review",
        "visit": 1,
        "queue": "collections",
        "title": "High-risk payment failure",
        "decisions": ["approve", "reject"],
        **fields,
    }
    return ReviewTask(**values)


def messages_of(db: Engine, run_id: str) -> None:
    """A captured SMS (its delivery row and the outbox's copy), a failed email, and an ops
    message a review's escalation captured (no delivery row)."""
    at = utcnow() - timedelta(minutes=5)
    common = {"workflow_id": f"wf-{run_id}", "run_id": run_id, "journey_id": "payment_recovery"}
    add(
        db,
        Delivery(
            **common,
            step_id="grace_sms",
            visit=1,
            customer_id="cust-1",
            channel="sms",
            recipient_masked="+82******1234",
            status="captured",
            reason="no channel URL set: kept in the outbox",
            created_at=at,
            sent_at=at,
        ),
        OutboxMessage(
            **common,
            step_id="grace_sms",
            visit=1,
            customer_id="cust-1",
            channel="sms",
            recipient="+821055501234",
            body="Mina, your grace period ends Friday.",
            created_at=at,
        ),
        Delivery(
            **common,
            step_id="reminder_email",
            visit=1,
            customer_id="cust-1",
            channel="email",
            recipient_masked="m***@example.com",
            status="failed",
            reason="provider answered 503",
            created_at=at + timedelta(minutes=1),
        ),
        OutboxMessage(
            **common,
            step_id="manual_review",
            visit=1,
            customer_id="cust-1",
            channel="ops",
            recipient="collections-leads",
            subject="Escalated: High-risk payment failure",
            body="The SLA passed.",
            created_at=at + timedelta(minutes=2),
        ),
    )


async def test_deliveries_and_captured_messages_are_one_list_content_hidden_from_ops(
    database_url: str, db: Engine
) -> None:
    record(db, "run-messages", status="completed")
    messages_of(db, "run-messages")

    async with signed_in(database_url, db, role="ops", client=NoTemporal()) as http:
        response = await http.get("/console/runs/run-messages")
    page = text_of(response)

    at = utcnow() - timedelta(minutes=5)
    assert re.findall(r'data-message="([^"]+)"', response.text) == [
        "grace_sms",
        "reminder_email",
        "manual_review",
    ]
    assert re.findall(r'data-outbox="([^"]+)"', response.text) == ["grace_sms", "manual_review"]
    assert "No delivery attempts" not in page
    assert (
        f"grace_sms · sms captured to +82******1234 {local(at, 'UTC')} (5 min ago) "
        "no channel URL set: kept in the outbox content hidden: a message holds personal data"
    ) in page
    assert "reminder_email · email failed to m***@example.com" in page
    assert "provider answered 503" in page
    # the ops channel's message is the team's own: shown to every role
    assert "manual_review · ops captured to collections-leads" in page
    assert "Escalated: High-risk payment failure The SLA passed." in page
    assert "grace period" not in page and "+821055501234" not in response.text


async def test_a_role_that_may_read_message_content_sees_it(database_url: str, db: Engine) -> None:
    record(db, "run-messages", status="completed")
    messages_of(db, "run-messages")

    async with signed_in(database_url, db, role="auditor", client=NoTemporal()) as http:
        response = await http.get("/console/runs/run-messages")
    page = text_of(response)

    assert "Mina, your grace period ends Friday." in page
    assert "content hidden" not in page and "+821055501234" not in response.text


async def test_a_decided_review_shows_who_decided_what_when_and_their_note(
    database_url: str, db: Engine
) -> None:
    decided = utcnow() - timedelta(minutes=2)
    record(db, "run-decided", step="grace_sms")
    add(
        db,
        review_task(
            "run-decided",
            status="decided",
            decision="approve",
            reviewer="bob",
            note="Called the customer; the card was replaced.",
            decided_at=decided,
        ),
    )

    async with signed_in(database_url, db, client=NoTemporal()) as http:
        page = text_of(await http.get("/console/runs/run-decided"))

    assert "High-risk payment failure decided queue collections" in page
    assert f"Decided approve by bob {local(decided, 'UTC')} (2 min ago)" in page
    assert "Note: Called the customer; the card was replaced." in page


async def test_a_run_without_messages_says_so(database_url: str, db: Engine) -> None:
    record(db, "run-quiet", step="score_risk")

    async with signed_in(database_url, db, client=NoTemporal()) as http:
        page = text_of(await http.get("/console/runs/run-quiet"))

    assert "No messages: no send step has run." in page and "No delivery attempts" not in page


async def test_an_unknown_run_is_a_404_page(database_url: str, db: Engine) -> None:
    async with signed_in(database_url, db, client=NoTemporal()) as http:
        page = await http.get("/console/runs/nope")

    assert page.status_code == 404 and "No run with id 'nope'." in html.unescape(page.text)


# ----------------------------------------------------------------------------- the runs list


def listed(page: httpx.Response) -> list[str]:
    assert page.status_code == 200, page.text
    return re.findall(r'<tr data-run="([^"]+)"', page.text)


def record_many(db: Engine) -> datetime:
    """Runs started a minute apart, run-0 the oldest (two hours ago: returned)."""
    start = (utcnow() - timedelta(hours=2)).replace(second=0, microsecond=0)
    plan = [
        ("cust-a", "payment_recovery", "running", "wait_for_morning"),
        ("cust-b", "payment_recovery", "completed", "grace_sms"),
        ("cust-a", "welcome", "running", "wait_a_day"),
        ("cust-c", "payment_recovery", "running", "wait_for_morning"),
        ("cust-a", "payment_recovery", "failed", "score_risk"),
    ]
    for n, (customer, journey, status, step) in enumerate(plan):
        record(db, f"run-{n}", customer=customer, journey=journey, status=status, step=step)
        with session_scope(db) as session:
            row = session.get(Run, f"run-{n}")
            assert row is not None
            row.started_at = start + timedelta(minutes=n)
            session.add(row)
    return start


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ["run-4", "run-3", "run-2", "run-1", "run-0"]),
        ({"customer": "cust-a"}, ["run-4", "run-2", "run-0"]),
        ({"customer": " cust-a "}, ["run-4", "run-2", "run-0"]),
        ({"journey": "welcome"}, ["run-2"]),
        ({"status": "running"}, ["run-3", "run-2", "run-0"]),
        ({"step": "wait_for_morning"}, ["run-3", "run-0"]),
        ({"customer": "cust-a", "status": "running", "journey": "payment_recovery"}, ["run-0"]),
        ({"customer": "nobody"}, []),
        # The id's beginning finds every customer it starts, and only as typed.
        ({"customer": "cust-"}, ["run-4", "run-3", "run-2", "run-1", "run-0"]),
        ({"customer": "cust-b"}, ["run-1"]),
        ({"customer": "CUST-A"}, []),
        ({"customer": "ust-a"}, []),
        ({"customer": "cust-a%"}, []),  # no wildcards: the text itself
        ({"status": "nonsense"}, ["run-4", "run-3", "run-2", "run-1", "run-0"]),
    ],
)
async def test_the_runs_list_searches_by_customer_journey_status_and_step_newest_first(
    database_url: str, db: Engine, query: dict[str, str], expected: list[str]
) -> None:
    record_many(db)

    async with signed_in(database_url, db, client=NoTemporal()) as http:
        page = await http.get("/console/runs", params=query)

    assert listed(page) == expected
    if not expected:
        assert "No runs match this search." in text_of(page)


async def test_a_listed_run_shows_its_times_in_the_customers_zone_and_links_its_page(
    database_url: str, db: Engine
) -> None:
    start = record_many(db)
    add(db, Profile(customer_id="cust-c", traits={"timezone": "Asia/Seoul"}))

    async with signed_in(database_url, db, client=NoTemporal()) as http:
        response = await http.get("/console/runs", params={"customer": "cust-c"})
        opened = await http.get("/console/runs/run-3")
    page = text_of(response)

    started = start + timedelta(minutes=3)
    assert (
        f"payment_recovery version v1 cust-c running wait_for_morning "
        f"{local(started, 'Asia/Seoul')} 2 h ago"
    ) in page
    assert 'href="/console/runs/run-3"' in response.text
    assert 'href="/console/runs?customer=cust-c"' in response.text
    assert "payment_recovery · cust-c" in text_of(opened)


async def test_the_runs_list_comes_in_pages_of_fifty(database_url: str, db: Engine) -> None:
    start = utcnow() - timedelta(days=1)
    for n in range(console_runs.RUNS_PAGE_SIZE + 3):
        record(db, f"run-{n:03d}", customer="cust-many")
        with session_scope(db) as session:
            row = session.get(Run, f"run-{n:03d}")
            assert row is not None
            row.started_at = start + timedelta(seconds=n)
            session.add(row)

    async with signed_in(database_url, db, client=NoTemporal()) as http:
        first = await http.get("/console/runs", params={"customer": "cust-many"})
        older = re.search(r'href="([^"]+)" rel="next"', first.text)
        assert older is not None
        second = await http.get(html.unescape(older.group(1)))
        nonsense = await http.get("/console/runs", params={"page": "x"})
        beyond = await http.get("/console/runs", params={"page": "99999999"})

    assert listed(first) == [f"run-{n:03d}" for n in range(52, 2, -1)]
    assert "Runs 1 to 50, newest first." in text_of(first)
    assert html.unescape(older.group(1)) == "/console/runs?customer=cust-many&page=2"
    assert listed(second) == ["run-002", "run-001", "run-000"]
    assert "Runs 51 to 53, newest first." in text_of(second)
    assert 'rel="next"' not in second.text and 'rel="prev"' in second.text
    assert listed(nonsense) == listed(first)
    assert listed(beyond) == [] and "No runs on this page." in text_of(beyond)


@pytest.mark.parametrize("role", ["ops", "designer", "auditor"])
async def test_the_navigation_links_the_runs_list(database_url: str, db: Engine, role: str) -> None:
    async with signed_in(database_url, db, role=role, client=NoTemporal()) as http:
        page = await http.get("/console/runs")

    nav = re.search(r"<nav>(.*?)</nav>", page.text, flags=re.S)
    assert nav is not None
    assert re.search(r'<a href="/console/runs" class="on">Runs</a>', nav.group(1))


async def test_the_runs_list_needs_a_session(database_url: str, db: Engine) -> None:
    settings = api_settings(database_url=database_url, task_queue="unused").model_copy(
        update={"secret_key": "console-secret-for-tests"}
    )
    async with running_api(create_app(settings, client=cast(Client, NoTemporal()))) as running:
        page = await running.http.get("/console/runs", params={"customer": "cust-a"})

    assert page.status_code == 303
    assert page.headers["location"] == "/console/login?next=%2Fconsole%2Fruns%3Fcustomer%3Dcust-a"
