"""`JourneyRunWorkflow`: one customer's run through one pinned plan version.

The interpreter is a bounded loop that dispatches each step through one table of short
handlers (ending in `assert_never`), each returning the next step id. Decisions (branch
rules, wait conditions, exits, splits, holdout, local times) are made in local
activities, so the history records each with what it read and what it chose: consecutive
set/branch/split steps in one `decide_steps` call (patch `batched-decisions`), the start of
a run in one `begin_run`. Side effects (messages, scores, review tasks, HTTP calls, profile
writes) are activities. Events arrive
by signal, review decisions by a validated Update, and the state is a query.

Deterministic: time, ids and randomness come only from `workflow.*`; no I/O here. Every
change to behaviour of recorded runs goes behind `workflow.patched(...)` with a history
added to tests/histories/.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, assert_never

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from engine import plan as p
    from engine.errors import ErrorType
    from engine.successors import taken
    from engine.payloads import (
        QUERY_STATE,
        SIGNAL_EVENT,
        UPDATE_REVIEW,
        WORKFLOW_NAME,
        BeginRunInput,
        BeginRunResult,
        CallHttpInput,
        CallHttpResult,
        CustomerContext,
        DecideInput,
        DecideResult,
        EvaluateInput,
        EvaluateResult,
        EventMessage,
        JourneyRunInput,
        LoadProfileInput,
        LocalTimeInput,
        LocalTimeResult,
        OpenReviewInput,
        PathEntry,
        RecordRunInput,
        ReviewDecision,
        ReviewDecisionResult,
        ReviewTaskChange,
        ReviewTaskRef,
        RunState,
        ScoreInput,
        ScoreResult,
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

__all__ = [
    "BATCHED_DECISIONS",
    "MAX_STEPS",
    "SCORE_STEP_ACTIVITY",
    "SEND_RECORDS_END",
    "JourneyRunWorkflow",
]

BATCHED_DECISIONS = "batched-decisions"
"""The patch under which a run starts with one `begin_run` local activity (runs row,
profile, holdout, first decisions) and decides consecutive set/branch/split steps, and the
expressions of the score or call step after them, in one `decide_steps` local activity.
Runs recorded before it keep one local activity per decision (tests/histories)."""
SCORE_STEP_ACTIVITY = "score-step-activity"
"""The patch under which a `score` step is one `score_step` activity: its features, the
model, and the set/branch/split steps after it decided with the score (no local activity
before or after it). It implies `batched-decisions` and the per-channel sends, so a new
run records this one patch marker instead of those two."""
SEND_RECORDS_END = "send-records-end"
"""The patch under which a send that ends the run when it delivers (the plan ends after
it, or goes on to an exit step) writes the run's final row itself, with the send and the
end in the path at the send's time (`SendMessageInput.finish`); the run then records
itself at its end only when it ended otherwise (an exit event came meanwhile). It implies
`score-step-activity`, so a new run records this one patch marker."""
MAX_WALK = 100

MAX_STEPS = 10_000
MAX_INBOX = 200
MAX_SEEN = 1000
JOURNEY_ID = SearchAttributeKey.for_keyword("JourneyId")
CURRENT_STEP = SearchAttributeKey.for_keyword("CurrentStep")
OUTCOME = SearchAttributeKey.for_keyword("Outcome")

_LOCAL = timedelta(seconds=30)
_DB_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
_SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=[
        ErrorType.TEMPLATE_ERROR,
        ErrorType.PERMANENT_DELIVERY_FAILURE,
        ErrorType.BAD_CONFIGURATION,
    ],
)
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
        self.input = input
        self.plan = input.plan
        self.state = RunState(
            journey_id=input.plan.journey_id,
            version=input.plan.version,
            customer_id=input.customer_id,
            key=input.key,
        )
        self.event: EventMessage = input.trigger
        self.customer = CustomerContext(id=input.customer_id)
        self.inbox: list[EventMessage] = []
        self.seen: list[str] = [input.trigger.message_id]
        self.exit_checked = 0
        self.visits: dict[str, int] = {}
        self.decision: ReviewDecision | None = None
        self.review_closed_at: datetime | None = None
        self.deadline: datetime | None = None
        # Set in `run` from the patches: False replays the runs recorded before them.
        self.records_end = False  # SEND_RECORDS_END
        self.score_steps = False  # SCORE_STEP_ACTIVITY (or SEND_RECORDS_END)
        # The final row a delivering send wrote (SEND_RECORDS_END), if one did.
        self.recorded: RecordRunInput | None = None
        self.batched = False  # BATCHED_DECISIONS (or SCORE_STEP_ACTIVITY)
        self.decidable = {sid: s for sid, s in self.plan.steps.items() if p.decidable(s)}
        # The steps a walk (decide_steps) starts from; set in `run`.
        self.walk_starts: set[str] = set()
        # A walk decided ahead (begin_run's from plan.start, a score_step's after the
        # score), and the step it starts from.
        self.walked: DecideResult | None = None
        self.walked_from: str | None = None
        self.prepared: StepDecision | None = None  # a score/call step's evaluated expressions
        self.handlers: dict[str, Callable[[Any], Awaitable[str | None]]] = {
            "send": self._send,
            "wait": self._wait,
            "branch": self._branch,
            "split": self._split,
            "score": self._score,
            "review": self._review,
            "set": self._set,
            "call": self._call,
            "exit": self._exit,
        }

    # ------------------------------------------------------------------ messages in

    @workflow.signal(name=SIGNAL_EVENT)
    def on_event(self, event: EventMessage) -> None:
        """An event for this customer that the plan waits for or exits on (once per message id)."""
        if event.message_id in self.seen:
            return  # a re-routed event: the router may signal twice
        self.seen.append(event.message_id)
        if len(self.seen) > MAX_SEEN:
            del self.seen[: len(self.seen) - MAX_SEEN]
        self.inbox.append(event)
        if len(self.inbox) > MAX_INBOX:
            dropped = len(self.inbox) - MAX_INBOX
            del self.inbox[:dropped]
            self.exit_checked = max(0, self.exit_checked - dropped)

    @workflow.update(name=UPDATE_REVIEW)
    async def decide_review(self, decision: ReviewDecision) -> ReviewDecisionResult:
        """A reviewer's decision on the open review task (checked by the validator)."""
        self.decision = decision
        review = self.plan.steps.get(self.state.current_step or "")
        target = (
            review.decisions.get(decision.decision) if isinstance(review, p.ReviewPlan) else None
        )
        return ReviewDecisionResult(accepted=True, next_step=target)

    @decide_review.validator
    def _validate_decision(self, decision: ReviewDecision) -> None:
        task = self.state.open_review
        if task is None or self.decision is not None:
            raise ValueError("this run has no open review task: it was decided or closed already")
        if decision.task_id != task.task_id:
            raise ValueError(f"review task {decision.task_id} is not the open task of this run")
        if decision.decision not in task.decisions:
            raise ValueError(
                f"'{decision.decision}' is not a decision of this task: choose one of {', '.join(task.decisions)}"
            )
        if not decision.reviewer.strip():
            raise ValueError("a decision needs the reviewer's name")

    @workflow.query(name=QUERY_STATE)
    def query_state(self) -> RunState:
        """Where the run is, the path so far, variables and scores."""
        return self.state

    # ------------------------------------------------------------------ the interpreter

    @workflow.run
    async def run(self, input: JourneyRunInput) -> RunState:
        started = workflow.now()
        self.deadline = started + timedelta(seconds=self.plan.settings.max_duration_seconds)
        self.records_end = workflow.patched(SEND_RECORDS_END)
        self.score_steps = self.records_end or workflow.patched(SCORE_STEP_ACTIVITY)
        self.batched = self.score_steps or workflow.patched(BATCHED_DECISIONS)
        self.walk_starts = {
            sid
            for sid, step in self.decidable.items()
            if p.walks_from(step) or not self.score_steps
        }
        entry = {"event": input.trigger.name, "message_id": input.trigger.message_id}
        if not self.batched:
            await self._load_profile()
        self._path("entry", "entry", detail=entry)
        try:
            if self.batched:
                held_out = await self._begin()
            else:
                await self._record()
                held_out = self.plan.holdout_percent > 0 and await self._in_holdout()
            if held_out:
                await self._hold_out()
            else:
                await self._interpret()
            self._finish("completed", "completed")
        except _RunEnded as ended:
            self._finish(ended.status, ended.outcome)
        except ActivityError as error:
            # A step whose activity failed for good (bad template, broken configuration):
            # end the run visibly as failed instead of leaving it open.
            step = self.state.current_step or "entry"
            self._path(step, "error", outcome="failed", detail={"reason": _cause(error)})
            self._finish("failed", f"{step}_failed")
        if self.recorded is None or self._record_input() != self.recorded:
            await self._record()
        return self.state

    async def _interpret(self) -> None:
        step_id: str | None = self.plan.start
        taken = 0
        while taken < MAX_STEPS:
            await self._check_exits()
            if step_id is None:
                return
            if self.batched and step_id in self.walk_starts and not self._is_prepared(step_id):
                walked, self.walked = self.walked, None
                if walked is None or self.walked_from != step_id:
                    walked = await self._decide(step_id, min(MAX_WALK, MAX_STEPS - taken))
                step_id, decided = await self._apply(walked)
                taken += decided
                if decided:
                    continue  # exit events first, then the step the walk stopped at
                if step_id is None:
                    return
            step = self.plan.steps[step_id]
            self.visits[step_id] = self.visits.get(step_id, 0) + 1
            self.state.current_step = step_id
            step_id = await self.handlers[step.type](step)
            taken += 1
        raise _RunEnded("failed", "step_limit")

    def _finish(self, status: str, outcome: str) -> None:
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

    # ------------------------------------------------------------------ step handlers

    async def _send(self, step: p.SendPlan) -> str | None:
        """Try each channel in order; the activity checks consent, suppression, quiet hours
        and the cap just before the provider call. Quiet hours and a full cap wait on a
        durable timer; a channel with no address, no consent or a permanent failure falls
        back to the next one; when none delivers, `on_failure` (else the next step)."""
        if not self.score_steps and not workflow.patched("send-per-channel-policies"):
            return await self._send_v1(step)
        settings = self.plan.settings
        info = workflow.info()
        for channel in step.channels:
            config = self.plan.channel_config.get(channel)
            retry = RetryPolicy(
                initial_interval=timedelta(seconds=config.retry_initial_seconds if config else 5),
                maximum_interval=timedelta(seconds=config.retry_max_seconds if config else 300),
                non_retryable_error_types=list(_SEND_RETRY.non_retryable_error_types or []),
            )
            while True:
                request = SendMessageInput(
                    workflow_id=info.workflow_id,
                    run_id=info.run_id,
                    journey_id=self.plan.journey_id,
                    step_id=step.id,
                    visit=self.visits[step.id],
                    template=step.template,
                    forms=self.plan.templates.get(step.template, {}),
                    to_expression=step.to,
                    context=self._context(),
                    timezone=self._timezone(),
                    channel=channel,
                    channel_url=config.url if config else None,
                    quiet_start=settings.quiet_hours.start if settings.quiet_hours else None,
                    quiet_end=settings.quiet_hours.end if settings.quiet_hours else None,
                    cap_max=settings.frequency_cap.max if settings.frequency_cap else None,
                    cap_per_seconds=settings.frequency_cap.per_seconds
                    if settings.frequency_cap
                    else None,
                    finish=self._ending(step) if self.records_end else None,
                )
                try:
                    result: SendMessageResult = await workflow.execute_activity(
                        "send_message",
                        request,
                        result_type=SendMessageResult,
                        start_to_close_timeout=timedelta(seconds=60),
                        schedule_to_close_timeout=timedelta(
                            seconds=config.ttl_seconds if config else 3600
                        ),
                        retry_policy=retry,
                    )
                except ActivityError as error:
                    result = SendMessageResult(
                        status="failed", channel=channel, reason=_cause(error)
                    )
                if result.status == "capped" and step.on_capped == "skip":
                    self._path(
                        step.id,
                        step.type,
                        outcome="capped",
                        detail={"channel": channel, "reason": result.reason},
                    )
                    return step.next
                if result.status in ("quiet", "capped") and result.retry_at is not None:
                    self._path(
                        step.id,
                        step.type,
                        outcome="deferred",
                        detail={
                            "channel": channel,
                            "until": result.retry_at.isoformat(),
                            "reason": result.reason,
                        },
                    )
                    await self._sleep_until(
                        result.retry_at,
                        waiting_for=f"{result.reason} (until {result.retry_at.isoformat()})",
                    )
                    continue
                break
            at = result.recorded_at or workflow.now()
            entry = send_path_entry(step.id, step.template, channel, result, at)
            self.state.path.append(entry)
            if result.status in ("sent", "captured"):
                if result.recorded_at is not None and request.finish is not None:
                    self.recorded = delivered_record(request.finish, entry)
                return step.next
        return step.on_failure or step.next

    async def _send_v1(self, step: p.SendPlan) -> str | None:
        """The send of runs recorded before per-channel policies (kept for replay)."""
        quiet = self.plan.settings.quiet_hours
        if quiet is not None:
            window = await self._local_time(
                LocalTimeInput(
                    now=workflow.now(),
                    timezone=self._timezone(),
                    quiet_start=quiet.start,
                    quiet_end=quiet.end,
                )
            )
            if window.fire_at is not None:
                self._path(
                    step.id,
                    step.type,
                    outcome="deferred",
                    detail={
                        "until": window.fire_at.isoformat(),
                        "local": window.local,
                        "reason": window.reason,
                    },
                )
                await self._sleep_until(
                    window.fire_at, waiting_for=f"quiet hours to end ({window.local})"
                )
        to = None
        if step.to:
            to_value = await self._evaluate(step.id, "to", "all", [step.to])
            to = None if to_value.values[0] is None else str(to_value.values[0])
        forms = self.plan.templates.get(step.template, {})
        try:
            result: SendMessageResult = await workflow.execute_activity(
                "send_message",
                SendMessageInput(
                    workflow_id=workflow.info().workflow_id,
                    run_id=workflow.info().run_id,
                    journey_id=self.plan.journey_id,
                    step_id=step.id,
                    visit=self.visits[step.id],
                    channels=list(step.channels),
                    template=step.template,
                    forms=forms,
                    to=to,
                    context=self._context(),
                    timezone=self._timezone(),
                ),
                result_type=SendMessageResult,
                start_to_close_timeout=timedelta(seconds=60),
                schedule_to_close_timeout=timedelta(hours=24),
                retry_policy=_SEND_RETRY,
            )
        except ActivityError as error:
            result = SendMessageResult(status="failed", reason=_cause(error))
        self._path(
            step.id,
            step.type,
            outcome=result.status,
            detail={"channel": result.channel, "reason": result.reason, "template": step.template},
        )
        if result.status == "failed" and step.on_failure:
            return step.on_failure
        return step.next

    async def _wait(self, step: p.WaitPlan) -> str | None:
        match step:
            case p.TimerWaitPlan():
                return await self._wait_timer(step)
            case p.UntilWaitPlan():
                return await self._wait_until(step)
            case p.EventWaitPlan():
                return await self._wait_event(step)
            case _:
                assert_never(step)

    async def _wait_timer(self, step: p.TimerWaitPlan) -> str | None:
        wake = workflow.now() + timedelta(seconds=step.seconds)
        self._path(step.id, step.type, outcome="waiting", detail={"until": wake.isoformat()})
        await self._sleep_until(wake, waiting_for=f"timer until {wake.isoformat()}")
        await self._load_profile()
        return step.next

    async def _wait_until(self, step: p.UntilWaitPlan) -> str | None:
        local = await self._local_time(
            LocalTimeInput(now=workflow.now(), timezone=self._timezone(), until=step.until)
        )
        wake = local.fire_at or workflow.now()
        self._path(
            step.id,
            step.type,
            outcome="waiting",
            detail={"until": wake.isoformat(), "local": local.local},
        )
        await self._sleep_until(wake, waiting_for=f"local time {step.until} ({local.local})")
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
        event = await self._await_event(step, timeout_at)
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

    async def _branch(self, step: p.BranchPlan) -> str | None:
        result = await self._evaluate(
            step.id, "branch", "first", [rule.when for rule in step.rules]
        )
        target = (
            step.rules[result.first_true].goto if result.first_true is not None else step.otherwise
        )
        self._path(
            step.id,
            step.type,
            outcome=target or "end",
            detail={"rule": result.first_true, "reads": result.reads, "error": result.error},
        )
        return target

    async def _split(self, step: p.SplitPlan) -> str | None:
        result = await workflow.execute_local_activity(
            "evaluate",
            EvaluateInput(
                step_id=step.id,
                purpose="split",
                mode="bucket",
                weights=[a.weight for a in step.arms],
                salt=self._salt(step.id),
            ),
            result_type=EvaluateResult,
            start_to_close_timeout=_LOCAL,
        )
        arm = step.arms[result.bucket or 0]
        self._path(step.id, step.type, outcome=arm.name, detail={"arm": arm.name})
        return arm.goto

    async def _score(self, step: p.ScorePlan) -> str | None:
        if self.score_steps:
            return await self._score_step(step)
        names = list(step.features)
        features = self._take_prepared(step.id) or await self._evaluate(
            step.id, "features", "all", [step.features[n] for n in names]
        )
        values = dict(zip(names, features.values, strict=True))
        result: ScoreResult = await workflow.execute_activity(
            "score_customer",
            ScoreInput(
                workflow_id=workflow.info().workflow_id,
                step_id=step.id,
                model=step.model,
                spec=self.plan.models.get(step.model, {}),
                features=values,
            ),
            result_type=ScoreResult,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        self.state.scores[step.model] = result.model_dump(mode="json")
        self._path(
            step.id,
            step.type,
            outcome=f"{result.score:g}",
            detail={
                "model": step.model,
                "features": values,
                "fallback_used": result.fallback_used,
                "error": result.error,
            },
        )
        return step.next

    async def _score_step(self, step: p.ScorePlan) -> str | None:
        """The score step in one activity (SCORE_STEP_ACTIVITY): features (unless a walk
        evaluated them already), the model, and the walk from the next step."""
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
            "score_step",
            request,
            result_type=ScoreStepResult,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        score = result.score
        self.state.scores[step.model] = score.model_dump(mode="json")
        self._path(
            step.id,
            step.type,
            outcome=f"{score.score:g}",
            detail={
                "model": step.model,
                "features": result.features,
                "fallback_used": score.fallback_used,
                "error": score.error,
            },
        )
        if result.decided is not None:
            self.walked, self.walked_from = result.decided, then
        return step.next

    async def _review(self, step: p.ReviewPlan) -> str | None:
        info = workflow.info()
        due = workflow.now() + timedelta(seconds=step.sla_seconds) if step.sla_seconds else None
        task_id: str = await workflow.execute_activity(
            "open_review_task",
            OpenReviewInput(
                workflow_id=info.workflow_id,
                run_id=info.run_id,
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
                path=self.state.path,
                timezone=self._timezone(),
                announce_url=self._ops_url(),
            ),
            result_type=str,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_DB_RETRY,
        )
        self.decision = None
        self.state.open_review = ReviewTaskRef(
            task_id=task_id, queue=step.queue, decisions=list(step.decisions), due_at=due
        )
        self._path(
            step.id, step.type, outcome="opened", detail={"task_id": task_id, "queue": step.queue}
        )
        escalated = False
        while True:
            decided = await self._wait_for(
                lambda: self.decision is not None,
                due,
                waiting_for=f"review in {self.state.open_review.queue}",
            )
            if decided and self.decision is not None:
                decision = self.decision
                self.state.open_review = None
                self.state.review = {
                    "decision": decision.decision,
                    "reviewer": decision.reviewer,
                    "note": decision.note,
                    "at": workflow.now().isoformat(),
                }
                await self._review_activity(
                    "close_review_task", task_id, status="decided", decision=decision
                )
                self._path(
                    step.id,
                    step.type,
                    outcome=decision.decision,
                    detail={
                        "task_id": task_id,
                        "reviewer": decision.reviewer,
                        "note": decision.note,
                    },
                )
                return step.decisions[decision.decision]
            if step.escalate_to and not escalated and step.sla_seconds:
                escalated = True
                due = workflow.now() + timedelta(seconds=step.sla_seconds)
                self.state.open_review = ReviewTaskRef(
                    task_id=task_id,
                    queue=step.escalate_to,
                    decisions=list(step.decisions),
                    due_at=due,
                    escalated=True,
                )
                await self._review_activity(
                    "escalate_review_task",
                    task_id,
                    status="open",
                    queue=step.escalate_to,
                    due_at=due,
                    announce_url=self._ops_url(),
                )
                self._path(
                    step.id,
                    step.type,
                    outcome="escalated",
                    detail={"task_id": task_id, "queue": step.escalate_to},
                )
                continue
            self.state.open_review = None
            await self._review_activity("close_review_task", task_id, status="expired")
            self._path(step.id, step.type, outcome="timed_out", detail={"task_id": task_id})
            return step.on_timeout

    async def _review_activity(
        self,
        name: str,
        task_id: str,
        *,
        status: str,
        decision: ReviewDecision | None = None,
        queue: str | None = None,
        due_at: datetime | None = None,
        announce_url: str | None = None,
    ) -> None:
        change = ReviewTaskChange(
            task_id=task_id, status=status, queue=queue, due_at=due_at, announce_url=announce_url
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

    async def _set(self, step: p.SetPlan) -> str | None:
        targets = list(step.assignments)
        result = await self._evaluate(step.id, "set", "all", [step.assignments[t] for t in targets])
        profile_updates: dict[str, Any] = {}
        self._assign(step, result.values, profile_updates)
        await self._update_profile(profile_updates)
        self._path_set(step, result.values, result.error)
        return step.next

    def _assign(self, step: p.SetPlan, values: list[Any], profile_updates: dict[str, Any]) -> None:
        """A set step's values into `vars` and the profile (its writes into ``profile_updates``)."""
        for target, value in zip(step.assignments, values, strict=True):
            scope, name = target.split(".", 1)
            if scope == "vars":
                self.state.vars[name] = value
            else:
                profile_updates[name] = value
                self.customer.traits[name] = value

    def _path_set(self, step: p.SetPlan, values: list[Any], error: str | None) -> None:
        detail = {"values": dict(zip(step.assignments, values, strict=True)), "error": error}
        self._path(step.id, step.type, outcome="set", detail=detail)

    async def _update_profile(self, traits: dict[str, Any]) -> None:
        if traits:
            await workflow.execute_activity(
                "update_profile",
                UpdateProfileInput(customer_id=self.input.customer_id, traits=traits),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_DB_RETRY,
            )

    async def _call(self, step: p.CallPlan) -> str | None:
        body: dict[str, Any] | None = None
        if step.json_body is not None:
            names = list(step.json_body)
            values = self._take_prepared(step.id) or await self._evaluate(
                step.id, "json", "all", [step.json_body[n] for n in names]
            )
            body = dict(zip(names, values.values, strict=True))
        try:
            result: CallHttpResult = await workflow.execute_activity(
                "call_http",
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
            )
        except ActivityError as error:
            self._path(step.id, step.type, outcome="failed", detail={"reason": _cause(error)})
            if step.on_failure:
                return step.on_failure
            raise _RunEnded("failed", f"{step.id}_failed") from None
        self.state.vars[step.id] = result.body
        self._path(step.id, step.type, outcome=str(result.status_code))
        return step.next

    async def _exit(self, step: p.ExitPlan) -> str | None:
        raise _RunEnded("completed", step.outcome)

    # ------------------------------------------------------------------ batched decisions

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
            "begin_run",
            BeginRunInput(
                record=self._record_input() if given is None else None,
                customer=given,
                holdout_weights=[holdout, 100 - holdout] if holdout > 0 else [],
                holdout_salt=self._salt("holdout") if holdout > 0 else "",
                decide=self._decide_input(start, MAX_WALK) if decidable else None,
            ),
            result_type=BeginRunResult,
            start_to_close_timeout=_LOCAL,
            retry_policy=_DB_RETRY,
        )
        self.customer = result.customer
        if ahead is None:
            self.walked, self.walked_from = result.decided, start
        return result.holdout_bucket == 0

    def _decide_input(self, start: str, limit: int) -> DecideInput:
        return DecideInput(
            start=start,
            steps=self.decidable,
            context=self._context(),
            timezone=self._timezone(),
            salt=self._salt(""),
            limit=limit,
        )

    async def _decide(self, start: str, limit: int) -> DecideResult:
        """Decide the set/branch/split steps from ``start`` on in one local activity."""
        result: DecideResult = await workflow.execute_local_activity(
            "decide_steps",
            self._decide_input(start, limit),
            result_type=DecideResult,
            start_to_close_timeout=_LOCAL,
        )
        return result

    async def _apply(self, walked: DecideResult) -> tuple[str | None, int]:
        """Take a walk's decisions in order, as the one-step handlers would have; keep the
        expressions it evaluated for the step it stopped at. Returns that step and how many
        steps were decided."""
        profile_updates: dict[str, Any] = {}
        for decision in walked.decisions:
            step = self.plan.steps[decision.step_id]
            self.visits[step.id] = self.visits.get(step.id, 0) + 1
            self.state.current_step = step.id
            if isinstance(step, p.SplitPlan):
                arm = step.arms[decision.bucket or 0]
                self._path(step.id, step.type, outcome=arm.name, detail={"arm": arm.name})
            elif isinstance(step, p.BranchPlan):
                target = taken(step, rule=decision.first_true, arm=None)
                detail: dict[str, Any] = {
                    "rule": decision.first_true,
                    "reads": decision.reads,
                    "error": decision.error,
                }
                self._path(step.id, step.type, outcome=target or "end", detail=detail)
            elif isinstance(step, p.SetPlan):
                self._assign(step, decision.values, profile_updates)
                self._path_set(step, decision.values, decision.error)
            else:  # decide_steps decides nothing else; a mismatch is a bug, not a retry
                raise _RunEnded("failed", f"{step.id}_failed")
        await self._update_profile(profile_updates)
        self.prepared = walked.prepared
        return walked.stop, len(walked.decisions)

    def _is_prepared(self, step_id: str) -> bool:
        return self.prepared is not None and self.prepared.step_id == step_id

    def _take_prepared(self, step_id: str) -> StepDecision | None:
        """The expressions a walk evaluated for ``step_id`` (once), else None."""
        if not self._is_prepared(step_id):
            return None
        prepared, self.prepared = self.prepared, None
        return prepared

    # ------------------------------------------------------------------ holdout

    async def _in_holdout(self) -> bool:
        result: EvaluateResult = await workflow.execute_local_activity(
            "evaluate",
            EvaluateInput(
                step_id="holdout",
                purpose="holdout",
                mode="bucket",
                weights=[self.plan.holdout_percent, 100 - self.plan.holdout_percent],
                salt=self._salt("holdout"),
            ),
            result_type=EvaluateResult,
            start_to_close_timeout=_LOCAL,
        )
        return result.bucket == 0

    async def _hold_out(self) -> None:
        """Enter, get nothing, and still record how the run ends (exit events), for comparison."""
        self.state.holdout = True
        self.state.current_step = "holdout"
        self._path("holdout", "holdout", outcome="held_out")
        await self._record()
        assert self.deadline is not None
        await self._sleep_until(self.deadline, waiting_for="holdout: exit events only")

    # ------------------------------------------------------------------ waiting

    async def _sleep_until(self, wake: datetime, *, waiting_for: str) -> None:
        await self._wait_for(lambda: False, wake, waiting_for=waiting_for)

    async def _wait_for(
        self, done: Callable[[], bool], until: datetime | None, *, waiting_for: str
    ) -> bool:
        """Wait until ``done()`` or ``until``, handling exit events meanwhile. True if done."""
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
        """Index of the first exit-checked event called ``name`` waiting in the inbox."""
        return next(
            (i for i, e in enumerate(self.inbox[: self.exit_checked]) if e.name == name), None
        )

    async def _await_event(
        self, step: p.EventWaitPlan, timeout_at: datetime | None
    ) -> EventMessage | None:
        """The first event called ``step.event`` (already queued or arriving) whose `when` holds."""
        name = step.event
        while True:
            while (index := self._queued(name)) is not None:
                event = self.inbox.pop(index)
                self.exit_checked -= 1
                if step.when:
                    check = await self._evaluate(
                        step.id, "wait.when", "first", [step.when], event=event
                    )
                    if check.first_true is None:
                        self._path(
                            step.id,
                            step.type,
                            outcome="ignored",
                            detail={"message_id": event.message_id, "reads": check.reads},
                        )
                        continue
                return event
            arrived = await self._wait_for(
                lambda: self._queued(name) is not None, timeout_at, waiting_for=f"event {name}"
            )
            if not arrived:
                return None

    async def _check_exits(self) -> None:
        """Look at events not yet checked against `exit_on`; end the run if one matches."""
        while self.exit_checked < len(self.inbox):
            event = self.inbox[self.exit_checked]
            self.exit_checked += 1
            for rule in self.plan.exit_on:
                if rule.event != event.name:
                    continue
                if rule.when:
                    check = await self._evaluate(
                        "exit_on", "exit_on.when", "first", [rule.when], event=event
                    )
                    if check.first_true is None:
                        continue
                self.event = event
                self._path(
                    self.state.current_step or "entry",
                    "exit_on",
                    outcome=rule.outcome,
                    detail={"event": event.name, "message_id": event.message_id},
                )
                raise _RunEnded("exited", rule.outcome)

    # ------------------------------------------------------------------ local activities

    async def _evaluate(
        self,
        step_id: str,
        purpose: str,
        mode: str,
        expressions: list[str],
        *,
        event: EventMessage | None = None,
    ) -> EvaluateResult:
        request = EvaluateInput(
            step_id=step_id,
            purpose=purpose,
            mode=mode,
            expressions=expressions,
            context=self._context(event),
            timezone=self._timezone(),
        )
        result: EvaluateResult = await workflow.execute_local_activity(
            "evaluate", request, result_type=EvaluateResult, start_to_close_timeout=_LOCAL
        )
        return result

    async def _local_time(self, request: LocalTimeInput) -> LocalTimeResult:
        result: LocalTimeResult = await workflow.execute_local_activity(
            "local_time", request, result_type=LocalTimeResult, start_to_close_timeout=_LOCAL
        )
        return result

    async def _load_profile(self) -> None:
        self.customer = await workflow.execute_local_activity(
            "load_profile",
            LoadProfileInput(customer_id=self.input.customer_id),
            result_type=CustomerContext,
            start_to_close_timeout=_LOCAL,
            retry_policy=_DB_RETRY,
        )

    async def _record(self) -> None:
        await workflow.execute_local_activity(
            "record_run",
            self._record_input(),
            start_to_close_timeout=_LOCAL,
            retry_policy=_DB_RETRY,
        )

    def _record_input(self) -> RecordRunInput:
        info = workflow.info()
        return RecordRunInput(
            run_id=info.run_id,
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
            path=self.state.path,
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
            run_id=workflow.info().run_id,
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
            update={
                "status": "completed",
                "step": end_step,
                "outcome": outcome,
                "path": list(self.state.path),
            }
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
