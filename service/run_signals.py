"""Event signals to runs, coalesced per run (a group commit).

The router hands each event for a run to `RunSignals.send`, which queues it behind the
run's other events and answers once a signal carrying it has landed. One signal is in
flight per run at a time; whatever queued meanwhile goes in the next one, as an
`EventBatch` (in order, up to `MAX_EVENTS` events or `MAX_BYTES`), and not sooner than
`INTERVAL` after the last. A lone event goes as a plain `SIGNAL_EVENT`.

Why: every signal is an event in the run's history. A source that sends thousands of
events to one customer would otherwise fill a generation's history with signals, and a
run whose signals never stop cannot continue as new (Temporal fails the task that tries
while signals keep arriving, and replays the whole generation each time).

Lives here: the per-run queues and the Temporal signal calls. Not here: which runs an
event is for (`service.router`), what a run does with it (`workflows.journey_run`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from engine.payloads import SIGNAL_EVENT, SIGNAL_EVENTS, EventBatch, EventMessage

__all__ = ["INTERVAL", "MAX_BYTES", "MAX_EVENTS", "RunSignals"]

log = logging.getLogger(__name__)

MAX_EVENTS = 100
"""Events in one signal at most."""

INTERVAL = 0.05
"""Seconds from one signal to a run to its next one, at least: under a flood, at most 20
signals a second reach one run, each with what queued meanwhile. An event for a run that
has had no signal for this long goes at once."""

MAX_BYTES = 256_000
"""JSON bytes of one signal's events at most (one event larger than this goes alone):
far below Temporal's 2 MB payload limit, and a generation's 2 MB history bound (see
`engine.generations.GENERATION_BYTES`) still holds several."""


@dataclass
class _Queued:
    message: EventMessage
    size: int
    landed: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class RunSignals:
    """Per-run queues of event signals; one instance per process (the router's)."""

    def __init__(self) -> None:
        self._queues: dict[str, list[_Queued]] = {}
        self._senders: set[asyncio.Task[None]] = set()

    def send(self, client: Client, workflow_id: str, message: EventMessage) -> asyncio.Future[bool]:
        """Queue ``message`` for the run; the future answers True once it is signalled,
        False when the run has ended (Temporal: not found), or raises what the signal
        raised. Queued synchronously: two calls keep their order in the run's inbox."""
        queued = _Queued(message, len(message.model_dump_json()))
        queue = self._queues.get(workflow_id)
        if queue is not None:
            queue.append(queued)
            return queued.landed
        self._queues[workflow_id] = [queued]
        sender = asyncio.create_task(self._drain(client, workflow_id))
        self._senders.add(sender)
        sender.add_done_callback(self._senders.discard)
        return queued.landed

    def pending(self) -> int:
        """Events queued or in flight, over every run."""
        return sum(len(queue) for queue in self._queues.values())

    async def _drain(self, client: Client, workflow_id: str) -> None:
        queue = self._queues[workflow_id]
        try:
            while queue:
                batch = _take(queue)
                sent = asyncio.get_running_loop().time()
                try:
                    landed = await _signal(client, workflow_id, [q.message for q in batch])
                except BaseException as error:
                    for queued in batch:
                        if not queued.landed.done():
                            queued.landed.set_exception(_copy(error))
                    if isinstance(error, asyncio.CancelledError):
                        raise
                    continue
                for queued in batch:
                    if not queued.landed.done():
                        queued.landed.set_result(landed)
                # The run's next signal no sooner than this: what comes meanwhile joins it.
                await asyncio.sleep(INTERVAL - (asyncio.get_running_loop().time() - sent))
        finally:
            for queued in queue:  # cancelled: the rest was never sent
                if not queued.landed.done():
                    queued.landed.cancel()
            del self._queues[workflow_id]


def _take(queue: list[_Queued]) -> list[_Queued]:
    """The oldest events of ``queue`` that fit one signal, removed from it."""
    count, size = 1, queue[0].size
    while count < len(queue) and count < MAX_EVENTS and size + queue[count].size <= MAX_BYTES:
        size += queue[count].size
        count += 1
    batch = queue[:count]
    del queue[:count]
    return batch


async def _signal(client: Client, workflow_id: str, messages: list[EventMessage]) -> bool:
    handle = client.get_workflow_handle(workflow_id)
    try:
        if len(messages) == 1:
            await handle.signal(SIGNAL_EVENT, messages[0])
        else:
            await handle.signal(SIGNAL_EVENTS, EventBatch(events=messages))
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return False  # the run ended since the row was read: normal
        raise
    return True


def _copy(error: BaseException) -> BaseException:
    # One exception object raised from several awaiting tasks gets tracebacks chained
    # onto it from each; every waiter gets its own, with the original as the cause.
    if isinstance(error, RPCError):
        copy: BaseException = RPCError(error.message, error.status, error.raw_grpc_status)
    elif isinstance(error, asyncio.CancelledError):
        copy = asyncio.CancelledError()
    else:
        return error
    copy.__cause__ = error
    return copy
