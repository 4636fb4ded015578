"""Ingest (issue #20, item 3): events per second into the API from 16 connections, and a
count in the database afterwards that every event was stored and routed.

Run from the repository root: ``.venv/bin/python -m bench.ingest`` (~2 minutes).

It starts the embedded default as bench/throughput.py does (bench/stack.py: the dev server,
`worker.py`, the API under uvicorn) and, under the same uvicorn settings, the bare HTTP floor
(bench/floor.py: parse the JSON, answer 202, nothing stored). bench/latency.yaml is deployed:
``bench_wait`` waits for ``order_paid`` (keyed by ``order_id``). Phases, each measured
alone, from 16 keep-alive connections (a minimal HTTP/1.1 client on asyncio streams, so that
this driver costs the two cores as little as it can):

- **single**: ``track`` events no journey listens to (``page_viewed``), one per request to
  ``/v1/track``: stored, deduplicated, routed to nothing; and the same to the floor;
- **batch**: the same events, 100 per request to ``/v1/batch``; and the same to the floor;
- **signal**: first (not measured) ``order_placed`` starts two ``bench_wait`` runs per
  signal to send, and the bench waits until the worker and server are idle (every run
  waits); then half the runs are signalled straight with the Temporal client, 16 at a time
  (the floor: what the signal alone costs), and the other half through the API, one
  ``order_paid`` per request: each must answer its run as signalled.

After each engine phase the events table is counted: every event of the phase stored
once, every one marked routed (the router marks an event routed once its starts and
signals are done; `route_pending` finishes what a request left).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import text
from temporalio.client import Client

from bench.stack import Stack, run_watched, running_stack
from bench.throughput import (
    CpuMeter,
    deploy_bench_catalogue,
    machine_info,
    process_cpu_seconds,
    say,
)
from engine.payloads import SIGNAL_EVENT, EventMessage, workflow_id_for

__all__ = ["main"]

CATALOGUE = Path(__file__).resolve().parent / "latency.yaml"
CONNECTIONS = 16
BATCH = 100
WAIT_JOURNEY = "bench_wait"


class HttpError(RuntimeError):
    pass


class Connection:
    """One HTTP/1.1 keep-alive connection: POST a JSON body, read the answer (content-length
    bodies only, as uvicorn sends them). Reopened once when the server closed it."""

    def __init__(self, url: str, api_key: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.api_key = api_key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {self.api_key}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        for attempt in (1, 2):
            reader, writer = await self._open()
            try:
                writer.write(head + body)
                status_line = await reader.readuntil(b"\r\n")
                length = 0
                while True:
                    line = await reader.readuntil(b"\r\n")
                    if line == b"\r\n":
                        break
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                answer = await reader.readexactly(length)
                return int(status_line.split()[1]), answer
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()  # safe to send again: the API deduplicates by messageId
                if attempt == 2:
                    raise
        raise HttpError("unreachable")


async def blast(
    url: str, api_key: str, path: str, bodies: Sequence[bytes]
) -> tuple[float, list[tuple[int, bytes]]]:
    """POST every body from ``CONNECTIONS`` connections; the wall time and the answers."""
    answers: list[tuple[int, bytes]] = [(0, b"")] * len(bodies)
    queue = iter(range(len(bodies)))
    connections = [Connection(url, api_key) for _ in range(CONNECTIONS)]

    async def work(connection: Connection) -> None:
        for index in queue:
            answers[index] = await connection.post(path, bodies[index])

    begin = time.monotonic()
    try:
        await asyncio.gather(*(work(c) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    return time.monotonic() - begin, answers


@dataclass
class PhaseResult:
    phase: str
    target: str  # engine or floor
    events: int
    requests: int
    elapsed_s: float
    events_per_s: float
    refused: int  # answers other than 202
    stored: int | None = None
    routed: int | None = None
    signalled: int | None = None
    cpu_cores: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Options:
    single: int
    batched: int
    signals: int
    deadline: float
    json_path: Path | None
    keep_state: bool
    api_processes: int = 1


def _track(
    message_id: str, customer: str, event: str, properties: dict[str, Any]
) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": customer,
        "event": event,
        "messageId": message_id,
        "properties": properties,
    }


def _page_views(prefix: str, count: int) -> list[dict[str, Any]]:
    return [
        _track(f"{prefix}-{i}", f"{prefix}-c{i % 500}", "page_viewed", {"path": f"/p/{i % 37}"})
        for i in range(count)
    ]


class IngestBench:
    def __init__(self, stack: Stack, floor_url: str, run_id: str) -> None:
        self.stack = stack
        self.floor_url = floor_url
        self.run_id = run_id
        self.meter = CpuMeter(pids=stack.pids)

    async def phase(
        self, phase: str, target: str, path: str, bodies: Sequence[bytes], events: int
    ) -> tuple[PhaseResult, list[tuple[int, bytes]]]:
        url = self.stack.api_url if target == "engine" else self.floor_url
        await asyncio.sleep(2.0)  # let the last phase's work settle
        say(f"{phase}/{target}: {events} events in {len(bodies)} requests")
        self.meter.begin()
        elapsed, answers = await blast(url, self.stack.api_key, path, bodies)
        cpu = self.meter.end()
        refused = [a for a in answers if a[0] != 202]
        result = PhaseResult(
            phase=phase,
            target=target,
            events=events,
            requests=len(bodies),
            elapsed_s=round(elapsed, 3),
            events_per_s=round(events / elapsed, 1),
            refused=len(refused),
            cpu_cores=cpu,
        )
        if refused:
            result.notes.append(f"first refusal: {refused[0][0]} {refused[0][1][:200]!r}")
        say(f"  {result.events_per_s} events/s, {len(refused)} refused")
        return result, answers

    async def settled(self, timeout: float = 180.0) -> None:
        """Wait (bounded) until the worker and the server are idle: under 0.05 cores each
        over a second (the runs just started have all reached their wait)."""
        pids = [*self.stack.pids["worker"], *self.stack.pids["server"]]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = [process_cpu_seconds(pid) for pid in pids]
            await asyncio.sleep(1.0)
            used = [process_cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
            if max(used) < 0.05:
                return
        say(f"  the worker and server were still busy after {timeout:.0f} s")

    def count(self, prefix: str) -> tuple[int, int]:
        """(stored, routed) events whose message id starts with ``prefix``."""
        with self.stack.db.connect() as connection:
            row = connection.execute(
                text(
                    "SELECT count(*), coalesce(sum(CASE WHEN routed THEN 1 ELSE 0 END), 0) "
                    "FROM events WHERE message_id LIKE :p"
                ),
                {"p": f"{prefix}-%"},
            ).one()
        return int(row[0]), int(row[1])

    async def checked(self, result: PhaseResult, prefix: str) -> PhaseResult:
        """Count the phase's events; wait (bounded) for any left for the background loop."""
        stored, routed = await asyncio.to_thread(self.count, prefix)
        if routed < stored:
            result.notes.append(f"routed {routed}/{stored} when the phase ended")
            deadline = time.monotonic() + 30
            while routed < stored and time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                stored, routed = await asyncio.to_thread(self.count, prefix)
        result.stored, result.routed = stored, routed
        lost = result.events - stored
        say(f"  stored {stored}/{result.events} ({lost} lost), routed {routed}")
        return result

    async def single(self, count: int) -> list[PhaseResult]:
        results = []
        for target in ("floor", "engine"):
            prefix = f"{self.run_id}-s-{target}"
            bodies = [json.dumps(m).encode() for m in _page_views(prefix, count)]
            result, _ = await self.phase("single", target, "/v1/track", bodies, count)
            if target == "engine":
                result = await self.checked(result, prefix)
            results.append(result)
        return results

    async def batched(self, count: int) -> list[PhaseResult]:
        results = []
        for target in ("floor", "engine"):
            prefix = f"{self.run_id}-b-{target}"
            messages = _page_views(prefix, count)
            bodies = [
                json.dumps({"batch": messages[i : i + BATCH]}).encode()
                for i in range(0, count, BATCH)
            ]
            result, _ = await self.phase("batch", target, "/v1/batch", bodies, count)
            if target == "engine":
                result = await self.checked(result, prefix)
            results.append(result)
        return results

    async def signalled(self, count: int, client: Client) -> list[PhaseResult]:
        """``count`` signals through the API, and ``count`` sent straight with the client
        (the floor: what a hand-written integration's signal costs Temporal)."""
        customers = [f"{self.run_id}-w{i}" for i in range(2 * count)]
        placed = [
            json.dumps(
                _track(f"{self.run_id}-o-{i}", c, "order_placed", {"order_id": f"o{i}"})
            ).encode()
            for i, c in enumerate(customers)
        ]
        say(f"signal: starting {len(customers)} bench_wait runs (not measured)")
        elapsed, answers = await blast(self.stack.api_url, self.stack.api_key, "/v1/track", placed)
        started = sum(1 for status, body in answers if status == 202 and b'"started":["' in body)
        say(f"  {started}/{len(customers)} started in {elapsed:.1f} s")
        if started < len(customers):
            raise RuntimeError(f"only {started}/{len(customers)} bench_wait runs started")
        await self.settled()  # every run has had its first workflow task: each one waits

        # The floor: the client signals the second half's runs directly, 16 at a time.
        direct = list(enumerate(customers))[count:]
        await asyncio.sleep(2.0)
        say(f"signal/direct: {count} signals with the client, {CONNECTIONS} at a time")
        self.meter.begin()
        begin = time.monotonic()
        queue = iter(direct)

        async def signal_some() -> None:
            for i, customer in queue:
                handle = client.get_workflow_handle(
                    workflow_id_for(WAIT_JOURNEY, customer, f"o{i}")
                )
                await handle.signal(
                    SIGNAL_EVENT,
                    EventMessage(
                        name="order_paid",
                        customer_id=customer,
                        message_id=f"{self.run_id}-d-{i}",
                        timestamp=datetime.now(UTC),
                        properties={"order_id": f"o{i}"},
                    ),
                )

        await asyncio.gather(*(signal_some() for _ in range(CONNECTIONS)))
        elapsed = time.monotonic() - begin
        floor = PhaseResult(
            phase="signal",
            target="floor",
            events=count,
            requests=count,
            elapsed_s=round(elapsed, 3),
            events_per_s=round(count / elapsed, 1),
            refused=0,
            cpu_cores=self.meter.end(),
        )
        say(f"  {floor.events_per_s} signals/s")
        await self.settled()

        prefix = f"{self.run_id}-p"
        paid = [
            json.dumps(_track(f"{prefix}-{i}", c, "order_paid", {"order_id": f"o{i}"})).encode()
            for i, c in enumerate(customers[:count])
        ]
        result, answers = await self.phase("signal", "engine", "/v1/track", paid, count)
        signalled = 0
        for i, (status, body) in enumerate(answers):
            if status == 202:
                expected = workflow_id_for(WAIT_JOURNEY, customers[i], f"o{i}")
                signalled += expected in json.loads(body).get("signalled", [])
        result.signalled = signalled
        say(f"  {signalled}/{count} answered as signalled")
        return [floor, await self.checked(result, prefix)]


async def _measure(options: Options, stack: Stack, floor_url: str) -> list[PhaseResult]:
    client = await stack.ready()
    bench = IngestBench(stack, floor_url, f"i{int(time.time()) % 100000}")
    warm = [json.dumps(m).encode() for m in _page_views(f"{bench.run_id}-warm", 200)]
    await blast(stack.api_url, stack.api_key, "/v1/track", warm)
    await blast(floor_url, stack.api_key, "/v1/track", warm)
    results = await bench.single(options.single)
    results += await bench.batched(options.batched)
    if options.signals:
        results += await bench.signalled(options.signals, client)
    return results


def run(options: Options) -> dict[str, Any]:
    info = machine_info()
    with running_stack(
        keep_state=options.keep_state,
        extra_apis=[("floor", "bench.floor:create_app")],
        api_processes=options.api_processes,
    ) as (stack, urls):
        deploy_bench_catalogue(stack.db, CATALOGUE)
        results = run_watched(stack, _measure(options, stack, urls["floor"]), options.deadline)
    info["loadavg_at_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {
        "machine": info,
        "options": {
            "single": options.single,
            "batched": options.batched,
            "signals": options.signals,
            "connections": CONNECTIONS,
            "batch": BATCH,
            "api_processes": options.api_processes,
        },
        "phases": [asdict(r) for r in results],
        "_results": results,
    }


TARGETS = {"single": 1000.0, "batch": 5000.0, "signal": 300.0}


def format_report(results: Sequence[PhaseResult]) -> str:
    floors = {r.phase: r for r in results if r.target == "floor"}
    lines = [
        "| phase | engine events/s | floor events/s | engine/floor | target | met | stored | "
        "routed | signalled | api cores | server cores | worker cores | other cores |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.target != "engine":
            continue
        floor = floors.get(r.phase)
        ratio = f"{r.events_per_s / floor.events_per_s:.2f}" if floor else "–"
        target = TARGETS[r.phase]
        lines.append(
            f"| {r.phase} | {r.events_per_s} | {floor.events_per_s if floor else '–'} | {ratio} "
            f"| {target:.0f} | {'yes' if r.events_per_s >= target else 'no'} "
            f"| {r.stored}/{r.events} | {r.routed} | {r.signalled if r.signalled is not None else '–'} "
            f"| {r.cpu_cores.get('api')} | {r.cpu_cores.get('server')} "
            f"| {r.cpu_cores.get('worker')} | {r.cpu_cores.get('other')} |"
        )
    for r in results:
        for note in r.notes:
            lines.append(f"{r.phase}/{r.target}: {note}")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description="Events per second into the API (stored, deduplicated, routed).",
    )
    parser.add_argument("--single", type=int, default=4000, help="events sent one by one")
    parser.add_argument("--batched", type=int, default=20000, help="events sent 100 a request")
    parser.add_argument("--signals", type=int, default=1000, help="waiting runs to signal")
    parser.add_argument(
        "--api-processes",
        type=int,
        default=1,
        help="uvicorn processes for the API and for the floor (uvicorn --workers)",
    )
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds at most")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--keep-state", action="store_true", help="keep the temp state and logs")
    args = parser.parse_args(argv)
    if args.single < 1 or args.batched < BATCH or args.signals < 0:
        parser.error(f"--single >= 1, --batched >= {BATCH}, --signals >= 0")
    if args.api_processes < 1:
        parser.error("--api-processes >= 1")
    return Options(
        single=args.single,
        batched=args.batched,
        signals=args.signals,
        deadline=args.deadline,
        json_path=args.json,
        keep_state=args.keep_state,
        api_processes=args.api_processes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = _parse(argv)
    try:
        report = run(options)
    except Exception as error:
        say(f"bench: {type(error).__name__}: {error}")
        return 1
    results: list[PhaseResult] = report.pop("_results")
    print(format_report(results))
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        say(f"results written to {options.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
