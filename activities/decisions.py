"""Decision activities (run as local activities): expressions, stable buckets, local times.

They are pure computations, but they run as activities so that the history records each
decision with what it read and what it chose, which is what an auditor replays.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from temporalio import activity

from engine.durations import parse_time_of_day
from engine.payloads import (
    CustomerContext,
    DecideInput,
    DecideResult,
    EvaluateInput,
    EvaluateResult,
    EventMessage,
    LocalTimeInput,
    LocalTimeResult,
    StepDecision,
    run_context,
)
from engine.plan import (
    BranchPlan,
    CallPlan,
    Plan,
    PlanStep,
    ScorePlan,
    SetPlan,
    SplitPlan,
    bucket_salt,
    decidable,
    walks_from,
)
from engine.successors import taken
from rules import EvaluationError, Expression, ExpressionError, compile_expression

__all__ = [
    "bucket_of",
    "decide",
    "decide_at_entry",
    "decide_steps",
    "evaluate",
    "evaluate_expressions",
    "local_time",
    "next_local_time",
    "quiet_hours_end",
]


@functools.lru_cache(maxsize=4096)
def _compiled(source: str) -> Expression:
    # Plans are validated before deploy, so this parses each expression once per process.
    return compile_expression(source)


def _read(context: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = context
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def bucket_of(salt: str, weights: list[float]) -> int:
    """The arm (index into ``weights``, percentages) a salt falls in: stable, uniform."""
    digest = hashlib.sha256(salt.encode("utf-8")).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(weights)
    total = 0.0
    for index, weight in enumerate(weights):
        total += weight
        if point < total:
            return index
    return len(weights) - 1


def evaluate_expressions(
    expressions: list[str], mode: str, context: dict[str, Any], timezone: str
) -> EvaluateResult:
    """Evaluate ``expressions`` (``mode`` ``first``: up to the first truthy one)."""
    values: list[Any] = []
    reads: dict[str, Any] = {}
    errors: list[str] = []
    first_true: int | None = None
    for index, source in enumerate(expressions):
        try:
            expression = _compiled(source)
            for path in expression.attribute_paths:
                reads[".".join(path)] = _read(context, path)
            value = expression.evaluate(context, timezone=timezone)
        except (EvaluationError, ExpressionError) as error:
            errors.append(str(getattr(error, "message", error)))
            value = None
        values.append(value)
        if mode == "first" and value and first_true is None:
            first_true = index
            break
    return EvaluateResult(
        values=values, first_true=first_true, reads=reads, error="; ".join(errors) or None
    )


@activity.defn(name="evaluate")
async def evaluate(request: EvaluateInput) -> EvaluateResult:
    """Evaluate a decision's expressions; an expression that fails counts as false/None."""
    if request.mode == "bucket":
        return EvaluateResult(bucket=bucket_of(request.salt, request.weights))
    return evaluate_expressions(
        request.expressions, request.mode, request.context, request.timezone
    )


def _decision(step_id: str, kind: str, result: EvaluateResult) -> StepDecision:
    return StepDecision(
        step_id=step_id,
        type=kind,
        values=result.values,
        first_true=result.first_true,
        reads=result.reads,
        error=result.error,
    )


def _prepare(step: PlanStep, context: dict[str, Any], timezone: str) -> StepDecision | None:
    """The expressions of the step a walk stops at: score features, a call's JSON body."""
    if isinstance(step, ScorePlan):
        expressions = list(step.features.values())
    elif isinstance(step, CallPlan) and step.json_body is not None:
        expressions = list(step.json_body.values())
    else:
        return None
    return _decision(
        step.id, step.type, evaluate_expressions(expressions, "all", context, timezone)
    )


def decide(request: DecideInput) -> DecideResult:
    """Walk the pure steps from ``request.start``: each set, branch and split is decided
    against the context as the steps before it left it (a set's values are visible to the
    next step), until a step that is not pure, or ``request.limit`` steps."""
    context = dict(request.context)
    context["vars"] = dict(context.get("vars") or {})
    context["profile"] = dict(context.get("profile") or {})
    journey = context["journey"] = dict(context.get("journey") or {})
    result = DecideResult()
    step_id: str | None = request.start
    for _ in range(request.limit):
        step = request.steps.get(step_id) if step_id is not None else None
        if step is None or not isinstance(step, BranchPlan | SplitPlan | SetPlan):
            break
        journey["step"] = step.id
        if isinstance(step, SplitPlan):
            bucket = bucket_of(request.salt + step.id, [arm.weight for arm in step.arms])
            decision = StepDecision(step_id=step.id, type=step.type, bucket=bucket)
        elif isinstance(step, BranchPlan):
            rules = [rule.when for rule in step.rules]
            decision = _decision(
                step.id, step.type, evaluate_expressions(rules, "first", context, request.timezone)
            )
        else:
            targets = list(step.assignments)
            evaluated = evaluate_expressions(
                [step.assignments[t] for t in targets], "all", context, request.timezone
            )
            for target, value in zip(targets, evaluated.values, strict=True):
                scope, name = target.split(".", 1)
                context["vars" if scope == "vars" else "profile"][name] = value
            decision = _decision(step.id, step.type, evaluated)
        result.decisions.append(decision)
        step_id = taken(step, rule=decision.first_true, arm=decision.bucket)
    result.stop = step_id
    stop = request.steps.get(step_id) if step_id is not None else None
    if stop is not None and not isinstance(stop, BranchPlan | SplitPlan | SetPlan):
        journey["step"] = stop.id
        result.prepared = _prepare(stop, context, request.timezone)
    return result


def decide_at_entry(
    plan: Plan, customer: CustomerContext, trigger: EventMessage, *, now: datetime
) -> DecideResult | None:
    """The run's first walk, decided by its starter (the event router, with the profile it
    just read) before the run exists, as the run's `begin_run` would: the set/branch/split
    steps from the plan's first step, against the context the run would give them. The run
    takes it from its input (`JourneyRunInput.decided`), so that walk costs the run no
    local activity, and its history keeps it with what each decision read.

    None when the plan does not start with such a step, or when the walk read
    `journey.run_id`, which only the run knows: the run then walks itself."""
    start = plan.steps.get(plan.start or "")
    if start is None or not walks_from(start):
        return None
    steps = {sid: s for sid, s in plan.steps.items() if decidable(s)}
    walked = decide(
        DecideInput(
            start=start.id,
            steps=steps,
            context=run_context(plan, customer, trigger, now=now, run_id=None, step=None),
            timezone=customer.timezone or plan.settings.timezone,
            salt=bucket_salt(plan, customer.id),
        )
    )
    decisions = [*walked.decisions, *([walked.prepared] if walked.prepared else [])]
    if any("journey.run_id" in decision.reads for decision in decisions):
        return None
    return walked


@activity.defn(name="decide_steps")
async def decide_steps(request: DecideInput) -> DecideResult:
    """`decide` as a local activity: the history records each decision of the walk."""
    return decide(request)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        return ZoneInfo("UTC")


def next_local_time(now: datetime, zone: ZoneInfo, hhmm: str) -> datetime:
    """The next instant (after ``now``) when the local clock in ``zone`` shows ``hhmm``.

    Across a DST change the wall-clock time is kept (09:00 stays 09:00 local); a time that
    does not exist that day (inside a spring-forward gap) is shifted by the gap, as clocks
    are: 02:30 on the night of 02:00 -> 03:00 fires at 03:30.
    """
    hour, minute = parse_time_of_day(hhmm)
    local_now = now.astimezone(zone)
    for days in range(0, 3):
        day = (local_now + timedelta(days=days)).date()
        candidate = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
        instant = candidate.astimezone(UTC)
        if instant > now:
            return instant
    raise AssertionError("unreachable: a local time recurs within two days")


def quiet_hours_end(now: datetime, zone: ZoneInfo, start: str, end: str) -> datetime | None:
    """When the quiet hours around ``now`` end, or None when ``now`` is not in them."""
    start_h, start_m = parse_time_of_day(start)
    end_h, end_m = parse_time_of_day(end)
    local = now.astimezone(zone)
    minutes = local.hour * 60 + local.minute
    begin, finish = start_h * 60 + start_m, end_h * 60 + end_m
    quiet = begin <= minutes < finish if begin < finish else minutes >= begin or minutes < finish
    if not quiet:
        return None
    return next_local_time(now, zone, end)


@activity.defn(name="local_time")
async def local_time(request: LocalTimeInput) -> LocalTimeResult:
    """The next local ``until`` time, or the end of the quiet hours now in force."""
    zone = _zone(request.timezone)
    now = request.now if request.now.tzinfo else request.now.replace(tzinfo=UTC)
    if request.until:
        fire = next_local_time(now, zone, request.until)
        return LocalTimeResult(
            fire_at=fire,
            local=fire.astimezone(zone).isoformat(),
            reason=f"next {request.until} in {zone.key}",
        )
    if request.quiet_start and request.quiet_end:
        fire_at = quiet_hours_end(now, zone, request.quiet_start, request.quiet_end)
        if fire_at is None:
            return LocalTimeResult()
        return LocalTimeResult(
            fire_at=fire_at,
            local=fire_at.astimezone(zone).isoformat(),
            reason=f"quiet hours {request.quiet_start}-{request.quiet_end} in {zone.key}",
        )
    return LocalTimeResult()
