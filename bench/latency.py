"""Latency, event to first message (issue #20, item 2): from just before the POST to the
message arriving in a real SMTP server, at low load, engine and hand-written baseline
side by side in one run.

Run from the repository root: ``.venv/bin/python -m bench.latency`` (~2 minutes).

It starts the embedded default as bench/throughput.py does (bench/stack.py: the dev server,
`worker.py`, the API under uvicorn) plus the baseline worker (`python -m bench.baseline`),
and an aiosmtpd server on loopback in this process (tests/smtp_server.py) as the email
channel of both (``JOURNEYS_EMAIL_URL``). bench/latency.yaml's ``bench_welcome`` is deployed:
``signed_up`` enters it, one email goes out, the run ends.

Every ``1/rate`` seconds (default 5 events/s) one engine event and, half a period later,
one baseline event are sent, each for its own customer (a profile with an email address
and the email opt-in; consent is the default otherwise):

- engine: a Segment ``track`` POSTed to ``/v1/events``; the router stores it, starts the
  run; the worker interprets the plan and sends;
- baseline: what a small hand-written integration does on the same event: read the
  customer's profile and start ``BaselineWelcome`` (bench/baseline.py: the same
  ``send_message`` activity, options and SMTP server) with the client.

t0 is taken just before the POST (or the profile read); t1 when the SMTP server has the
message's DATA (matched by recipient: the customer's address). The time to the run's
first workflow task is read from each run's history: WorkflowTaskStarted minus
WorkflowExecutionStarted (the server's clock), and from t0 (one machine, one clock).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.smtp import SMTP, Envelope, Session
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bench.baseline import WORKFLOWS
from bench.stack import Stack, run_watched, running_stack
from bench.throughput import (
    BASELINE_QUEUE,
    CpuMeter,
    deploy_bench_catalogue,
    machine_info,
    percentile,
    profile_traits,
    say,
)
from engine.database import get_profile, session_scope, upsert_profile
from engine.payloads import EventMessage, workflow_id_for
from engine.profiles import customer_from_traits
from tests.smtp_server import Mailbox, SmtpServer, free_port

__all__ = ["main"]

CATALOGUE = Path(__file__).resolve().parent / "latency.yaml"
JOURNEY = "bench_welcome"
EVENT = "signed_up"
PATHS = ("engine", "baseline")


class TimedMailbox(Mailbox):
    """tests/smtp_server.py's mailbox, noting when each recipient's message arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[str, float] = {}
        self.arrival = threading.Condition()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        now = time.time()
        answer = await super().handle_DATA(server, session, envelope)
        with self.arrival:
            for address in envelope.rcpt_tos:
                self.arrived.setdefault(str(address).lower(), now)
            self.arrival.notify_all()
        return answer


@dataclass
class Sample:
    path: str
    customer: str
    workflow_id: str
    sent: float = 0.0  # t0: time.time() just before the POST (or the profile read)
    answered: float | None = None  # the POST's answer (or the start call's return)
    delivered: float | None = None  # t1: the SMTP server has the message
    run_started: float | None = None  # WorkflowExecutionStarted (server clock)
    first_task: float | None = None  # the first WorkflowTaskStarted (server clock)
    error: str | None = None


@dataclass
class Figures:
    """Milliseconds: p50, p90, p99, max over the measured samples of one path."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Figures:
        ms = [v * 1000 for v in values]
        return cls(
            count=len(ms),
            p50=round(percentile(ms, 0.5), 1),
            p90=round(percentile(ms, 0.9), 1),
            p99=round(percentile(ms, 0.99), 1),
            max=round(max(ms), 1) if ms else float("nan"),
        )


@dataclass
class PathResult:
    path: str
    sent: int
    delivered: int
    errors: list[str]
    to_message: Figures  # t0 -> SMTP DATA
    to_answer: Figures  # t0 -> the POST's answer / start returned
    to_first_task: Figures  # t0 -> first WorkflowTaskStarted
    start_to_first_task: Figures  # WorkflowExecutionStarted -> first WorkflowTaskStarted
    cpu_cores: dict[str, float] = field(default_factory=dict)


@dataclass
class Options:
    events: int
    rate: float
    warmup: int
    deadline: float
    json_path: Path | None
    keep_state: bool


class LatencyBench:
    def __init__(self, stack: Stack, client: Client, mailbox: TimedMailbox, prefix: str) -> None:
        self.stack = stack
        self.client = client
        self.mailbox = mailbox
        self.prefix = prefix

    def customer(self, path: str, label: str, index: int) -> str:
        return f"{self.prefix}-{path}-{label}{index}"

    async def send_engine(self, sample: Sample, http: httpx.AsyncClient) -> None:
        body = {
            "type": "track",
            "userId": sample.customer,
            "event": EVENT,
            "messageId": f"msg-{sample.customer}",
            "properties": {"plan": "pro"},
        }
        headers = {"Authorization": f"Bearer {self.stack.api_key}"}
        sample.sent = time.time()
        response = await http.post("/v1/events", json=body, headers=headers)
        sample.answered = time.time()
        if response.status_code != 202:
            sample.error = f"POST answered {response.status_code}: {response.text[:200]}"
        elif sample.workflow_id not in response.json().get("started", []):
            sample.error = f"not started: {response.text[:200]}"

    async def send_baseline(self, sample: Sample) -> None:
        sample.sent = time.time()
        traits = await asyncio.to_thread(self._profile, sample.customer)
        trigger = EventMessage(
            name=EVENT,
            customer_id=sample.customer,
            message_id=f"msg-{sample.customer}",
            timestamp=datetime.now(UTC),
            properties={"plan": "pro"},
        )
        await self.client.start_workflow(
            WORKFLOWS["welcome"],
            args=[customer_from_traits(sample.customer, traits), trigger],
            id=sample.workflow_id,
            task_queue=BASELINE_QUEUE,
        )
        sample.answered = time.time()

    def _profile(self, customer: str) -> dict[str, Any]:
        with session_scope(self.stack.db) as session:
            return get_profile(session, customer)

    def sample(self, path: str, label: str, index: int) -> Sample:
        customer = self.customer(path, label, index)
        workflow_id = (
            workflow_id_for(JOURNEY, customer, None)
            if path == "engine"
            else f"baseline/welcome/{customer}"
        )
        return Sample(path=path, customer=customer, workflow_id=workflow_id)

    async def drive(self, label: str, count: int, rate: float) -> list[Sample]:
        """``count`` events per path at ``rate`` per second each, interleaved."""
        period = 1.0 / rate
        samples: list[Sample] = []
        tasks: list[asyncio.Task[None]] = []
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx.AsyncClient(
            base_url=self.stack.api_url, limits=limits, timeout=30.0
        ) as http:

            async def guarded(sample: Sample) -> None:
                try:
                    if sample.path == "engine":
                        await self.send_engine(sample, http)
                    else:
                        await self.send_baseline(sample)
                except Exception as error:
                    sample.error = f"{type(error).__name__}: {error}"

            begin = time.monotonic()
            for index in range(count):
                for offset, path in enumerate(PATHS):
                    due = begin + index * period + offset * period / 2
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    sample = self.sample(path, label, index)
                    samples.append(sample)
                    tasks.append(asyncio.create_task(guarded(sample)))
            await asyncio.gather(*tasks)
        await self.delivered(samples, timeout=60.0)
        return samples

    async def delivered(self, samples: Sequence[Sample], timeout: float) -> None:
        """Wait (bounded) for every sent sample's message; note when each arrived."""
        waiting = {f"{s.customer}@example.test".lower(): s for s in samples if s.error is None}
        deadline = time.monotonic() + timeout

        def wait() -> None:
            with self.mailbox.arrival:
                while time.monotonic() < deadline:
                    if all(a in self.mailbox.arrived for a in waiting):
                        return
                    self.mailbox.arrival.wait(timeout=0.5)

        await asyncio.to_thread(wait)
        for address, sample in waiting.items():
            arrived = self.mailbox.arrived.get(address)
            if arrived is None:
                sample.error = f"no message within {timeout:.0f} s"
            else:
                sample.delivered = arrived

    async def first_tasks(self, samples: Sequence[Sample]) -> None:
        """Each run's start and first workflow task, from its history."""
        slots = asyncio.Semaphore(8)

        async def read(sample: Sample) -> None:
            async with slots:
                handle = self.client.get_workflow_handle(sample.workflow_id)
                history = await handle.fetch_history()
            for event in history.events:
                moment = event.event_time.ToDatetime(tzinfo=UTC).timestamp()
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                    sample.run_started = moment
                elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                    sample.first_task = moment
                    break

        await asyncio.gather(*(read(s) for s in samples if s.error is None))


def _result(path: str, samples: Sequence[Sample], cpu: dict[str, float]) -> PathResult:
    mine = [s for s in samples if s.path == path]
    good = [s for s in mine if s.error is None and s.delivered is not None]
    tasks = [s for s in good if s.first_task is not None and s.run_started is not None]
    return PathResult(
        path=path,
        sent=len(mine),
        delivered=len(good),
        errors=sorted({s.error for s in mine if s.error})[:5],
        to_message=Figures.of([s.delivered - s.sent for s in good if s.delivered]),
        to_answer=Figures.of([s.answered - s.sent for s in good if s.answered]),
        to_first_task=Figures.of([s.first_task - s.sent for s in tasks if s.first_task]),
        start_to_first_task=Figures.of(
            [s.first_task - s.run_started for s in tasks if s.first_task and s.run_started]
        ),
        cpu_cores=cpu,
    )


async def _measure(options: Options, stack: Stack, mailbox: TimedMailbox, prefix: str) -> Any:
    client = await stack.ready()
    bench = LatencyBench(stack, client, mailbox, prefix)
    if options.warmup:
        say(f"warm-up: {options.warmup} events per path (not measured)")
        await bench.drive("w", options.warmup, options.rate)
    await asyncio.sleep(2.0)
    say(f"measuring: {options.events} events per path at {options.rate}/s each, interleaved")
    meter = CpuMeter(pids=stack.pids)
    meter.begin()
    samples = await bench.drive("m", options.events, options.rate)
    cpu = meter.end()
    await bench.first_tasks(samples)
    return [_result(path, samples, cpu) for path in PATHS]


def run(options: Options) -> dict[str, Any]:
    info = machine_info()
    prefix = f"l{int(time.time()) % 100000}"
    mailbox = TimedMailbox()
    smtp = SmtpServer(port=free_port(), mailbox=mailbox)
    smtp.start()
    try:
        with running_stack(
            keep_state=options.keep_state,
            baseline=True,
            extra_env={"JOURNEYS_EMAIL_URL": smtp.url()},
        ) as (stack, _):
            deploy_bench_catalogue(stack.db, CATALOGUE)
            customers = [
                bench_customer
                for path in PATHS
                for label, count in (("w", options.warmup), ("m", options.events))
                for bench_customer in (f"{prefix}-{path}-{label}{i}" for i in range(count))
            ]
            with session_scope(stack.db) as session:
                for customer in customers:
                    upsert_profile(
                        session,
                        customer_id=customer,
                        traits={**profile_traits(customer), "email_opt_in": True},
                    )
            results = run_watched(
                stack, _measure(options, stack, mailbox, prefix), options.deadline
            )
    finally:
        smtp.stop()
    info["loadavg_at_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {
        "machine": info,
        "options": {"events": options.events, "rate": options.rate, "warmup": options.warmup},
        "paths": [asdict(r) for r in results],
        "_results": results,
    }


def format_report(results: Sequence[PathResult]) -> str:
    by_path = {r.path: r for r in results}
    engine, baseline = by_path["engine"], by_path["baseline"]
    lines = [
        "| measure (ms) | path | n | p50 | p90 | p99 | max |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, name in (
        ("event -> message in SMTP", "to_message"),
        ("event -> POST answered / start returned", "to_answer"),
        ("event -> first workflow task", "to_first_task"),
        ("run started -> first workflow task (server)", "start_to_first_task"),
    ):
        for result in (engine, baseline):
            f: Figures = getattr(result, name)
            lines.append(
                f"| {label} | {result.path} | {f.count} | {f.p50} | {f.p90} | {f.p99} | {f.max} |"
            )
    e, b = engine.to_message, baseline.to_message
    lines.append("")
    lines.append(
        f"engine/baseline, event -> message: p50 {e.p50 / b.p50:.2f}, p99 {e.p99 / b.p99:.2f} "
        f"(targets: p50 ratio <= 1.2, engine p99 < 150 ms)"
    )
    lines.append(f"delivered: engine {engine.delivered}/{engine.sent}, ")
    lines[-1] += f"baseline {baseline.delivered}/{baseline.sent}"
    for result in results:
        for error in result.errors:
            lines.append(f"{result.path} error: {error}")
    lines.append("cores over the measured phase: " + json.dumps(engine.cpu_cores))
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency",
        description="Event to first message: the engine vs a hand-written Temporal workflow.",
    )
    parser.add_argument("--events", type=int, default=200, help="events per path")
    parser.add_argument("--rate", type=float, default=5.0, help="events per second per path")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured events per path")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds at most")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--keep-state", action="store_true", help="keep the temp state and logs")
    args = parser.parse_args(argv)
    if args.events < 1 or args.rate <= 0 or args.warmup < 0:
        parser.error("--events >= 1, --rate > 0, --warmup >= 0")
    return Options(
        events=args.events,
        rate=args.rate,
        warmup=args.warmup,
        deadline=args.deadline,
        json_path=args.json,
        keep_state=args.keep_state,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = _parse(argv)
    try:
        report = run(options)
    except Exception as error:
        say(f"bench: {type(error).__name__}: {error}")
        return 1
    results: list[PathResult] = report.pop("_results")
    print(format_report(results))
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        say(f"results written to {options.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
