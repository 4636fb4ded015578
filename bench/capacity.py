"""Capacity: many runs waiting on a timer, the engine against hand-written workflows.

Run from the repository root: ``.venv/bin/python -m bench.capacity --runs 100000``.

One run starts everything on loopback as bench/throughput.py does (its helpers: the dev
server with its SQLite file in a fresh state directory, `python worker.py`, the API under
uvicorn, `python -m bench.baseline`) and stops it at the end, every wait bounded. Then:

- engine: ``--runs`` Segment `track` events POSTed to ``/v1/batch`` (``--batch`` per
  request, ``--connections`` requests at once) enter bench/capacity.yaml's ``bench_wait``:
  each run waits up to 7 days for a ``capacity_woken`` event;
- baseline: as many `BaselineWait` workflows (bench/baseline.py) started with the client
  (``--connections`` x ``--batch`` starts in flight), each waiting up to 7 days for a
  signal, on its own worker with `worker.build_worker`'s settings (cache, pollers).

Starts go in blocks of ``--block`` (10,000): a block's start rate runs from its first
request to the moment its runs' first workflow task has completed (a sample of the block's
runs, its last ones included, shows a history past the first task). When every run waits,
the measures: Temporal database bytes per run (the SQLite file's used pages, WAL
included, before and after the phase), worker RSS, RSS per cached run (over
min(runs, cache)), and app database bytes per run. Then every run is woken, block by block
(engine: a ``capacity_woken`` event per run through ``/v1/batch``; baseline: a signal
with the client), and a block's wake rate runs until the server counts its runs
completed. Histories are sealed by the codec as `journeys up` seals them (a new key in
every process; ``--no-codec`` for plain).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.engine import Engine
from temporalio.client import Client

from bench.baseline import WAKE_SIGNAL
from bench.throughput import (
    BASELINE_QUEUE,
    ENGINE_QUEUE,
    ROOT,
    BenchError,
    CpuMeter,
    _set_history_keys,
    _state_dir,
    _wait_for,
    _watched,
    child_env,
    free_port,
    machine_info,
    say,
)
from engine.catalog import build_catalog
from engine.database import make_engine
from engine.deploy import deploy_catalog
from engine.payloads import WORKFLOW_NAME, CustomerContext, EventMessage, workflow_id_for
from engine.settings import RuntimeSettings
from runtime.devserver import dev_server_command, wait_until_ready
from runtime.temporal import connect
from service.cli.supervisor import Supervisor, tail

__all__ = ["CapacityResult", "Options", "main", "run_capacity"]

CATALOGUE = Path(__file__).resolve().parent / "capacity.yaml"
JOURNEY = "bench_wait"
ENTRY_EVENT = "capacity_entered"
WAKE_EVENT = "capacity_woken"
BASELINE_WORKFLOW = "BaselineWait"
WORKER_CACHE = 10_000
"""`worker.build_worker`'s max_cached_workflows (both workers have it)."""
SAMPLE = 40
"""Runs of a block checked for their first workflow task: the last ones and random others."""


@dataclass(frozen=True)
class Options:
    runs: int
    block: int
    batch: int
    connections: int
    wake: bool
    codec: bool
    sides: tuple[str, ...]
    deadline: float
    block_timeout: float
    json_path: Path | None
    keep_state: bool
    wake_sample: int = 0
    """Runs woken per block (its first ones); 0: every run."""


@dataclass
class Block:
    """One block of runs: how fast they started and woke."""

    first: int
    count: int
    start_s: float = 0.0
    start_per_s: float = 0.0
    wake_s: float = 0.0
    wake_per_s: float = 0.0
    woken: int = 0
    start_cpu_ms: dict[str, float] = field(default_factory=dict)
    """CPU milliseconds per started run, by process, over the block's start."""


@dataclass
class CapacityResult:
    """One side (engine or baseline): what ``runs`` waiting runs cost."""

    side: str
    runs: int
    started: int = 0
    woken: int = 0
    temporal_bytes_per_run: float = 0.0
    temporal_file_bytes_per_run: float = 0.0
    worker_rss_before_mb: float = 0.0
    worker_rss_waiting_mb: float = 0.0
    worker_rss_after_wake_mb: float = 0.0
    rss_per_cached_run_kb: float = 0.0
    app_bytes_per_run: float = 0.0
    start_per_s: float = 0.0
    wake_per_s: float = 0.0
    cpu_cores_start: dict[str, float] = field(default_factory=dict)
    cpu_cores_wake: dict[str, float] = field(default_factory=dict)
    history_bytes: float = 0.0
    deferred_batches: int = 0
    """Requests whose routing the API left to its background loop (10 s routing timeout):
    those runs start (or wake) later, within the block's measured time."""
    blocks: list[Block] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- measures


def sqlite_used_bytes(path: Path) -> int:
    """Bytes in use in the SQLite database at ``path`` as a reader sees it now (the WAL's
    committed pages included, free pages not): read-only, no checkpoint forced."""
    if not path.exists():
        return 0
    with contextlib.closing(
        sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    ) as connection:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
        size = connection.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def sqlite_file_bytes(path: Path) -> int:
    """The database's files on disk: the main file and its WAL."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (VmRSS), 0 if it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ----------------------------------------------------------------------------- one side


@dataclass
class Capacity:
    """The clients, files and processes every side uses."""

    client: Client
    api_url: str
    api_key: str
    prefix: str
    options: Options
    temporal_db: Path
    app_db: Path
    pids: dict[str, list[int]]
    progress: Progress

    def customers(self, side: str) -> list[str]:
        return [f"{self.prefix}-{side[0]}{i}" for i in range(self.options.runs)]

    def workflow_id(self, side: str, customer: str) -> str:
        if side == "engine":
            return workflow_id_for(JOURNEY, customer, None)
        return f"baseline/wait/{customer}"

    async def run_side(self, side: str) -> CapacityResult:
        options = self.options
        result = CapacityResult(side=side, runs=options.runs)
        worker = self.pids["worker" if side == "engine" else "baseline_worker"][0]
        customers = self.customers(side)
        blocks = [
            Block(first=first, count=min(options.block, options.runs - first))
            for first in range(0, options.runs, options.block)
        ]
        temporal_before = sqlite_used_bytes(self.temporal_db)
        temporal_file_before = sqlite_file_bytes(self.temporal_db)
        app_before = sqlite_used_bytes(self.app_db)
        result.worker_rss_before_mb = round(rss_mb(worker), 1)
        cpu = CpuMeter(pids=self.pids)

        limits = httpx.Limits(max_connections=options.connections, max_keepalive_connections=16)
        async with httpx.AsyncClient(base_url=self.api_url, limits=limits, timeout=120.0) as http:
            task = self.progress.add_task(f"{side}: starting", total=options.runs)
            cpu.begin()
            for block in blocks:
                names = customers[block.first : block.first + block.count]
                began = time.monotonic()
                per_block = CpuMeter(pids=self.pids)
                per_block.begin()
                if side == "engine":
                    await self._post_all(http, names, ENTRY_EVENT, result, task)
                else:
                    await self._start_baselines(names, result, task)
                ids = [self.workflow_id(side, c) for c in names]
                await self._first_tasks_done(ids)
                block.start_s = round(time.monotonic() - began, 2)
                block.start_per_s = round(block.count / block.start_s, 1)
                block.start_cpu_ms = {
                    name: round(cores * block.start_s * 1000 / block.count, 2)
                    for name, cores in per_block.end().items()
                }
            result.cpu_cores_start = cpu.end()
            self.progress.remove_task(task)
            total = sum(b.start_s for b in blocks)
            result.start_per_s = round(options.runs / total, 1) if total else 0.0
            # Runs whose routing was deferred may start after the block's sample was seen.
            await self._until_counted(side, "Running", options.runs)
            result.started = await self._count(side, "Running")
            await asyncio.sleep(3.0)  # the server's last writes (visibility, timers)
            result.temporal_bytes_per_run = round(
                (sqlite_used_bytes(self.temporal_db) - temporal_before) / options.runs, 1
            )
            result.temporal_file_bytes_per_run = round(
                (sqlite_file_bytes(self.temporal_db) - temporal_file_before) / options.runs, 1
            )
            result.app_bytes_per_run = round(
                (sqlite_used_bytes(self.app_db) - app_before) / options.runs, 1
            )
            result.worker_rss_waiting_mb = round(rss_mb(worker), 1)
            cached = min(options.runs, WORKER_CACHE)
            result.rss_per_cached_run_kb = round(
                (result.worker_rss_waiting_mb - result.worker_rss_before_mb) * 1024 / cached, 1
            )
            result.history_bytes = await self._history_bytes(
                [self.workflow_id(side, c) for c in customers[-3:]]
            )
            say(
                f"{side}: {result.started} running, {result.temporal_bytes_per_run / 1024:.1f} KB "
                f"Temporal and {result.app_bytes_per_run / 1024:.2f} KB app per run, worker "
                f"{result.worker_rss_waiting_mb:.0f} MB ({result.rss_per_cached_run_kb:.1f} KB "
                f"per cached run), {result.start_per_s} starts/s"
            )
            result.blocks = blocks
            if not options.wake:
                return result

            woken = [
                customers[block.first : block.first + _wake_count(block, options)]
                for block in blocks
            ]
            task = self.progress.add_task(f"{side}: waking", total=sum(map(len, woken)))
            completed_before = await self._count(side, "Completed")
            cpu.begin()
            target = completed_before
            for block, names in zip(blocks, woken, strict=True):
                began = time.monotonic()
                if side == "engine":
                    await self._post_all(http, names, WAKE_EVENT, result, task)
                else:
                    await self._signal_baselines(names, result, task)
                target += len(names)
                await self._until_completed(side, target)
                block.woken = len(names)
                block.wake_s = round(time.monotonic() - began, 2)
                block.wake_per_s = round(block.woken / block.wake_s, 1)
            result.cpu_cores_wake = cpu.end()
            self.progress.remove_task(task)
            total = sum(b.wake_s for b in blocks)
            result.wake_per_s = round(sum(b.woken for b in blocks) / total, 1) if total else 0.0
            result.woken = await self._count(side, "Completed") - completed_before
            result.worker_rss_after_wake_mb = round(rss_mb(worker), 1)
            customers = [customer for names in woken for customer in names]
            await self._check_outcomes(side, customers, result)
        return result

    # ---- starting and waking

    async def _post_all(
        self,
        http: httpx.AsyncClient,
        customers: Sequence[str],
        event: str,
        result: CapacityResult,
        task: Any,
    ) -> None:
        """POST one ``event`` per customer to /v1/batch, ``--batch`` a request."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        size = self.options.batch
        chunks = [customers[i : i + size] for i in range(0, len(customers), size)]
        slots = asyncio.Semaphore(self.options.connections)
        now = datetime.now(UTC).isoformat()

        async def post(chunk: Sequence[str]) -> None:
            body = {
                "batch": [
                    {
                        "type": "track",
                        "userId": customer,
                        "event": event,
                        "messageId": f"{event}-{customer}",
                        "timestamp": now,
                        "properties": {"batch": self.prefix},
                    }
                    for customer in chunk
                ]
            }
            async with slots:
                for attempt in range(3):
                    try:
                        answer = await http.post("/v1/batch", json=body, headers=headers)
                        break
                    except httpx.TransportError:
                        if attempt == 2:
                            raise
                        await asyncio.sleep(1.0)  # safe to repeat: deduplicated by messageId
                if answer.status_code != 202:
                    result.errors.append(f"POST {answer.status_code}: {answer.text[:200]}")
                else:
                    reply = answer.json()
                    done = len(reply.get("started", [])) + len(reply.get("signalled", []))
                    if reply.get("routing") == "deferred":
                        result.deferred_batches += 1
                    elif done != len(chunk) and len(result.errors) < 50:
                        skipped = reply.get("skipped", [])[:3]
                        result.errors.append(f"{event}: {done} of {len(chunk)} routed: {skipped}")
            self.progress.advance(task, len(chunk))

        await asyncio.gather(*(post(chunk) for chunk in chunks))

    async def _start_baselines(
        self, customers: Sequence[str], result: CapacityResult, task: Any
    ) -> None:
        slots = asyncio.Semaphore(self.options.connections * self.options.batch // 4)

        async def start(customer: str) -> None:
            trigger = EventMessage(
                name=ENTRY_EVENT,
                customer_id=customer,
                message_id=f"{ENTRY_EVENT}-{customer}",
                timestamp=datetime.now(UTC),
                properties={"batch": self.prefix},
            )
            async with slots:
                try:
                    await self.client.start_workflow(
                        BASELINE_WORKFLOW,
                        args=[CustomerContext(id=customer), trigger],
                        id=self.workflow_id("baseline", customer),
                        task_queue=BASELINE_QUEUE,
                    )
                except Exception as error:
                    result.errors.append(f"start {customer}: {type(error).__name__}: {error}")
            self.progress.advance(task, 1)

        await asyncio.gather(*(start(c) for c in customers))

    async def _signal_baselines(
        self, customers: Sequence[str], result: CapacityResult, task: Any
    ) -> None:
        slots = asyncio.Semaphore(self.options.connections * self.options.batch // 4)

        async def signal(customer: str) -> None:
            async with slots:
                try:
                    handle = self.client.get_workflow_handle(self.workflow_id("baseline", customer))
                    await handle.signal(WAKE_SIGNAL)
                except Exception as error:
                    result.errors.append(f"signal {customer}: {type(error).__name__}: {error}")
            self.progress.advance(task, 1)

        await asyncio.gather(*(signal(c) for c in customers))

    # ---- waiting for the server

    async def _first_tasks_done(self, workflow_ids: Sequence[str]) -> None:
        """Until a sample of ``workflow_ids`` (the last ones and random others) shows a
        history past its first workflow task (started, task scheduled, started, completed)."""
        rest = list(workflow_ids[: -SAMPLE // 2])
        sample = list(workflow_ids[-SAMPLE // 2 :]) + random.sample(
            rest, min(len(rest), SAMPLE // 2)
        )
        pending = set(sample)

        async def done(workflow_id: str) -> bool:
            try:
                described = await self.client.get_workflow_handle(workflow_id).describe()
            except Exception:
                return False  # not started yet
            return described.raw_description.workflow_execution_info.history_length >= 4

        async def probe() -> bool:
            asked = list(pending)
            checks = await asyncio.gather(*(done(w) for w in asked))
            pending.difference_update(w for w, ok in zip(asked, checks, strict=True) if ok)
            return not pending

        await _wait_for("the block's first workflow tasks", probe, self.options.block_timeout)

    async def _count(self, side: str, status: str) -> int:
        kind = WORKFLOW_NAME if side == "engine" else BASELINE_WORKFLOW
        query = f'WorkflowType = "{kind}" AND ExecutionStatus = "{status}"'
        counted = await self.client.count_workflows(query)
        return counted.count

    async def _until_completed(self, side: str, target: int) -> None:
        async def probe() -> bool:
            return await self._count(side, "Completed") >= target

        await _wait_for(f"{target} completed {side} runs", probe, self.options.block_timeout)

    async def _until_counted(self, side: str, status: str, target: int) -> None:
        """Until the server counts ``target`` runs in ``status``, at most 5 minutes (the
        count is then reported as it is)."""

        async def probe() -> bool:
            return await self._count(side, status) >= target

        with contextlib.suppress(BenchError):
            await _wait_for(f"{target} {status} {side} runs", probe, 300)

    async def _history_bytes(self, workflow_ids: Sequence[str]) -> float:
        """A waiting run's history in bytes as the server sends it (mean of a few)."""
        sizes = []
        for workflow_id in workflow_ids:
            history = await self.client.get_workflow_handle(workflow_id).fetch_history()
            sizes.append(sum(event.ByteSize() for event in history.events))
        return round(sum(sizes) / len(sizes), 1) if sizes else 0.0

    async def _check_outcomes(
        self, side: str, customers: Sequence[str], result: CapacityResult
    ) -> None:
        """A few woken runs ended as woken (not by their timeout, not failed)."""
        for customer in random.sample(list(customers), min(5, len(customers))):
            handle = self.client.get_workflow_handle(self.workflow_id(side, customer))
            answer = await asyncio.wait_for(handle.result(), timeout=30)
            outcome = answer.get("outcome") if isinstance(answer, dict) else answer
            if outcome != "woken":
                result.errors.append(f"{customer}: ended {outcome!r}, expected 'woken'")


def _wake_count(block: Block, options: Options) -> int:
    """How many of ``block``'s runs are woken: ``--wake-sample`` of them, or all."""
    if options.wake_sample <= 0:
        return block.count
    return min(block.count, options.wake_sample)


# ----------------------------------------------------------------------------- report


def summary(results: Sequence[CapacityResult]) -> dict[str, Any]:
    """The engine's figures beside the baseline's, with the ratios and the targets."""
    by_side = {r.side: r for r in results}
    engine, baseline = by_side.get("engine"), by_side.get("baseline")
    if engine is None or baseline is None:
        return {}

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None

    return {
        "temporal_bytes_ratio": ratio(
            engine.temporal_bytes_per_run, baseline.temporal_bytes_per_run
        ),
        "worker_rss_ratio": ratio(engine.worker_rss_waiting_mb, baseline.worker_rss_waiting_mb),
        "rss_per_cached_run_ratio": ratio(
            engine.rss_per_cached_run_kb, baseline.rss_per_cached_run_kb
        ),
        "history_bytes_ratio": ratio(engine.history_bytes, baseline.history_bytes),
        "start_rate_ratio": ratio(engine.start_per_s, baseline.start_per_s),
        "wake_rate_ratio": ratio(engine.wake_per_s, baseline.wake_per_s),
        "target": 1.5,
    }


def format_report(results: Sequence[CapacityResult], totals: dict[str, Any]) -> str:
    by_side = {r.side: r for r in results}
    engine, baseline = by_side.get("engine"), by_side.get("baseline")
    rows: list[tuple[str, str, Callable[[CapacityResult], float]]] = [
        (
            "Temporal DB KB per run (used pages)",
            "temporal_bytes_ratio",
            lambda r: r.temporal_bytes_per_run / 1024,
        ),
        ("Temporal DB files KB per run", "", lambda r: r.temporal_file_bytes_per_run / 1024),
        ("history KB per waiting run", "history_bytes_ratio", lambda r: r.history_bytes / 1024),
        ("worker RSS MB, idle", "", lambda r: r.worker_rss_before_mb),
        ("worker RSS MB, all waiting", "worker_rss_ratio", lambda r: r.worker_rss_waiting_mb),
        (
            "worker RSS KB per cached run",
            "rss_per_cached_run_ratio",
            lambda r: r.rss_per_cached_run_kb,
        ),
        ("worker RSS MB, all woken", "", lambda r: r.worker_rss_after_wake_mb),
        ("app DB KB per run", "", lambda r: r.app_bytes_per_run / 1024),
        ("starts/s (all blocks)", "start_rate_ratio", lambda r: r.start_per_s),
        ("wakes/s (all blocks)", "wake_rate_ratio", lambda r: r.wake_per_s),
    ]
    lines = [f"{'':<38} {'engine':>10} {'baseline':>10} {'ratio':>7}"]
    for label, key, value in rows:
        e = f"{value(engine):>10.2f}" if engine else f"{'-':>10}"
        b = f"{value(baseline):>10.2f}" if baseline else f"{'-':>10}"
        r = totals.get(key) if key else None
        lines.append(f"{label:<38} {e} {b} {r if r is not None else '':>7}")
    lines += [
        "",
        f"{'block':<16} {'engine start/s':>15} {'base start/s':>13} "
        f"{'engine wake/s':>14} {'base wake/s':>12}",
    ]
    blocks = max((len(r.blocks) for r in results), default=0)
    for i in range(blocks):
        e_block = engine.blocks[i] if engine and i < len(engine.blocks) else None
        b_block = baseline.blocks[i] if baseline and i < len(baseline.blocks) else None
        any_block = e_block or b_block
        assert any_block is not None
        span = f"{any_block.first + 1}-{any_block.first + any_block.count}"
        lines.append(
            f"{span:<16} {e_block.start_per_s if e_block else '-':>15} "
            f"{b_block.start_per_s if b_block else '-':>13} "
            f"{e_block.wake_per_s if e_block else '-':>14} "
            f"{b_block.wake_per_s if b_block else '-':>12}"
        )
    lines += ["", "CPU ms per started run, by block (server / worker / API):"]
    for r in results:
        worker = "worker" if r.side == "engine" else "baseline_worker"
        for block in r.blocks:
            cpu = block.start_cpu_ms
            lines.append(
                f"{r.side:<9} {block.first + 1}-{block.first + block.count:<12} "
                f"{cpu.get('server', 0):>7.2f} {cpu.get(worker, 0):>7.2f} {cpu.get('api', 0):>7.2f}"
            )
    for r in results:
        if r.deferred_batches:
            lines.append(f"{r.side}: {r.deferred_batches} requests routed by the API's loop")
        for error in r.errors[:5]:
            lines.append(f"error ({r.side}): {error}")
        if len(r.errors) > 5:
            lines.append(f"... and {len(r.errors) - 5} more errors ({r.side})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- orchestration


def deploy_capacity_catalogue(db: Engine) -> str:
    """Validate and activate bench/capacity.yaml; the plan's version."""
    catalog = build_catalog(CATALOGUE)
    if not catalog.ok:
        problems = "\n".join(v.format() for v in catalog.violations)
        raise BenchError(f"{CATALOGUE} is not valid:\n{problems}")
    deploy_catalog(catalog, engine=db, source_text=CATALOGUE.read_text(encoding="utf-8"))
    return catalog.plans[JOURNEY].version


async def _measure(
    options: Options,
    *,
    temporal_address: str,
    api_url: str,
    api_key: str,
    state: Path,
    pids: dict[str, list[int]],
) -> list[CapacityResult]:
    await wait_until_ready(temporal_address, timeout=60)
    # The app database holds the customers' keys the engine's payloads are sealed under.
    client = await connect(
        RuntimeSettings(
            temporal_address=temporal_address, database_url=f"sqlite:///{state / 'journeys.db'}"
        )
    )
    async with httpx.AsyncClient(base_url=api_url, timeout=2.0) as http:

        async def api_healthy() -> bool:
            try:
                answer = await http.get("/healthz")
            except httpx.HTTPError:
                return False
            return answer.status_code == 200 and answer.json().get("temporal") == "ok"

        await _wait_for("the API", api_healthy, 60)
    await asyncio.sleep(3.0)  # the workers' first polls
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        capacity = Capacity(
            client=client,
            api_url=api_url,
            api_key=api_key,
            prefix=f"c{secrets.token_hex(3)}",
            options=options,
            temporal_db=state / "temporal.db",
            app_db=state / "journeys.db",
            pids=pids,
            progress=progress,
        )
        results = []
        for side in options.sides:
            say(f"{side}: {options.runs} runs in blocks of {options.block}")
            results.append(await capacity.run_side(side))
            await asyncio.sleep(5.0)  # the server's last tasks before the next side
    return results


def run_capacity(options: Options) -> dict[str, Any]:
    """Start everything, measure both sides, stop everything; the results as a dict."""
    info = machine_info()
    with _state_dir(options.keep_state) as state:
        database_url = f"sqlite:///{state / 'journeys.db'}"
        db = make_engine(database_url)
        supervisor = Supervisor(log_dir=state / "logs")
        try:
            with supervisor:
                version = deploy_capacity_catalogue(db)
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
                        bytecode_cache=True,
                    )
                    for queue in (ENGINE_QUEUE, BASELINE_QUEUE)
                }
                say(f"starting the Temporal dev server on {temporal_address} (state in {state})")
                server = supervisor.start(
                    "temporal",
                    dev_server_command(state_dir=state, port=temporal_port, ui_port=ui_port),
                    env=env[ENGINE_QUEUE],
                )
                worker = supervisor.start(
                    "worker", [sys.executable, str(ROOT / "worker.py")], env=env[ENGINE_QUEUE]
                )
                baseline = supervisor.start(
                    "baseline_worker",
                    [sys.executable, "-m", "bench.baseline"],
                    env=env[BASELINE_QUEUE],
                    cwd=ROOT,
                )
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
                    "worker": [worker.pid],
                    "baseline_worker": [baseline.pid],
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
                                state=state,
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
            "runs": options.runs,
            "block": options.block,
            "batch": options.batch,
            "connections": options.connections,
            "wake": options.wake,
            "wake_sample": options.wake_sample,
            "codec": options.codec,
            "sides": list(options.sides),
        },
        "plan_version": version,
        "sides": [asdict(r) for r in results],
        "summary": summary(results),
        "_results": results,
    }


def _parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.capacity",
        description="Runs waiting on timers: the engine against hand-written workflows.",
    )
    parser.add_argument("--runs", type=int, default=100_000, help="waiting runs per side")
    parser.add_argument("--block", type=int, default=10_000, help="runs per measured block")
    parser.add_argument("--batch", type=int, default=100, help="events per /v1/batch request")
    parser.add_argument(
        "--connections", type=int, default=4, help="requests at once (baseline: x batch/4 starts)"
    )
    parser.add_argument("--no-wake", dest="wake", action="store_false", help="do not wake runs")
    parser.add_argument(
        "--wake-sample",
        type=int,
        default=0,
        help="wake only this many runs of each block, its first ones (0: all). The rest "
        "still wait when the bench stops; the block's wake rate is measured over these.",
    )
    parser.add_argument(
        "--no-codec",
        dest="codec",
        action="store_false",
        help="plain histories (by default every process seals them under one new key, as "
        "`journeys up` does with its generated key ring)",
    )
    parser.add_argument(
        "--sides", default="engine,baseline", help="comma-separated: engine, baseline"
    )
    parser.add_argument(
        "--deadline", type=float, default=4 * 3600.0, help="seconds the whole run may take"
    )
    parser.add_argument(
        "--block-timeout", type=float, default=1800.0, help="seconds one block may take"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--keep-state", action="store_true", help="keep the temp state directory and logs"
    )
    args = parser.parse_args(argv)
    sides = tuple(s.strip() for s in args.sides.split(",") if s.strip())
    if not sides or any(s not in ("engine", "baseline") for s in sides):
        parser.error("--sides: engine, baseline or both")
    if args.runs < 1 or args.block < 1 or args.batch < 1 or args.connections < 1:
        parser.error("--runs, --block, --batch and --connections must be at least 1")
    if args.batch > 500:
        parser.error("--batch: the API takes at most 500 messages a request")
    return Options(
        runs=args.runs,
        block=min(args.block, args.runs),
        batch=args.batch,
        connections=args.connections,
        wake=args.wake,
        wake_sample=args.wake_sample,
        codec=args.codec,
        sides=sides,
        deadline=args.deadline,
        block_timeout=args.block_timeout,
        json_path=args.json,
        keep_state=args.keep_state,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = _parse(argv)
    _set_history_keys(options.codec)
    try:
        report = run_capacity(options)
    except Exception as error:
        say(f"bench: {type(error).__name__}: {error}")
        return 1
    results: list[CapacityResult] = report.pop("_results")
    print(format_report(results, report["summary"]))
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        say(f"results written to {options.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
