"""A long run's path over HTTP: GET /v1/runs/{run_id} pages through the `run_path` rows
(`path_after`, `path_limit`, `path_total`, `path_next`) and adds what the running
workflow has not recorded yet; its live state comes from the generation now running;
the console's run page shows the path in pages too.

The runs here are recorded as a journey's `record_run` would record them, in tails
(`activities.runs.upsert_run`); SQLite, or PostgreSQL when JOURNEYS_TEST_DATABASE_URL
is set."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.engine import Engine
from temporalio.client import Client

from activities.runs import upsert_run
from engine.database import Run, session_scope
from engine.payloads import PathEntry, RecordRunInput
from service.api.app import create_app
from service.api.routes import runs as runs_route
from service.api.routes.runs import LiveRunState
from service.users import add_user, change_password, check_password
from tests.api.conftest import AUTH, RunningApi, api_settings, eventually, running_api
from tests.api.test_events_api import JOURNEYS, post, runs_of, track
from tests.database import deploy

pytestmark = pytest.mark.asyncio(loop_scope="session")

START = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def entries(first: int, count: int) -> list[PathEntry]:
    return [
        PathEntry(step=f"s{n}", type="wait", at=START + timedelta(seconds=n), detail={"n": n})
        for n in range(first, first + count)
    ]


def record_in_tails(db: Engine, run_id: str, length: int, *, tail: int = 300) -> None:
    """Record a run of ``length`` entries as its workflow would: a tail at a time, each
    tail sent with the last 50 entries of the one before again (a retried record)."""
    with session_scope(db) as session:
        for first in range(0, length, tail):
            start = max(first - 50, 0)
            upsert_run(
                session,
                RecordRunInput(
                    run_id=run_id,
                    workflow_id=f"journey/long/{run_id}",
                    journey_id="long",
                    version="v1",
                    customer_id="c-long",
                    path=entries(start, min(first + tail, length) - start),
                    path_start=start,
                ),
            )


async def get_run(http: httpx.AsyncClient, run_id: str, **query: Any) -> dict[str, Any]:
    response = await http.get(f"/v1/runs/{run_id}", params=query, headers=AUTH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def steps(body: dict[str, Any]) -> list[int]:
    return [int(entry["step"][1:]) for entry in body["path"]]


async def test_a_long_path_comes_in_pages(api: RunningApi, db: Engine) -> None:
    record_in_tails(db, "run-long", 2500)

    first = await get_run(api.http, "run-long")
    second = await get_run(api.http, "run-long", path_after=first["path_next"])
    third = await get_run(api.http, "run-long", path_after=second["path_next"])
    whole = await get_run(api.http, "run-long", path_limit=5000)
    small = await get_run(api.http, "run-long", path_after=2496, path_limit=2)

    assert (first["path_total"], first["path_next"], steps(first)) == (2500, 999, list(range(1000)))
    assert (second["path_next"], steps(second)) == (1999, list(range(1000, 2000)))
    assert (third["path_next"], steps(third)) == (None, list(range(2000, 2500)))
    assert (whole["path_next"], steps(whole)) == (None, list(range(2500)))
    assert (small["path_next"], steps(small)) == (2498, [2497, 2498])
    assert first["path"][1] == {
        "step": "s1",
        "type": "wait",
        "at": "2025-01-02T03:04:06Z",
        "outcome": None,
        "detail": {"n": 1},
    }
    assert first["live"] is None  # no such workflow: the rows alone answer
    assert first["current_run_id"] == "run-long"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"path_limit": 0}, "path_limit"),
        ({"path_limit": 5001}, "path_limit"),
        ({"path_after": -2}, "path_after"),
        ({"path_after": "x"}, "path_after"),
    ],
)
async def test_path_paging_out_of_range_is_refused_naming_the_field(
    api: RunningApi, db: Engine, query: dict[str, Any], field: str
) -> None:
    record_in_tails(db, "run-short", 3)

    response = await api.http.get("/v1/runs/run-short", params=query, headers=AUTH)

    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["errors"]] == [field]


async def test_the_last_page_ends_with_what_the_workflow_has_not_recorded_yet(
    api: RunningApi, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_in_tails(db, "run-live", 10)
    unrecorded = [entry.model_dump(mode="json") for entry in entries(8, 5)]  # 8 and 9 stored

    async def live_state(client: Client | None, row: Run) -> LiveRunState:
        return LiveRunState(status="running", path=unrecorded, path_start=8)

    monkeypatch.setattr(runs_route, "_live_state", live_state)

    whole = await get_run(api.http, "run-live")
    cut = await get_run(api.http, "run-live", path_limit=11)
    rest = await get_run(api.http, "run-live", path_after=cut["path_next"])
    middle = await get_run(api.http, "run-live", path_limit=5)

    assert (whole["path_total"], whole["path_next"], steps(whole)) == (10, None, list(range(13)))
    assert (cut["path_next"], steps(cut)) == (10, list(range(11)))
    assert (rest["path_next"], steps(rest)) == (None, [11, 12])
    assert (middle["path_next"], steps(middle)) == (4, list(range(5)))  # no live entry yet


async def test_a_live_state_that_does_not_say_where_its_path_starts_adds_nothing(
    api: RunningApi, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_in_tails(db, "run-old-worker", 4)

    async def live_state(client: Client | None, row: Run) -> LiveRunState:
        return LiveRunState(status="running", path=[e.model_dump() for e in entries(0, 6)])

    monkeypatch.setattr(runs_route, "_live_state", live_state)

    body = await get_run(api.http, "run-old-worker")

    assert (steps(body), body["path_next"]) == ([0, 1, 2, 3], None)
    assert len(body["live"]["path"]) == 6


async def test_the_live_state_comes_from_the_generation_now_running(
    api: RunningApi, db: Engine
) -> None:
    deploy(db, JOURNEYS)
    customer = f"cust-{uuid.uuid4().hex[:10]}"
    await post(api.http, "/v1/track", track(customer, "payment_failed", amount=150))
    [running] = runs_of(db, customer)
    # The same run as a later generation would record it: its id is the first
    # generation's, which Temporal no longer runs (here: never ran).
    with session_scope(db) as session:
        upsert_run(
            session,
            RecordRunInput(
                run_id="first-generation",
                workflow_id=running.workflow_id,
                journey_id=running.journey_id,
                version=running.version,
                customer_id=customer,
                current_run_id=running.run_id,
            ),
        )

    response = await eventually(
        lambda: api.http.get("/v1/runs/first-generation", headers=AUTH),
        check=lambda r: r.json().get("live") is not None,
    )

    body = response.json()
    assert body["live"]["current_step"] == "listening"
    assert body["current_run_id"] == running.run_id
    assert body["temporal_ui"].endswith(f"/{running.run_id}/history")


# ----------------------------------------------------------------------------- the console

PASSWORD = "a-good-long-password"


@pytest_asyncio.fixture
async def console(
    database_url: str, task_queue: str, temporal_client: Client, db: Engine
) -> AsyncIterator[RunningApi]:
    first = add_user(db, name="ana", role="ops")
    user = check_password(db, name="ana", password=first)
    assert user is not None and user.id is not None
    change_password(db, user_id=user.id, current=first, new=PASSWORD)
    settings = api_settings(database_url=database_url, task_queue=task_queue).model_copy(
        update={"secret_key": "console-secret-for-tests"}
    )
    async with running_api(create_app(settings, client=temporal_client)) as running:
        page = await running.http.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        signed_in = await running.http.post(
            "/console/login", data={"name": "ana", "password": PASSWORD, "csrf": csrf.group(1)}
        )
        assert signed_in.status_code == 303
        yield running


def shown_steps(page: httpx.Response) -> list[str]:
    return re.findall(r"<li><strong>(s\d+)</strong>", page.text)


async def test_the_console_shows_a_long_path_in_pages(console: RunningApi, db: Engine) -> None:
    record_in_tails(db, "run-console", 1200)

    first = await console.http.get("/console/runs/run-console")
    link = re.search(r'href="\?after=(\d+)" rel="next"', first.text)
    assert first.status_code == 200 and link is not None
    second = await console.http.get(f"/console/runs/run-console?after={link.group(1)}")
    link = re.search(r'href="\?after=(\d+)" rel="next"', second.text)
    assert link is not None
    third = await console.http.get(f"/console/runs/run-console?after={link.group(1)}")
    nonsense = await console.http.get("/console/runs/run-console?after=lots")

    assert 'data-path-total="1200"' in first.text and "1200 entries recorded" in first.text
    assert shown_steps(first) == [f"s{n}" for n in range(500)]
    assert shown_steps(second) == [f"s{n}" for n in range(500, 1000)]
    assert "showing 501 to 1000" in second.text and 'href="?"' in second.text
    assert shown_steps(third) == [f"s{n}" for n in range(1000, 1200)]
    assert 'rel="next"' not in third.text
    assert shown_steps(nonsense) == shown_steps(first)
