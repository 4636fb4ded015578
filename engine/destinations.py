"""Where a reviewer's decision leads, in words: "wait until 09:00 (customer's time), then
SMS grace_offer".

`decision_destinations(plan, review_step)` follows each decision of a review step through
the plan (`engine.successors`), step by step, while the way is certain: a step with one
way out (a send's failure route and a wait's timeout aside, they are the exception) or
whose ways out all lead to the same step. It stops at a step that chooses (a branch whose
rules go different ways, a split, an event wait, another review), at the end of the run,
or after `MAX_PHRASES` phrases. Set steps and decision tables that lead on one way are
bookkeeping and say nothing. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from engine import plan as p
from engine.successors import successors
from rules import EvaluationError, ExpressionError, compile_expression

__all__ = ["MAX_PHRASES", "Destination", "decision_destinations", "describe_seconds"]

MAX_PHRASES = 5
"""Phrases in one description before it says "…"."""

_CHANNELS = {"sms": "SMS", "email": "email", "push": "push"}


@dataclass(frozen=True)
class Destination:
    """What one decision leads to: ``phrases`` in order (``text`` joins them) and whether
    the description stops before the run does (``open_ended``: a choice or the limit)."""

    decision: str
    target: str | None
    phrases: tuple[str, ...]
    open_ended: bool

    @property
    def text(self) -> str:
        text = ", then ".join(self.phrases)
        return f"{text}, …" if self.open_ended and self.phrases else text


def describe_seconds(seconds: int) -> str:
    """A duration as a person says it: "4 days", "3 hours", "1 hour 30 minutes"."""
    units = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
    parts: list[str] = []
    rest = max(seconds, 0)
    for name, size in units:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count} {name}{'' if count == 1 else 's'}")
        if len(parts) == 2:
            break
    return " ".join(parts) or "0 seconds"


def _channels(channels: tuple[str, ...]) -> str:
    names = [_CHANNELS.get(c, c) for c in channels]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _phrase(step: p.PlanStep) -> str | None:
    """What ``step`` does, in a few words; None: nothing a reviewer needs to read."""
    match step:
        case p.SendPlan():
            return f"{_channels(step.channels)} {step.template}"
        case p.TimerWaitPlan() | p.UntilWaitPlan() | p.DateWaitPlan() | p.EventWaitPlan():
            return _wait_phrase(step)
        case p.ScorePlan():
            return f"score with {step.model}"
        case p.ReviewPlan():
            return f"another review in {step.queue}"
        case p.CallPlan():
            return f"call {step.id} ({step.method})"
        case p.ExitPlan():
            return f"end: {step.outcome}"
        case p.BranchPlan():
            return f"choose at {step.id}"
        case p.SplitPlan():
            return f"split at {step.id}"
        case p.SetPlan() | p.DecidePlan():
            return None
        case _:
            assert_never(step)


def _wait_phrase(step: p.TimerWaitPlan | p.UntilWaitPlan | p.DateWaitPlan | p.EventWaitPlan) -> str:
    match step:
        case p.TimerWaitPlan():
            return f"wait {describe_seconds(step.seconds)}"
        case p.UntilWaitPlan():
            return f"wait until {step.until} (customer's time)"
        case p.DateWaitPlan():
            if step.weekday is not None:
                at = f" {step.at}" if step.at else ""
                return f"wait until the next {step.weekday}{at} (customer's time)"
            return f"wait until the date of {step.date}"
        case p.EventWaitPlan():
            within = (
                f" up to {describe_seconds(step.within_seconds)}" if step.within_seconds else ""
            )
            return f"wait{within} for {step.event}"
        case _:
            assert_never(step)


def _onward(step: p.PlanStep) -> tuple[bool, str | None]:
    """(whether the way on from ``step`` is certain, the step it leads to)."""
    ways = successors(step)
    match step:
        case p.SendPlan() | p.CallPlan() | p.DateWaitPlan():
            return True, ways[0].target  # the failure or missing route is the exception
        case p.BranchPlan() | p.DecidePlan() | p.SplitPlan():
            targets = {way.target for way in ways}
            if len(targets) == 1:
                return True, targets.pop()
            return False, None
        case p.EventWaitPlan() | p.ReviewPlan():
            return False, None
        case p.ExitPlan():
            return False, None
        case p.TimerWaitPlan() | p.UntilWaitPlan() | p.ScorePlan() | p.SetPlan():
            return True, ways[0].target
        case _:
            assert_never(step)


def _decided_branch(step: p.BranchPlan, decision: str | None) -> tuple[bool, str | None]:
    """Where a branch goes when its rules read nothing but ``review.decision`` (known once
    a reviewer decided): (whether that is certain, the step). A rule that reads anything
    else makes the way uncertain."""
    if decision is None:
        return False, None
    context = {"review": {"decision": decision}}
    for rule in step.rules:
        try:
            compiled = compile_expression(rule.when)
        except ExpressionError:
            return False, None
        if compiled.names - {"review"} or any(
            path != ("review", "decision") for path in compiled.attribute_paths
        ):
            return False, None
        if "review" in compiled.whole_names:
            return False, None
        try:
            taken = compiled.evaluate(context)
        except EvaluationError:
            return False, None
        if taken:
            return True, rule.goto
    return True, step.otherwise


def describe_from(
    plan: p.Plan, start: str | None, decision: str | None = None
) -> tuple[tuple[str, ...], bool]:
    """The phrases of the certain way from ``start`` on, and whether it is open-ended.
    ``decision``: the review decision taken, so a branch on it alone is followed."""
    phrases: list[str] = []
    seen: set[str] = set()
    step_id = start
    while True:
        if step_id is None:
            if not phrases or not phrases[-1].startswith("end"):
                phrases.append("end of the journey")
            return tuple(phrases), False
        step = plan.steps.get(step_id)
        if step is None or step_id in seen:
            return tuple(phrases), True
        seen.add(step_id)
        if isinstance(step, p.BranchPlan):
            certain, onward = _decided_branch(step, decision)
            if certain:
                step_id = onward
                continue
        phrase = _phrase(step)
        if phrase is not None:
            if len(phrases) == MAX_PHRASES:
                return tuple(phrases), True
            phrases.append(phrase)
        certain, step_id = _onward(step)
        if not certain:
            return tuple(phrases), not isinstance(step, p.ExitPlan)


def decision_destinations(plan: p.Plan, review_step: str) -> dict[str, Destination]:
    """Each decision of the review step ``review_step`` with where it leads; empty when the
    plan has no such review step."""
    step = plan.steps.get(review_step)
    if not isinstance(step, p.ReviewPlan):
        return {}
    found: dict[str, Destination] = {}
    for way in successors(step):
        if way.kind != "decision" or way.name is None:
            continue
        phrases, open_ended = describe_from(plan, way.target, way.name)
        found[way.name] = Destination(way.name, way.target, phrases, open_ended)
    return found
