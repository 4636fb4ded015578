"""The embedded default on loopback, as bench/throughput.py starts it, for bench/latency.py
and bench/ingest.py: the Temporal dev server (tuned flags, state in a temporary
directory), the journeys worker (`worker.py`), optionally the baseline worker
(`python -m bench.baseline`), and the API under uvicorn. The helpers are bench/throughput.py's
own (imported, not copied); this module only strings them together, every wait bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy.engine import Engine
from temporalio.client import Client

from bench.throughput import (
    BASELINE_QUEUE,
    ENGINE_QUEUE,
    ROOT,
    _state_dir,
    _wait_for,
    _watched,
    child_env,
    free_port,
    say,
)
from engine.database import make_engine
from engine.settings import RuntimeSettings
from runtime.devserver import dev_server_command, wait_until_ready
from runtime.temporal import connect
from service.cli.supervisor import Supervisor, tail

__all__ = ["Stack", "run_watched", "running_stack"]

T = TypeVar("T")


@dataclass
class Stack:
    """What a bench needs of the running system."""

    state: Path
    db: Engine
    supervisor: Supervisor
    temporal_address: str
    api_url: str
    api_key: str
    pids: dict[str, list[int]]

    async def ready(self) -> Client:
        """Wait (bounded) for the server and the API; a client for the server."""
        await wait_until_ready(self.temporal_address, timeout=60)
        client = await connect(RuntimeSettings(temporal_address=self.temporal_address))
        async with httpx.AsyncClient(base_url=self.api_url, timeout=2.0) as http:

            async def api_healthy() -> bool:
                try:
                    answer = await http.get("/healthz")
                except httpx.HTTPError:
                    return False
                return answer.status_code == 200 and answer.json().get("temporal") == "ok"

            await _wait_for("the API", api_healthy, 60)
        for name, pids in self.pids.items():  # uvicorn --workers N: count its children too
            self.pids[name] = sorted({pid for root in pids for pid in process_tree(root)})
        return client


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux /proc), for CPU accounting."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = [int(child) for child in task.read_text().split()]
        except (OSError, ValueError):
            continue
        for child in children:
            found += process_tree(child)
    return found


def _uvicorn(factory: str, port: int, processes: int = 1) -> list[str]:
    """The API's command line, as bench/throughput.py (and `journeys up`) run it; with
    ``processes`` > 1, uvicorn's ``--workers``: that many processes on one socket."""
    workers = ["--workers", str(processes)] if processes > 1 else []
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *workers,
    ]


@contextlib.contextmanager
def running_stack(
    *,
    keep_state: bool = False,
    baseline: bool = False,
    extra_env: Mapping[str, str] | None = None,
    extra_apis: Sequence[tuple[str, str]] = (),
    api_processes: int = 1,
) -> Iterator[tuple[Stack, dict[str, str]]]:
    """Start everything in a new state directory; stop it all on the way out.

    ``extra_env`` goes to every child (e.g. ``JOURNEYS_EMAIL_URL``); ``extra_apis`` are
    more uvicorn apps (name, factory) on their own ports, under the same settings as the
    API (``api_processes`` uvicorn processes each): their URLs are the second value
    yielded, by name. The database is migrated
    (`make_engine`) before any child starts."""
    with _state_dir(keep_state) as state:
        database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{state / 'journeys.db'}"
        db = make_engine(database_url)
        supervisor = Supervisor(log_dir=state / "logs")
        try:
            with supervisor:
                temporal_port, ui_port, api_port = free_port(), free_port(), free_port()
                temporal_address = f"127.0.0.1:{temporal_port}"
                api_key = "bench-" + secrets.token_urlsafe(16)
                env = {
                    queue: {
                        **child_env(
                            state_dir=state,
                            database_url=database_url,
                            temporal_address=temporal_address,
                            api_key=api_key,
                            task_queue=queue,
                            bytecode_cache=True,
                        ),
                        **(extra_env or {}),
                    }
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
                pids = {"server": [server.pid], "worker": [worker.pid]}
                if baseline:
                    child = supervisor.start(
                        "baseline_worker",
                        [sys.executable, "-m", "bench.baseline"],
                        env=env[BASELINE_QUEUE],
                        cwd=ROOT,
                    )
                    pids["baseline_worker"] = [child.pid]
                api = supervisor.start(
                    "api",
                    _uvicorn("service.api.app:create_app", api_port, api_processes),
                    env=env[ENGINE_QUEUE],
                    cwd=ROOT,
                )
                pids["api"] = [api.pid]
                urls: dict[str, str] = {}
                for name, factory in extra_apis:
                    port = free_port()
                    child = supervisor.start(
                        name,
                        _uvicorn(factory, port, api_processes),
                        env=env[ENGINE_QUEUE],
                        cwd=ROOT,
                    )
                    pids[name] = [child.pid]
                    urls[name] = f"http://127.0.0.1:{port}"
                pids["driver"] = [os.getpid()]
                say("pids: " + ", ".join(f"{k} {v}" for k, v in pids.items()))
                stack = Stack(
                    state=state,
                    db=db,
                    supervisor=supervisor,
                    temporal_address=temporal_address,
                    api_url=f"http://127.0.0.1:{api_port}",
                    api_key=api_key,
                    pids=pids,
                )
                try:
                    yield stack, urls
                except BaseException:
                    for child in supervisor.children:
                        lines = tail(child.log_path, lines=8, since=child.log_start)
                        if lines:
                            say(f"last lines of {child.name}'s log:")
                            say("\n".join(f"  | {line}" for line in lines))
                    raise
        finally:
            db.dispose()


def run_watched(stack: Stack, work: Coroutine[Any, Any, T], deadline: float) -> T:
    """Run ``work`` to its end, stopping it if a child dies or ``deadline`` passes."""
    return asyncio.run(_watched(stack.supervisor, work, deadline))
