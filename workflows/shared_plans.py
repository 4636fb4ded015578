"""One parsed plan per version for every run a worker holds.

Each run's start event carries its plan, and the data converter parses a new `Plan` from
it for every run the worker caches (about 10 KB for a one-step journey, 34 KB for the
example catalogue's payment_recovery, measured with tracemalloc): 10,000 cached runs of one
version held 10,000 equal copies. `shared` hands every run of a version the first copy
instead, and what the interpreter derives from it (`PlanFacts`).

Deterministic: a run gets an equal plan whichever copy it is (a plan is a frozen model,
and a copy is only shared after comparing equal: a version is the hash of its content,
but a test may build two plans under one name), and the interpreter never changes a plan.
The workflow module imports this one passed through the sandbox, so sandboxed runs share
the registry too (the sandbox re-imports the workflow module for every run).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock

from engine import plan as p

__all__ = ["MAX_PLANS", "PlanFacts", "shared"]

MAX_PLANS = 256
"""Versions kept at most (least recently started dropped first: a run keeps its own)."""


@dataclass(frozen=True, slots=True)
class PlanFacts:
    """A plan and what the interpreter reads from it at every step."""

    plan: p.Plan
    awaited: frozenset[str]
    """Events some wait step takes: any other event is handled by `exit_on` or ignored."""
    decidable: dict[str, p.PlanStep]
    """The steps decided in walks (set, branch, split), by id (read, never changed)."""
    walk_starts: frozenset[str]
    """The steps a walk (decide_steps) starts from."""

    @classmethod
    def of(cls, plan: p.Plan) -> PlanFacts:
        decidable = {sid: s for sid, s in plan.steps.items() if p.decidable(s)}
        return cls(
            plan=plan,
            awaited=frozenset(
                s.event for s in plan.steps.values() if isinstance(s, p.EventWaitPlan)
            ),
            decidable=decidable,
            walk_starts=frozenset(sid for sid, s in decidable.items() if p.walks_from(s)),
        )


_plans: OrderedDict[tuple[str, str], PlanFacts] = OrderedDict()
_lock = Lock()  # activations of different runs may run on different threads


def shared(plan: p.Plan) -> PlanFacts:
    """The facts of the registered plan equal to ``plan`` (``plan``'s own when none is)."""
    key = (plan.journey_id, plan.version)
    with _lock:
        known = _plans.get(key)
        if known is not None and (known.plan is plan or known.plan == plan):
            _plans.move_to_end(key)
            return known
    facts = PlanFacts.of(plan)
    with _lock:
        _plans[key] = facts
        _plans.move_to_end(key)
        while len(_plans) > MAX_PLANS:
            _plans.popitem(last=False)
    return facts
