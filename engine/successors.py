"""Where a step leads: the one place that knows it.

`successors(step)` lists every way out of a compiled step, in the step's own order, with
what takes it (a branch rule, a split arm, a review decision, a timeout, a failure) and
the step it leads to (None: the run ends there). The validator, the graph, the compiler's
checks and the decision code all ask here, so a new step type or a new way out is added
once. `taken` is the successor a decided branch, split or set step follows. Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, assert_never

from engine import plan as p

__all__ = ["Successor", "SuccessorKind", "successors", "taken"]

SuccessorKind = Literal[
    "next", "rule", "else", "arm", "decision", "received", "timeout", "failure", "missing"
]
"""What takes a way out: ``next`` (the step is done), ``rule`` (a branch rule held),
``else`` (no rule held; both also for a decision table), ``arm`` (a split arm),
``decision`` (a reviewer's decision),
``received`` (the awaited event came), ``timeout`` (an event or a review did not come in
time), ``failure`` (a send or call failed for good), ``missing`` (a date wait's date was
missing or past, and the step declares ``on_missing``)."""


@dataclass(frozen=True)
class Successor:
    """One way out of a step: ``kind`` takes it to ``target`` (None: the run ends).

    ``index`` is the rule's or arm's position; ``name`` the arm's name or the decision."""

    kind: SuccessorKind
    target: str | None
    index: int | None = None
    name: str | None = None


def successors(step: p.PlanStep) -> list[Successor]:
    """Every way out of ``step``, in the step's own order."""
    match step:
        case p.BranchPlan() | p.DecidePlan():
            written: Sequence[p.BranchRulePlan | p.DecideRulePlan] = step.rules
            rules = [Successor("rule", r.goto, index=i) for i, r in enumerate(written)]
            return [*rules, Successor("else", step.otherwise)]
        case p.SplitPlan():
            return [
                Successor("arm", arm.goto, index=i, name=arm.name)
                for i, arm in enumerate(step.arms)
            ]
        case p.ReviewPlan():
            return _review(step)
        case p.EventWaitPlan():
            out = [Successor("received", step.next)]
            if step.within_seconds is not None:
                out.append(Successor("timeout", step.on_timeout))
            return out
        case p.SendPlan() | p.CallPlan():
            out = [Successor("next", step.next)]
            if step.on_failure is not None:
                out.append(Successor("failure", step.on_failure))
            return out
        case p.DateWaitPlan():
            out = [Successor("next", step.next)]
            if step.on_missing is not None:
                out.append(Successor("missing", step.on_missing))
            return out
        case p.TimerWaitPlan() | p.UntilWaitPlan() | p.ScorePlan() | p.SetPlan():
            return [Successor("next", step.next)]
        case p.ExitPlan():
            return []
        case _:
            assert_never(step)


def _review(step: p.ReviewPlan) -> list[Successor]:
    out = [Successor("decision", target, name=name) for name, target in step.decisions.items()]
    if step.sla_seconds is not None:
        out.append(Successor("timeout", step.on_timeout))
    return out


def taken(
    step: p.BranchPlan | p.SplitPlan | p.SetPlan | p.DecidePlan,
    *,
    rule: int | None,
    arm: int | None,
) -> str | None:
    """The step a decided pure step leads to: the branch ``rule`` (or the table's first
    matching rule) that held (None: its ``else``), the split ``arm``, or a set step's next."""
    ways = successors(step)
    match step:
        case p.BranchPlan() | p.DecidePlan():
            return ways[rule].target if rule is not None else ways[-1].target
        case p.SplitPlan():
            return ways[arm or 0].target
        case p.SetPlan():
            return ways[0].target
        case _:
            assert_never(step)
