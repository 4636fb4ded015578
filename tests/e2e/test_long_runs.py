"""Issue #14: no accepted event is dropped, and long runs continue as new.

Through the real API, router and worker on the dev server:
- a burst of 5,000 events posted at once into one run's looping wait is handled completely:
  each event is in the run's path (`GET /v1/runs/{id}`, paged) as received, or as ignored
  with its reason;
- an exit event sent before a flood, while the run is blocked on a send that keeps
  retrying, ends the run at once (the send is cancelled);
- one run takes 20,000 events over a looping wait, in waves or all at once (its queue
  then parked in `run_backlog`), continues as new several times, and each generation's
  history stays far below Temporal's limits (printed, per generation). Marked `long`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from temporalio.client import Client

from engine.payloads import workflow_id_for
from tests.e2e.conftest import JourneysStack, TemporalServer, customer_id, eventually, start_stack
from tests.history_keys import test_data_converter
from tests.http_endpoint import HttpEndpoint, running_endpoint

pytestmark = pytest.mark.e2e

JOURNEYS = """\
version: 1
settings:
  timezone: UTC
  max_duration: 30d
events:
  tally_started: {stuck: boolean}
  item_scanned: {n: integer}
  tally_closed: {}
  counter_started: {}
  item_counted: {n: integer}
channels:
  push: {url: "${TALLY_PUSH_URL}", retry: {initial: 1s, maximum_interval: 2s, ttl: 1h}}
templates:
  stuck: {push: "Your tally is open"}
journeys:
  - id: tally
    entry: {event: tally_started, when: not event.stuck}
    exit_on:
      - {event: tally_closed, outcome: closed}
    steps:
      - id: listen
        wait: {event: item_scanned, within: 30d, when: event.n >= 0}
        on_timeout: quiet
      - id: count
        set: {vars.n: "coalesce(vars.n, 0) + 1"}
        next: listen
      - id: quiet
        exit: quiet
  - id: counter
    entry: {event: counter_started}
    exit_on:
      - {event: tally_closed, outcome: closed}
    steps:
      - id: listen
        wait: {event: item_counted, within: 30d}
        on_timeout: quiet
      - id: count
        set: {vars.n: "coalesce(vars.n, 0) + 1"}
        next: listen
      - id: quiet
        exit: quiet
  - id: stuck_send
    entry: {event: tally_started, when: event.stuck}
    exit_on:
      - {event: tally_closed, outcome: closed}
    steps:
      - id: nudge
        send: stuck
        channel: push
      - id: listen
        wait: {event: item_scanned, within: 30d}
        on_timeout: done
      - id: done
        exit: done
"""

BATCH = 500  # the API's largest batch


@pytest.fixture(scope="module")
def push_gateway() -> Iterator[HttpEndpoint]:
    """A push gateway that fails every request (the send keeps retrying)."""
    with running_endpoint() as endpoint:
        endpoint.status = 503
        yield endpoint


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    temporal_server: TemporalServer,
    push_gateway: HttpEndpoint,
) -> Iterator[JourneysStack]:
    directory = tmp_path_factory.mktemp("long-runs")
    journeys = directory / "journeys.yaml"
    journeys.write_text(JOURNEYS)
    env = {"TALLY_PUSH_URL": f"json://127.0.0.1:{push_gateway.port}/push"}
    with start_stack(directory, temporal_server, journeys, env=env) as running:
        yield running


def _message(customer: str, event: str, message_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": customer,
        "event": event,
        "messageId": message_id,
        "properties": properties,
    }


def _post_batches(stack: JourneysStack, messages: list[dict[str, Any]], *, parallel: int) -> None:
    """POST ``messages`` in batches of 500, ``parallel`` at a time ("in one go")."""
    batches = [messages[i : i + BATCH] for i in range(0, len(messages), BATCH)]

    def post(batch: list[dict[str, Any]]) -> None:
        answer = stack.client().post("/v1/batch", json={"batch": batch}, timeout=300)
        assert answer.status_code == 202, answer.text
        assert answer.json()["accepted"] == len(batch), answer.text

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(post, batches))


def _whole_path(stack: JourneysStack, run_id: str) -> list[dict[str, Any]]:
    """The run's whole stored path, page by page (`path_after`, `path_next`)."""
    path: list[dict[str, Any]] = []
    after = -1
    while True:
        page = stack.get(f"/v1/runs/{run_id}", path_after=after, path_limit=5000)
        path.extend(page["path"])
        if page["path_next"] is None:
            assert len(path) == page["path_total"]
            return path
        after = page["path_next"]


def _counted(stack: JourneysStack, run_id: str) -> int:
    """The run's `vars.n` as its live state says (0 while it does not answer)."""
    live = stack.run(run_id)["live"] or {}
    return int((live.get("vars") or {}).get("n") or 0)


def _start(stack: JourneysStack, customer: str, journey: str, **properties: Any) -> str:
    stack.track(customer, "tally_started", **properties)
    run = stack.only_run(customer, journey)
    run_id: str = run["run_id"]
    return run_id


def _handled(path: list[dict[str, Any]]) -> dict[str, str]:
    """Each event's message id in the path, and what became of it."""
    fate: dict[str, str] = {}
    for entry in path:
        message_id = (entry.get("detail") or {}).get("message_id")
        if message_id and entry["outcome"] in ("received", "ignored", "closed"):
            assert message_id not in fate, f"{message_id} handled twice"
            fate[message_id] = entry["outcome"]
            if entry["outcome"] == "ignored":
                assert entry["detail"]["reason"], entry
    return fate


async def _generations(temporal: TemporalServer, workflow_id: str) -> list[tuple[int, int, int]]:
    """(history events, history bytes, signals) of each generation of ``workflow_id``,
    oldest first."""
    client = await Client.connect(temporal.address, data_converter=test_data_converter())
    sizes: list[tuple[float, int, int, int]] = []
    async for execution in client.list_workflows(f'WorkflowId = "{workflow_id}"'):
        handle = client.get_workflow_handle(workflow_id, run_id=execution.run_id)
        history = await handle.fetch_history()
        size = sum(event.ByteSize() for event in history.events)
        signals = sum(
            1
            for event in history.events
            if event.HasField("workflow_execution_signaled_event_attributes")
        )
        sizes.append((execution.start_time.timestamp(), len(history.events), size, signals))
    return [(events, size, signals) for _, events, size, signals in sorted(sizes)]


def test_a_burst_of_5000_events_is_handled_completely(stack: JourneysStack) -> None:
    customer = customer_id("burst")
    run_id = _start(stack, customer, "tally")
    ids = [f"burst-{uuid.uuid4().hex}" for _ in range(5000)]
    # Every 10th event fails the wait's `when` (n < 0): ignored, with the reason.
    messages = [
        _message(customer, "item_scanned", mid, n=-1 if i % 10 == 9 else i)
        for i, mid in enumerate(ids)
    ]
    started = time.monotonic()
    _post_batches(stack, messages, parallel=10)
    posted = time.monotonic() - started

    eventually(
        lambda: _counted(stack, run_id),
        check=lambda n: n == 4500,
        timeout=600,
        interval=2,
        what="4,500 counted",
    )
    stack.track(customer, "tally_closed")
    detail = stack.wait_until_ended(run_id, timeout=120)
    handled = time.monotonic() - started
    assert (detail["status"], detail["outcome"]) == ("exited", "closed")

    path = _whole_path(stack, run_id)
    fate = _handled(path)
    assert set(fate) >= set(ids), f"{len(set(ids) - set(fate))} events not in the path"
    assert sum(1 for mid in ids if fate[mid] == "received") == 4500
    assert sum(1 for mid in ids if fate[mid] == "ignored") == 500
    counts = [e for e in path if e["step"] == "count"]
    assert counts[-1]["detail"]["values"] == {"vars.n": 4500}
    print(
        f"\n5,000 events: posted in {posted:.1f} s, handled in {handled:.1f} s;"
        f" path {len(path)} entries"
    )


def test_an_exit_before_a_flood_ends_a_run_blocked_on_a_retrying_send(
    stack: JourneysStack, push_gateway: HttpEndpoint
) -> None:
    customer = customer_id("stuck")
    stack.identify(customer, push_token=f"token-{customer}")
    run_id = _start(stack, customer, "stuck_send", stuck=True)
    # The push gateway answers 503: the send retries every 1-2 s, for up to an hour.
    eventually(
        lambda: len(push_gateway.requests),
        check=lambda tried: tried >= 2,
        timeout=60,
        what="the send retried",
    )
    closing = f"close-{uuid.uuid4().hex}"
    flood = [
        _message(customer, "item_scanned", f"flood-{uuid.uuid4().hex}", n=i) for i in range(2000)
    ]
    _post_batches(stack, [_message(customer, "tally_closed", closing)], parallel=1)
    _post_batches(stack, flood, parallel=4)

    detail = stack.wait_until_ended(run_id, timeout=120)
    assert (detail["status"], detail["outcome"]) == ("exited", "closed")
    path = _whole_path(stack, run_id)
    exits = [e for e in path if e["type"] == "exit_on"]
    assert [(e["step"], e["detail"]["message_id"]) for e in exits] == [("nudge", closing)]
    fate = _handled(path)
    # The flood came after the exit: whatever reached the run is in its path as ignored.
    assert all(fate.get(m["messageId"], "ignored") == "ignored" for m in flood)
    assert not [e for e in path if e["step"] == "listen"], "the run never got past the send"
    tries = len(push_gateway.requests)  # this test's run is the gateway's only sender
    time.sleep(3)
    assert len(push_gateway.requests) == tries, "the send stopped retrying once the run ended"


@pytest.mark.long  # about 4 minutes: `make test-long`
@pytest.mark.parametrize("arrival", ["waves", "flood"])
def test_one_run_handles_20000_events_over_generations(
    stack: JourneysStack, temporal_server: TemporalServer, arrival: str
) -> None:
    customer = customer_id(f"long-{arrival}")
    stack.track(customer, "counter_started")
    run_id: str = stack.only_run(customer, "counter")["run_id"]
    total = 20_000
    ids = [f"long-{uuid.uuid4().hex}" for _ in range(total)]
    started = time.monotonic()
    if arrival == "flood":  # all at once: the queue outgrows what a generation carries
        messages = [_message(customer, "item_counted", mid, n=i) for i, mid in enumerate(ids)]
        _post_batches(stack, messages, parallel=4)
    for chunk in range(0, total, 1000) if arrival == "waves" else ():
        part = ids[chunk : chunk + 1000]  # over time: twenty waves of 1,000
        _post_batches(
            stack,
            [_message(customer, "item_counted", mid, n=i) for i, mid in enumerate(part)],
            parallel=2,
        )
        # The next wave once the run has most of this one behind it: a source sending
        # steadily, not a flood.
        eventually(
            lambda: (stack.run(run_id)["live"] or {}).get("pending_events"),
            check=lambda pending: pending is not None and pending < 300,
            timeout=300,
            interval=1,
            what="the run caught up with the wave",
        )

    eventually(
        lambda: _counted(stack, run_id),
        check=lambda n: n == total,
        timeout=900,
        interval=3,
        what="all counted",
    )
    stack.track(customer, "tally_closed")
    detail = stack.wait_until_ended(run_id, timeout=120)
    elapsed = time.monotonic() - started
    assert (detail["status"], detail["outcome"]) == ("exited", "closed")

    path = _whole_path(stack, run_id)
    fate = _handled(path)
    assert all(fate[mid] == "received" for mid in ids)
    assert [e["detail"]["values"] for e in path if e["step"] == "count"][-1] == {"vars.n": total}
    assert len({e["at"] for e in path}) > 1

    workflow_id = workflow_id_for("counter", customer, None)
    sizes = asyncio.run(_generations(temporal_server, workflow_id))
    print(
        f"\n20,000 events ({arrival}) in {elapsed:.0f} s; {len(sizes)} generations; "
        f"path {len(path)}"
    )
    for number, (events, size, signals) in enumerate(sizes):
        print(
            f"  generation {number}: {events} history events ({signals} signals), "
            f"{size / 1e6:.2f} MB"
        )
    assert len(sizes) >= 3, "the run continued as new several times"
    # Temporal warns at 10,240 events or 10 MB of history and suggests continuing as new
    # at 4 Ki events / 4 MB: every generation stays under both.
    assert all(events < 4096 and size < 4_000_000 for events, size, _ in sizes)
