"""The compiler: a validated journey to its immutable `Plan`, versioned by content hash.

Deterministic: the same document always compiles to the same plans and versions; any
change of meaning (a step, an expression, a template a send uses, a setting) gives a new
version. Pure: no I/O beyond what validation already read, no Temporal.
`compile_step` compiles one step; the validator uses it (with `engine.successors`) to
learn where a step leads, so it must not raise on a step that passed structural checks.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, assert_never

from engine import plan as p
from engine import spec
from engine.durations import parse_duration, parse_offset
from engine.personal import kind_of

if TYPE_CHECKING:  # the validator compiles steps through here: no import cycle at run time
    from engine.validator import CheckedDocument

__all__ = [
    "DEFAULT_MAX_DURATION",
    "compile_checked",
    "compile_journey",
    "compile_step",
    "plan_version",
]

DEFAULT_MAX_DURATION = "30d"


def plan_version(data: dict[str, Any]) -> str:
    """Short hash of a plan's canonical JSON (without its own version field)."""
    body = {k: v for k, v in data.items() if k != "version"}
    # A plan without `correlate:` keeps the version it had before the field existed.
    if "exit_on" in body:
        body["exit_on"] = [_without_unset_correlate(e) for e in body["exit_on"]]
    if "steps" in body:
        body["steps"] = {k: _without_unset_correlate(v) for k, v in body["steps"].items()}
    # Nor without `max_steps:`.
    # Nor without `public:` texts, nor without `goals:`.
    for optional in ("public", "goals"):
        if not body.get(optional, True):
            del body[optional]
    settings = body.get("settings")
    if isinstance(settings, dict) and settings.get("max_steps", 0) is None:
        body["settings"] = {k: v for k, v in settings.items() if k != "max_steps"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def _without_unset_correlate(part: Any) -> Any:
    if isinstance(part, dict) and "correlate" in part and part["correlate"] is None:
        return {k: v for k, v in part.items() if k != "correlate"}
    return part


def _settings(document: spec.Document, journey: spec.Journey) -> p.PlanSettings:
    merged: dict[str, Any] = {}
    for layer in (document.settings, journey.settings):
        if layer is None:
            continue
        for name in layer.model_fields_set:
            merged[name] = getattr(layer, name)
    quiet = merged.get("quiet_hours")
    cap = merged.get("frequency_cap")
    return p.PlanSettings(
        timezone=merged.get("timezone") or "UTC",
        quiet_hours=p.QuietHoursPlan(start=quiet.start, end=quiet.end) if quiet else None,
        frequency_cap=p.FrequencyCapPlan(max=cap.max, per_seconds=parse_duration(cap.per))
        if cap
        else None,
        max_duration_seconds=parse_duration(merged.get("max_duration") or DEFAULT_MAX_DURATION),
        max_steps=merged.get("max_steps"),
    )


_DEFAULT_TTL = {"email": 86400}


def _channel(name: str, value: str | spec.ChannelSpec) -> p.ChannelPlan:
    """A channel's URL (as written: only ``${VAR}`` references or credential-free) and retries."""
    if isinstance(value, str):
        return p.ChannelPlan(url=value, ttl_seconds=_DEFAULT_TTL.get(name, 3600))
    retry = value.retry
    return p.ChannelPlan(
        url=value.url,
        retry_initial_seconds=parse_duration(retry.initial),
        retry_max_seconds=parse_duration(retry.maximum_interval),
        ttl_seconds=parse_duration(retry.ttl) if retry.ttl else _DEFAULT_TTL.get(name, 3600),
    )


def _entry(entry: spec.Entry) -> p.PlanEntry:
    if entry.reentry in ("never", "always"):
        return p.PlanEntry(event=entry.event, when=entry.when, reentry=entry.reentry, key=entry.key)
    return p.PlanEntry(
        event=entry.event,
        when=entry.when,
        reentry="after",
        reentry_seconds=parse_duration(entry.reentry),
        key=entry.key,
    )


def compile_step(step: spec.Step, following: str | None, document: spec.Document) -> p.PlanStep:
    """One step as a run takes it, every way out named (``following`` is the step after it
    in the journey: where ``next`` defaults to; None: the run ends there).

    The validator compiles each step through here too and asks `engine.successors` where it
    leads, so the checks and the runs cannot disagree about a step's ways out.
    """
    nxt = step.next or following
    match step:
        case spec.SendStep():
            return _send(step, nxt, document)
        case spec.WaitStep():
            return _wait(step, nxt)
        case spec.BranchStep():
            return p.BranchPlan(
                id=step.id,
                rules=tuple(p.BranchRulePlan(when=r.when, goto=r.goto) for r in step.branch),
                otherwise=step.else_ or nxt,
            )
        case spec.SplitStep():
            return _split(step)
        case spec.ScoreStep():
            return p.ScorePlan(id=step.id, model=step.score, features=dict(step.features), next=nxt)
        case spec.ReviewStep():
            return _review(step)
        case spec.SetStep():
            return p.SetPlan(id=step.id, assignments=dict(step.set), next=nxt)
        case spec.CallStep():
            return _call(step, nxt)
        case spec.ExitStep():
            return p.ExitPlan(id=step.id, outcome=step.exit)
        case spec.DecideStep():
            return _decide(step, nxt)
        case _:
            assert_never(step)


def _send(step: spec.SendStep, nxt: str | None, document: spec.Document) -> p.SendPlan:
    channels = [step.channel] if isinstance(step.channel, str) else list(step.channel or [])
    if not channels:
        channels = _default_channel(document.templates.get(step.send))
    return p.SendPlan(
        id=step.id,
        template=step.send,
        channels=tuple(channels),
        to=step.to,
        on_capped=step.on_capped,
        on_failure=step.on_failure,
        next=nxt,
    )


def _default_channel(template: spec.TemplateSpec | None) -> list[str]:
    """A send without ``channel:`` uses its template's one form. None (an unknown or broken
    template, which the validator reports) gives none: the validator compiles such a step
    too, only to learn where it leads."""
    if template is None:
        return []
    return [f for f in ("email", "sms", "push") if getattr(template, f) is not None][:1]


def _wait(
    step: spec.WaitStep, nxt: str | None
) -> p.EventWaitPlan | p.UntilWaitPlan | p.DateWaitPlan | p.TimerWaitPlan:
    wait = step.wait
    if isinstance(wait, spec.WaitEvent):
        return p.EventWaitPlan(
            id=step.id,
            event=wait.event,
            when=wait.when,
            within_seconds=parse_duration(wait.within) if wait.within else None,
            # a timeout without its own on_timeout carries on as if the event had come
            on_timeout=step.on_timeout or (nxt if wait.within else None),
            next=nxt,
            correlate=wait.correlate,
        )
    if isinstance(wait, spec.WaitUntil):
        return _until(step, wait.until, nxt)
    return p.TimerWaitPlan(id=step.id, seconds=parse_duration(wait), next=nxt)


def _until(
    step: spec.WaitStep, until: str | spec.UntilDate | spec.UntilWeekday, nxt: str | None
) -> p.UntilWaitPlan | p.DateWaitPlan:
    """Today's `until: "09:00"` stays an `UntilWaitPlan` (its histories replay unchanged);
    a date or a weekday is a `DateWaitPlan`."""
    if isinstance(until, spec.UntilWeekday):
        return p.DateWaitPlan(id=step.id, weekday=until.weekday, at=until.at, next=nxt)
    if isinstance(until, spec.UntilDate):
        return p.DateWaitPlan(
            id=step.id,
            date=until.date,
            offset_seconds=parse_offset(until.offset) if until.offset else 0,
            at=until.at,
            on_missing=step.on_missing,
            next=nxt,
        )
    return p.UntilWaitPlan(id=step.id, until=until, next=nxt)


def _split(step: spec.SplitStep) -> p.SplitPlan:
    return p.SplitPlan(
        id=step.id,
        arms=tuple(
            p.SplitArm(name=arm, weight=weight, goto=step.paths[arm])
            for arm, weight in step.split.items()
        ),
        salt=step.salt,
    )


def _decide(step: spec.DecideStep, nxt: str | None) -> p.DecidePlan:
    """A table's rules as the loader left them (a `rules_csv:` file already read into
    ``rules``); a rule without ``goto``, and no rule at all, go on to ``nxt``."""
    table = step.decide
    return p.DecidePlan(
        id=step.id,
        inputs=dict(table.inputs),
        hit=table.hit,
        rules=tuple(
            p.DecideRulePlan(when=dict(r.when), set=dict(r.set), goto=r.goto or nxt)
            for r in table.rules
        ),
        otherwise=table.else_ or nxt,
    )


def _review(step: spec.ReviewStep) -> p.ReviewPlan:
    return p.ReviewPlan(
        id=step.id,
        queue=step.review,
        title=step.title,
        details=step.details,
        decisions=dict(step.decisions),
        sla_seconds=parse_duration(step.sla) if step.sla else None,
        on_timeout=step.on_timeout,
        escalate_to=step.escalate_to,
    )


def _call(step: spec.CallStep, nxt: str | None) -> p.CallPlan:
    call = step.call
    return p.CallPlan(
        id=step.id,
        method=call.method,
        url=call.url,
        json_body=dict(call.json_) if call.json_ else None,
        headers=dict(call.headers) if call.headers else None,
        timeout_seconds=parse_duration(call.timeout),
        on_failure=step.on_failure,
        next=nxt,
    )


def compile_journey(
    journey: spec.Journey,
    document: spec.Document,
    template_sources: dict[str, dict[str, str]],
    *,
    reads: frozenset[str] | None = None,
    key_reads: tuple[tuple[str, ...], ...] = (),
) -> p.Plan:
    """Compile one journey that validated cleanly. ``reads`` are the event properties its
    expressions read (None: the event whole), ``key_reads`` the paths its entry key reads
    (both from validation: `CheckedDocument`)."""
    steps: dict[str, p.PlanStep] = {}
    for position, step in enumerate(journey.steps):
        following = journey.steps[position + 1].id if position + 1 < len(journey.steps) else None
        steps[step.id] = compile_step(step, following, document)
    used_templates = sorted({s.template for s in steps.values() if isinstance(s, p.SendPlan)})
    used_models = sorted({s.model for s in steps.values() if isinstance(s, p.ScorePlan)})
    used_channels = sorted(
        {c for s in steps.values() if isinstance(s, p.SendPlan) for c in s.channels}
    )
    body: dict[str, Any] = {
        "journey_id": journey.id,
        "version": "",
        "language_version": 1,
        "name": journey.name,
        "description": journey.description,
        "entry": _entry(journey.entry),
        "exit_on": tuple(
            p.PlanExit(event=e.event, when=e.when, outcome=e.outcome, correlate=e.correlate)
            for e in journey.exit_on
        ),
        "holdout_percent": spec.holdout_percent(journey.holdout),
        "salt": journey.salt,
        "settings": _settings(document, journey),
        "start": journey.steps[0].id,
        "steps": steps,
        "templates": {
            name: dict(sorted(template_sources.get(name, {}).items())) for name in used_templates
        },
        "models": {name: document.models[name].model_dump(mode="json") for name in used_models},
        "channels": tuple(used_channels),
        "channel_config": {
            name: _channel(name, document.channels[name])
            for name in sorted({*used_channels, *(["ops"] if "ops" in document.channels else [])})
            if name in document.channels
        },
        "personal": _personal(journey, document, reads, key_reads),
        "public": {step.id: step.public for step in journey.steps if step.public},
        "goals": _goals(journey.goals),
    }
    draft = p.Plan.model_validate(body)
    return draft.model_copy(update={"version": plan_version(draft.model_dump(mode="json"))})


def _goals(goals: list[spec.Goal]) -> tuple[p.GoalPlan, ...]:
    """The goals with their keys: an event goal's is the event's name (a second goal on
    the same event gets ``#2``), an outcome goal's ``outcome:<outcome>``."""
    compiled: list[p.GoalPlan] = []
    seen: dict[str, int] = {}
    for goal in goals:
        if isinstance(goal, spec.OutcomeGoal):
            compiled.append(p.OutcomeGoalPlan(key=f"outcome:{goal.outcome}", outcome=goal.outcome))
            continue
        seen[goal.event] = seen.get(goal.event, 0) + 1
        count = seen[goal.event]
        compiled.append(
            p.EventGoalPlan(
                key=goal.event if count == 1 else f"{goal.event}#{count}",
                event=goal.event,
                within_seconds=parse_duration(goal.within),
                value=goal.value,
                when=goal.when,
            )
        )
    return tuple(compiled)


def _personal(
    journey: spec.Journey,
    document: spec.Document,
    reads: frozenset[str] | None,
    key_reads: tuple[tuple[str, ...], ...],
) -> p.PlanPersonal:
    """What is personal in this journey's events and the profile (`engine.personal`)."""
    events = {journey.entry.event, *(e.event for e in journey.exit_on)}
    events |= {
        s.wait.event
        for s in journey.steps
        if isinstance(s, spec.WaitStep) and isinstance(s.wait, spec.WaitEvent)
    }
    schemas = {
        event: {name: spec.declared_mark(d) or "" for name, d in document.events[event].items()}
        for event in sorted(events)
        if event in document.events
    }
    profile = {name: spec.declared_mark(d) or "" for name, d in document.profile.items()}
    key_personal = False
    for ref in key_reads:
        if ref[0] == "event" or ref[:2] == ("trigger", "properties"):
            field = ref[1] if ref[0] == "event" else (ref[2] if len(ref) > 2 else "")
            declared = schemas.get(journey.entry.event)
        elif ref[0] in ("profile", "customer"):
            field, declared = ref[1], (profile if ref[0] == "profile" else {})
        else:
            continue
        if field != "id" and kind_of(field, declared) is not None:
            key_personal = True
    return p.PlanPersonal(
        events=schemas,
        profile=profile,
        reads=None if reads is None else tuple(sorted(reads)),
        key_personal=key_personal,
    )


def compile_checked(checked: CheckedDocument) -> dict[str, p.Plan]:
    """Plans for every journey of a checked document that has no errors of its own."""
    document = checked.document
    if document is None:
        return {}
    failing = {v.journey for v in checked.errors if v.journey} | checked.broken_journeys
    catalogue_broken = any(v.journey is None for v in checked.errors)
    plans: dict[str, p.Plan] = {}
    for journey in document.journeys:
        if catalogue_broken or journey.id in failing or journey.id in plans:
            continue
        plans[journey.id] = compile_journey(
            journey,
            document,
            checked.template_sources,
            reads=checked.event_reads.get(journey.id),
            key_reads=checked.key_reads.get(journey.id, ()),
        )
    return plans
