"""Deciding steps: expressions evaluated with what they read, stable buckets, and the walk
over consecutive set/branch/split/decide steps.

Pure domain code, below both the service (the event router decides a run's first walk
with `decide_at_entry` before starting it) and the activities (`decide_steps`,
`begin_run` and `score_step` wrap `decide`, so the history records each decision with
what it read). Where a decided step leads is asked of `engine.successors`, never worked
out here. Must not live here: Temporal, the database, any I/O.
"""

from __future__ import annotations

import ast
import hashlib
from datetime import date, datetime
from typing import Any, Literal, assert_never

from engine import plan as p
from engine.localtime import date_wait_fire_at, next_weekday, zone_named
from engine.payloads import (
    CustomerContext,
    DateWaitInput,
    DateWaitResult,
    DecideInput,
    DecideResult,
    EvaluateResult,
    EventMessage,
    StepDecision,
    run_context,
)
from engine.successors import taken
from engine.unary import UnaryTestError, matches, parse_test
from rules import EvaluationError, ExpressionError
from rules.cache import cached_expression

__all__ = [
    "bucket_of",
    "decide",
    "decide_at_entry",
    "decide_date_wait",
    "decide_table",
    "defaulted_by",
    "evaluate_expressions",
]

Mode = Literal["first", "all"]


def _read(context: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = context
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def bucket_of(salt: str, weights: list[float]) -> int:
    """The arm (index into ``weights``, percentages) a salt falls in: stable, uniform.

    The arms are contiguous ranges of one point per salt, in the order given: moving
    weight between two arms moves only the customers at their boundary (50/50 to 60/40
    moves a tenth), so keep the declared order when editing weights."""
    digest = hashlib.sha256(salt.encode("utf-8")).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(weights)
    total = 0.0
    for index, weight in enumerate(weights):
        total += weight
        if point < total:
            return index
    return len(weights) - 1


def evaluate_expressions(
    expressions: list[str], mode: Mode, context: dict[str, Any], timezone: str
) -> EvaluateResult:
    """Evaluate ``expressions`` (``mode`` ``first``: up to the first truthy one). An
    expression that fails counts as None (false), its error kept in ``error``."""
    values: list[Any] = []
    reads: dict[str, Any] = {}
    errors: list[str] = []
    first_true: int | None = None
    for index, source in enumerate(expressions):
        try:
            expression = cached_expression(source)
            for path in expression.attribute_paths:
                reads[".".join(path)] = _read(context, path)
            value = expression.evaluate(context, timezone=timezone)
        except (EvaluationError, ExpressionError) as error:
            errors.append(str(getattr(error, "message", error)))
            value = None
        values.append(value)
        if mode == "first" and value:
            first_true = index
            break
    return EvaluateResult(
        values=values, first_true=first_true, reads=reads, error="; ".join(errors) or None
    )


def _defaulting_argument(source: str) -> str | None:
    """The first argument of ``source`` when its top-level call is ``coalesce(x, ...)``
    with a fallback (``x``'s source text); None for any other expression."""
    try:
        tree = ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        return None
    if (
        isinstance(tree, ast.Call)
        and isinstance(tree.func, ast.Name)
        and tree.func.id == "coalesce"
        and len(tree.args) >= 2
        and not tree.keywords
    ):
        return ast.unparse(tree.args[0])
    return None


def defaulted_by(
    names: list[str], sources: list[str], context: dict[str, Any], timezone: str
) -> list[str]:
    """The names whose expression is ``coalesce(x, default, ...)`` and whose ``x`` gave
    None against ``context``: their value is the expression's default, not a value the
    run read (a score feature `coalesce(profile.tenure_months, 0)` for a customer with no
    tenure is "not known", not a real 0). An ``x`` that fails counts as None."""
    found: list[str] = []
    for name, source in zip(names, sources, strict=True):
        first = _defaulting_argument(source)
        if first is None:
            continue
        try:
            value = cached_expression(first).evaluate(context, timezone=timezone)
        except (EvaluationError, ExpressionError):
            value = None
        if value is None:
            found.append(name)
    return found


def _decision(step: p.PlanStep, result: EvaluateResult) -> StepDecision:
    return StepDecision(
        step_id=step.id,
        type=step.type,
        values=result.values,
        first_true=result.first_true,
        reads=result.reads,
        error=result.error,
    )


def _walk_context(given: dict[str, Any]) -> dict[str, Any]:
    """A copy of the run's context that a walk's set steps may write into."""
    context = dict(given)
    context["vars"] = dict(context.get("vars") or {})
    context["profile"] = dict(context.get("profile") or {})
    context["journey"] = dict(context.get("journey") or {})
    return context


def _assign(context: dict[str, Any], step: p.SetPlan, values: list[Any]) -> None:
    """A set step's values into the walk's context, so the steps after it read them."""
    for target, value in zip(step.assignments, values, strict=True):
        scope, name = target.split(".", 1)
        context["vars" if scope == "vars" else "profile"][name] = value


Decided = tuple[StepDecision, str | None]


def _decide_one(step: p.PlanStep, context: dict[str, Any], request: DecideInput) -> Decided | None:
    """Decide one pure step and say where it leads; None: the walk stops at ``step``."""
    match step:
        case p.SplitPlan():
            bucket = bucket_of(p.split_salt(request.salt, step), [a.weight for a in step.arms])
            split = StepDecision(step_id=step.id, type=step.type, bucket=bucket)
            return split, taken(step, rule=None, arm=bucket)
        case p.BranchPlan():
            rules = [rule.when for rule in step.rules]
            branch = _decision(
                step, evaluate_expressions(rules, "first", context, request.timezone)
            )
            return branch, taken(step, rule=branch.first_true, arm=None)
        case p.SetPlan():
            sources = list(step.assignments.values())
            evaluated = evaluate_expressions(sources, "all", context, request.timezone)
            _assign(context, step, evaluated.values)
            return _decision(step, evaluated), taken(step, rule=None, arm=None)
        case p.DecidePlan():
            table = decide_table(step, context, request.timezone)
            context["vars"].update(table.outputs or {})
            return table, taken(step, rule=table.first_true, arm=None)
        case (
            p.SendPlan()
            | p.TimerWaitPlan()
            | p.UntilWaitPlan()
            | p.DateWaitPlan()
            | p.EventWaitPlan()
            | p.ScorePlan()
            | p.ReviewPlan()
            | p.CallPlan()
            | p.ExitPlan()
        ):
            return None
        case _:
            assert_never(step)


def _matching(step: p.DecidePlan, inputs: dict[str, Any]) -> tuple[list[int], list[str]]:
    """The rules whose every cell holds for ``inputs``; a cell that does not parse (the
    validator rejects those) holds for nothing, its error kept."""
    held: list[int] = []
    errors: list[str] = []
    for index, rule in enumerate(step.rules):
        try:
            if all(matches(parse_test(c), inputs.get(n)) for n, c in rule.when.items()):
                held.append(index)
        except UnaryTestError as error:
            errors.append(f"rule {index + 1}: {error}")
    return held, errors


def decide_table(step: p.DecidePlan, context: dict[str, Any], timezone: str) -> StepDecision:
    """A decision table decided: its inputs evaluated once, the rules taken (``matched``:
    the first that holds under ``first`` and ``unique``, every one under ``collect``) and
    their outputs (``collect``: a list per output named in the table, empty when no rule
    held). Under ``unique`` the validator rules out overlaps; should two rules still hold,
    the first is taken and the error recorded."""
    evaluated = evaluate_expressions(list(step.inputs.values()), "all", context, timezone)
    inputs = dict(zip(step.inputs, evaluated.values, strict=True))
    held, errors = _matching(step, inputs)
    if step.hit == "unique" and len(held) > 1:
        errors.append(f"rules {', '.join(str(i + 1) for i in held)} all hold under hit: unique")
    chosen = held if step.hit == "collect" else held[:1]
    sources = [(name, source) for i in chosen for name, source in step.rules[i].set.items()]
    values = evaluate_expressions([s for _, s in sources], "all", context, timezone)
    outputs: dict[str, Any] = {}
    if step.hit == "collect":
        outputs = {name: [] for rule in step.rules for name in rule.set}
        for (name, _), value in zip(sources, values.values, strict=True):
            outputs[name].append(value)
    else:
        outputs = {name: value for (name, _), value in zip(sources, values.values, strict=True)}
    errors += [e for e in (evaluated.error, values.error) if e]
    return StepDecision(
        step_id=step.id,
        type=step.type,
        values=evaluated.values,
        first_true=held[0] if held else None,
        reads={**evaluated.reads, **values.reads},
        error="; ".join(errors) or None,
        matched=chosen,
        outputs=outputs,
    )


def _prepare(step: p.PlanStep, context: dict[str, Any], timezone: str) -> StepDecision | None:
    """The expressions of the step a walk stops at: score features, a call's JSON body."""
    match step:
        case p.ScorePlan():
            expressions = list(step.features.values())
            decision = _decision(step, evaluate_expressions(expressions, "all", context, timezone))
            decision.defaulted = defaulted_by(list(step.features), expressions, context, timezone)
            return decision
        case p.CallPlan() if step.json_body is not None:
            expressions = list(step.json_body.values())
        case _:
            return None
    return _decision(step, evaluate_expressions(expressions, "all", context, timezone))


def decide(request: DecideInput) -> DecideResult:
    """Walk the pure steps from ``request.start``: each set, branch and split is decided
    against the context as the steps before it left it (a set's values are visible to the
    next step), until a step that is not pure, or ``request.limit`` steps."""
    context = _walk_context(request.context)
    result = DecideResult()
    step_id: str | None = request.start
    for _ in range(request.limit):
        step = request.steps.get(step_id) if step_id is not None else None
        if step is None:
            break
        context["journey"]["step"] = step.id
        decided = _decide_one(step, context, request)
        if decided is None:
            break
        result.decisions.append(decided[0])
        step_id = decided[1]
    result.stop = step_id
    stop = request.steps.get(step_id) if step_id is not None else None
    if stop is not None:
        context["journey"]["step"] = stop.id
        result.prepared = _prepare(stop, context, request.timezone)
    return result


def decide_at_entry(
    plan: p.Plan, customer: CustomerContext, trigger: EventMessage, *, now: datetime
) -> DecideResult | None:
    """The run's first walk, decided by its starter (the event router, with the profile it
    just read) before the run exists, as the run's `begin_run` would: the set/branch/split
    steps from the plan's first step, against the context the run would give them. The run
    takes it from its input (`JourneyRunInput.decided`), so that walk costs the run no
    local activity, and its history keeps it with what each decision read.

    None when the plan does not start with such a step, or when the walk read
    `journey.run_id`, which only the run knows: the run then walks itself."""
    start = plan.steps.get(plan.start or "")
    if start is None or not p.walks_from(start):
        return None
    walked = decide(
        DecideInput(
            start=start.id,
            steps={sid: s for sid, s in plan.steps.items() if p.decidable(s)},
            context=run_context(plan, customer, trigger, now=now, run_id=None, step=None),
            timezone=customer.timezone or plan.settings.timezone,
            salt=p.bucket_salt(plan, customer.id),
        )
    )
    decisions = [*walked.decisions, *([walked.prepared] if walked.prepared else [])]
    if any("journey.run_id" in decision.reads for decision in decisions):
        return None
    return walked


def decide_date_wait(request: DateWaitInput) -> DateWaitResult:
    """When a wait on a date or a weekday fires: the date expression evaluated against the
    run's context and moved to the customer's local time (`engine.localtime`). An
    expression that fails reads as a missing date, its error kept."""
    zone = zone_named(request.timezone)
    now = request.now
    if request.weekday is not None:
        at = request.at or "00:00"
        fire = next_weekday(now, zone, request.weekday, at)
        return DateWaitResult(
            outcome="waiting",
            fire_at=fire,
            local=fire.astimezone(zone).isoformat(),
            reason=f"next {request.weekday} {at} in {zone.key}",
        )
    evaluated = evaluate_expressions(
        [request.date or "None"], "all", request.context, request.timezone
    )
    value = evaluated.values[0]
    fire_at, outcome = date_wait_fire_at(
        now, zone, value, offset_seconds=request.offset_seconds, at=request.at
    )
    reasons = {
        "waiting": f"{request.date} in {zone.key}",
        "missing": f"{request.date} gave no date",
        "past": f"{request.date} is already past",
    }
    return DateWaitResult(
        outcome=outcome,
        fire_at=fire_at,
        local=fire_at.astimezone(zone).isoformat() if fire_at else None,
        value=value.isoformat() if isinstance(value, date) else value,
        reads=evaluated.reads,
        error=evaluated.error,
        reason=reasons[outcome],
    )
