"""Nothing lost when a worker dies: a run whose worker is killed (SIGKILL, no shutdown
handler) while it waits finishes on a new worker process with the path it would have had,
and every send step's message is in the outbox exactly once.

Killing the worker while a step's activity runs is hard to time from outside; the
activity's idempotency (one outbox row per run, step and visit) is what covers that window.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.e2e.conftest import (
    JourneysStack,
    TemporalServer,
    customer_id,
    eventually,
    path_steps,
    start_stack,
)

pytestmark = pytest.mark.e2e

# No quiet hours (none are set), so sends never wait for a local time.
CRASH_JOURNEYS = """\
version: 1

settings:
  timezone: UTC

events:
  crash_test_started:
    label: string

channels:
  email: "${JOURNEYS_EMAIL_URL}"

templates:
  note:
    email:
      subject: "Note {{ journey.step }} for {{ customer.id }}"
      text: "Step {{ journey.step }}: {{ vars.marked | default('not marked') }}"

journeys:
  - id: crash_test
    name: Survives a worker crash
    entry:
      event: crash_test_started
      reentry: always
    steps:
      - id: first_note
        send: note
        channel: email
      - id: pause
        wait: 5s
      - id: mark
        set:
          vars.marked: '"marked"'
      - id: second_note
        send: note
        channel: email
      - id: done
        exit: finished
"""


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, temporal_server: TemporalServer
) -> Iterator[JourneysStack]:
    directory = tmp_path_factory.mktemp("crash")
    journeys = directory / "journeys.yaml"
    journeys.write_text(CRASH_JOURNEYS, encoding="utf-8")
    with start_stack(directory, temporal_server, journeys) as running:
        yield running


def _row(stack: JourneysStack, customer: str) -> dict[str, Any] | None:
    runs = stack.runs(customer, "crash_test")
    return runs[0] if runs else None


def test_run_finishes_on_a_new_worker_after_the_worker_is_killed_in_a_wait(
    stack: JourneysStack,
) -> None:
    customer = customer_id("crash")
    stack.identify(customer, email=f"{customer}@example.test", timezone="UTC")
    started = stack.track(customer, "crash_test_started", label="kill me")
    assert started["started"] == [f"journey/crash_test/{customer}"]

    # Wait until the run is in its timer, then kill the worker that runs it.
    waiting: dict[str, Any] = eventually(
        lambda: _row(stack, customer),
        check=lambda row: row is not None and row["step"] == "pause",
        timeout=60,
        interval=0.1,
        what="the run in its 5 s wait",
    )
    run_id = str(waiting["run_id"])
    before = stack.run(run_id)
    wake_at = datetime.fromisoformat(before["path"][-1]["detail"]["until"])
    # Every worker (scale mode runs two): none is left to take the run over.
    killed = [worker for worker in stack.workers if worker.running()]
    for worker in killed:
        worker.kill()
    killed_at = datetime.now(UTC)
    assert [worker.process.returncode for worker in killed] == [-9] * len(killed)
    assert killed_at < wake_at, "the worker must die before the timer fires"
    assert [m.step_id for m in stack.outbox(customer)] == ["first_note"]
    assert stack.run(run_id)["status"] == "running"

    stack.start_worker()
    detail = stack.wait_until_ended(run_id, timeout=90)

    assert (detail["status"], detail["outcome"]) == ("completed", "finished"), detail
    assert path_steps(detail) == ["entry", "first_note", "pause", "mark", "second_note", "end"]
    assert [e["outcome"] for e in detail["path"]] == [
        None,
        "captured",
        "waiting",
        "set",
        "captured",
        "finished",
    ]
    outbox = stack.outbox(customer)
    assert [(m.step_id, m.visit, m.channel) for m in outbox] == [
        ("first_note", 1, "email"),
        ("second_note", 1, "email"),
    ]
    assert all(m.run_id == run_id for m in outbox)
    assert outbox[0].subject == f"Note first_note for {customer}"
    assert outbox[1].body == "Step second_note: marked"
    # The killed workers are really gone: the new one finished the run.
    assert not any(worker.running() for worker in killed)
    assert stack.worker.running()
