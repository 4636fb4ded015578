"""`JourneyRunWorkflow`: one customer's run through one pinned plan version.

The interpreter is a bounded loop. Each step is dispatched by one `match` over the plan's
step union, ending in `assert_never` (mypy proves every step type handled), to a short
handler returning the next step id. Set, branch and split steps are never run one by one:
they are decided in walks (`engine.decisions.decide`) that the history records with what
each decision read and chose: the starter's first walk (`JourneyRunInput.decided`) or
`begin_run`'s, a `score_step`'s walk after its score, else one `decide_steps` local
activity. Side effects (messages, scores, review tasks, HTTP calls, profile writes) are
activities, called by their one name (`ActivityName`). Events arrive by signal, review
decisions by a validated Update, and the state is a query.

Deterministic: time, ids and randomness come only from `workflow.*`; no I/O here; the one
module state is `workflows.shared_plans`, read-only plans shared by equal content. A
change to the behaviour of recorded runs goes behind `workflow.patched(...)` with a
history of the new behaviour added to tests/histories/, then `workflow.deprecate_patch(...)`,
then its removal once every run started before it has ended (`max_duration`), each step
with its history. Patches in force (docs/architecture.md keeps their dates):
`REVIEW_ENDS_WITH_RUN`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime, timedelta
from typing import Any, TypeVar, assert_never

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from engine import generations as bounds
    from engine import plan as p
    from engine.errors import ErrorType
    from engine.payloads import (
        QUERY_STATE,
        SIGNAL_EVENT,
        SIGNAL_EVENTS,
        UPDATE_REVIEW,
        WORKFLOW_NAME,
        ActivityName,
        BeginRunInput,
        BeginRunResult,
        CallHttpInput,
        CallHttpResult,
        CarriedWait,
        CustomerContext,
        DateWaitInput,
        DateWaitResult,
        DecideInput,
        DecideResult,
        EvaluateInput,
        EvaluateResult,
        EventBatch,
        EventMessage,
        JourneyRunInput,
        LoadEventsInput,
        LoadEventsResult,
        LoadProfileInput,
        LocalTimeInput,
        LocalTimeResult,
        OpenReviewInput,
        ParkedBacklog,
        ParkEventsInput,
        PathEntry,
        RecordRunInput,
        ReviewDecision,
        ReviewDecisionResult,
        ReviewTaskChange,
        ReviewTaskRef,
        RunCarry,
        RunState,
        ScoreInput,
        ScoreStepInput,
        ScoreStepResult,
        SendMessageInput,
        SendMessageResult,
        StepDecision,
        UpdateProfileInput,
        delivered_record,
        run_context,
        send_path_entry,
    )
    from engine.personal import profile_marks
    from engine.successors import taken
    from workflows import shared_plans
    from workflows.search_attributes import CURRENT_STEP, JOURNEY_ID, OUTCOME

__all__ = ["MAX_STEPS", "MAX_WALK", "JourneyRunWorkflow"]

MAX_WALK = 100
"""Steps one walk decides at most."""
MAX_STEPS = 1_000_000
"""Steps a run takes at most, across its generations, unless the plan sets `max_steps`."""
MAX_SEEN = 2000
"""Message ids a run remembers, to handle a re-routed event once."""
TASK_EVENTS = 100
"""Queued events a run takes in one workflow task at most (`_pace`)."""
RESULT_PATH = 200
"""Path entries in a run's result (the `run_path` table keeps them all)."""

LONG_RUNS = "long-runs"
"""Patch: a run continues as new before its history grows large, carrying its state and
backlog; an `exit_on` event ends a run even while a send or call is retrying; a run whose
activity fails for good during a review closes the task. Runs recorded before it do none
of these."""

REVIEW_ENDS_WITH_RUN = "review-ends-with-run"
"""Patch: a review task whose run ends (exit event, `max_duration`) while it waits is closed
with the reason, and the profile is read again after the review's wait. Runs that opened
their review before the patch leave the task open and keep the profile read before it."""

_LOCAL = timedelta(seconds=30)
_DB_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
_SEND_NON_RETRYABLE = [
    ErrorType.TEMPLATE_ERROR,
    ErrorType.PERMANENT_DELIVERY_FAILURE,
    ErrorType.BAD_CONFIGURATION,
]
_SCORE_RETRY = RetryPolicy(maximum_attempts=3)
_CALL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=8,
    non_retryable_error_types=[
        ErrorType.HTTP_CALL_REJECTED,
        ErrorType.TEMPLATE_ERROR,
        ErrorType.BAD_CONFIGURATION,
    ],
)


_T = TypeVar("_T")


class _Continue(Exception):
    """Raised inside the interpreter to continue as new (from a step, or inside a wait)."""

    def __init__(self, next_step: str | None, wait: CarriedWait | None = None) -> None:
        super().__init__(next_step)
        self.next_step = next_step
        self.wait = wait


class _RunEnded(Exception):
    """Raised inside the interpreter to end the run (exit_on, max_duration)."""

    def __init__(self, status: str, outcome: str) -> None:
        super().__init__(outcome)
        self.status = status
        self.outcome = outcome


@workflow.defn(name=WORKFLOW_NAME)
class JourneyRunWorkflow:
    """Interprets one plan version for one customer (and key)."""

    @workflow.init
    def __init__(self, input: JourneyRunInput) -> None:
        # Every cached run of a version reads one parsed plan (`workflows.shared_plans`):
        # the input's own copy is dropped here, also from the input the SDK keeps.
        facts = shared_plans.shared(input.plan)
        input.plan = facts.plan
        self.input = input
        self.plan = facts.plan
        self.state = RunState(
            journey_id=input.plan.journey_id,
            version=input.plan.version,
            customer_id=input.customer_id,
            key=input.key,
        )
        self.event: EventMessage = input.trigger
        self.customer = CustomerContext(id=input.customer_id)
        self.inbox: list[EventMessage] = []
        # Message ids of queued events read back from the events table only when the run
        # gets to them (a backlog carried by reference); they come before `inbox[loaded:]`.
        self.backlog: list[str] = []
        self.loaded = 0  # how many of `inbox` (its oldest) came from `backlog`
        # Or a queue parked in the `run_backlog` table (then `backlog` is empty): how many
        # it holds, and how many of them were read.
        self.parked: ParkedBacklog | None = None
        self.parked_read = 0
        self.seen: list[str] = [input.trigger.message_id]
        self.exit_checked = 0
        self.visits: dict[str, int] = {}
        self.decision: ReviewDecision | None = None
        # The review step whose task is being opened (its activity is out): a decision sent
        # in that moment, once the task is visible to reviewers, waits for the task's id.
        self.opening_review: p.ReviewPlan | None = None
        self.deadline: datetime | None = None
        self.started: datetime | None = None
        self.long_runs = False  # the LONG_RUNS patch, asked first thing in `run`
        self.max_steps = self.plan.settings.max_steps or MAX_STEPS
        # Events some wait step takes: any other event is handled by `exit_on` or ignored.
        self.awaited = facts.awaited
        # How many of `state.path` the `run_path` table has (written by a record, a
        # delivering send or a review's opening): the rest is the tail records carry.
        self.recorded_upto = 0
        self.taken = 0  # queued events taken by waits in this generation (`_pace`)
        # An exit that matched while an activity was out, acted on at the next exit check.
        self.exit_found: tuple[p.PlanExit, EventMessage] | None = None
        # The final row a delivering send wrote (`SendMessageInput.finish`), if one did.
        self.recorded: RecordRunInput | None = None
        self.decidable = facts.decidable  # shared by the version's runs: never changed
        # The steps a walk (decide_steps) starts from.
        self.walk_starts = facts.walk_starts
        # A walk decided ahead (the starter's or begin_run's from plan.start, a
        # score_step's after the score), and the step it starts from.
        self.walked: DecideResult | None = None
        self.walked_from: str | None = None
        self.prepared: StepDecision | None = None  # a score/call step's evaluated expressions
        self.seen_ids = set(self.seen)
        self.seen_limit = 2 * MAX_SEEN  # when `_trim_seen` next trims the window
        if input.carry is not None:
            self._restore(input.carry)

    def _restore(self, carry: RunCarry) -> None:
        """An earlier generation's state (in `__init__`: signals may come before `run`)."""
        self.state.generation = carry.generation
        self.state.path_start = carry.path_start
        self.state.steps = carry.steps
        self.state.current_step = carry.current_step
        self.state.vars = dict(carry.vars)
        self.state.scores = dict(carry.scores)
        self.state.review = carry.review
        self.state.holdout = carry.holdout
        self.started = carry.started_at
        self.event = carry.event
        self.customer = carry.customer
        self.visits = dict(carry.visits)
        self.inbox = list(carry.inbox)
        self.exit_checked = carry.exit_checked
        self.backlog = list(carry.backlog)
        self.parked = carry.parked
        # The carried window, after every id still queued: a late copy of a queued event
        # must not be queued twice (the window alone may have passed it).
        queued = [event.message_id for event in self.inbox]
        self.seen = list(dict.fromkeys([*self.backlog, *queued, *carry.seen]))
        self.seen_ids = set(self.seen)
        self.seen_limit = len(self.seen) + MAX_SEEN

    def _trim_seen(self) -> None:
        """Forget the oldest ids of the seen window, except those of events still queued:
        the router signals an event again when it cannot tell that the first signal
        landed (a timeout), and that copy may come after thousands of others."""
        # A carried generation is a long-runs one even before `run` asks the patch.
        if self.long_runs or self.input.carry is not None:
            pending = set(self.backlog)
            pending.update(event.message_id for event in self.inbox)
            older = [mid for mid in self.seen[:-MAX_SEEN] if mid in pending]
            self.seen = older + self.seen[-MAX_SEEN:]
            self.seen_limit = len(self.seen) + MAX_SEEN
        else:
            del self.seen[:MAX_SEEN]
        self.seen_ids = set(self.seen)

    # ------------------------------------------------------------------ messages in

    @workflow.signal(name=SIGNAL_EVENT)
    def on_event(self, event: EventMessage) -> None:
        """An event for this customer that the plan waits for or exits on (once per message id)."""
        if event.message_id in self.seen_ids:
            return  # a re-routed event: the router may signal twice
        self.seen.append(event.message_id)
        self.seen_ids.add(event.message_id)
        if len(self.seen) > self.seen_limit:
            self._trim_seen()
        # Never dropped: each is handled, or recorded in the path as ignored with the
        # reason; a long backlog is carried into the next generation.
        self.inbox.append(event)

    @workflow.signal(name=SIGNAL_EVENTS)
    def on_events(self, batch: EventBatch) -> None:
        """Several events, in arrival order (the router coalesces a run's signals)."""
        for event in batch.events:
            self.on_event(event)

    @workflow.update(name=UPDATE_REVIEW)
    async def decide_review(self, decision: ReviewDecision) -> ReviewDecisionResult:
        """A reviewer's decision on the open review task (checked by the validator).

        The task is in the review queue as soon as its activity has written it, a moment
        before the run has the activity's answer. A decision sent in that moment is taken
        once the run knows the task's id, and checked again then: a second decision that
        waited with it, or one for another task, fails with the reason."""
        if self.state.open_review is None and self.opening_review is not None:
            await workflow.wait_condition(
                lambda: self.state.open_review is not None or self.opening_review is None
            )
            try:
                self._check_decision(decision)
            except ValueError as refused:
                raise ApplicationError(str(refused), non_retryable=True) from None
        self.decision = decision
        review = self.plan.steps.get(self.state.current_step or "")
        target = (
            review.decisions.get(decision.decision) if isinstance(review, p.ReviewPlan) else None
        )
        return ReviewDecisionResult(accepted=True, next_step=target)

    @decide_review.validator
    def _validate_decision(self, decision: ReviewDecision) -> None:
        opening = self.opening_review
        if self.state.open_review is None and opening is not None:
            # The task is being opened: its id is checked when the run has it.
            self._check_choice(decision, opening.decisions)
            return
        self._check_decision(decision)

    def _check_decision(self, decision: ReviewDecision) -> None:
        task = self.state.open_review
        if task is not None and decision.task_id != task.task_id:
            raise ValueError(f"review task {decision.task_id} is not the open task of this run")
        if task is None or self.decision is not None:
            raise ValueError("this run has no open review task: it was decided or closed already")
        self._check_choice(decision, task.decisions)

    @staticmethod
    def _check_choice(decision: ReviewDecision, decisions: Collection[str]) -> None:
        if decision.decision not in decisions:
            raise ValueError(
                f"'{decision.decision}' is not a decision of this task: choose one of {', '.join(decisions)}"
            )
        if not decision.reviewer.strip():
            raise ValueError("a decision needs the reviewer's name")

    @workflow.query(name=QUERY_STATE)
    def query_state(self) -> RunState:
        """Where the run is, this generation's path, variables and scores."""
        return self.state.model_copy(update={"pending_events": self._pending()})

    # ------------------------------------------------------------------ the interpreter

    @workflow.run
    async def run(self, input: JourneyRunInput) -> RunState:
        self.long_runs = workflow.patched(LONG_RUNS)
        carry = input.carry
        if self.started is None:
            self.started = workflow.now()
        self.deadline = self.started + timedelta(seconds=self.plan.settings.max_duration_seconds)
        if carry is None:
            entry = {"event": input.trigger.name, "message_id": input.trigger.message_id}
            self._path("entry", "entry", detail=entry)
        more = _Continue(carry.next_step, carry.wait) if carry is not None else None
        if carry is not None:
            await self._record()  # the runs row names this generation (`current_run_id`)
        while True:
            try:
                if more is not None:
                    await self._go_on(more)
                elif await self._begin():
                    await self._hold_out()
                else:
                    await self._interpret(self.plan.start)
                await self._refill(None)  # a parked queue, read to be recorded as ignored
                self._finish("completed", "completed")
            except _Continue as full:
                await self._continue_as_new(full)  # returns only when it could not
                more = full
                continue
            except _RunEnded as ended:
                await self._refill(None)
                self._finish(ended.status, ended.outcome)
            except ActivityError as error:
                # A step whose activity failed for good (bad template, broken configuration):
                # end the run visibly as failed instead of leaving it open.
                step = self.state.current_step or "entry"
                self._path(step, "error", outcome="failed", detail={"reason": _cause(error)})
                await self._refill(None)
                self._finish("failed", f"{step}_failed")
            break
        if self.recorded is None or self._record_input() != self.recorded:
            await self._record()
        return self._result()

    def _result(self) -> RunState:
        """The run's final state, its path cut to the newest `RESULT_PATH` entries (all of
        them are in the `run_path` table): a result never nears Temporal's payload limit."""
        cut = max(0, len(self.state.path) - RESULT_PATH)
        return self.state.model_copy(
            update={
                "path": self.state.path[cut:],
                "path_start": self.state.path_start + cut,
                "pending_events": self._pending(),
            }
        )

    async def _interpret(self, step_id: str | None) -> None:
        while True:
            await self._check_exits()
            if step_id is None:
                return
            if self.state.steps >= self.max_steps:
                raise _RunEnded("failed", "step_limit")
            if self.walked is None and self.prepared is None and self._generation_full():
                raise _Continue(step_id)
            if step_id in self.walk_starts and not self._is_prepared(step_id):
                step_id, decided = await self._walk(step_id, self.max_steps - self.state.steps)
                self.state.steps += decided
                if decided:
                    continue  # exit events first, then the step the walk stopped at
                if step_id is None:
                    return
            self.visits[step_id] = self.visits.get(step_id, 0) + 1
            self.state.current_step = step_id
            step_id = await self._step(self.plan.steps[step_id])
            self.state.steps += 1

    # ------------------------------------------------------------------ generations

    def _generation_full(self) -> bool:
        """Whether this generation should continue as new (`LONG_RUNS`): Temporal suggests
        it, or its history or path passed this engine's bounds. Not when the backlog to
        carry is too large for one payload: the run handles more of it first."""
        if not self.long_runs:
            return False
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= bounds.GENERATION_EVENTS
            or info.get_current_history_size() >= bounds.GENERATION_BYTES
            or len(self.state.path) >= bounds.GENERATION_PATH
        )

    def _pending(self) -> int:
        """Events queued: in the inbox, by reference, and parked but not read yet."""
        return len(self.inbox) + len(self.backlog) + self._parked_left()

    def _parked_left(self) -> int:
        return self.parked.count - self.parked_read if self.parked is not None else 0

    def _carried_queue(self) -> tuple[list[EventMessage], int, list[str]]:
        """The queue to carry: (events, how many of them were exit-checked, backlog ids).
        Whole when small; else by reference: the exit-checked events become message ids,
        oldest first (`_to_park` says when even those are too many)."""
        size = sum(len(event.model_dump_json()) for event in self.inbox)
        if not self.backlog and size <= bounds.CARRY_EVENTS_BYTES:
            return self.inbox, self.exit_checked, []
        return self.inbox[self.exit_checked :], 0, self._checked_ids()[1]

    def _checked_ids(self) -> tuple[list[str], list[str]]:
        """The message ids of the exit-checked queue, oldest first, around the parked
        queue: (the events read from it, the backlog and the events checked after)."""
        checked = self.inbox[: self.exit_checked]
        front = [event.message_id for event in checked[: self.loaded]]
        if self.parked is None:
            return [], [*front, *self.backlog, *(e.message_id for e in checked[self.loaded :])]
        return front, [*self.backlog, *(e.message_id for e in checked[self.loaded :])]

    def _to_park(self) -> ParkEventsInput | None:
        """The queue to park for the next generation (`park_events`) when its ids are too
        many to carry, or a parked queue is left to read; None to carry it as it is."""
        front, rest = self._checked_ids()
        if self._parked_left() == 0 and sum(len(mid) + 3 for mid in rest) <= bounds.CARRY_IDS_BYTES:
            return None
        return ParkEventsInput(
            run_id=workflow.info().first_execution_run_id,
            generation=self.state.generation + 1,
            front=front,
            remainder=self.parked if self._parked_left() else None,
            remainder_from=self.parked_read,
            tail=rest,
        )

    async def _continue_as_new(self, more: _Continue) -> None:
        """Record the path's tail, let handlers finish, and go on in a new generation with
        everything that shapes the run: step or wait, variables, scores, visits, backlog."""
        await self._record()
        # The exit-checked queue changes only here, in the run's own coroutine: what it
        # parks is what the next generation reads first.
        park = self._to_park()
        parked: ParkedBacklog | None = None
        if park is not None:
            parked = await workflow.execute_local_activity(
                ActivityName.PARK_EVENTS,
                park,
                result_type=ParkedBacklog,
                start_to_close_timeout=_LOCAL,
                retry_policy=_DB_RETRY,
            )
        await workflow.wait_condition(workflow.all_handlers_finished)
        # The queue as it is now, with no await before `continue_as_new`: an event that
        # arrived during the record is in it (taking it earlier lost such events).
        seen = self.seen[-MAX_SEEN:]
        backlog: list[str] = []
        if park is not None:
            inbox, exit_checked = self.inbox[self.exit_checked :], 0
            gone = {*park.front, *park.tail}  # parked ids are not in the carried window
            seen = [mid for mid in self.seen if mid not in gone][-MAX_SEEN:]
        else:
            inbox, exit_checked, backlog = self._carried_queue()
        assert self.started is not None
        carry = RunCarry(
            generation=self.state.generation + 1,
            started_at=self.started,
            next_step=more.next_step,
            wait=more.wait,
            holdout=self.state.holdout,
            steps=self.state.steps,
            path_start=self.state.path_start + len(self.state.path),
            current_step=self.state.current_step,
            event=self.event,
            customer=self.customer,
            vars=self.state.vars,
            scores=self.state.scores,
            review=self.state.review,
            visits=self.visits,
            inbox=inbox,
            exit_checked=exit_checked,
            backlog=backlog,
            seen=seen,
            parked=parked,
        )
        workflow.continue_as_new(
            JourneyRunInput(
                plan=self.plan,
                customer_id=self.input.customer_id,
                key=self.input.key,
                trigger=self.input.trigger,
                recorded_by_starter=True,
                carry=carry,
            )
        )

    async def _go_on(self, more: _Continue) -> None:
        """Go on where a generation stopped to continue as new (the last one's, or this
        one's when it could not): in the holdout, in a wait, or at a step."""
        if self.state.holdout:
            await self._hold_out(resumed=True)
            return
        step_id = more.next_step
        if more.wait is not None:
            step = self.plan.steps[more.wait.step_id]
            step_id = await self._go_on_waiting(step, more.wait.until, more.wait.waiting_for)
            self.state.steps += 1
        await self._interpret(step_id)

    async def _go_on_waiting(
        self, step: p.PlanStep, until: datetime | None, waiting_for: str
    ) -> str | None:
        """The rest of a wait entered by an earlier generation."""
        match step:
            case p.EventWaitPlan():
                return await self._take_event(step, until)
            case p.TimerWaitPlan() | p.UntilWaitPlan() | p.DateWaitPlan():
                assert until is not None
                await self._sleep_until(until, waiting_for=waiting_for, step=step.id)
                await self._load_profile()
                return step.next
            case _:  # only waits are carried; anything else is a bug: end visibly
                raise _RunEnded("failed", f"{step.id}_failed")

    async def _step(self, step: p.PlanStep) -> str | None:
        """Run one step that is not decided by a walk; returns the next step id."""
        match step:
            case p.SendPlan():
                return await self._send(step)
            case p.TimerWaitPlan():
                return await self._wait_timer(step)
            case p.UntilWaitPlan():
                return await self._wait_until(step)
            case p.DateWaitPlan():
                return await self._wait_date(step)
            case p.EventWaitPlan():
                return await self._wait_event(step)
            case p.ScorePlan():
                return await self._score(step)
            case p.ReviewPlan():
                return await self._review(step)
            case p.CallPlan():
                return await self._call(step)
            case p.ExitPlan():
                raise _RunEnded("completed", step.outcome)
            case p.BranchPlan() | p.SplitPlan() | p.SetPlan() | p.DecidePlan():
                # Only walks decide these (`_interpret` walks from every one); reaching one
                # here is a bug: end the run visibly rather than fail its workflow task.
                raise _RunEnded("failed", f"{step.id}_failed")
            case _:
                assert_never(step)

    def _finish(self, status: str, outcome: str) -> None:
        # Events no wait took: in the path, not lost without a trace.
        reason = f"the run ended ({outcome}) before a wait took this event"
        queued = self.inbox[: self.loaded]
        for event in queued:
            self._ignored(event, reason)
        for message_id in self.backlog:
            self._ignored_id(message_id, reason)
        for event in self.inbox[self.loaded :]:
            self._ignored(event, reason)
        self.inbox.clear()
        self.backlog.clear()
        self.exit_checked = self.loaded = 0
        self.state.status = status  # type: ignore[assignment]
        self.state.outcome = outcome
        self.state.waiting_for = None
        self.state.wake_at = None
        # Ending as the last send recorded it: the end entry carries the send's time.
        recorded = self.recorded
        at: datetime | None = None
        if recorded is not None:
            ending = (recorded.status, recorded.outcome, recorded.step)
            if ending == (status, outcome, self.state.current_step):
                at = recorded.path[-1].at
        self._path("end", status, outcome=outcome, at=at)
        self._upsert(outcome=outcome)

    # ------------------------------------------------------------------ send

    async def _send(self, step: p.SendPlan) -> str | None:
        """Try each channel in order; the activity checks consent, suppression, quiet hours
        and the cap just before the provider call. Quiet hours and a full cap wait on a
        durable timer; a channel with no address, no consent or a permanent failure falls
        back to the next one; when none delivers, `on_failure` (else the next step)."""
        for channel in step.channels:
            request, result = await self._send_on(step, channel)
            if result.status == "capped" and step.on_capped == "skip":
                detail = {"channel": channel, "reason": result.reason}
                self._path(step.id, step.type, outcome="capped", detail=detail)
                return step.next
            at = result.recorded_at or workflow.now()
            entry = send_path_entry(step.id, step.template, channel, result, at)
            self.state.path.append(entry)
            if result.status in ("sent", "captured"):
                if result.recorded_at is not None and request.finish is not None:
                    self.recorded = delivered_record(request.finish, entry)
                return step.next
        return step.on_failure or step.next

    async def _send_on(
        self, step: p.SendPlan, channel: str
    ) -> tuple[SendMessageInput, SendMessageResult]:
        """Send on one channel, waiting out quiet hours and a full cap (unless the step
        skips a capped send): the last attempt's input and result."""
        while True:
            request = self._send_input(step, channel)
            result = await self._send_activity(request)
            if result.status == "capped" and step.on_capped == "skip":
                return request, result
            if result.status not in ("quiet", "capped") or result.retry_at is None:
                return request, result
            until = result.retry_at.isoformat()
            detail = {"channel": channel, "until": until, "reason": result.reason}
            self._path(step.id, step.type, outcome="deferred", detail=detail)
            await self._sleep_until(result.retry_at, waiting_for=f"{result.reason} (until {until})")

    def _send_input(self, step: p.SendPlan, channel: str) -> SendMessageInput:
        settings = self.plan.settings
        quiet, cap = settings.quiet_hours, settings.frequency_cap
        config = self.plan.channel_config.get(channel)
        info = workflow.info()
        return SendMessageInput(
            workflow_id=info.workflow_id,
            run_id=info.first_execution_run_id,
            journey_id=self.plan.journey_id,
            step_id=step.id,
            visit=self.visits[step.id],
            channel=channel,
            template=step.template,
            forms=self.plan.templates.get(step.template, {}),
            to_expression=step.to,
            context=self._context(),
            event_message_id=(self.event or self.input.trigger).message_id,
            timezone=self._timezone(),
            channel_url=config.url if config else None,
            quiet_start=quiet.start if quiet else None,
            quiet_end=quiet.end if quiet else None,
            cap_max=cap.max if cap else None,
            cap_per_seconds=cap.per_seconds if cap else None,
            finish=self._ending(step),
        )

    async def _send_activity(self, request: SendMessageInput) -> SendMessageResult:
        """`send_message` under the channel's retries and time to live; a failure for good
        is a failed send (the step falls back), not a failed run."""
        config = self.plan.channel_config.get(request.channel)
        retry = RetryPolicy(
            initial_interval=timedelta(seconds=config.retry_initial_seconds if config else 5),
            maximum_interval=timedelta(seconds=config.retry_max_seconds if config else 300),
            non_retryable_error_types=_SEND_NON_RETRYABLE,
        )
        try:
            result: SendMessageResult = await self._watch_exits(
                lambda: workflow.execute_activity(
                    ActivityName.SEND_MESSAGE,
                    request,
                    result_type=SendMessageResult,
                    start_to_close_timeout=timedelta(seconds=60),
                    schedule_to_close_timeout=timedelta(
                        seconds=config.ttl_seconds if config else 3600
                    ),
                    retry_policy=retry,
                    cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
            )
        except ActivityError as error:
            return SendMessageResult(status="failed", channel=request.channel, reason=_cause(error))
        return result

    def _ending(self, step: p.SendPlan) -> RecordRunInput | None:
        """The run's final row should ``step`` deliver and end it: the plan ends after it,
        or goes on to an exit step. None when more would follow (the run records itself).
        The path is as it is now; the send's activity adds the send and the end."""
        following = self.plan.steps.get(step.next) if step.next else None
        if step.next is None:
            end_step, outcome = step.id, "completed"
        elif isinstance(following, p.ExitPlan):
            end_step, outcome = following.id, following.outcome
        else:
            return None
        return self._record_input().model_copy(
            update={"status": "completed", "step": end_step, "outcome": outcome}
        )

    # ------------------------------------------------------------------ wait

    async def _wait_timer(self, step: p.TimerWaitPlan) -> str | None:
        wake = workflow.now() + timedelta(seconds=step.seconds)
        self._path(step.id, step.type, outcome="waiting", detail={"until": wake.isoformat()})
        await self._sleep_until(wake, waiting_for=f"timer until {wake.isoformat()}", step=step.id)
        await self._load_profile()
        return step.next

    async def _wait_until(self, step: p.UntilWaitPlan) -> str | None:
        local = await self._local_time(
            LocalTimeInput(now=workflow.now(), timezone=self._timezone(), until=step.until)
        )
        detail = {"until": local.fire_at.isoformat(), "local": local.local}
        self._path(step.id, step.type, outcome="waiting", detail=detail)
        await self._sleep_until(
            local.fire_at, waiting_for=f"local time {step.until} ({local.local})", step=step.id
        )
        await self._load_profile()
        return step.next

    async def _wait_date(self, step: p.DateWaitPlan) -> str | None:
        """Wait until a date read from the run (or a weekday). The date is read and moved
        to local time in a local activity, so the history records what it read; a missing
        or past date goes on at once, to ``on_missing`` when the step declares one."""
        request = DateWaitInput(
            step_id=step.id,
            now=workflow.now(),
            timezone=self._timezone(),
            date=step.date,
            weekday=step.weekday,
            offset_seconds=step.offset_seconds,
            at=step.at,
            context=self._context() if step.date is not None else {},
        )
        found: DateWaitResult = await workflow.execute_local_activity(
            ActivityName.DATE_WAIT,
            request,
            result_type=DateWaitResult,
            start_to_close_timeout=_LOCAL,
        )
        detail = {
            "until": found.fire_at.isoformat() if found.fire_at else None,
            "local": found.local,
            "value": found.value,
            "reason": found.reason,
        }
        if found.error:
            detail["error"] = found.error
        self._path(step.id, step.type, outcome=found.outcome, detail=detail)
        if found.outcome != "waiting" or found.fire_at is None:
            return step.on_missing or step.next
        await self._sleep_until(
            found.fire_at, waiting_for=f"{found.reason} ({found.local})", step=step.id
        )
        await self._load_profile()
        return step.next

    async def _wait_event(self, step: p.EventWaitPlan) -> str | None:
        timeout_at = (
            workflow.now() + timedelta(seconds=step.within_seconds) if step.within_seconds else None
        )
        self._path(
            step.id,
            step.type,
            outcome="waiting",
            detail={
                "event": step.event,
                "until": timeout_at.isoformat() if timeout_at else None,
            },
        )
        return await self._take_event(step, timeout_at)

    async def _take_event(self, step: p.EventWaitPlan, timeout_at: datetime | None) -> str | None:
        """The wait for an event once entered: the event (queued or arriving) or the timeout."""
        event = await self._await_event(step, timeout_at)
        if event is not None and self.long_runs and step.next in self.walk_starts:
            # The profile read and the walk after the wait in one local activity.
            self.event = event
            await self._reload_and_walk(step.next)
        else:
            await self._load_profile()
        if event is None:
            self._path(step.id, step.type, outcome="timed_out")
            return step.on_timeout or step.next
        self.event = event
        self._path(
            step.id,
            step.type,
            outcome="received",
            detail={"event": event.name, "message_id": event.message_id},
        )
        return step.next

    # ------------------------------------------------------------------ score and call

    async def _score(self, step: p.ScorePlan) -> str | None:
        """The score step in one activity: features (unless a walk evaluated them already),
        the model, and the walk from the next step."""
        prepared = self._take_prepared(step.id)
        then = step.next if step.next in self.walk_starts else None
        names = list(step.features)
        request = ScoreStepInput(
            score=ScoreInput(
                workflow_id=workflow.info().workflow_id,
                step_id=step.id,
                model=step.model,
                spec=self.plan.models.get(step.model, {}),
                features=dict(zip(names, prepared.values, strict=True)) if prepared else {},
            ),
            feature_expressions={} if prepared else dict(step.features),
            context=self._context() if prepared is None or then is not None else {},
            timezone=self._timezone(),
            then=then,
            steps=self.decidable if then is not None else {},
            salt=self._salt("") if then is not None else "",
            limit=MAX_WALK,
        )
        result: ScoreStepResult = await workflow.execute_activity(
            ActivityName.SCORE_STEP,
            request,
            result_type=ScoreStepResult,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=_SCORE_RETRY,
        )
        self._path_score(step, result, prepared.defaulted if prepared else [])
        if result.decided is not None:
            self.walked, self.walked_from = result.decided, then
        return step.next

    def _path_score(
        self, step: p.ScorePlan, result: ScoreStepResult, prepared_defaulted: list[str]
    ) -> None:
        score = result.score
        self.state.scores[step.model] = score.model_dump(mode="json")
        detail: dict[str, Any] = {
            "model": step.model,
            "features": result.features,
            "fallback_used": score.fallback_used,
            "error": score.error,
        }
        defaulted = result.defaulted or prepared_defaulted
        if defaulted:  # the features that took their coalesce default (not in old histories)
            detail["defaulted"] = defaulted
        self._path(step.id, step.type, outcome=f"{score.score:g}", detail=detail)

    async def _call(self, step: p.CallPlan) -> str | None:
        body: dict[str, Any] | None = None
        if step.json_body is not None:
            # A call with a body starts a walk (`walks_from`), which evaluated the body.
            prepared = self._take_prepared(step.id)
            if prepared is None:
                raise _RunEnded("failed", f"{step.id}_failed")
            body = dict(zip(step.json_body, prepared.values, strict=True))
        try:
            result: CallHttpResult = await self._watch_exits(
                lambda: workflow.execute_activity(
                    ActivityName.CALL_HTTP,
                    CallHttpInput(
                        workflow_id=workflow.info().workflow_id,
                        step_id=step.id,
                        visit=self.visits[step.id],
                        method=step.method,
                        url=step.url,
                        json_body=body,
                        headers=dict(step.headers or {}),
                        timeout_seconds=step.timeout_seconds,
                        context=self._context(),
                    ),
                    result_type=CallHttpResult,
                    start_to_close_timeout=timedelta(seconds=step.timeout_seconds + 5),
                    schedule_to_close_timeout=timedelta(hours=1),
                    retry_policy=_CALL_RETRY,
                    cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
            )
        except ActivityError as error:
            self._path(step.id, step.type, outcome="failed", detail={"reason": _cause(error)})
            if step.on_failure:
                return step.on_failure
            raise _RunEnded("failed", f"{step.id}_failed") from None
        self.state.vars[step.id] = result.body
        self._path(step.id, step.type, outcome=str(result.status_code))
        return step.next

    # ------------------------------------------------------------------ review

    async def _review(self, step: p.ReviewPlan) -> str | None:
        """Open a task and wait for its decision (`_await_review`). A run that ends meanwhile
        (exit event, `max_duration`) closes the task first, so no reviewer is left with a
        case nobody waits for (`REVIEW_ENDS_WITH_RUN`)."""
        due = workflow.now() + timedelta(seconds=step.sla_seconds) if step.sla_seconds else None
        # Asked once, before the task opens: a run replaying a review opened before the
        # patch gets False here and keeps the old behaviour for the whole review.
        patched = workflow.patched(REVIEW_ENDS_WITH_RUN)
        task_id = await self._open_review(step, due)
        try:
            return await self._await_review(step, task_id, due, reread=patched)
        except _RunEnded as ended:
            if patched:
                await self._close_review(step, task_id, ended)
            raise
        except ActivityError:
            # Failed for good meanwhile (the run ends as failed): the task closes too.
            if patched and self.long_runs:
                await self._close_review(step, task_id, _RunEnded("failed", f"{step.id}_failed"))
            raise

    async def _close_review(self, step: p.ReviewPlan, task_id: str, ended: _RunEnded) -> None:
        """The open task closed because its run ended, with the run's outcome as the reason."""
        self.state.open_review = None  # the validator now refuses a late decision
        if ended.status == ended.outcome:
            reason = f"run {ended.status}"
        else:
            reason = f"run {ended.status}: {ended.outcome}"
        await self._review_activity(
            ActivityName.CLOSE_REVIEW_TASK, task_id, status="closed", note=reason
        )
        detail = {"task_id": task_id, "reason": reason}
        self._path(step.id, step.type, outcome="closed", detail=detail)

    async def _await_review(
        self, step: p.ReviewPlan, task_id: str, due: datetime | None, *, reread: bool
    ) -> str | None:
        """Wait for a decision until the SLA, escalate once if the step says so, else close
        the task as expired and take `on_timeout`. With ``reread`` the profile is read again
        after each wait, as after any other wait: the customer may have changed meanwhile."""
        escalated = False
        while True:
            queue = step.escalate_to if escalated and step.escalate_to else step.queue
            decided = await self._wait_for(
                lambda: self.decision is not None, due, waiting_for=f"review in {queue}"
            )
            if reread:
                await self._load_profile()
            if decided and self.decision is not None:
                return await self._review_decided(step, task_id, self.decision)
            if step.escalate_to and not escalated and step.sla_seconds:
                escalated = True
                due = await self._escalate(step, task_id, step.escalate_to, step.sla_seconds)
                continue
            self.state.open_review = None
            await self._review_activity(ActivityName.CLOSE_REVIEW_TASK, task_id, status="expired")
            self._path(step.id, step.type, outcome="timed_out", detail={"task_id": task_id})
            return step.on_timeout

    async def _open_review(self, step: p.ReviewPlan, due: datetime | None) -> str:
        info = workflow.info()
        self.opening_review = step
        try:
            task_id = await self._open_review_task(step, due, info)
        finally:
            self.opening_review = None
        self.recorded_upto = len(self.state.path)  # the activity wrote them
        self.decision = None
        self.state.open_review = ReviewTaskRef(
            task_id=task_id, queue=step.queue, decisions=list(step.decisions), due_at=due
        )
        detail = {"task_id": task_id, "queue": step.queue}
        self._path(step.id, step.type, outcome="opened", detail=detail)
        return task_id

    async def _open_review_task(
        self, step: p.ReviewPlan, due: datetime | None, info: workflow.Info
    ) -> str:
        task_id: str = await workflow.execute_activity(
            ActivityName.OPEN_REVIEW_TASK,
            OpenReviewInput(
                workflow_id=info.workflow_id,
                run_id=info.first_execution_run_id,
                journey_id=self.plan.journey_id,
                customer_id=self.input.customer_id,
                step_id=step.id,
                visit=self.visits[step.id],
                queue=step.queue,
                title=step.title,
                details=step.details,
                decisions=list(step.decisions),
                due_at=due,
                context=self._context(),
                path=self.state.path[self.recorded_upto :],
                path_start=self.state.path_start + self.recorded_upto,
                timezone=self._timezone(),
                announce_url=self._ops_url(),
            ),
            result_type=str,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_DB_RETRY,
        )
        return task_id

    async def _review_decided(
        self, step: p.ReviewPlan, task_id: str, decision: ReviewDecision
    ) -> str | None:
        self.state.open_review = None
        self.state.review = {
            "decision": decision.decision,
            "reviewer": decision.reviewer,
            "note": decision.note,
            "at": workflow.now().isoformat(),
        }
        await self._review_activity(
            ActivityName.CLOSE_REVIEW_TASK, task_id, status="decided", decision=decision
        )
        detail = {"task_id": task_id, "reviewer": decision.reviewer, "note": decision.note}
        self._path(step.id, step.type, outcome=decision.decision, detail=detail)
        return step.decisions[decision.decision]

    async def _escalate(
        self, step: p.ReviewPlan, task_id: str, queue: str, sla_seconds: int
    ) -> datetime:
        """Re-queue the open task to ``queue`` with a new SLA; returns the new due time."""
        due = workflow.now() + timedelta(seconds=sla_seconds)
        self.state.open_review = ReviewTaskRef(
            task_id=task_id,
            queue=queue,
            decisions=list(step.decisions),
            due_at=due,
            escalated=True,
        )
        await self._review_activity(
            ActivityName.ESCALATE_REVIEW_TASK,
            task_id,
            status="open",
            queue=queue,
            due_at=due,
            announce_url=self._ops_url(),
        )
        detail = {"task_id": task_id, "queue": queue}
        self._path(step.id, step.type, outcome="escalated", detail=detail)
        return due

    async def _review_activity(
        self,
        name: ActivityName,
        task_id: str,
        *,
        status: str,
        decision: ReviewDecision | None = None,
        queue: str | None = None,
        due_at: datetime | None = None,
        announce_url: str | None = None,
        note: str | None = None,
    ) -> None:
        change = ReviewTaskChange(
            task_id=task_id,
            status=status,
            queue=queue,
            due_at=due_at,
            announce_url=announce_url,
            note=note,
        )
        if decision is not None:
            change.decision = decision.decision
            change.reviewer = decision.reviewer
            change.note = decision.note
        await workflow.execute_activity(
            name,
            change,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_DB_RETRY,
        )

    def _ops_url(self) -> str | None:
        """The `ops` channel's URL as the plan has it (`${VAR}` resolved by the activity)."""
        config = self.plan.channel_config.get("ops")
        return config.url if config is not None else None

    # ------------------------------------------------------------------ walks

    async def _begin(self) -> bool:
        """The run's start in one local activity: its `runs` row, the profile, whether the
        customer is held out, and the walk from the first step. True: held out.

        When the starter read the profile and records the row (the event router), the
        activity only decides, and is skipped when there is nothing to decide."""
        holdout = self.plan.holdout_percent
        start = self.plan.start
        decidable = start in self.walk_starts
        given = self.input.profile if self.input.recorded_by_starter else None
        # The starter's walk from the first step (`decide_at_entry`), taken as begin_run's.
        ahead = self.input.decided if given is not None and decidable else None
        if ahead is not None:
            self.walked, self.walked_from = ahead, start
            decidable = False
        if given is not None:
            self.customer = given
            if holdout <= 0 and not decidable:
                return False
        result: BeginRunResult = await workflow.execute_local_activity(
            ActivityName.BEGIN_RUN,
            BeginRunInput(
                record=self._record_input() if given is None else None,
                customer=given,
                holdout_weights=[holdout, 100 - holdout] if holdout > 0 else [],
                holdout_salt=self._salt("holdout") if holdout > 0 else "",
                decide=self._decide_input(start, MAX_WALK) if decidable else None,
                profile_marks=profile_marks(self.plan.personal),
            ),
            result_type=BeginRunResult,
            start_to_close_timeout=_LOCAL,
            retry_policy=_DB_RETRY,
        )
        self.customer = result.customer
        if given is None:
            self.recorded_upto = len(self.state.path)  # begin_run wrote the row and entry
        if ahead is None:
            self.walked, self.walked_from = result.decided, start
        return result.holdout_bucket == 0

    async def _reload_and_walk(self, start: str) -> None:
        """The profile read again after a wait and the walk from ``start`` against it, in
        one `begin_run` local activity (`LONG_RUNS`): a run taking a stream of events
        spends one local activity per event on them, not two."""
        result: BeginRunResult = await workflow.execute_local_activity(
            ActivityName.BEGIN_RUN,
            BeginRunInput(
                reload=True,
                customer_id=self.input.customer_id,
                decide=self._decide_input(start, MAX_WALK),
                profile_marks=profile_marks(self.plan.personal),
            ),
            result_type=BeginRunResult,
            start_to_close_timeout=_LOCAL,
            retry_policy=_DB_RETRY,
        )
        self.customer = result.customer
        self.walked, self.walked_from = result.decided, start

    def _decide_input(self, start: str, limit: int) -> DecideInput:
        return DecideInput(
            start=start,
            steps=self.decidable,
            context=self._context(),
            timezone=self._timezone(),
            salt=self._salt(""),
            limit=limit,
        )

    async def _walk(self, start: str, budget: int) -> tuple[str | None, int]:
        """Take the walk from ``start``: the one decided ahead for it, else one
        `decide_steps` local activity. Returns the step it stopped at and how many steps
        it decided."""
        walked, self.walked = self.walked, None
        if walked is None or self.walked_from != start:
            walked = await workflow.execute_local_activity(
                ActivityName.DECIDE_STEPS,
                self._decide_input(start, min(MAX_WALK, budget)),
                result_type=DecideResult,
                start_to_close_timeout=_LOCAL,
            )
        return await self._apply(walked)

    async def _apply(self, walked: DecideResult) -> tuple[str | None, int]:
        """Take a walk's decisions in order; keep the expressions it evaluated for the step
        it stopped at. Returns that step and how many steps were decided."""
        profile_updates: dict[str, Any] = {}
        for decision in walked.decisions:
            step = self.plan.steps[decision.step_id]
            self.visits[step.id] = self.visits.get(step.id, 0) + 1
            self.state.current_step = step.id
            self._take(step, decision, profile_updates)
        await self._update_profile(profile_updates)
        self.prepared = walked.prepared
        return walked.stop, len(walked.decisions)

    def _take(
        self, step: p.PlanStep, decision: StepDecision, profile_updates: dict[str, Any]
    ) -> None:
        """One decided step into the run's state and path."""
        match step:
            case p.SplitPlan():
                arm = step.arms[decision.bucket or 0]
                self._path(step.id, step.type, outcome=arm.name, detail={"arm": arm.name})
            case p.BranchPlan():
                target = taken(step, rule=decision.first_true, arm=None)
                detail: dict[str, Any] = {
                    "rule": decision.first_true,
                    "reads": decision.reads,
                    "error": decision.error,
                }
                self._path(step.id, step.type, outcome=target or "end", detail=detail)
            case p.SetPlan():
                self._assign(step, decision.values, profile_updates)
                detail = {
                    "values": dict(zip(step.assignments, decision.values, strict=True)),
                    "error": decision.error,
                }
                self._path(step.id, step.type, outcome="set", detail=detail)
            case p.DecidePlan():
                self._take_table(step, decision)
            case _:  # a walk decides nothing else; a mismatch is a bug, not a retry
                raise _RunEnded("failed", f"{step.id}_failed")

    def _take_table(self, step: p.DecidePlan, decision: StepDecision) -> None:
        """A decision table's outputs into `vars`; its path entry says which rules held
        (``rules``; ``rule`` the one taken, numbered from 0 as a branch's) for which
        input values."""
        outputs = decision.outputs or {}
        self.state.vars.update(outputs)
        target = taken(step, rule=decision.first_true, arm=None)
        detail: dict[str, Any] = {
            "rule": decision.first_true,
            "rules": decision.matched or [],
            "hit": step.hit,
            "inputs": dict(zip(step.inputs, decision.values, strict=False)),
            "set": outputs,
            "reads": decision.reads,
            "error": decision.error,
        }
        self._path(step.id, step.type, outcome=target or "end", detail=detail)

    def _assign(self, step: p.SetPlan, values: list[Any], profile_updates: dict[str, Any]) -> None:
        """A set step's values into `vars` and the profile (its writes into ``profile_updates``)."""
        for target, value in zip(step.assignments, values, strict=True):
            scope, name = target.split(".", 1)
            if scope == "vars":
                self.state.vars[name] = value
            else:
                profile_updates[name] = value
                self.customer.traits[name] = value

    async def _update_profile(self, traits: dict[str, Any]) -> None:
        if traits:
            await workflow.execute_activity(
                ActivityName.UPDATE_PROFILE,
                UpdateProfileInput(customer_id=self.input.customer_id, traits=traits),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_DB_RETRY,
            )

    def _is_prepared(self, step_id: str) -> bool:
        return self.prepared is not None and self.prepared.step_id == step_id

    def _take_prepared(self, step_id: str) -> StepDecision | None:
        """The expressions a walk evaluated for ``step_id`` (once), else None."""
        if not self._is_prepared(step_id):
            return None
        prepared, self.prepared = self.prepared, None
        return prepared

    # ------------------------------------------------------------------ holdout

    async def _hold_out(self, *, resumed: bool = False) -> None:
        """Enter, get nothing, and still record how the run ends (exit events), for comparison."""
        if not resumed:
            self.state.holdout = True
            self.state.current_step = "holdout"
            self._path("holdout", "holdout", outcome="held_out")
            await self._record()
        assert self.deadline is not None
        await self._sleep_until(
            self.deadline, waiting_for="holdout: exit events only", step="holdout"
        )

    # ------------------------------------------------------------------ waiting

    async def _sleep_until(
        self, wake: datetime, *, waiting_for: str, step: str | None = None
    ) -> None:
        await self._wait_for(lambda: False, wake, waiting_for=waiting_for, step=step)

    async def _wait_for(
        self,
        done: Callable[[], bool],
        until: datetime | None,
        *,
        waiting_for: str,
        step: str | None = None,
    ) -> bool:
        """Wait until ``done()`` or ``until``, handling exit events meanwhile. True if done.

        With ``step`` (a wait step's, or the holdout's), a generation that is full
        continues as new in the middle of the wait, which the next one goes on with."""
        self.state.waiting_for = waiting_for
        self.state.wake_at = until
        self._upsert()
        await self._record()
        try:
            while True:
                await self._check_exits()
                if done():
                    return True
                now = workflow.now()
                limit = until
                if self.deadline is not None and (limit is None or self.deadline < limit):
                    limit = self.deadline
                if limit is not None and now >= limit:
                    if self.deadline is not None and now >= self.deadline:
                        raise _RunEnded("expired", "expired")
                    return False
                if step is not None and self._generation_full():
                    raise _Continue(
                        None, CarriedWait(step_id=step, until=until, waiting_for=waiting_for)
                    )
                timeout = (limit - now).total_seconds() if limit is not None else None
                try:
                    await workflow.wait_condition(
                        lambda: done() or len(self.inbox) > self.exit_checked, timeout=timeout
                    )
                except TimeoutError:
                    continue
        finally:
            self.state.waiting_for = None
            self.state.wake_at = None

    def _queued(self, name: str) -> int | None:
        """Index of the first exit-checked event called ``name`` waiting in the inbox (while
        a backlog is left to read, only among the events read from it: they are older)."""
        inbox = self.inbox
        unread = self.backlog or self._parked_left()
        for index in range(self.loaded if unread else self.exit_checked):
            if inbox[index].name == name:
                return index
        return None

    async def _pace(self) -> None:
        """Every `TASK_EVENTS` queued events taken, end the workflow task (a 1 ms timer,
        `LONG_RUNS`). A run working through a backlog otherwise chains local activities
        in one task until it passes Temporal's 10 s task timeout; the retried task then
        replays the whole generation and can fail the same way for good."""
        if not self.long_runs:
            return
        self.taken += 1
        if self.taken % TASK_EVENTS == 0:
            await workflow.sleep(timedelta(milliseconds=1))

    def _first_sight(self, event: EventMessage) -> bool:
        """Whether a parked event read back is new to this generation (parked ids are
        not in the seen window): False when a copy of it came by signal, which is queued
        after it and is taken instead."""
        if event.message_id in self.seen_ids:
            return False
        self.seen.append(event.message_id)
        self.seen_ids.add(event.message_id)
        return True

    def _take_queued(self, index: int) -> EventMessage:
        if index < self.loaded:
            self.loaded -= 1
        self.exit_checked -= 1
        return self.inbox.pop(index)

    async def _refill(self, name: str | None) -> None:
        """Read the carried backlog (`load_events`, a page at a time) until an event called
        ``name`` is among the events read, or the backlog is all read (``name`` None)."""
        while (self.backlog or self._parked_left()) and (
            name is None or self._queued(name) is None
        ):
            if self.parked is not None and self._parked_left():
                request = LoadEventsInput(
                    customer_id=self.input.customer_id,
                    run_id=workflow.info().first_execution_run_id,
                    parked=self.parked,
                    offset=self.parked_read,
                    limit=min(bounds.BACKLOG_PAGE, self._parked_left()),
                    personal=self.plan.personal,
                )
                self.parked_read += request.limit
            else:
                page = self.backlog[: bounds.BACKLOG_PAGE]
                self.backlog = self.backlog[bounds.BACKLOG_PAGE :]
                request = LoadEventsInput(
                    customer_id=self.input.customer_id,
                    message_ids=page,
                    personal=self.plan.personal,
                )
            found: LoadEventsResult = await workflow.execute_local_activity(
                ActivityName.LOAD_EVENTS,
                request,
                result_type=LoadEventsResult,
                start_to_close_timeout=_LOCAL,
                retry_policy=_DB_RETRY,
            )
            if request.parked is not None:
                found.events = [event for event in found.events if self._first_sight(event)]
            for message_id in found.missing:
                self._ignored_id(message_id, "not in the events table")
            self.inbox[self.loaded : self.loaded] = found.events
            self.loaded += len(found.events)
            self.exit_checked += len(found.events)

    async def _await_event(
        self, step: p.EventWaitPlan, timeout_at: datetime | None
    ) -> EventMessage | None:
        """The first event called ``step.event`` (already queued or arriving) whose `when` holds."""
        name = step.event
        while True:
            while True:
                await self._refill(name)
                index = self._queued(name)
                if index is None:
                    break
                await self._pace()
                event = self._take_queued(index)
                if step.when:
                    check = await self._evaluate(step.id, "wait.when", [step.when], event=event)
                    if check.first_true is None:
                        detail = {
                            "event": event.name,
                            "message_id": event.message_id,
                            "reason": "the wait's when did not hold",
                            "reads": check.reads,
                        }
                        self._path(step.id, step.type, outcome="ignored", detail=detail)
                        continue
                return event
            arrived = await self._wait_for(
                lambda: self._queued(name) is not None,
                timeout_at,
                waiting_for=f"event {name}",
                step=step.id,
            )
            if not arrived:
                return None

    async def _check_exits(self) -> None:
        """End the run if an event not yet checked against `exit_on` matches one (or one
        matched while an activity was out, `_watch_exits`)."""
        found, self.exit_found = self.exit_found, None
        if found is None:
            found = await self._next_exit()
        if found is not None:
            self._exit(*found)

    def _exit(self, rule: p.PlanExit, event: EventMessage) -> None:
        self.event = event
        self._path(
            self.state.current_step or "entry",
            "exit_on",
            outcome=rule.outcome,
            detail={"event": event.name, "message_id": event.message_id},
        )
        raise _RunEnded("exited", rule.outcome)

    async def _next_exit(self) -> tuple[p.PlanExit, EventMessage] | None:
        """Look at events not yet checked against `exit_on`, oldest first and ahead of any
        backlog a wait has not taken yet: the first rule that matches, and its event (out
        of the inbox). An event that no wait takes either is recorded as ignored, with
        the reason, and leaves the inbox."""
        while self.exit_checked < len(self.inbox):
            event = self.inbox[self.exit_checked]
            listened = False
            for rule in self.plan.exit_on:
                if rule.event != event.name:
                    continue
                listened = True
                if rule.when:
                    check = await self._evaluate(
                        "exit_on", "exit_on.when", [rule.when], event=event
                    )
                    if check.first_true is None:
                        continue
                del self.inbox[self.exit_checked]
                return rule, event
            if event.name in self.awaited:
                self.exit_checked += 1
                continue
            del self.inbox[self.exit_checked]
            reason = (
                "no exit_on condition held, and no wait takes this event"
                if listened
                else "no wait or exit_on of this journey listens for this event"
            )
            self._ignored(event, reason)
        return None

    def _ignored(self, event: EventMessage, reason: str, *, step: str | None = None) -> None:
        detail = {"event": event.name, "message_id": event.message_id, "reason": reason}
        self._path(
            step or self.state.current_step or "entry", "event", outcome="ignored", detail=detail
        )

    def _ignored_id(self, message_id: str, reason: str) -> None:
        """An event known by its id only (a backlog's, not read back from the table)."""
        detail = {"message_id": message_id, "reason": reason}
        step = self.state.current_step or "entry"
        self._path(step, "event", outcome="ignored", detail=detail)

    async def _watch_exits(self, activity: Callable[[], Awaitable[_T]]) -> _T:
        """An activity that may retry for a long time (a send, a call), with exit events
        looked at meanwhile (`LONG_RUNS`). One that matches cancels the activity: an
        attempt in flight still ends (the activities are started with
        `WAIT_CANCELLATION_COMPLETED`), and if it succeeded its result is taken as usual
        and the run ends at the next exit check; otherwise the run ends now."""
        if not self.long_runs:
            return await activity()
        await self._check_exits()  # an exit found during an earlier activity comes first
        task = asyncio.ensure_future(activity())
        found = None
        while found is None and not task.done():
            await workflow.wait_condition(
                lambda: task.done() or len(self.inbox) > self.exit_checked
            )
            if not task.done():
                found = await self._next_exit()
        if found is None:
            return await task
        task.cancel()
        try:
            result = await task
        except (asyncio.CancelledError, ActivityError):
            self._exit(*found)
        self.exit_found = found
        return result

    # ------------------------------------------------------------------ local activities

    async def _evaluate(
        self, step_id: str, purpose: str, expressions: list[str], *, event: EventMessage
    ) -> EvaluateResult:
        """A wait's or an exit's condition against ``event`` (first truthy expression)."""
        request = EvaluateInput(
            step_id=step_id,
            purpose=purpose,
            expressions=expressions,
            context=self._context(event),
            timezone=self._timezone(),
        )
        result: EvaluateResult = await workflow.execute_local_activity(
            ActivityName.EVALUATE,
            request,
            result_type=EvaluateResult,
            start_to_close_timeout=_LOCAL,
        )
        return result

    async def _local_time(self, request: LocalTimeInput) -> LocalTimeResult:
        result: LocalTimeResult = await workflow.execute_local_activity(
            ActivityName.LOCAL_TIME,
            request,
            result_type=LocalTimeResult,
            start_to_close_timeout=_LOCAL,
        )
        return result

    async def _load_profile(self) -> None:
        """The profile read again (masked): after a wait, the customer may have changed."""
        self.customer = await workflow.execute_local_activity(
            ActivityName.LOAD_PROFILE,
            LoadProfileInput(
                customer_id=self.input.customer_id,
                profile_marks=profile_marks(self.plan.personal),
            ),
            result_type=CustomerContext,
            start_to_close_timeout=_LOCAL,
            retry_policy=_DB_RETRY,
        )

    async def _record(self) -> None:
        await workflow.execute_local_activity(
            ActivityName.RECORD_RUN,
            self._record_input(),
            start_to_close_timeout=_LOCAL,
            retry_policy=_DB_RETRY,
        )
        self.recorded_upto = len(self.state.path)

    def _record_input(self) -> RecordRunInput:
        """The run's row, with the path entries not recorded yet (its tail)."""
        info = workflow.info()
        return RecordRunInput(
            run_id=info.first_execution_run_id,
            current_run_id=info.run_id,
            workflow_id=info.workflow_id,
            journey_id=self.plan.journey_id,
            version=self.plan.version,
            customer_id=self.input.customer_id,
            key=self.input.key,
            status=self.state.status,
            step=self.state.current_step,
            outcome=self.state.outcome,
            holdout=self.state.holdout,
            trigger_message_id=self.input.trigger.message_id,
            path=self.state.path[self.recorded_upto :],
            path_start=self.state.path_start + self.recorded_upto,
        )

    # ------------------------------------------------------------------ context and records

    def _timezone(self) -> str:
        return self.customer.timezone or self.plan.settings.timezone

    def _salt(self, name: str) -> str:
        return p.bucket_salt(self.plan, self.input.customer_id, name)

    def _context(self, event: EventMessage | None = None) -> dict[str, Any]:
        return run_context(
            self.plan,
            self.customer,
            self.input.trigger,
            now=workflow.now(),
            run_id=workflow.info().first_execution_run_id,
            step=self.state.current_step,
            event=event or self.event,
            variables=self.state.vars,
            scores=self.state.scores,
            review=self.state.review,
        )

    def _path(
        self,
        step: str,
        kind: str,
        *,
        outcome: str | None = None,
        detail: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        self.state.path.append(
            PathEntry(
                step=step,
                type=kind,
                at=at or workflow.now(),
                outcome=outcome,
                detail=detail or {},
            )
        )

    def _upsert(self, *, outcome: str | None = None) -> None:
        """Current step and outcome as search attributes, when the run was started with them
        (the starter knows whether the server has them registered)."""
        if workflow.info().typed_search_attributes.get(JOURNEY_ID) is None:
            return
        updates = [CURRENT_STEP.value_set(self.state.current_step or "entry")]
        if outcome is not None:
            updates.append(OUTCOME.value_set(outcome))
        workflow.upsert_search_attributes(updates)


def _cause(error: ActivityError) -> str:
    cause = error.cause
    if isinstance(cause, ApplicationError):
        return f"{cause.type or 'error'}: {cause.message}"
    return str(cause or error)
