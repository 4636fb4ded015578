"""Decision activities (run as local activities): a walk over pure steps, a wait's or an
exit's condition, a local time, a wait on a date.

They are pure computations, but they run as activities so that the history records each
decision with what it read and what it chose, which is what an auditor replays. Only the
`@activity.defn` wrappers live here: the deciding itself is `engine.decisions` and
`engine.localtime`, which the service uses too.
"""

from __future__ import annotations

from temporalio import activity

from engine.decisions import decide, decide_date_wait, evaluate_expressions
from engine.localtime import next_local_time, zone_named
from engine.payloads import (
    ActivityName,
    DateWaitInput,
    DateWaitResult,
    DecideInput,
    DecideResult,
    EvaluateInput,
    EvaluateResult,
    LocalTimeInput,
    LocalTimeResult,
)
from engine.timestamps import as_utc

__all__ = ["date_wait", "decide_steps", "evaluate", "local_time"]


@activity.defn(name=ActivityName.EVALUATE)
async def evaluate(request: EvaluateInput) -> EvaluateResult:
    """Evaluate a condition up to its first truthy expression; one that fails counts as
    false (its error recorded)."""
    return evaluate_expressions(request.expressions, "first", request.context, request.timezone)


@activity.defn(name=ActivityName.DECIDE_STEPS)
async def decide_steps(request: DecideInput) -> DecideResult:
    """`decide` as a local activity: the history records each decision of the walk."""
    return decide(request)


@activity.defn(name=ActivityName.LOCAL_TIME)
async def local_time(request: LocalTimeInput) -> LocalTimeResult:
    """The next local ``until`` time in the customer's zone."""
    zone = zone_named(request.timezone)
    fire = next_local_time(as_utc(request.now), zone, request.until)
    return LocalTimeResult(
        fire_at=fire,
        local=fire.astimezone(zone).isoformat(),
        reason=f"next {request.until} in {zone.key}",
    )


@activity.defn(name=ActivityName.DATE_WAIT)
async def date_wait(request: DateWaitInput) -> DateWaitResult:
    """When a wait on a date or a weekday fires; the history records the date it read."""
    return decide_date_wait(request.model_copy(update={"now": as_utc(request.now)}))
