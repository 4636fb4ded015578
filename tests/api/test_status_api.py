"""A run's status page for the customer (issue #18, item 4): ``GET /v1/status/{token}``,
as the customer's browser or an app reads it. The journey marks steps `public:`; the
page shows the public steps passed, the one the run is at and when it expects to move on,
and nothing else (no score, no step id, no other run). Runs are recorded as `record_run`
records them; the plan is deployed as `journeys deploy` stores it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine

from channels.status_links import make_status_token, status_url
from engine.database import Profile, ReviewTask
from engine.payloads import PathEntry
from engine.timestamps import utcnow
from service.api.app import create_app
from tests.api.conftest import api_settings, running_api
from tests.api.test_console_runs_api import add, local, record, text_of
from tests.database import deploy

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "status-secret-for-tests"
CATALOGUE = """\
version: 1
settings: {timezone: UTC}
events:
  loan_applied: {amount: number}
journeys:
  - id: credit
    entry: {event: loan_applied}
    steps:
      - id: score_it
        set: {vars.checked: "1"}
        public: We received your application
      - id: decide_it
        review: credit
        title: "Application"
        decisions: {approve: approved, reject: declined}
        sla: 2d
        on_timeout: declined
        public: Your application is being reviewed
      - id: approved
        exit: approved
        public: Your application was approved
      - id: declined
        exit: declined
"""


def entry(step: str, kind: str, outcome: str, **detail: object) -> PathEntry:
    return PathEntry(step=step, type=kind, at=utcnow(), outcome=outcome, detail=detail)


def setup_runs(db: Engine) -> str:
    """Two customers' runs of `credit`: A's in review (SLA in 2 days), B's approved."""
    [plan] = deploy(db, CATALOGUE).values()
    add(db, Profile(customer_id="cust-a", traits={"timezone": "Asia/Seoul", "score": 0.93}))
    record(
        db,
        "run-a",
        customer="cust-a",
        journey="credit",
        version=plan.version,
        step="decide_it",
        path=[entry("score_it", "set", "set"), entry("decide_it", "review", "opened")],
    )
    due = utcnow() + timedelta(days=2)
    add(
        db,
        ReviewTask(
            id="task-a",
            run_id="run-a",
            workflow_id="journey/credit/run-a",
            journey_id="credit",
            step_id="decide_it",
            visit=1,
            customer_id="cust-a",
            queue="credit",
            title="Application",
            due_at=due,
        ),
    )
    record(
        db,
        "run-b",
        customer="cust-b",
        journey="credit",
        version=plan.version,
        status="exited",
        step="approved",
        path=[
            entry("score_it", "set", "set"),
            entry("decide_it", "review", "decided", decision="approve"),
            entry("approved", "exit", "approved"),
        ],
    )
    return local(due, "Asia/Seoul")


def token(run_id: str, secret: str = SECRET) -> str:
    return make_status_token(run_id=run_id, secret=secret)


async def test_a_run_in_review_shows_its_public_steps_and_when_it_moves_on(
    database_url: str, db: Engine
) -> None:
    due = setup_runs(db)
    settings = api_settings(database_url=database_url, task_queue="unused")
    async with running_api(create_app(settings.model_copy(update={"secret_key": SECRET}))) as api:
        page = await api.http.get(f"/v1/status/{token('run-a')}")
        data = (await api.http.get(f"/v1/status/{token('run-a')}?format=json")).json()
        accepted = await api.http.get(
            f"/v1/status/{token('run-a')}", headers={"Accept": "application/json"}
        )

    shown = text_of(page)
    assert "Status: in progress" in shown
    assert "We received your application" in shown
    assert "Your application is being reviewed (since" in shown
    assert f"Next update expected by {due}." in shown  # the SLA, in the customer's zone
    assert "approved" not in shown.lower()  # not reached yet
    for internal in ("decide_it", "score_it", "credit", "0.93", "cust-a", "run-a", "task-a"):
        assert internal not in page.text, internal
    assert page.headers["cache-control"] == "no-store"
    assert "script-src" not in page.headers["content-security-policy"]  # no script at all
    assert data["state"] == "in progress"
    assert [p["text"] for p in data["passed"]] == ["We received your application"]
    assert data["current"]["text"] == "Your application is being reviewed"
    assert data["expected_by"] is not None and data["timezone"] == "Asia/Seoul"
    assert accepted.json() == data
    assert "decide_it" not in json.dumps(data) and "run-a" not in json.dumps(data)


async def test_a_finished_run_shows_every_public_step_and_no_next_time(
    database_url: str, db: Engine
) -> None:
    setup_runs(db)
    settings = api_settings(database_url=database_url, task_queue="unused")
    async with running_api(create_app(settings.model_copy(update={"secret_key": SECRET}))) as api:
        data = (await api.http.get(f"/v1/status/{token('run-b')}?format=json")).json()

    assert data["state"] == "finished" and data["current"] is None
    assert [p["text"] for p in data["passed"]] == [
        "We received your application",
        "Your application is being reviewed",
        "Your application was approved",
    ]
    assert data["expected_by"] is None


@pytest.mark.parametrize(
    "bad",
    [
        "altered",  # run-a's token with run-b's signature
        "other-secret",
        "unknown-run",
        "garbage",
    ],
)
async def test_a_token_reads_its_own_run_only_and_every_bad_one_is_the_same_404(
    database_url: str, db: Engine, bad: str
) -> None:
    setup_runs(db)
    a, b = token("run-a"), token("run-b")
    given = {
        "altered": f"{a.split('.')[0]}.{b.split('.')[1]}",
        "other-secret": token("run-a", secret="another-deployments-secret"),
        "unknown-run": token("run-z"),
        "garbage": "not-a-token",
    }[bad]
    settings = api_settings(database_url=database_url, task_queue="unused")
    async with running_api(create_app(settings.model_copy(update={"secret_key": SECRET}))) as api:
        page = await api.http.get(f"/v1/status/{given}")
        data = await api.http.get(f"/v1/status/{given}?format=json")

    assert page.status_code == 404 and data.status_code == 404
    assert "This status link is not valid" in page.text
    assert data.json() == {
        "detail": "This status link is not valid, or the request it was for is no longer kept."
    }
    assert "Your application" not in page.text


async def test_the_link_is_on_the_api_and_quotes_the_token() -> None:
    assert status_url("https://api.example/", "a.b") == "https://api.example/v1/status/a.b"
