"""The event router: what an accepted event does to journeys.

`EventRouter.ingest` stores events (deduplicated by message id), merges `identify`
traits into profiles and records the goal conversions they make (`engine.conversions`)
in one transaction; `EventRouter.route` then starts a run for every
active journey whose entry matches (deterministic workflow id, `reentry` checked against
the runs table) and signals the open runs that wait for or exit on the event and that it
is for (correlation: the run's key against the event's, found by the runs table's
(customer, journey, key) index). An event is
marked routed only when all of that succeeded, so `route_pending` can finish the job
later (Temporal down, process killed): nothing accepted is lost. An event that can route
to nothing (an identify, or a track event no active journey enters on and no run listens
to) is stored already marked routed, in the storing transaction.

Lives here: routing decisions and the Temporal calls they make. Not here: HTTP (see
`service.api.routes.events`), the database schema (`engine.database`), the run itself
(`workflows/`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import hashlib
import logging
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Connection, Table, and_, bindparam, case, func, or_, update
from sqlalchemy import select as core_select  # sqlmodel's is typed for up to 4 columns
from sqlalchemy.engine import Engine
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.common import (
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from engine.audit import Record, append
from engine.conversions import ConversionRecorder
from engine.database import (
    EventRecord,
    PlanVersion,
    Profile,
    Run,
    dialect_insert,
    session_scope,
    store_event,
    upsert_profile,
)
from engine.decisions import decide_at_entry
from engine.payloads import (
    WORKFLOW_NAME,
    CustomerContext,
    DecideResult,
    EventMessage,
    JourneyRunInput,
    workflow_id_for,
)
from engine.personal import profile_marks, run_event, run_key, scrubbed
from engine.plan import EventGoalPlan, Plan
from engine.profiles import customer_from_traits, masked_customer
from engine.pseudonyms import erased_among
from engine.timestamps import as_utc, utcnow
from rules import EvaluationError, Expression, ExpressionError, compile_expression
from service.run_signals import RunSignals
from workflows.search_attributes import at_start

__all__ = [
    "EventRouter",
    "IngestResult",
    "RouteResult",
    "RoutingInputs",
    "RoutingUnavailableError",
    "SkippedStart",
]

log = logging.getLogger(__name__)

# The tables under the models, for single-statement Core writes on the hot path.
_EVENTS: Table = EventRecord.__table__  # type: ignore[attr-defined]
_RUNS: Table = Run.__table__  # type: ignore[attr-defined]

# Limits of the runs table's columns (engine.database.Run): a key and a workflow id
# longer than these could never be recorded, so such an entry is skipped, not retried.
MAX_KEY_LENGTH = 200
MAX_WORKFLOW_ID_LENGTH = 400

# Temporal answers that mean "not now", as opposed to "not ever".
_UNAVAILABLE_CODES = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.CANCELLED,
    }
)


class RoutingUnavailableError(RuntimeError):
    """Routing cannot happen now (no Temporal connection); the event stays unrouted."""


class SkippedStart(BaseModel):
    """A journey whose entry event matched but that did not start a run, or whose runs
    listen to the event but none of which it reached (no correlation key), and why."""

    journey_id: str
    message_id: str
    reason: str = Field(description="e.g. 'entry condition is false', 'reentry never'")
    workflow_id: str | None = None


class RouteResult(BaseModel):
    """What routing one event did: runs started, runs signalled, entries skipped."""

    started: list[str] = Field(default_factory=list, description="workflow ids started")
    signalled: list[str] = Field(default_factory=list, description="workflow ids signalled")
    skipped: list[SkippedStart] = Field(default_factory=list)


@dataclass(frozen=True)
class IngestResult:
    """What storing a list of events did: the new records (to route) and the repeats."""

    stored: list[EventRecord]
    duplicates: int
    prepared: RoutingInputs | None = None  # the first stored event's, when asked for
    erased: list[str] = dataclasses.field(default_factory=list)  # message ids of erased customers
    # The event names some journey listens to, read in the storing transaction: the
    # active entries, and what the runs of every stored version wait for, exit on or
    # count as a goal (`service.api.routes.events.listened_events`, from the router's cache).
    listened: frozenset[str] = frozenset()


GROUP_COMMIT_RECORDS = 1000
"""The most events `EventRouter.store` writes in one shared transaction."""


@dataclass
class _GroupCommit:
    """Per event loop: the requests waiting for the next shared transaction, and the task
    writing them (`EventRouter.store`)."""

    pending: collections.deque[tuple[list[EventRecord], bool, asyncio.Future[IngestResult]]] = (
        dataclasses.field(default_factory=collections.deque)
    )
    writer: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class RoutingInputs:
    """Everything routing one event decides from, read in one go (`EventRouter.ingest`
    reads it for the first event it stores when asked, in the same thread hop)."""

    message_id: str
    entries: list[_Entry | SkippedStart]
    open_runs: list[_OpenRun]  # the ones listening to the event it is for, oldest first
    # Per (journey, correlation expression), the key the event gives (see `_Listener`).
    keys: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    unmatched: list[SkippedStart] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class _CompiledPlan:
    """A plan with its entry expressions parsed once, and the events its runs listen to:
    for each, which runs it is for (`Plan.correlations`: None for all of the customer's,
    else the expression whose value on the event must be the run's key), parsed."""

    plan: Plan
    when: Expression | None
    key: Expression | None
    listens_to: dict[str, frozenset[str | None]]
    correlators: dict[str, Expression] = dataclasses.field(default_factory=dict)
    problem: str | None = None


@dataclass(frozen=True)
class _Listener:
    """A journey some version of which listens to an event: its runs to find by
    ``correlate`` (None: all of the customer's runs of it)."""

    journey_id: str
    correlate: str | None
    compiled: _CompiledPlan  # a version with it, to evaluate ``correlate`` with


@dataclass(frozen=True)
class _Entry:
    """A run the router has decided to start (before reentry and Temporal say yes)."""

    compiled: _CompiledPlan
    key: str | None
    workflow_id: str
    customer: CustomerContext  # as the run would load it: addresses masked
    # The run's first walk (decide_at_entry), decided once reentry lets the entry in.
    decided: DecideResult | None = None


@dataclass(frozen=True)
class _OpenRun:
    """What routing needs of an open run's row (not its path, which can be long)."""

    workflow_id: str
    journey_id: str
    version: str
    trigger_message_id: str | None
    key: str | None = None


@dataclass(frozen=True)
class _StartedRun:
    """A run Temporal started for an entry, to record in the runs table."""

    entry: _Entry
    run_id: str
    started_at: datetime


# The runs of one customer's entry (journey and key): the latest entry time, and whether
# this event already started one of them.
_EntryHistory = dict[tuple[str, str | None], tuple[datetime, bool]]


def _compile_plan(plan: Plan) -> _CompiledPlan:
    # Runs hear the events they wait for or exit on; their own entry event only when it
    # is also one of those (a signal costs the run a workflow task).
    listens_to = plan.correlations()
    sources = {source for found in listens_to.values() for source in found if source}
    try:
        when = compile_expression(plan.entry.when) if plan.entry.when else None
        key = compile_expression(plan.entry.key) if plan.entry.key else None
        correlators = {source: compile_expression(source) for source in sources}
    except ExpressionError as error:
        # Deployed plans were validated; this only guards against a hand-edited row.
        return _CompiledPlan(
            plan=plan,
            when=None,
            key=None,
            listens_to={},
            problem=f"entry or correlate expression does not compile: {error}",
        )
    return _CompiledPlan(
        plan=plan, when=when, key=key, listens_to=listens_to, correlators=correlators
    )


def _correlation_key(
    record: EventRecord, listener: _Listener, traits: dict[str, Any]
) -> str | SkippedStart:
    """The key of the runs ``record`` is for, by ``listener.correlate``, or why it has none
    (then it reaches none of that journey's keyed runs: nothing to guess a run from)."""
    assert listener.correlate is not None
    compiled = listener.compiled
    plan = compiled.plan
    context = _entry_context(record, plan, traits)
    timezone = _text_or_none(traits.get("timezone")) or plan.settings.timezone
    try:
        value = compiled.correlators[listener.correlate].evaluate(context, timezone=timezone)
    except EvaluationError as error:
        reason = scrubbed(str(error), record.properties, traits, plan.personal, record.name or "")
        value, why = None, f"failed: {reason}"
    else:
        why = "has no value"
    if value is None or value == "":
        return SkippedStart(
            journey_id=plan.journey_id,
            message_id=record.message_id,
            reason=f"no run signalled: correlation key {listener.correlate!r} {why}",
        )
    return run_key(str(value), plan.personal)


def _is_for(
    run: _OpenRun, compiled: _CompiledPlan, record: EventRecord, keys: dict[tuple[str, str], str]
) -> bool:
    """Whether ``run`` (of ``compiled``'s version) listens to ``record`` and it is for
    this run: for every run of the customer, or its key is the run's key."""
    sources = compiled.listens_to.get(record.name or "", frozenset())
    return any(
        source is None or (run.key is not None and keys.get((run.journey_id, source)) == run.key)
        for source in sources
    )


def _duration_text(seconds: int) -> str:
    """``2592000`` -> ``30d``, ``5400`` -> ``1h30m``: the way journeys.yaml writes it."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _event_message(record: EventRecord, plan: Plan) -> EventMessage:
    """``record`` as a run of ``plan`` holds it: only the properties declared or read, the
    personal ones masked (`engine.personal.run_event`)."""
    return run_event(
        EventMessage(
            name=record.name or record.type,
            customer_id=record.customer_id,
            message_id=record.message_id,
            timestamp=as_utc(record.timestamp),
            properties=dict(record.properties),
        ),
        plan.personal,
    )


def _entry_context(record: EventRecord, plan: Plan, traits: dict[str, Any]) -> dict[str, Any]:
    """The names an entry `when`/`key` expression reads (JOURNEY_DSL.md, Context)."""
    properties = dict(record.properties)
    return {
        "event": properties,
        "trigger": {
            "name": record.name,
            "timestamp": as_utc(record.timestamp).isoformat(),
            "message_id": record.message_id,
            "properties": properties,
        },
        "profile": traits,
        "customer": {
            "id": record.customer_id,
            "email": traits.get("email"),
            "phone": traits.get("phone"),
            "push_token": traits.get("push_token"),
        },
        "vars": {},
        "scores": {},
        "review": None,
        "journey": {"id": plan.journey_id, "version": plan.version},
        "now": utcnow().isoformat(),
    }


def _routes_somewhere(record: EventRecord, heard: frozenset[str]) -> bool:
    """Whether routing ``record`` can start or signal anything: only a track event that
    an active journey enters on or some run listens to (identify traits are merged when
    the event is stored)."""
    return record.type == "track" and bool(record.name) and record.name in heard


def _search_attributes(plan: Plan, customer_id: str) -> TypedSearchAttributes:
    """What a started run is found by in Temporal's visibility (and its Web UI)."""
    return at_start(journey_id=plan.journey_id, version=plan.version, customer_id=customer_id)


def _is_unavailable(error: BaseException) -> bool:
    return isinstance(error, RoutingUnavailableError) or (
        isinstance(error, RPCError) and error.status in _UNAVAILABLE_CODES
    )


def _reentry_blocked(plan: Plan, seen: tuple[datetime, bool] | None) -> str | None:
    """Why `reentry` keeps a customer out, given their runs of this entry (None: it does not)."""
    if seen is None:
        return None
    latest_started_at, started_by_this_event = seen
    if started_by_this_event:
        return "already started by this event"
    if plan.entry.reentry == "always":
        return None
    if plan.entry.reentry == "never":
        return "reentry never: this customer already entered"
    seconds = plan.entry.reentry_seconds or 0
    last_entry = as_utc(latest_started_at)
    if utcnow() - last_entry < timedelta(seconds=seconds):
        return f"reentry after {_duration_text(seconds)}: last entry {last_entry.isoformat()}"
    return None


def _run_row(record: EventRecord, run: _StartedRun) -> dict[str, Any]:
    """The runs-table row of a run the router started (as `Run` would fill it in)."""
    plan = run.entry.compiled.plan
    return {
        "run_id": run.run_id,
        "workflow_id": run.entry.workflow_id,
        "journey_id": plan.journey_id,
        "version": plan.version,
        "customer_id": record.customer_id,
        "key": run.entry.key,
        "status": "running",
        "step": None,
        "outcome": None,
        "holdout": False,
        "trigger_message_id": record.message_id,
        "path": [],
        "started_at": run.started_at,
        "updated_at": run.started_at,
        "ended_at": None,
    }


def _started_record(record: EventRecord, run: _StartedRun) -> Record:
    """A run the router started, for the audit log (once per run: ``ref``)."""
    plan = run.entry.compiled.plan
    return Record(
        kind="run.started",
        subject=f"run:{run.run_id}",
        actor="router",
        customer=record.customer_id,
        details={
            "journey": plan.journey_id,
            "version": plan.version,
            "workflow_id": run.entry.workflow_id,
            "event": record.message_id,
        },
        ref=f"start:{run.run_id}",
    )


def _skipped_record(record: EventRecord, skip: SkippedStart) -> Record:
    """An entry the router did not start (or runs it reached none of), with the reason."""
    reason = hashlib.sha256(skip.reason.encode("utf-8")).hexdigest()[:16]
    return Record(
        kind="run.skipped",
        subject=f"journey:{skip.journey_id}",
        actor="router",
        customer=record.customer_id,
        details={
            "journey": skip.journey_id,
            "event": record.message_id,
            "reason": skip.reason,
            "workflow_id": skip.workflow_id,
        },
        ref=f"skip:{record.message_id}:{skip.journey_id}:{reason}",
    )


_MARK_ROUTED = (
    update(_EVENTS)
    .where(_EVENTS.c.message_id == bindparam("routed_message_id"), _EVENTS.c.routed.is_(False))
    .values(routed=True)
)

# The routing read's statements, built once: building a statement costs more CPU than
# SQLite takes to run it, and routing runs them for every event.
_PROFILES: Table = Profile.__table__  # type: ignore[attr-defined]
_PLAN_VERSIONS: Table = PlanVersion.__table__  # type: ignore[attr-defined]
_TRAITS = select(_PROFILES.c.traits).where(_PROFILES.c.customer_id == bindparam("customer_id"))
# The active versions, and every version stored since the last read (``seen_id``): runs
# of a superseded version still listen to what it listens to.
_VERSIONS = select(
    _PLAN_VERSIONS.c.id,
    _PLAN_VERSIONS.c.journey_id,
    _PLAN_VERSIONS.c.version,
    _PLAN_VERSIONS.c.active,
).where(or_(_PLAN_VERSIONS.c.active.is_(True), _PLAN_VERSIONS.c.id > bindparam("seen_id")))
_PLAN_JSON = select(_PLAN_VERSIONS.c.plan_json).where(
    _PLAN_VERSIONS.c.journey_id == bindparam("journey_id"),
    _PLAN_VERSIONS.c.version == bindparam("version"),
)


@functools.cache
def _open_runs_statement(keyed: tuple[bool, ...]) -> Any:
    """The customer's open runs of journeys ``journey_<n>``, of key ``key_<n>`` where
    ``keyed`` says True (any key where False), oldest first: read by the (customer,
    journey, key) index, never all of the customer's runs. Parameters: ``customer_id``,
    ``journey_<n>``, ``key_<n>``."""
    wanted = [
        and_(_RUNS.c.journey_id == bindparam(f"journey_{n}"), _RUNS.c.key == bindparam(f"key_{n}"))
        if has_key
        else _RUNS.c.journey_id == bindparam(f"journey_{n}")
        for n, has_key in enumerate(keyed)
    ]
    return (
        core_select(
            _RUNS.c.workflow_id,
            _RUNS.c.journey_id,
            _RUNS.c.version,
            _RUNS.c.trigger_message_id,
            _RUNS.c.key,
        )
        .where(
            _RUNS.c.customer_id == bindparam("customer_id"),
            or_(*wanted),
            _RUNS.c.status == "running",
        )
        .order_by(_RUNS.c.started_at)
    )


@functools.cache
def _entry_history_statement(keyed: tuple[bool, ...]) -> Any:
    """The reentry read for entries whose keys are present (True) or absent (False), in
    that order: per (journey, key), the customer's latest start and whether this event
    started one. Parameters: ``customer_id``, ``message_id``, ``journey_<n>``, ``key_<n>``."""
    same_entry = [
        and_(
            _RUNS.c.journey_id == bindparam(f"journey_{n}"),
            (_RUNS.c.key == bindparam(f"key_{n}")) if has_key else _RUNS.c.key.is_(None),
        )
        for n, has_key in enumerate(keyed)
    ]
    by_this_event = func.max(
        case((_RUNS.c.trigger_message_id == bindparam("message_id"), 1), else_=0)
    )
    return (
        select(_RUNS.c.journey_id, _RUNS.c.key, func.max(_RUNS.c.started_at), by_this_event)
        .where(_RUNS.c.customer_id == bindparam("customer_id"), or_(*same_entry))
        .group_by(_RUNS.c.journey_id, _RUNS.c.key)
    )


class EventRouter:
    """Stores events and turns them into journey starts and signals.

    One instance per process; safe to share between concurrent requests. ``client`` may
    be None until Temporal is reachable (assign ``router.client`` later): ingestion works
    without it, routing raises `RoutingUnavailableError` and is retried by `route_pending`.
    """

    def __init__(self, *, db: Engine, client: Client | None, task_queue: str) -> None:
        self.db = db
        self.client = client
        self.task_queue = task_queue
        self._plans: dict[tuple[str, str], _CompiledPlan | None] = {}
        self._plans_lock = threading.Lock()
        # Who listens to what, over every stored version (see `_refresh_active`).
        self._versions_seen = 0
        self._listened: dict[tuple[str, str], _CompiledPlan] = {}
        self._listeners: dict[str, tuple[_Listener, ...]] = {}
        self._goal_events: frozenset[str] = frozenset()
        self._in_flight: set[str] = set()
        self.signals = RunSignals()
        self.conversions = ConversionRecorder()
        self._insert_runs = dialect_insert(db.dialect.name)(_RUNS).on_conflict_do_nothing(
            index_elements=["run_id"]
        )
        # SQLite has one writer at a time; a writer that finds the database locked sleeps
        # in SQLite's busy handler (1, 2, 5, 10 ... 100 ms). This process's own writes
        # queue on a lock instead, and the first in line goes the moment it is free.
        self._writes: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if db.dialect.name == "sqlite" else contextlib.nullcontext()
        )
        self._group_commits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _GroupCommit] = (
            weakref.WeakKeyDictionary()
        )

    # ------------------------------------------------------------------ storing

    def ingest(self, records: Sequence[EventRecord], *, prepare: bool = False) -> IngestResult:
        """Store ``records`` in one transaction; merge identify traits into profiles.

        Blocking (call it in a thread from async code, or use `store`). A record whose
        message id was seen before changes nothing and counts as a duplicate. The merge
        happens here, exactly once per event and in arrival order, rather than at routing
        time, so a late re-route can never overwrite newer traits with older ones.

        With ``prepare``, once they are committed, also reads what routing the first
        stored event needs (`IngestResult.prepared`, for `route`): the API's request
        then costs one thread hop less. Only the first: routing an event can start a run
        that the next one's reentry check must see. A failed read leaves it to `route`.
        """
        return self.ingest_groups([records], prepare=prepare)[0]

    def ingest_groups(
        self,
        groups: Sequence[Sequence[EventRecord]],
        *,
        prepare: bool | Sequence[bool] = False,
    ) -> list[IngestResult]:
        """`ingest` for several requests' events at once: one transaction, one commit, and
        an `IngestResult` per group, in order (``prepare`` for all groups or per group;
        each group's `prepared` is its own first stored event's). Events are stored in
        the order given, groups one after the other, so a message id repeated across
        groups counts as a duplicate in the later one. Blocking."""
        wanted = [prepare] * len(groups) if isinstance(prepare, bool) else list(prepare)
        results: list[IngestResult] = []
        with self._writes, session_scope(self.db) as session:
            connection = session.connection()
            everyone = {record.customer_id for records in groups for record in records}
            erased = erased_among(connection, everyone)
            heard = self._heard(connection)
            with self._plans_lock:
                listened = heard | self._goal_events
            all_stored: list[EventRecord] = []
            for records in groups:
                stored: list[EventRecord] = []
                duplicates = 0
                refused: list[str] = []
                for record in records:
                    if record.customer_id in erased:  # stored nowhere, starts nothing
                        refused.append(record.message_id)
                        continue
                    # An event that routes to nothing is stored as routed: no second write.
                    record.routed = record.routed or not _routes_somewhere(record, heard)
                    if not store_event(session, record):
                        duplicates += 1
                        continue
                    if record.type == "identify":
                        upsert_profile(
                            session,
                            customer_id=record.customer_id,
                            traits=dict(record.properties),
                        )
                    stored.append(record)
                all_stored += stored
                results.append(
                    IngestResult(
                        stored=stored, duplicates=duplicates, erased=refused, listened=listened
                    )
                )
            # Goal conversions, with the events that make them (engine.conversions).
            self.conversions.record(connection, all_stored)
        if self.client is None:
            return results
        return [
            self._prepared(result) if read else result
            for result, read in zip(results, wanted, strict=True)
        ]

    def _prepared(self, result: IngestResult) -> IngestResult:
        """``result`` with what routing its first stored event needs, when one waits."""
        first = next((record for record in result.stored if not record.routed), None)
        if first is None:
            return result
        try:
            return dataclasses.replace(result, prepared=self._routing_inputs(first))
        except Exception as error:  # stored is what matters; route() reads again
            log.warning("routing read after storing failed: %s", type(error).__name__)
            return result

    async def store(self, records: Sequence[EventRecord], *, prepare: bool = False) -> IngestResult:
        """`ingest` from async code, with group commit: requests that arrive while a
        transaction is being written wait for the next one, which writes all of them
        (`ingest_groups`, at most `GROUP_COMMIT_RECORDS` events), so that concurrent
        single-event requests share a thread hop and a commit instead of queueing for
        SQLite's one writer one by one. Alone, a request is written at once. When the
        shared transaction fails, each request's events are written again on their own,
        so that one request's bad event fails that request only."""
        loop = asyncio.get_running_loop()
        queue = self._group_commits.get(loop)
        if queue is None:
            queue = self._group_commits[loop] = _GroupCommit()
        waiter: asyncio.Future[IngestResult] = loop.create_future()
        queue.pending.append((list(records), prepare, waiter))
        if queue.writer is None or queue.writer.done():
            queue.writer = loop.create_task(self._write_groups(queue))
        return await waiter

    async def _write_groups(self, queue: _GroupCommit) -> None:
        while queue.pending:
            taken: list[tuple[list[EventRecord], bool, asyncio.Future[IngestResult]]] = []
            size = 0
            while queue.pending and (
                not taken or size + len(queue.pending[0][0]) <= GROUP_COMMIT_RECORDS
            ):
                item = queue.pending.popleft()
                taken.append(item)
                size += len(item[0])
            groups = [(records, prepare) for records, prepare, _ in taken]
            try:
                outcomes = await asyncio.to_thread(self._ingest_each_on_failure, groups)
            except BaseException:  # cancelled (shutting down): nobody is left waiting
                for _, _, waiter in taken:
                    if not waiter.done():
                        waiter.set_exception(RuntimeError("stopped before the events were written"))
                raise
            for (_, _, waiter), outcome in zip(taken, outcomes, strict=True):
                if waiter.done():
                    continue
                if isinstance(outcome, IngestResult):
                    waiter.set_result(outcome)
                else:
                    waiter.set_exception(outcome)

    def _ingest_each_on_failure(
        self, groups: Sequence[tuple[Sequence[EventRecord], bool]]
    ) -> list[IngestResult | Exception]:
        """`ingest_groups`; when it fails, each group on its own, each failure its own."""
        records = [group for group, _ in groups]
        prepare = [wanted for _, wanted in groups]
        if len(groups) > 1:
            try:
                return list(self.ingest_groups(records, prepare=prepare))
            except Exception:
                log.warning("a shared transaction failed: writing its requests one by one")
        outcomes: list[IngestResult | Exception] = []
        for group, wanted in groups:
            try:
                outcomes.append(self.ingest(group, prepare=wanted))
            except Exception as error:
                outcomes.append(error)
        return outcomes

    # ------------------------------------------------------------------ routing

    async def route(
        self,
        record: EventRecord,
        prepared: RoutingInputs | None = None,
        *,
        queued: asyncio.Event | None = None,
    ) -> RouteResult:
        """Start and signal what ``record`` calls for, then mark it routed.

        Raises when Temporal cannot be reached (`RoutingUnavailableError`, `RPCError`);
        the event then stays unrouted and `route_pending` retries it. Routing the same
        event twice does not start a second run: starts are keyed by workflow id and by
        the run's trigger message id (a run ignores a second signal of an event it
        holds). ``prepared``: what `ingest` read for this event. ``queued`` is set once
        the starts are done and the signals queued (`route_in_order`), or routing failed.
        """
        self._in_flight.add(record.message_id)
        try:
            started: list[_StartedRun] = []
            finished = False
            try:
                signals: list[tuple[str, asyncio.Future[bool]]] = []
                try:
                    result = await self._route(record, started, prepared, signals)
                    if started and not signals:
                        # Nothing to wait for: the runs rows and the routed mark in one
                        # transaction, before the next event's routing reads the runs.
                        await asyncio.to_thread(
                            self._finish_routing, record, started, result.skipped
                        )
                        started, finished = [], True
                    elif started:
                        # Before the next event's routing reads the customer's runs.
                        await asyncio.to_thread(self._record_started_runs, record, started)
                        started = []
                finally:
                    if queued is not None:
                        queued.set()
                answers = await asyncio.gather(
                    *(landed for _, landed in signals), return_exceptions=True
                )
                for (workflow_id, _), answer in zip(signals, answers, strict=True):
                    if isinstance(answer, BaseException):
                        raise answer
                    if answer:
                        result.signalled.append(workflow_id)
            except BaseException:
                # What Temporal did start is recorded even so: a retry then sees it.
                if started:
                    await asyncio.to_thread(
                        self._record_started_runs_after_failure, record, started
                    )
                raise
            if not finished:
                await asyncio.to_thread(self._finish_routing, record, started, result.skipped)
            return result
        finally:
            self._in_flight.discard(record.message_id)

    async def route_in_order(
        self, records: Sequence[EventRecord], prepared: RoutingInputs | None = None
    ) -> list[RouteResult | BaseException]:
        """Route ``records`` as `route` would one after another, but without waiting for
        one's signals before the next: each record's starts are decided and its signals
        queued in order, and the signals to one run go out together (`RunSignals`).
        Answers per record, in order: its result, or what failed it (it stays unrouted)."""
        routing: list[asyncio.Task[RouteResult]] = []
        unavailable: BaseException | None = None
        try:
            for record in records:
                queued = asyncio.Event()
                task = asyncio.create_task(self.route(record, prepared, queued=queued))
                routing.append(task)
                await queued.wait()
                await asyncio.sleep(0)  # a task that failed is done by now
                if task.done() and not task.cancelled():
                    error = task.exception()
                    if error is not None and _is_unavailable(error):
                        unavailable = error  # the rest would wait for Temporal in turn
                        break
            outcomes: list[RouteResult | BaseException] = list(
                await asyncio.gather(*routing, return_exceptions=True)
            )
            left = len(records) - len(outcomes)
            return outcomes + [RoutingUnavailableError(str(unavailable))] * left
        finally:
            for task in routing:
                task.cancel()  # a no-op for those done; the rest stay unrouted

    @contextlib.contextmanager
    def claimed(self, message_ids: Sequence[str]) -> Iterator[None]:
        """Hold ``message_ids`` as being routed (by the request that accepted them) while
        the block runs: `route_pending` leaves them alone. Without it, the background loop
        routed the tail of a large batch while the request was still at its head, and
        signalled those events twice (each run then relies on its seen-ids window)."""
        claimed = [mid for mid in message_ids if mid not in self._in_flight]
        self._in_flight.update(claimed)
        try:
            yield
        finally:
            self._in_flight.difference_update(claimed)

    async def route_pending(self, *, limit: int = 100, min_age_seconds: float = 0.0) -> int:
        """Route up to ``limit`` unrouted events, oldest first; returns how many were routed.

        ``min_age_seconds`` leaves alone events so recent that the request that accepted
        them is probably still routing them. Stops at the first sign that Temporal is
        unavailable; an event that fails for another reason is logged and skipped (it is
        retried next time) so that it cannot hold up the ones behind it.
        """
        if self.client is None:
            return 0
        pending = await asyncio.to_thread(self._pending_events, limit, min_age_seconds)
        records = [record for record in pending if record.message_id not in self._in_flight]
        routed = 0
        for record, outcome in zip(records, await self.route_in_order(records), strict=True):
            if not isinstance(outcome, BaseException):
                routed += 1
            elif _is_unavailable(outcome):
                log.warning("routing pending events paused: Temporal unavailable (%s)", outcome)
            elif isinstance(outcome, Exception):
                log.error(
                    "routing event %s failed; will retry",
                    record.message_id,
                    exc_info=outcome,
                )
            else:
                raise outcome
        return routed

    async def _route(
        self,
        record: EventRecord,
        started: list[_StartedRun],
        prepared: RoutingInputs | None,
        signals: list[tuple[str, asyncio.Future[bool]]],
    ) -> RouteResult:
        """Starts, and queues the signals (appended to ``signals``: each run's workflow id
        and whether it was signalled); appends each run Temporal started to ``started``."""
        result = RouteResult()
        if record.type != "track" or not record.name:
            return result  # identify: its traits were merged when it was stored
        client = self.client
        if client is None:
            raise RoutingUnavailableError("no Temporal connection yet")
        if prepared is None or prepared.message_id != record.message_id:
            prepared = await asyncio.to_thread(self._routing_inputs, record)
        entries = prepared.entries
        result.skipped += prepared.unmatched

        for entry in entries:
            if isinstance(entry, SkippedStart):
                result.skipped.append(entry)
                continue
            run_id = await self._start(client, record, entry, result)
            if run_id is not None:
                result.started.append(entry.workflow_id)
                if run_id:
                    started.append(_StartedRun(entry=entry, run_id=run_id, started_at=utcnow()))

        await self._signal_open_runs(client, record, prepared, result, signals)
        return result

    def _decide_entry(
        self,
        record: EventRecord,
        compiled: _CompiledPlan,
        traits: dict[str, Any],
    ) -> _Entry | SkippedStart:
        """The run to start for ``compiled`` (reentry not checked yet), or why there is none."""
        plan = compiled.plan

        def skip(reason: str) -> SkippedStart:
            return SkippedStart(
                journey_id=plan.journey_id, message_id=record.message_id, reason=reason
            )

        if compiled.problem:
            return skip(compiled.problem)
        context = _entry_context(record, plan, traits)
        timezone = _text_or_none(traits.get("timezone")) or plan.settings.timezone
        try:
            if compiled.when is not None and not compiled.when.evaluate(context, timezone=timezone):
                return skip("entry condition is false")
            key_value = (
                compiled.key.evaluate(context, timezone=timezone)
                if compiled.key is not None
                else None
            )
        except EvaluationError as error:
            reason = scrubbed(
                str(error), record.properties, traits, plan.personal, record.name or ""
            )
            return skip(f"entry expression failed: {reason}")
        key: str | None = None
        if compiled.key is not None:
            if key_value is None or key_value == "":
                return skip(f"entry key {plan.entry.key!r} has no value")
            key = run_key(str(key_value), plan.personal)
            if len(key) > MAX_KEY_LENGTH or "\x00" in key:
                return skip(f"entry key is longer than {MAX_KEY_LENGTH} characters or not text")
        workflow_id = workflow_id_for(plan.journey_id, record.customer_id, key)
        if len(workflow_id) > MAX_WORKFLOW_ID_LENGTH:
            return skip(f"workflow id would be longer than {MAX_WORKFLOW_ID_LENGTH} characters")
        customer = masked_customer(
            customer_from_traits(record.customer_id, traits), profile_marks(plan.personal)
        )
        return _Entry(compiled=compiled, key=key, workflow_id=workflow_id, customer=customer)

    async def _start(
        self, client: Client, record: EventRecord, entry: _Entry, result: RouteResult
    ) -> str | None:
        plan = entry.compiled.plan
        # The profile just read for the entry rule goes with the run, and the runs row is
        # written here after the start: the run's first local activity only decides.
        run_input = JourneyRunInput(
            plan=plan,
            customer_id=record.customer_id,
            key=entry.key,
            trigger=_event_message(record, plan),
            profile=entry.customer,
            recorded_by_starter=True,
            decided=entry.decided,
        )
        # `never` is enforced by the runs table; REJECT_DUPLICATE makes Temporal agree
        # for as long as it retains the closed run.
        reuse = (
            WorkflowIDReusePolicy.REJECT_DUPLICATE
            if plan.entry.reentry == "never"
            else WorkflowIDReusePolicy.ALLOW_DUPLICATE
        )
        try:
            handle = await client.start_workflow(
                WORKFLOW_NAME,
                run_input,
                id=entry.workflow_id,
                task_queue=self.task_queue,
                id_reuse_policy=reuse,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                search_attributes=_search_attributes(plan, record.customer_id),
            )
        except WorkflowAlreadyStartedError:
            result.skipped.append(
                SkippedStart(
                    journey_id=plan.journey_id,
                    message_id=record.message_id,
                    reason="already running"
                    if plan.entry.reentry != "never"
                    else "already running or ran (reentry never)",
                    workflow_id=entry.workflow_id,
                )
            )
            return None
        # Recorded in the runs table by the caller, with the event marked routed.
        return handle.result_run_id or handle.first_execution_run_id or ""

    async def _signal_open_runs(
        self,
        client: Client,
        record: EventRecord,
        prepared: RoutingInputs,
        result: RouteResult,
        signals: list[tuple[str, asyncio.Future[bool]]],
    ) -> None:
        queued: set[str] = set()
        for run in prepared.open_runs:
            if (
                run.workflow_id in result.started
                or run.workflow_id in queued
                or run.trigger_message_id == record.message_id
            ):
                continue
            version = (run.journey_id, run.version)
            with self._plans_lock:
                known = version in self._plans
                compiled = self._plans.get(version)
            if not known:
                compiled = await asyncio.to_thread(self._plan_version, *version)
            if compiled is None or not _is_for(run, compiled, record, prepared.keys):
                continue
            queued.add(run.workflow_id)
            message = _event_message(record, compiled.plan)
            signals.append((run.workflow_id, self.signals.send(client, run.workflow_id, message)))

    # ------------------------------------------------------------------ database (blocking)

    def _routing_inputs(self, record: EventRecord) -> RoutingInputs:
        """One read for everything routing decides: for each active journey the event
        enters (in journey order), the run to start or why not (reentry included), and
        the customer's open runs (oldest first)."""
        customer = {"customer_id": record.customer_id}
        with self.db.connect() as connection:
            traits_json = connection.execute(_TRAITS, customer).scalar_one_or_none()
            traits: dict[str, Any] = dict(traits_json) if traits_json is not None else {}
            active = self._refresh_active(connection)
            listeners = self._listeners.get(record.name or "", ())
            keys, unmatched, open_runs = self._listening_runs(connection, record, listeners, traits)
            candidates = [
                self._decide_entry(record, compiled, traits)
                for compiled in active
                if compiled.plan.entry.event == record.name
            ]
            entries = [entry for entry in candidates if isinstance(entry, _Entry)]
            history = self._entry_history(connection, record, entries) if entries else {}
        return RoutingInputs(
            message_id=record.message_id,
            entries=[
                self._reentry_checked(record, entry, history)
                if isinstance(entry, _Entry)
                else entry
                for entry in candidates
            ],
            open_runs=open_runs,
            keys=keys,
            unmatched=unmatched,
        )

    @staticmethod
    def _listening_runs(
        connection: Connection,
        record: EventRecord,
        listeners: Sequence[_Listener],
        traits: dict[str, Any],
    ) -> tuple[dict[tuple[str, str], str], list[SkippedStart], list[_OpenRun]]:
        """The keys ``record`` gives each listening journey, the journeys it reaches no run
        of for want of one, and the open runs it may be for, in one indexed read."""
        keys: dict[tuple[str, str], str] = {}
        unmatched: list[SkippedStart] = []
        parameters: dict[str, Any] = {"customer_id": record.customer_id}
        keyed: list[bool] = []
        for listener in listeners:
            n = len(keyed)
            if listener.correlate is not None:
                key = _correlation_key(record, listener, traits)
                if isinstance(key, SkippedStart):
                    unmatched.append(key)
                    continue
                keys[(listener.journey_id, listener.correlate)] = key
                parameters[f"key_{n}"] = key
            parameters[f"journey_{n}"] = listener.journey_id
            keyed.append(listener.correlate is not None)
        if not keyed:
            return keys, unmatched, []
        rows = connection.execute(_open_runs_statement(tuple(keyed)), parameters)
        open_runs = [
            _OpenRun(
                workflow_id=workflow_id,
                journey_id=journey_id,
                version=version,
                trigger_message_id=trigger_message_id,
                key=key,
            )
            for workflow_id, journey_id, version, trigger_message_id, key in rows
        ]
        return keys, unmatched, open_runs

    def _heard(self, connection: Connection) -> frozenset[str]:
        """The event names routing acts on: the active journeys' entry events and what
        the runs of every stored version wait for or exit on (read as `_routing_inputs`
        reads them, in the storing transaction)."""
        entries = {compiled.plan.entry.event for compiled in self._refresh_active(connection)}
        with self._plans_lock:
            return frozenset(entries | self._listeners.keys())

    def _refresh_active(self, connection: Connection) -> list[_CompiledPlan]:
        # A cheap query per event keeps deploys visible at once; plans compile once per
        # version (the cache is keyed by it, and versions are immutable). The same read
        # brings versions stored since the last one, for who listens to what.
        rows = connection.execute(_VERSIONS, {"seen_id": self._versions_seen}).all()
        new = [row for row in rows if row.id > self._versions_seen]
        if new:
            self._add_listened(connection, new)
        active = sorted((row.journey_id, row.version) for row in rows if row.active)
        compiled = (
            self._plan_version_in(connection, journey, version) for journey, version in active
        )
        return [plan for plan in compiled if plan is not None]

    def _add_listened(self, connection: Connection, rows: Sequence[Any]) -> None:
        """Add newly stored versions to the listeners: one per journey and correlation."""
        listened = dict(self._listened)
        for row in rows:
            compiled = self._plan_version_in(connection, row.journey_id, row.version)
            if compiled is not None:
                listened[(row.journey_id, row.version)] = compiled
        by_event: dict[str, dict[tuple[str, str | None], _Listener]] = {}
        for (journey_id, _version), compiled in sorted(listened.items()):
            for event, sources in compiled.listens_to.items():
                for source in sources:
                    listener = _Listener(journey_id=journey_id, correlate=source, compiled=compiled)
                    by_event.setdefault(event, {})[(journey_id, source)] = listener
        with self._plans_lock:
            self._listened = listened
            self._listeners = {event: tuple(found.values()) for event, found in by_event.items()}
            self._goal_events = frozenset(
                goal.event
                for compiled in listened.values()
                for goal in compiled.plan.goals
                if isinstance(goal, EventGoalPlan)
            )
            self._versions_seen = max(self._versions_seen, *(row.id for row in rows))

    def _plan_version(self, journey_id: str, version: str) -> _CompiledPlan | None:
        with self._plans_lock:
            if (journey_id, version) in self._plans:
                return self._plans[(journey_id, version)]
        with self.db.connect() as connection:
            return self._plan_version_in(connection, journey_id, version)

    def _plan_version_in(
        self, connection: Connection, journey_id: str, version: str
    ) -> _CompiledPlan | None:
        with self._plans_lock:
            if (journey_id, version) in self._plans:
                return self._plans[(journey_id, version)]
        plan_json = connection.execute(
            _PLAN_JSON, {"journey_id": journey_id, "version": version}
        ).scalar_one_or_none()
        compiled: _CompiledPlan | None = None
        if plan_json is not None:
            try:
                compiled = _compile_plan(Plan.model_validate_json(plan_json))
            except ValueError:
                log.exception("stored plan %s@%s does not load; ignoring it", journey_id, version)
        with self._plans_lock:
            self._plans[(journey_id, version)] = compiled
        return compiled

    @staticmethod
    def _entry_history(
        connection: Connection, record: EventRecord, entries: Sequence[_Entry]
    ) -> _EntryHistory:
        """For each entry's journey and key, the customer's runs so far, in one query."""
        parameters: dict[str, Any] = {
            "customer_id": record.customer_id,
            "message_id": record.message_id,
        }
        for n, entry in enumerate(entries):
            parameters[f"journey_{n}"] = entry.compiled.plan.journey_id
            if entry.key is not None:
                parameters[f"key_{n}"] = entry.key
        statement = _entry_history_statement(tuple(entry.key is not None for entry in entries))
        rows = connection.execute(statement, parameters)
        return {(journey, key): (latest, bool(mine)) for journey, key, latest, mine in rows}

    @staticmethod
    def _reentry_checked(
        record: EventRecord, entry: _Entry, history: _EntryHistory
    ) -> _Entry | SkippedStart:
        """``entry`` with its first walk decided (only now: most events a journey does not let
        in again should cost no walk), or why `reentry` (checked against the runs table)
        does not let it in."""
        plan = entry.compiled.plan
        blocked = _reentry_blocked(plan, history.get((plan.journey_id, entry.key)))
        if blocked is None:
            trigger = _event_message(record, plan)
            walked = decide_at_entry(plan, entry.customer, trigger, now=utcnow())
            return dataclasses.replace(entry, decided=walked)
        return SkippedStart(
            journey_id=plan.journey_id,
            message_id=record.message_id,
            reason=blocked,
            workflow_id=entry.workflow_id,
        )

    def _finish_routing(
        self,
        record: EventRecord,
        started: Sequence[_StartedRun],
        skipped: Sequence[SkippedStart] = (),
    ) -> None:
        """Record the runs routing started and mark the event routed, with the entries it
        skipped and why in the audit log: one transaction."""
        with self._writes, self.db.begin() as connection:
            if started:
                self._insert_started_runs(connection, record, started)
            connection.execute(_MARK_ROUTED, {"routed_message_id": record.message_id})
            append(connection, [_skipped_record(record, skip) for skip in skipped])

    def _record_started_runs(self, record: EventRecord, started: Sequence[_StartedRun]) -> None:
        with self._writes, self.db.begin() as connection:
            self._insert_started_runs(connection, record, started)

    def _record_started_runs_after_failure(
        self, record: EventRecord, started: Sequence[_StartedRun]
    ) -> None:
        # Routing failed after these starts; the error that says why is the one to raise.
        try:
            with self._writes, session_scope(self.db) as session:
                self._insert_started_runs(session.connection(), record, started)
        except Exception:
            log.exception("recording the runs event %s started failed", record.message_id)

    def _insert_started_runs(
        self, connection: Connection, record: EventRecord, started: Sequence[_StartedRun]
    ) -> None:
        # The workflow upserts the same row; whoever comes second leaves it alone.
        connection.execute(self._insert_runs, [_run_row(record, run) for run in started])
        # Goal events stored before these rows (in the trigger's batch, or while the runs
        # were being started) found no run to convert then.
        self.conversions.record_started(
            connection,
            record,
            [
                (run.run_id, run.entry.compiled.plan.journey_id, run.entry.compiled.plan.version)
                for run in started
            ],
        )
        append(connection, [_started_record(record, run) for run in started])

    def _pending_events(self, limit: int, min_age_seconds: float) -> list[EventRecord]:
        cutoff = utcnow() - timedelta(seconds=min_age_seconds)
        with session_scope(self.db) as session:
            return list(
                session.exec(
                    select(EventRecord)
                    .where(col(EventRecord.routed).is_(False), EventRecord.received_at <= cutoff)
                    .order_by(col(EventRecord.received_at), col(EventRecord.message_id))
                    .limit(limit)
                ).all()
            )
