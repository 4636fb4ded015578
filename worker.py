"""Runs a journeys worker: the journey interpreter and every activity, wired together.

`python worker.py` works on its own; configure it with the environment (see
engine/settings.py): TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS or TEMPORAL_API_KEY,
DATABASE_URL. Run as many as you like against one Temporal cluster and database; each
migrates the database's schema on start (under a lock: one does it, the others wait).
This is the one place that wires the activities to their database and settings.
"""

from __future__ import annotations

import asyncio
import compileall
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python worker.py` from anywhere

import workflows as workflows_package
from activities import calls, decisions, scoring
from activities.messaging import MessagingActivities
from activities.reviews import ReviewActivities
from activities.runs import RunActivities
from engine.audit import SIGNING_KEY_ENV, checkpoint_if_moved, load_or_create_signing_key
from engine.database import make_engine
from engine.migrate import DatabaseAhead, PartialSchema
from engine.settings import RuntimeSettings, SettingsError
from runtime.codec import KeyRing, KeyRingError
from runtime.temporal import connect
from workflows.journey_run import JourneyRunWorkflow

__all__ = ["build_worker", "main"]

log = logging.getLogger("journeys.worker")


def build_worker(
    client: Client,
    *,
    db: Engine,
    task_queue: str,
    activity_executor: ThreadPoolExecutor | None = None,
    secret_key: str | None = None,
    public_url: str = "http://127.0.0.1:8000",
    workflow_sandbox: bool = False,
    replace_activities: Mapping[str, Callable[..., Any]] | None = None,
) -> Worker:
    """A worker for ``task_queue`` with the interpreter and all activities.

    Activities that touch the database are plain functions run on ``activity_executor``
    (a thread pool), so a slow or locked database never stalls the worker's event loop.
    ``replace_activities`` swaps activities by name (`engine.payloads.ActivityName`) for
    others of the same signature: `journeys test` gives scenario scores and canned `call`
    answers this way, and runs everything else as the product does.
    """
    executor = activity_executor or ThreadPoolExecutor(
        max_workers=64, thread_name_prefix="activity"
    )
    runs = RunActivities(db=db)
    messaging = MessagingActivities(db=db, secret_key=secret_key, public_url=public_url)
    reviews = ReviewActivities(db=db, public_url=public_url)
    activities: list[Callable[..., Any]] = [
        decisions.evaluate,
        decisions.decide_steps,
        decisions.local_time,
        decisions.date_wait,
        runs.begin_run,
        runs.load_profile,
        runs.load_events,
        runs.park_events,
        runs.record_run,
        runs.update_profile,
        messaging.send_message,
        scoring.score_step,
        reviews.open_review_task,
        reviews.escalate_review_task,
        reviews.close_review_task,
        calls.call_http,
    ]
    if replace_activities:
        unknown = set(replace_activities) - {_activity_name(a) for a in activities}
        if unknown:
            raise ValueError(f"no activity named {', '.join(sorted(unknown))} to replace")
        activities = [replace_activities.get(_activity_name(a), a) for a in activities]
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[JourneyRunWorkflow],
        activities=activities,
        activity_executor=executor,
        workflow_runner=workflow_runner(sandboxed=workflow_sandbox),
        graceful_shutdown_timeout=timedelta(seconds=10),
        # Measured here: a small cache slows multi-step runs; 20 pollers keep the server busy.
        max_cached_workflows=10_000,
        max_concurrent_workflow_task_polls=20,
        max_concurrent_activities=64,
        max_concurrent_local_activities=200,
    )


def _activity_name(defined: Callable[..., Any]) -> str:
    return activity._Definition.must_from_callable(defined).name or ""


def workflow_runner(*, sandboxed: bool) -> WorkflowRunner:
    """How the interpreter runs: in Temporal's sandbox, or not (the default for `worker.py`).

    The sandbox re-imports the workflow module for every run and routes every activation and
    payload through `exec`: measured here, over a third of a busy worker's CPU, and the
    engine's worker is its bottleneck (the server is the baseline's). It guards against
    non-determinism that the interpreter is written never to have (no I/O, no clock, no
    randomness, no module state: see workflows/journey_run.py). The test suite runs the
    interpreter sandboxed, so a forbidden call fails there; `JOURNEYS_WORKFLOW_SANDBOX=1`
    turns it on in production too.
    """
    return SandboxedWorkflowRunner() if sandboxed else UnsandboxedWorkflowRunner()


def cache_workflow_bytecode() -> None:
    """Compile workflows/ to .pyc files once, at start.

    The workflow sandbox imports the workflow's module afresh for every run it creates. With
    no .pyc beside it (PYTHONDONTWRITEBYTECODE is common in containers, and set on these
    machines) every import compiles the source again: measured here, about a fifth of a
    busy worker's CPU. py_compile writes whatever that setting says; a read-only install
    (which has its .pyc already) is left as it is.
    """
    directory = Path(workflows_package.__file__).resolve().parent
    try:
        compileall.compile_dir(str(directory), quiet=2, workers=1)
    except OSError as error:
        log.info("workflow bytecode not cached (%s): each new run compiles it", error)


def open_database(settings: RuntimeSettings) -> Engine:
    """The app database with its schema migrated to this code's head (`engine.migrate`)."""
    if settings.database_url.startswith("sqlite"):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.database_url)


async def main() -> None:
    """Connect, run until SIGINT/SIGTERM, then drain and stop.

    A bad setting, or a database a newer release migrated, stops the worker at once with
    the reason logged (exit code 2), before it polls for any work.
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cache_workflow_bytecode()
    try:
        settings = RuntimeSettings.from_env()
        KeyRing.from_settings(settings)  # a bad key ring stops the worker here, named
        db = open_database(settings)
    except (SettingsError, KeyRingError, DatabaseAhead, PartialSchema) as error:
        log.error("worker not started: %s", error)
        raise SystemExit(2) from None
    client = await connect(settings)
    worker = build_worker(
        client,
        db=db,
        task_queue=settings.task_queue,
        secret_key=settings.secret_key,
        public_url=settings.public_url,
        workflow_sandbox=settings.workflow_sandbox,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log.info("worker polling task queue %r on %s", settings.task_queue, settings.temporal_address)
    async with worker:
        signer = None
        if settings.audit_checkpoint_every:
            signer = asyncio.create_task(
                sign_audit_log(db, settings, settings.audit_checkpoint_every, stop)
            )
        await stop.wait()
        log.info("stopping worker")
        if signer is not None:
            await signer


async def sign_audit_log(
    db: Engine, settings: RuntimeSettings, every: timedelta, stop: asyncio.Event
) -> None:
    """Sign the audit log's head every ``every`` until ``stop`` (and write the checkpoint
    under ``<state>/audit/``), when anything was logged since the last checkpoint. A
    failure is logged and tried again next time: signing never stops the worker."""
    directory = settings.state_dir / "audit"
    while True:
        try:
            await asyncio.wait_for(stop.wait(), timeout=every.total_seconds())
            return
        except TimeoutError:
            pass
        try:
            key_file = os.environ.get(SIGNING_KEY_ENV)
            key = load_or_create_signing_key(
                settings.state_dir, path=Path(key_file) if key_file else None
            )
            written = await asyncio.to_thread(checkpoint_if_moved, db, key, directory)
        except Exception:
            log.exception("audit checkpoint failed; trying again in %s", every)
            continue
        if written is not None:
            log.info("audit checkpoint written: %s", written.name)


if __name__ == "__main__":
    asyncio.run(main())
