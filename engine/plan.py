"""Compiled plans: the immutable, self-contained form of one journey that a run interprets.

A `Plan` names every step's successor explicitly, holds durations in seconds, keeps
expressions and templates as source text (parsed once per plan version by their users) and
carries the templates and model specs it uses, so that its `version`, a hash of its canonical
JSON, changes exactly when its meaning does. Channel URLs are never part of a plan: they are
configuration, and may hold secrets. Pure data: no I/O, no Temporal.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CORRELATE_NONE",
    "BranchPlan",
    "BranchRulePlan",
    "CallPlan",
    "ChannelPlan",
    "DateWaitPlan",
    "DecidePlan",
    "DecideRulePlan",
    "EventGoalPlan",
    "EventWaitPlan",
    "ExitPlan",
    "FrequencyCapPlan",
    "GoalPlan",
    "OutcomeGoalPlan",
    "Plan",
    "PlanEntry",
    "PlanExit",
    "PlanPersonal",
    "PlanSettings",
    "PlanStep",
    "QuietHoursPlan",
    "ReviewPlan",
    "ScorePlan",
    "SendPlan",
    "SetPlan",
    "SplitArm",
    "SplitPlan",
    "TimerWaitPlan",
    "UntilWaitPlan",
    "WaitPlan",
    "bucket_salt",
    "decidable",
    "split_salt",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class QuietHoursPlan(_Frozen):
    start: str
    end: str


class FrequencyCapPlan(_Frozen):
    max: int
    per_seconds: int


class PlanSettings(_Frozen):
    """Settings after merging the file's defaults with the journey's own."""

    timezone: str = "UTC"
    quiet_hours: QuietHoursPlan | None = None
    frequency_cap: FrequencyCapPlan | None = None
    max_duration_seconds: int = 30 * 86400
    max_steps: int | None = None
    """None: the interpreter's default (`workflows.journey_run.MAX_STEPS`)."""


class PlanEntry(_Frozen):
    event: str
    when: str | None = None
    reentry: Literal["never", "always", "after"] = "never"
    reentry_seconds: int | None = None
    key: str | None = None


class PlanExit(_Frozen):
    event: str
    when: str | None = None
    outcome: str
    correlate: str | None = None  # see `EventWaitPlan.correlate`


CORRELATE_NONE = "none"
"""`correlate: none`: the event is meant for every run of the customer."""


class ChannelPlan(_Frozen):
    """A channel as a run needs it: the URL as written (``${VAR}`` unresolved) and retries."""

    url: str
    retry_initial_seconds: int = 5
    retry_max_seconds: int = 300
    ttl_seconds: int = 3600


class _PlanStep(_Frozen):
    id: str


class SendPlan(_PlanStep):
    type: Literal["send"] = "send"
    template: str
    channels: tuple[str, ...]
    to: str | None = None
    on_capped: Literal["delay", "skip"] = "delay"
    on_failure: str | None = None
    next: str | None


class TimerWaitPlan(_PlanStep):
    """`wait: 3d`: a durable timer of ``seconds``."""

    type: Literal["wait"] = "wait"
    mode: Literal["timer"] = "timer"
    seconds: int
    next: str | None


class UntilWaitPlan(_PlanStep):
    """`wait: {until: "09:00"}`: the next time the customer's local clock shows ``until``."""

    type: Literal["wait"] = "wait"
    mode: Literal["until"] = "until"
    until: str
    next: str | None


class DateWaitPlan(_PlanStep):
    """`wait: {until: {date: ..., offset: ..., at: ...}}` or `{until: {weekday: ..., at: ...}}`.

    ``date``: an expression read from the run, moved by ``offset_seconds`` on the local wall
    clock, at ``at`` local if set; missing or past: ``on_missing`` (None: ``next`` at once).
    ``weekday`` (``mon`` .. ``sun``) instead: the next such day at ``at`` local."""

    type: Literal["wait"] = "wait"
    mode: Literal["date"] = "date"
    date: str | None = None
    weekday: str | None = None
    offset_seconds: int = 0
    at: str | None = None
    on_missing: str | None = None
    next: str | None


class EventWaitPlan(_PlanStep):
    """`wait: {event: ..., within: ..., when: ...}`: the first matching event, or a timeout
    after ``within_seconds`` (then ``on_timeout``; None: the run ends).

    ``correlate`` (the router's, never the run's): an expression whose value on the event
    must equal the run's key, `CORRELATE_NONE` for every run of the customer, or None for
    the default: the entry key's expression in a keyed journey, every run otherwise."""

    type: Literal["wait"] = "wait"
    mode: Literal["event"] = "event"
    event: str
    within_seconds: int | None = None
    when: str | None = None
    on_timeout: str | None = None
    next: str | None
    correlate: str | None = None


WaitPlan = Annotated[
    TimerWaitPlan | UntilWaitPlan | DateWaitPlan | EventWaitPlan, Field(discriminator="mode")
]
"""One model per kind of wait, told apart by ``mode``."""


class BranchRulePlan(_Frozen):
    when: str
    goto: str


class BranchPlan(_PlanStep):
    type: Literal["branch"] = "branch"
    rules: tuple[BranchRulePlan, ...]
    otherwise: str | None


class SplitArm(_Frozen):
    name: str
    weight: float
    goto: str


class SplitPlan(_PlanStep):
    type: Literal["split"] = "split"
    arms: tuple[SplitArm, ...]
    salt: str | None = None  # the step's `salt:`; None in plans compiled before it existed


class ScorePlan(_PlanStep):
    type: Literal["score"] = "score"
    model: str
    features: dict[str, str]
    next: str | None


class ReviewPlan(_PlanStep):
    type: Literal["review"] = "review"
    queue: str
    title: str
    details: str | None = None
    decisions: dict[str, str]
    sla_seconds: int | None = None
    on_timeout: str | None = None
    escalate_to: str | None = None


class SetPlan(_PlanStep):
    type: Literal["set"] = "set"
    assignments: dict[str, str]
    next: str | None


class CallPlan(_PlanStep):
    type: Literal["call"] = "call"
    method: str
    url: str
    json_body: dict[str, str] | None = None
    headers: dict[str, str] | None = None
    timeout_seconds: int
    on_failure: str | None = None
    next: str | None


class DecideRulePlan(_Frozen):
    """A table rule: unary-test cells by input (see `engine.unary`; an input left out
    matches anything), output expressions by variable, and where it leads."""

    when: dict[str, str]
    set: dict[str, str]
    goto: str | None


class DecidePlan(_PlanStep):
    """A decision table: ``inputs`` evaluated once, the rules matched per ``hit``; no rule:
    ``otherwise``. CSV rules are already in ``rules``: the plan reads no file."""

    type: Literal["decide"] = "decide"
    inputs: dict[str, str]
    hit: Literal["first", "unique", "collect"]
    rules: tuple[DecideRulePlan, ...]
    otherwise: str | None


class ExitPlan(_PlanStep):
    type: Literal["exit"] = "exit"
    outcome: str


PlanStep = Annotated[
    SendPlan
    | WaitPlan
    | BranchPlan
    | SplitPlan
    | ScorePlan
    | ReviewPlan
    | SetPlan
    | CallPlan
    | ExitPlan
    | DecidePlan,
    Field(discriminator="type"),
]


class PlanPersonal(_Frozen):
    """What is personal in a run's data (`engine.personal`), from the catalogue.

    ``events`` and ``profile`` give each declared field its mark (``email``, ``phone``,
    ``pii``, ``secret``, ``none``, or ``""``: declared, not marked, so its name decides);
    only the events this plan starts on, waits for or exits on. ``reads`` are the event
    properties the plan's expressions read (None: it reads the event whole, so every
    property is kept); a property neither declared nor read never reaches the run.
    ``key_personal``: the entry key reads a personal field, so runs hold its digest.
    """

    events: dict[str, dict[str, str]] = Field(default_factory=dict)
    profile: dict[str, str] = Field(default_factory=dict)
    reads: tuple[str, ...] | None = None
    key_personal: bool = False

    def event_fields(self, event: str) -> dict[str, str] | None:
        """The declared fields of ``event`` (None: it has no schema)."""
        return self.events.get(event)


class EventGoalPlan(_Frozen):
    """`goals: [{event: ..., within: ..., value: ..., when: ...}]`: a run converts when the
    customer's ``event`` comes within ``within_seconds`` of its entry (`engine.conversions`
    records it as the event is stored). ``key`` names the goal in `run_conversions`: the
    event's name (``#2``, ``#3`` after it for a second goal on the same event), so a goal
    keeps its key across versions."""

    kind: Literal["event"] = "event"
    key: str
    event: str
    within_seconds: int
    value: str | None = None
    when: str | None = None


class OutcomeGoalPlan(_Frozen):
    """`goals: [{outcome: ...}]`: a run converts when it ends with ``outcome`` (read from
    the runs table; no row is written). ``key``: ``outcome:<outcome>``."""

    kind: Literal["outcome"] = "outcome"
    key: str
    outcome: str


GoalPlan = Annotated[EventGoalPlan | OutcomeGoalPlan, Field(discriminator="kind")]


class Plan(_Frozen):
    """One journey, compiled. ``version`` is the short hash of everything else."""

    journey_id: str
    version: str
    language_version: int = 1
    name: str | None = None
    description: str | None = None
    entry: PlanEntry
    exit_on: tuple[PlanExit, ...] = ()
    holdout_percent: float = 0.0
    salt: str | None = None  # the journey's `salt:` (the holdout's)
    settings: PlanSettings
    start: str
    steps: dict[str, PlanStep]
    templates: dict[str, dict[str, str]] = Field(default_factory=dict)
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    channels: tuple[str, ...] = ()
    channel_config: dict[str, ChannelPlan] = Field(default_factory=dict)
    personal: PlanPersonal | None = None
    """Set by the compiler since personal data is declared; None in older plans (then
    well-known names decide and every property is kept)."""
    public: dict[str, str] = Field(default_factory=dict)
    """The steps' `public:` texts, by step id: what the run's status page shows the
    customer. Read by the status page only, never by the interpreter."""
    goals: tuple[GoalPlan, ...] = ()
    """The journey's conversion goals (`engine.conversions`); never read by the
    interpreter. Empty: left out of the version, so plans from before goals keep theirs."""

    def step(self, step_id: str) -> PlanStep:
        """The step called ``step_id`` (KeyError if the plan has none)."""
        return self.steps[step_id]

    def correlations(self) -> dict[str, frozenset[str | None]]:
        """For each event a run waits for or exits on, which runs of the customer it is
        for: an expression whose value on the event must equal the run's key, or None for
        every run (`correlate: none`, or no `correlate` in a journey without a key)."""
        listeners: list[tuple[str, str | None]] = [(e.event, e.correlate) for e in self.exit_on]
        listeners += [
            (s.event, s.correlate) for s in self.steps.values() if isinstance(s, EventWaitPlan)
        ]
        found: dict[str, set[str | None]] = {}
        for event, correlate in listeners:
            source = self.entry.key if correlate is None else correlate
            found.setdefault(event, set()).add(None if source == CORRELATE_NONE else source)
        return {event: frozenset(sources) for event, sources in found.items()}

    @property
    def events(self) -> frozenset[str]:
        """Every event name this plan starts on, waits for or exits on."""
        names = {self.entry.event, *(e.event for e in self.exit_on)}
        names.update(s.event for s in self.steps.values() if isinstance(s, EventWaitPlan))
        return frozenset(names)


PURE_STEPS = ("set", "branch", "split", "decide")
"""Step types decided by evaluating expressions alone, with no side effect but profile writes."""


def bucket_salt(plan: Plan, customer_id: str, name: str = "") -> str:
    """What a customer's stable buckets hash with: the split arms (``name`` empty, the walk
    adds the step with `split_salt`) and the holdout (``name`` "holdout", with the journey's
    ``salt``). The run and its starter build it here alone, so both put a customer in the
    same arm. Never the plan's version: an edit must not reshuffle a running experiment;
    only a new ``salt:`` does, on purpose."""
    salt = f"{plan.journey_id}:{customer_id}:{name}"
    if name == "holdout" and plan.salt is not None:
        salt = f"{salt}:{plan.salt}"
    return salt


def split_salt(prefix: str, step: SplitPlan) -> str:
    """A split's bucket salt: ``prefix`` (`bucket_salt` with no name), its step id and its
    own ``salt:`` when it has one."""
    salt = prefix + step.id
    return salt if step.salt is None else f"{salt}:{step.salt}"


def decidable(step: PlanStep) -> bool:
    """Whether a step has expressions a `decide_steps` walk evaluates: the steps a walk
    starts from (`walks_from`), and the score steps it stops at (their features)."""
    return walks_from(step) or step.type == "score"


def walks_from(step: PlanStep) -> bool:
    """Whether a `decide_steps` walk starting at ``step`` decides something: a pure step, or
    a call step with a JSON body (evaluated for it). A score step evaluates its own
    features in its activity (`score_step`)."""
    if step.type in PURE_STEPS:
        return True
    return isinstance(step, CallPlan) and step.json_body is not None
