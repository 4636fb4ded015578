"""Where a cached waiting run's memory goes: tracemalloc around an in-process worker.

Run from the repository root: ``.venv/bin/python -m bench.run_memory --runs 2000``.

Starts the dev server (bench/throughput.py's way, fresh state directory), then, in this
process, the engine's worker (`worker.build_worker`) or the baseline's
(`bench.baseline.build_baseline_worker`), and starts ``--runs`` runs of bench/capacity.py's
waiting journey with the client (engine: as the router starts them, with the profile and
the runs row the starter's). When the runs wait, it compares a tracemalloc snapshot with
one taken before: Python's allocations per run, by source line, against the process's RSS
per run (the difference is native: the SDK core's per-run state, allocator slack).
bench/capacity.py measures the same in separate processes; this one tells where.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import sys
import tracemalloc
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

from bench.baseline import build_baseline_worker
from bench.capacity import BASELINE_WORKFLOW, ENTRY_EVENT, deploy_capacity_catalogue, rss_mb
from bench.throughput import _set_history_keys, _state_dir, free_port, say
from engine.catalog import build_catalog
from engine.database import make_engine
from engine.payloads import (
    WORKFLOW_NAME,
    CustomerContext,
    EventMessage,
    JourneyRunInput,
    workflow_id_for,
)
from engine.settings import RuntimeSettings
from runtime.devserver import dev_server_command, wait_until_ready
from runtime.temporal import connect
from service.cli.supervisor import Supervisor
from worker import build_worker
from workflows.search_attributes import at_start

__all__ = ["main"]

QUEUE = "bench-memory"


async def _start(client: Client, side: str, runs: int, prefix: str) -> list[str]:
    plan = build_catalog(Path(__file__).resolve().parent / "capacity.yaml").plans["bench_wait"]
    slots = asyncio.Semaphore(50)
    ids: list[str] = []

    async def one(i: int) -> None:
        customer = f"{prefix}-{i}"
        trigger = EventMessage(
            name=ENTRY_EVENT,
            customer_id=customer,
            message_id=f"m-{customer}",
            timestamp=datetime.now(UTC),
            properties={"batch": prefix},
        )
        async with slots:
            if side == "engine":
                workflow_id = workflow_id_for(plan.journey_id, customer, None)
                await client.start_workflow(
                    WORKFLOW_NAME,
                    JourneyRunInput(
                        plan=plan,
                        customer_id=customer,
                        trigger=trigger,
                        profile=CustomerContext(id=customer),
                        recorded_by_starter=True,
                    ),
                    id=workflow_id,
                    task_queue=QUEUE,
                    search_attributes=at_start(
                        journey_id=plan.journey_id, version=plan.version, customer_id=customer
                    ),
                )
            else:
                workflow_id = f"baseline/wait/{customer}"
                await client.start_workflow(
                    BASELINE_WORKFLOW,
                    args=[CustomerContext(id=customer), trigger],
                    id=workflow_id,
                    task_queue=QUEUE,
                )
        ids.append(workflow_id)

    await asyncio.gather(*(one(i) for i in range(runs)))
    return ids


async def _waiting(client: Client, ids: Sequence[str], timeout: float) -> None:
    """Until every run's first workflow task has completed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = list(ids)
    while pending:
        if loop.time() > deadline:
            raise TimeoutError(f"{len(pending)} runs not waiting after {timeout:.0f} s")
        checked = pending[:200]
        described = await asyncio.gather(
            *(client.get_workflow_handle(w).describe() for w in checked)
        )
        done = {
            w
            for w, d in zip(checked, described, strict=True)
            if d.raw_description.workflow_execution_info.history_length >= 4
        }
        pending = [w for w in pending if w not in done]
        if not done:
            await asyncio.sleep(0.5)


async def _measure(address: str, database_url: str, side: str, runs: int, top: int) -> None:
    await wait_until_ready(address, timeout=60)
    db = make_engine(database_url)
    client = await connect(RuntimeSettings(temporal_address=address, database_url=database_url))
    worker: Worker = (
        build_worker(client, db=db, task_queue=QUEUE)
        if side == "engine"
        else build_baseline_worker(client, db=db, task_queue=QUEUE)
    )
    async with worker:
        warm = await _start(client, side, 50, f"w{secrets.token_hex(2)}")  # imports, caches
        await _waiting(client, warm, 120)
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        rss_before = rss_mb(os.getpid())
        ids = await _start(client, side, runs, f"m{secrets.token_hex(2)}")
        await _waiting(client, ids, 1800)
        await asyncio.sleep(2.0)
        gc.collect()
        after = tracemalloc.take_snapshot()
        rss_after = rss_mb(os.getpid())
        tracemalloc.stop()
    stats = after.compare_to(before, "lineno")
    python = sum(s.size_diff for s in stats)
    print(
        f"{side}: {runs} waiting runs; RSS {(rss_after - rss_before) * 1024 / runs:.1f} KB per "
        f"run, Python allocations {python / 1024 / runs:.1f} KB per run "
        f"(the rest native or allocator slack)"
    )
    by_file = after.compare_to(before, "filename")
    print("by file (KB per run):")
    for stat in by_file[:top]:
        print(f"  {stat.size_diff / 1024 / runs:7.2f}  {stat.traceback[0].filename}")
    print("by line (KB per run):")
    for stat in stats[:top]:
        frame = stat.traceback[0]
        print(f"  {stat.size_diff / 1024 / runs:7.2f}  {frame.filename}:{frame.lineno}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_memory", description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--side", choices=("engine", "baseline"), default="engine")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--no-codec", dest="codec", action="store_false")
    args = parser.parse_args(argv)
    _set_history_keys(args.codec)
    with _state_dir(False) as state:
        database_url = f"sqlite:///{state / 'journeys.db'}"
        deploy_capacity_catalogue(make_engine(database_url))
        port, ui_port = free_port(), free_port()
        with Supervisor(log_dir=state / "logs") as supervisor:
            supervisor.start(
                "temporal",
                dev_server_command(state_dir=state, port=port, ui_port=ui_port),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            say(f"dev server on 127.0.0.1:{port}; {args.runs} {args.side} runs")
            asyncio.run(_measure(f"127.0.0.1:{port}", database_url, args.side, args.runs, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
