"""Review tasks are announced on the catalogue's `ops` channel: a new task to its queue,
an escalated one to the queue it moves to, through Apprise to a real ntfy-style HTTP
endpoint on loopback (the queue is the topic), or to the outbox when the URL is unset."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.testing import WorkflowEnvironment

from engine.database import OutboxMessage
from tests.http_endpoint import HttpEndpoint, running_endpoint
from tests.workflows.conftest import StartRun, compile_plan, run_to_end
from tests.workflows.test_journey_run import REVIEW

WITH_OPS = REVIEW.replace("channels: {", 'channels: {ops: "${JOURNEYS_OPS_URL}", ', 1)
OPS_TOKEN = "tk_opsannouncetoken12345"


@pytest.fixture
def ntfy(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpEndpoint]:
    with running_endpoint() as endpoint:
        monkeypatch.setenv("JOURNEYS_OPS_URL", f"ntfy://{OPS_TOKEN}@127.0.0.1:{endpoint.port}")
        yield endpoint


async def test_a_new_task_is_announced_to_its_queue_and_an_escalation_to_the_next(
    env: WorkflowEnvironment, start_run: StartRun, ntfy: HttpEndpoint
) -> None:
    assert "ops:" in WITH_OPS
    handle = await start_run(compile_plan(WITH_OPS))
    state = await run_to_end(env, handle)
    assert state.outcome == "timed_out"
    announced = [(request.path, request.json()) for request in ntfy.requests]
    assert [path for path, _ in announced] == ["/", "/"]
    topics = [body["topic"] for _, body in announced]
    assert topics == ["collections", "supervisors"]
    first, second = (body for _, body in announced)
    assert first["title"] == "New review: Case c1"
    assert second["title"] == "Escalated: Case c1"
    assert "/console/reviews/" in first["message"] and "Queue: collections" in first["message"]
    assert all(OPS_TOKEN not in str(body) for _, body in announced)


async def test_with_the_ops_url_unset_announcements_wait_in_the_outbox(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNEYS_OPS_URL", raising=False)
    handle = await start_run(compile_plan(WITH_OPS))
    await env.sleep(timedelta(hours=5))
    await run_to_end(env, handle)
    with Session(db) as session:
        rows = session.exec(
            select(OutboxMessage)
            .where(OutboxMessage.channel == "ops")
            .order_by(col(OutboxMessage.id))
        ).all()
    assert [(row.recipient, row.subject) for row in rows] == [
        ("collections", "New review: Case c1"),
        ("supervisors", "Escalated: Case c1"),
    ]


async def test_a_catalogue_without_an_ops_channel_announces_nothing(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine
) -> None:
    handle = await start_run(compile_plan(REVIEW))
    await run_to_end(env, handle)
    with Session(db) as session:
        assert session.exec(select(OutboxMessage)).all() == []
