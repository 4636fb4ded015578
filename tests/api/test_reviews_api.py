"""The review API and the console over HTTP, against real runs: the real interpreter on the
dev server opens review tasks, and decisions travel as the run's Update.

Asserted as a user sees it: status codes and messages, the row in the review queue, the
run's path after a decision, the audit trail.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.engine import Engine
from sqlmodel import select
from temporalio.client import Client, WorkflowHandle

from engine.database import ReviewAudit, ReviewTask, session_scope, upsert_profile
from engine.payloads import WORKFLOW_NAME, EventMessage, JourneyRunInput, RunState
from engine.plan import Plan
from service.api.app import create_app
from service.users import add_user, change_password, check_password
from tests.api.conftest import AUTH, RunningApi, api_settings, running_api
from tests.database import deploy
from worker import build_worker

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "console-secret-for-tests"
PASSWORD = "a-good-long-password"

JOURNEYS = """
version: 1
settings: {timezone: UTC}
events:
  payment_failed: {amount: number}
channels: {sms: "${JOURNEYS_SMS_URL}"}
models:
  default_risk: {kind: python, function: "risk_models.default_risk:predict", fallback: 0.5}
templates:
  offer: {sms: "We can move your due date."}
journeys:
  - id: recovery
    entry: {event: payment_failed}
    steps:
      - id: risk
        score: default_risk
        features: {amount: event.amount, days_past_due: 30, failed_payments_90d: 3}
      - id: route
        branch:
          - {when: scores.default_risk.score >= 0.7, goto: ops_review}
        else: offer
      - id: ops_review
        review: collections
        title: "Risk {{ scores.default_risk.score | round(2) }} for {{ customer.id }}"
        details: "Payment of {{ event.amount }} failed."
        decisions: {approve: offer, reject: done}
        sla: SLA
        on_timeout: late
      - {id: offer, send: offer, channel: sms}
      - {id: done, exit: rejected}
      - {id: late, exit: timed_out}
"""


def basic(name: str, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def make_user(db: Engine, name: str, role: str) -> None:
    first = add_user(db, name=name, role=role)
    user = check_password(db, name=name, password=first)
    assert user is not None and user.id is not None
    change_password(db, user_id=user.id, current=first, new=PASSWORD)


@dataclasses.dataclass
class Desk:
    api: RunningApi
    db: Engine
    client: Client
    task_queue: str
    plans: dict[str, Plan]

    @property
    def http(self) -> httpx.AsyncClient:
        return self.api.http

    async def open_case(
        self, customer: str | None = None
    ) -> tuple[WorkflowHandle[Any, RunState], ReviewTask]:
        """Start a high-risk run and wait for the review task it opens."""
        customer = customer or f"c-{uuid.uuid4().hex[:8]}"
        with session_scope(self.db) as session:
            upsert_profile(
                session,
                customer_id=customer,
                traits={"first_name": "Ana", "phone": "+821012345678"},
            )
        plan = self.plans["recovery"]
        trigger = EventMessage(
            name="payment_failed",
            customer_id=customer,
            message_id=uuid.uuid4().hex,
            timestamp=datetime.now(UTC),
            properties={"amount": 900000},
        )
        handle: WorkflowHandle[Any, RunState] = await self.client.start_workflow(
            WORKFLOW_NAME,
            JourneyRunInput(plan=plan, customer_id=customer, trigger=trigger),
            id=f"journey/recovery/{customer}",
            task_queue=self.task_queue,
            result_type=RunState,
        )
        for _ in range(200):
            with session_scope(self.db) as session:
                task = session.exec(
                    select(ReviewTask).where(ReviewTask.customer_id == customer)
                ).first()
            if task is not None:
                return handle, task
            await asyncio.sleep(0.05)
        raise AssertionError("the run opened no review task")


async def _desk(
    database_url: str, task_queue: str, temporal_client: Client, db: Engine, sla: str
) -> AsyncIterator[Desk]:
    plans = deploy(db, JOURNEYS.replace("sla: SLA", f"sla: {sla}"))
    for name, role in (
        ("ana", "ops"),
        ("bob", "ops"),
        ("sue", "supervisor"),
        ("aud", "auditor"),
        ("dee", "designer"),
    ):
        make_user(db, name, role)
    settings = api_settings(database_url=database_url, task_queue=task_queue).model_copy(
        update={"secret_key": SECRET}
    )
    async with (
        build_worker(temporal_client, db=db, task_queue=task_queue, workflow_sandbox=True),
        running_api(create_app(settings, client=temporal_client)) as api,
    ):
        yield Desk(api=api, db=db, client=temporal_client, task_queue=task_queue, plans=plans)


@pytest_asyncio.fixture
async def desk(
    database_url: str, task_queue: str, temporal_client: Client, db: Engine
) -> AsyncIterator[Desk]:
    async for running in _desk(database_url, task_queue, temporal_client, db, "4h"):
        yield running


# ----------------------------------------------------------------------------- who may call


ENDPOINTS = [
    ("GET", "/v1/reviews", None),
    ("GET", "/v1/reviews/{id}", None),
    ("POST", "/v1/reviews/{id}/claim", None),
    ("POST", "/v1/reviews/{id}/release", None),
    ("POST", "/v1/reviews/{id}/decision", {"decision": "approve", "note": "ok"}),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-key"},
        basic("ana", "wrong-password-here"),
        basic("nobody"),
    ],
    ids=["no-credentials", "wrong-key", "wrong-password", "unknown-user"],
)
async def test_every_review_endpoint_refuses_missing_or_wrong_credentials(
    desk: Desk, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    _, task = await desk.open_case()
    answer = await desk.http.request(method, path.format(id=task.id), json=body, headers=headers)
    assert answer.status_code == 401, answer.text
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    with session_scope(desk.db) as session:
        assert session.get(ReviewTask, task.id).status == "open"  # type: ignore[union-attr]


async def test_a_reviewer_learns_what_is_wrong_with_a_malformed_decision(desk: Desk) -> None:
    _, task = await desk.open_case()
    answer = await desk.http.post(
        f"/v1/reviews/{task.id}/decision", json={"note": "fine"}, headers=basic("ana")
    )
    assert answer.status_code == 422, answer.text
    assert [error["field"] for error in answer.json()["errors"]] == ["decision"]
    stranger = await desk.http.post(
        f"/v1/reviews/{task.id}/decision", json={"note": "fine"}, headers=basic("ana", "wrong-pw")
    )
    assert stranger.status_code == 401 and "decision" not in stranger.text
    with session_scope(desk.db) as session:
        assert session.get(ReviewTask, task.id).status == "open"  # type: ignore[union-attr]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS[2:])
@pytest.mark.parametrize("who", ["api-key", "aud", "dee"])
async def test_only_ops_and_supervisors_may_work_a_task(
    desk: Desk, method: str, path: str, body: Any, who: str
) -> None:
    _, task = await desk.open_case()
    headers = AUTH if who == "api-key" else basic(who)
    answer = await desk.http.request(method, path.format(id=task.id), json=body, headers=headers)
    assert answer.status_code == 403, answer.text
    with session_scope(desk.db) as session:
        row = session.get(ReviewTask, task.id)
        assert row is not None and (row.status, row.claimed_by) == ("open", None)


async def test_api_keys_auditors_and_supervisors_read_the_queue_but_designers_do_not(
    desk: Desk,
) -> None:
    _, task = await desk.open_case()
    for headers in (AUTH, basic("aud"), basic("sue"), basic("ana")):
        queue = await desk.http.get("/v1/reviews", params={"queue": "collections"}, headers=headers)
        assert queue.status_code == 200
        [row] = [r for r in queue.json()["reviews"] if r["id"] == task.id]
        assert row["title"] == f"Risk 1.0 for {task.customer_id}" and row["risk"] > 0.99
    refused = await desk.http.get("/v1/reviews", headers=basic("dee"))
    assert refused.status_code == 403 and "designer" in refused.json()["detail"]


async def test_a_one_time_password_does_not_open_the_api(desk: Desk) -> None:
    first = add_user(desk.db, name="newbie", role="ops")
    answer = await desk.http.get("/v1/reviews", headers=basic("newbie", first))
    assert answer.status_code == 401


# ----------------------------------------------------------------------------- deciding


async def test_a_claimed_task_is_decided_by_its_claimer_once_and_the_run_moves_on(
    desk: Desk,
) -> None:
    handle, task = await desk.open_case()
    claimed = await desk.http.post(f"/v1/reviews/{task.id}/claim", headers=basic("ana"))
    assert claimed.status_code == 200 and claimed.json()["claimed_by"] == "ana"

    other = await desk.http.post(
        f"/v1/reviews/{task.id}/decision", json={"decision": "approve"}, headers=basic("bob")
    )
    assert (other.status_code, other.json()["detail"]) == (409, "this task is claimed by ana")

    decided = await desk.http.post(
        f"/v1/reviews/{task.id}/decision",
        json={"decision": "approve", "note": "income verified"},
        headers=basic("ana"),
    )
    assert decided.status_code == 200, decided.text
    assert (decided.json()["status"], decided.json()["reviewer"]) == ("decided", "ana")

    again = await desk.http.post(
        f"/v1/reviews/{task.id}/decision",
        json={"decision": "reject", "note": "no"},
        headers=basic("ana"),
    )
    assert again.status_code == 409
    assert again.json()["detail"] == "this task was decided already (approve by ana)"

    state = await handle.result()
    steps = [(entry.step, entry.outcome) for entry in state.path]
    assert ("ops_review", "approve") in steps and ("offer", "captured") in steps
    assert state.review is not None and state.review["note"] == "income verified"

    detail = (await desk.http.get(f"/v1/reviews/{task.id}", headers=basic("aud"))).json()
    trail = [(a["actor"], a["action"], a["outcome"]) for a in detail["audit"]]
    assert trail == [
        ("ana", "claim", "done"),
        ("bob", "decide", "refused"),
        ("ana", "decide", "done"),
        ("ana", "decide", "refused"),
    ]
    assert all(a["address"] for a in detail["audit"])


async def test_a_rejection_needs_a_note_and_an_unknown_decision_names_the_choices(
    desk: Desk,
) -> None:
    _, task = await desk.open_case()
    bare = await desk.http.post(
        f"/v1/reviews/{task.id}/decision", json={"decision": "reject"}, headers=basic("ana")
    )
    assert (bare.status_code, bare.json()["detail"]) == (422, "'reject' needs a note saying why")
    unknown = await desk.http.post(
        f"/v1/reviews/{task.id}/decision", json={"decision": "maybe"}, headers=basic("ana")
    )
    assert unknown.status_code == 422
    assert (
        unknown.json()["detail"]
        == "'maybe' is not a decision of this task: choose one of approve, reject"
    )
    with session_scope(desk.db) as session:
        assert session.get(ReviewTask, task.id).status == "open"  # type: ignore[union-attr]


async def test_a_double_click_decides_once(desk: Desk) -> None:
    handle, task = await desk.open_case()

    async def click() -> httpx.Response:
        return await desk.http.post(
            f"/v1/reviews/{task.id}/decision",
            json={"decision": "approve", "note": "ok"},
            headers=basic("ana"),
        )

    answers = await asyncio.gather(click(), click(), click())
    assert sorted(a.status_code for a in answers) == [200, 409, 409]
    state = await handle.result()
    assert [e.outcome for e in state.path if e.step == "ops_review"] == ["opened", "approve"]


async def test_a_supervisor_may_release_a_task_someone_else_claimed(desk: Desk) -> None:
    _, task = await desk.open_case()
    await desk.http.post(f"/v1/reviews/{task.id}/claim", headers=basic("ana"))
    by_bob = await desk.http.post(f"/v1/reviews/{task.id}/release", headers=basic("bob"))
    assert by_bob.status_code == 409
    by_sue = await desk.http.post(f"/v1/reviews/{task.id}/release", headers=basic("sue"))
    assert by_sue.status_code == 200 and by_sue.json()["claimed_by"] is None


@pytest_asyncio.fixture
async def fast_desk(
    database_url: str, task_queue: str, temporal_client: Client, db: Engine
) -> AsyncIterator[Desk]:
    async for running in _desk(database_url, task_queue, temporal_client, db, "2s"):
        yield running


async def test_a_decision_after_the_sla_ran_out_is_refused(fast_desk: Desk) -> None:
    handle, task = await fast_desk.open_case()
    state = await handle.result()  # the SLA runs out: the run takes on_timeout
    assert state.outcome == "timed_out"
    answer = await fast_desk.http.post(
        f"/v1/reviews/{task.id}/decision", json={"decision": "approve"}, headers=basic("ana")
    )
    assert answer.status_code == 409
    assert "expired" in answer.json()["detail"]


# ----------------------------------------------------------------------------- the console


async def sign_in(http: httpx.AsyncClient, name: str, password: str = PASSWORD) -> httpx.Response:
    page = await http.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    return await http.post(
        "/console/login", data={"name": name, "password": password, "csrf": csrf.group(1)}
    )


def form_token(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


@pytest.mark.parametrize(
    "path",
    [
        "/console/reviews",
        "/console/reviews/x",
        "/console/runs/x",
        "/console/outbox",
        "/console/password",
    ],
)
async def test_console_pages_send_strangers_to_sign_in(desk: Desk, path: str) -> None:
    answer = await desk.http.get(path)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/console/login")


async def test_the_sign_in_form_needs_its_csrf_token(desk: Desk) -> None:
    await desk.http.get("/console/login")
    answer = await desk.http.post(
        "/console/login", data={"name": "ana", "password": PASSWORD, "csrf": "forged"}
    )
    assert answer.status_code == 403 and "expired" in answer.text
    assert "journeys_session" not in answer.cookies


async def test_wrong_password_is_refused_without_saying_which_part(desk: Desk) -> None:
    answer = await sign_in(desk.http, "ana", "not-the-password")
    assert answer.status_code == 401 and "Wrong user name or password." in answer.text


async def test_forms_without_the_sessions_csrf_token_change_nothing(desk: Desk) -> None:
    _, task = await desk.open_case()
    assert (await sign_in(desk.http, "ana")).status_code == 303
    for path, data in (
        (f"/console/reviews/{task.id}/claim", {}),
        (f"/console/reviews/{task.id}/decide", {"decision": "approve", "note": "x"}),
        (
            "/console/password",
            {"current": PASSWORD, "new": "another-password-1", "repeat": "another-password-1"},
        ),
    ):
        for token in ({}, {"csrf": "forged"}):
            answer = await desk.http.post(path, data={**data, **token})
            assert answer.status_code == 403, (path, answer.text)
    with session_scope(desk.db) as session:
        row = session.get(ReviewTask, task.id)
        assert row is not None and (row.status, row.claimed_by) == ("open", None)
    assert check_password(desk.db, name="ana", password=PASSWORD) is not None


async def test_an_ops_user_decides_in_the_console_and_an_auditor_cannot(desk: Desk) -> None:
    handle, task = await desk.open_case()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=desk.api.app), base_url="http://api.test"
    ) as auditor:
        await sign_in(auditor, "aud")
        page = await auditor.get(f"/console/reviews/{task.id}")
        assert page.status_code == 200 and "can read this case but not decide it" in page.text
        refused = await auditor.post(
            f"/console/reviews/{task.id}/decide",
            data={"decision": "approve", "csrf": form_token(page)},
        )
        assert refused.status_code == 403
    await sign_in(desk.http, "ana")
    queue = await desk.http.get("/console/reviews")
    assert task.title in queue.text
    page = await desk.http.get(f"/console/reviews/{task.id}")
    assert "Why this case is here" in page.text and "default_risk" in page.text
    assert "+821012345678" not in page.text  # addresses masked
    claimed = await desk.http.post(
        f"/console/reviews/{task.id}/claim", data={"csrf": form_token(page)}
    )
    assert claimed.status_code == 303  # the console decides only with the claim
    page = await desk.http.get(f"/console/reviews/{task.id}")
    answer = await desk.http.post(
        f"/console/reviews/{task.id}/decide",
        data={"decision": "approve", "note": "fine", "csrf": form_token(page)},
    )
    assert answer.status_code == 303
    done = await desk.http.get(answer.headers["location"])
    assert "Decided <strong>approve</strong> by ana" in done.text
    assert (await handle.result()).status == "completed"
    with session_scope(desk.db) as session:
        actions = [(a.actor, a.action, a.outcome) for a in session.exec(select(ReviewAudit)).all()]
    assert ("aud", "decide", "refused") in actions and ("ana", "decide", "done") in actions


async def test_a_one_time_password_must_be_replaced_before_anything_else(desk: Desk) -> None:
    first = add_user(desk.db, name="newbie", role="ops")
    answer = await sign_in(desk.http, "newbie", first)
    assert answer.headers["location"] == "/console/password"
    assert (await desk.http.get("/console/reviews")).headers["location"] == "/console/password"
    page = await desk.http.get("/console/password")
    changed = await desk.http.post(
        "/console/password",
        data={
            "current": first,
            "new": "my-own-password",
            "repeat": "my-own-password",
            "csrf": form_token(page),
        },
    )
    assert changed.status_code == 303
    assert changed.headers["location"] == "/console/reviews?notice=password-changed"
    assert "Your password was changed" in (await desk.http.get(changed.headers["location"])).text
    assert (await desk.http.get("/console/reviews")).status_code == 200
    assert check_password(desk.db, name="newbie", password=first) is None


@pytest.mark.parametrize(
    ("role", "landing"),
    [
        ("ops", "/console/reviews"),
        ("designer", "/console/journeys"),
        ("auditor", "/console/reviews"),
        ("supervisor", "/console/reviews"),
        ("admin", "/console/reviews"),
    ],
)
async def test_each_role_lands_on_a_page_it_may_open(desk: Desk, role: str, landing: str) -> None:
    """A designer has no review queue: signing in, changing the one-time password or
    opening /console takes them to the journeys list, not to a 403."""
    first = add_user(desk.db, name=f"new-{role}", role=role)
    await sign_in(desk.http, f"new-{role}", first)
    page = await desk.http.get("/console/password")
    changed = await desk.http.post(
        "/console/password",
        data={
            "current": first,
            "new": "a-new-password",
            "repeat": "a-new-password",
            "csrf": form_token(page),
        },
    )
    assert changed.headers["location"] == f"{landing}?notice=password-changed"
    shown = await desk.http.get(changed.headers["location"])
    assert shown.status_code == 200 and "Your password was changed" in shown.text
    assert (await desk.http.get("/console")).headers["location"] == landing
    await desk.http.post("/console/logout", data={"csrf": form_token(shown)})
    signed_in = await sign_in(desk.http, f"new-{role}", "a-new-password")
    assert signed_in.headers["location"] == landing
    assert (await desk.http.get(landing)).status_code == 200


CONSOLE_POSTS = ["claim", "release", "decide"]


@pytest.mark.parametrize("action", CONSOLE_POSTS)
async def test_console_actions_without_a_session_change_nothing(desk: Desk, action: str) -> None:
    _, task = await desk.open_case()
    answer = await desk.http.post(
        f"/console/reviews/{task.id}/{action}",
        data={"decision": "approve", "note": "x", "csrf": "x"},
    )
    assert answer.status_code == 303 and answer.headers["location"].startswith("/console/login")
    with session_scope(desk.db) as session:
        row = session.get(ReviewTask, task.id)
        assert row is not None and (row.status, row.claimed_by) == ("open", None)


@pytest.mark.parametrize("who", ["aud", "dee"])
@pytest.mark.parametrize("action", CONSOLE_POSTS)
async def test_console_actions_are_forbidden_to_roles_that_may_not_decide(
    desk: Desk, who: str, action: str
) -> None:
    _, task = await desk.open_case()
    await sign_in(desk.http, who)
    page = await desk.http.get("/console/outbox")  # a page every role may open: its token
    answer = await desk.http.post(
        f"/console/reviews/{task.id}/{action}",
        data={"decision": "approve", "note": "x", "csrf": form_token(page)},
    )
    assert answer.status_code == 403, answer.text
    with session_scope(desk.db) as session:
        row = session.get(ReviewTask, task.id)
        assert row is not None and (row.status, row.claimed_by) == ("open", None)


@pytest.mark.parametrize("path", ["/console/reviews", "/console/reviews/{id}"])
async def test_designers_do_not_see_the_review_queue(desk: Desk, path: str) -> None:
    _, task = await desk.open_case()
    await sign_in(desk.http, "dee")
    answer = await desk.http.get(path.format(id=task.id))
    assert answer.status_code == 403 and "may not open this page" in answer.text
