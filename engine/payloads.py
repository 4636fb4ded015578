"""The messages that cross the runtime's boundaries: workflow input, signals, updates,
queries, and each activity's one input and one output model.

Plain pydantic data shared by the API, the workflow and the activities (all of them
import it, so it imports neither Temporal nor the database). The names that cross those
boundaries are defined here once: the workflow's, its signal, update and query, every
activity's (`ActivityName`: the workflow calls them by it, the activities register under
it) and the search attributes' (`SearchAttribute`: the workflow and its starters build
their typed keys from it). Field names are part of recorded histories: add fields with
defaults, never rename or remove one (tests/histories replays them).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.plan import Plan, PlanPersonal, PlanStep

__all__ = [
    "QUERY_STATE",
    "SEARCH_ATTRIBUTES",
    "SIGNAL_EVENT",
    "SIGNAL_EVENTS",
    "TASK_QUEUE",
    "UPDATE_REVIEW",
    "WORKFLOW_NAME",
    "ActivityName",
    "BeginRunInput",
    "BeginRunResult",
    "CallHttpInput",
    "CallHttpResult",
    "CustomerContext",
    "DateWaitInput",
    "DateWaitResult",
    "DecideInput",
    "DecideResult",
    "EvaluateInput",
    "EvaluateResult",
    "EventBatch",
    "EventMessage",
    "JourneyRunInput",
    "LoadProfileInput",
    "LocalTimeInput",
    "LocalTimeResult",
    "OpenReviewInput",
    "PathEntry",
    "RecordRunInput",
    "ReviewDecision",
    "ReviewDecisionResult",
    "ReviewTaskChange",
    "ReviewTaskRef",
    "RunState",
    "ScoreInput",
    "ScoreResult",
    "ScoreStepInput",
    "ScoreStepResult",
    "SearchAttribute",
    "SendMessageInput",
    "SendMessageResult",
    "StepDecision",
    "UpdateProfileInput",
    "customer_of_workflow_id",
    "delivered_record",
    "escape_customer_segment",
    "run_context",
    "send_path_entry",
    "workflow_id_for",
]

TASK_QUEUE = "journeys"
WORKFLOW_NAME = "JourneyRunWorkflow"
SIGNAL_EVENT = "event"
SIGNAL_EVENTS = "events"  # several, in order (`EventBatch`): the router's coalesced signals
UPDATE_REVIEW = "decide_review"
QUERY_STATE = "state"


class ActivityName(StrEnum):
    """Every activity a run calls, by the name it is registered under (`@activity.defn`)
    and called by (`workflow.execute_activity`, `execute_local_activity`)."""

    BEGIN_RUN = "begin_run"  # local: the runs row, the profile, the holdout, the first walk
    DECIDE_STEPS = "decide_steps"  # local: a walk over set/branch/split steps
    EVALUATE = "evaluate"  # local: a wait's or an exit's `when`, against the event in hand
    LOCAL_TIME = "local_time"  # local: the next `until` time in the customer's zone
    DATE_WAIT = "date_wait"  # local: when a wait on a date or a weekday fires
    LOAD_PROFILE = "load_profile"  # local: the profile read again after a wait
    LOAD_EVENTS = "load_events"  # local: a page of a carried backlog, from the events table
    PARK_EVENTS = "park_events"  # local: a queue too long to carry, into `run_backlog`
    RECORD_RUN = "record_run"  # local: the run's `runs` row
    UPDATE_PROFILE = "update_profile"
    SEND_MESSAGE = "send_message"
    SCORE_STEP = "score_step"
    OPEN_REVIEW_TASK = "open_review_task"
    ESCALATE_REVIEW_TASK = "escalate_review_task"
    CLOSE_REVIEW_TASK = "close_review_task"
    CALL_HTTP = "call_http"


class SearchAttribute(StrEnum):
    """The search attributes of a run (all keywords): set by its starter at start
    (journey, version, customer), upserted by the run (current step, outcome)."""

    JOURNEY_ID = "JourneyId"
    JOURNEY_VERSION = "JourneyVersion"
    CUSTOMER_ID = "CustomerId"
    CURRENT_STEP = "CurrentStep"
    OUTCOME = "Outcome"


SEARCH_ATTRIBUTES: dict[str, str] = {name.value: "Keyword" for name in SearchAttribute}
"""Each search attribute and its type, as a server registers them."""


_WORKFLOW_ID_PREFIX = "journey/"


def workflow_id_for(journey_id: str, customer_id: str, key: str | None = None) -> str:
    """The deterministic workflow id of a run: ``journey/<journey>/<customer>[/<key>]``.

    The customer's segment is escaped (``%`` as ``%25``, then ``/`` as ``%2F``) so that
    `customer_of_workflow_id` can read the customer back from any id, even when the
    customer id or the key holds a ``/``: the history codec keys each payload by the
    customer its workflow id names (`runtime.codec`). An id without those two characters
    is unchanged, so the ids of runs started before read the same.
    """
    base = f"{_WORKFLOW_ID_PREFIX}{journey_id}/{escape_customer_segment(customer_id)}"
    return f"{base}/{key}" if key else base


def customer_of_workflow_id(workflow_id: str) -> str | None:
    """The customer id `workflow_id_for` put in ``workflow_id``; None for an id not of
    that form (no ``journey/<journey>/`` prefix, or a ``%`` that is not one of the two
    escapes it writes).

    What the codec calls with the workflow id of the payload it seals: the journey
    segment ends at the first ``/`` after the prefix, the customer's at the next (an
    escaped customer holds none), and the rest, if any, is the key.
    """
    if not workflow_id.startswith(_WORKFLOW_ID_PREFIX):
        return None
    journey, slash, rest = workflow_id[len(_WORKFLOW_ID_PREFIX) :].partition("/")
    if not journey or not slash:
        return None
    segment = rest.partition("/")[0]
    return _unescape_segment(segment)


def escape_customer_segment(text: str) -> str:
    """How a customer id is written in a workflow id (`workflow_id_for`)."""
    return text.replace("%", "%25").replace("/", "%2F")


def _unescape_segment(segment: str) -> str | None:
    parts = segment.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        if part.startswith("25"):
            out.append("%" + part[2:])
        elif part.startswith("2F"):
            out.append("/" + part[2:])
        else:
            return None
    return "".join(out)


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EventMessage(_Message):
    """An event as a run sees it (the trigger, or one that arrives by signal)."""

    name: str
    customer_id: str
    message_id: str
    timestamp: datetime
    properties: dict[str, Any] = Field(default_factory=dict)


class EventBatch(_Message):
    """Events for one run in arrival order, in one signal (`SIGNAL_EVENTS`): the router
    sends one signal for all that queued up while the previous one was in flight, so a
    flood costs the run's history a few events, not one per event."""

    events: list[EventMessage]


class CustomerContext(_Message):
    """The customer as expressions see it: `customer` and `profile`."""

    id: str
    email: str | None = None
    phone: str | None = None
    push_token: str | None = None
    timezone: str | None = None
    traits: dict[str, Any] = Field(default_factory=dict)

    def expression_view(self) -> dict[str, str | None]:
        """What the name `customer` reads in an expression or template."""
        return {
            "id": self.id,
            "email": self.email,
            "phone": self.phone,
            "push_token": self.push_token,
        }


class StepDecision(_Message):
    """One step's decision inside a `decide_steps` call: what it read and what it chose.

    ``values`` are a `set` step's assignments (in the step's order) or a score/call step's
    feature/body values; ``first_true`` is the branch rule taken (None: ``else``);
    ``bucket`` the split arm. A decision table's ``values`` are its inputs' (in its
    order), ``matched`` the rules that held (``first_true`` the one whose goto it takes)
    and ``outputs`` what it sets in `vars`.
    """

    step_id: str
    type: str
    values: list[Any] = Field(default_factory=list)
    first_true: int | None = None
    bucket: int | None = None
    reads: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    matched: list[int] | None = None
    outputs: dict[str, Any] | None = None
    defaulted: list[str] = Field(default_factory=list)
    """A score step's features whose value is their `coalesce` default (the value they
    read was missing); empty in histories recorded before it existed."""


class DecideResult(_Message):
    decisions: list[StepDecision] = Field(default_factory=list)
    stop: str | None = None
    prepared: StepDecision | None = None


class CarriedWait(_Message):
    """A wait a run was in when it continued as new: the next generation goes on with it
    (same step, same deadline) without entering it again."""

    step_id: str
    until: datetime | None = None
    """When the wait ends (its timer, its `within`), None: no timeout."""
    waiting_for: str = ""
    """What the run's state says it waits for."""


class ParkedBacklog(_Message):
    """A run's queue parked in the `run_backlog` table for one generation: positions
    0 to ``count`` - 1 of (run, ``generation``)."""

    generation: int
    count: int


class RunCarry(_Message):
    """Everything that shapes a run's behaviour, carried into its next generation when it
    continues as new (`workflow.continue_as_new`) to keep each history bounded."""

    generation: int
    """This generation's number (the first run is 0; the first carried one is 1)."""
    started_at: datetime
    """When the first generation started (`max_duration` counts from it)."""
    next_step: str | None
    """The step to take next; with ``wait``, the wait to go on with."""
    wait: CarriedWait | None = None
    holdout: bool = False
    steps: int = 0
    """Steps taken by all generations so far (`max_steps`)."""
    path_start: int = 0
    """How many path entries earlier generations recorded (this one's first position)."""
    current_step: str | None = None
    event: EventMessage
    customer: CustomerContext
    vars: dict[str, Any] = Field(default_factory=dict)
    scores: dict[str, Any] = Field(default_factory=dict)
    review: dict[str, Any] | None = None
    visits: dict[str, int] = Field(default_factory=dict)
    inbox: list[EventMessage] = Field(default_factory=list)
    """Events signalled and not handled yet, oldest first: none is dropped."""
    exit_checked: int = 0
    """How many of ``inbox`` were checked against `exit_on` already."""
    backlog: list[str] = Field(default_factory=list)
    """Message ids of queued events older than ``inbox``, all checked against `exit_on`
    already, carried by reference when the queue is too large to carry whole: the next
    generation reads them from the events table in pages (`load_events`), in order."""
    seen: list[str] = Field(default_factory=list)
    """The newest message ids signalled (a re-routed event is handled once), none of them
    parked."""
    parked: ParkedBacklog | None = None
    """Queued events older than ``inbox``, all checked against `exit_on` already, parked
    in the `run_backlog` table because their ids were too many to carry (then ``backlog``
    is empty)."""


class ParkEventsInput(_Message):
    """Park a run's queue for its next generation (`park_events`): ``front``, then what
    is left of the parked queue of this generation (``remainder``, from ``remainder_from``
    on), then ``tail``, in that order."""

    run_id: str
    generation: int
    """The generation the parked queue is for (this one's number + 1)."""
    front: list[str] = Field(default_factory=list)
    remainder: ParkedBacklog | None = None
    remainder_from: int = 0
    tail: list[str] = Field(default_factory=list)


class LoadEventsInput(_Message):
    customer_id: str
    message_ids: list[str] = Field(default_factory=list)
    """By id, in this order; or, with ``parked``, a page of a parked queue:"""
    run_id: str | None = None
    parked: ParkedBacklog | None = None
    offset: int = 0
    limit: int = 0
    personal: PlanPersonal | None = None
    """The run's plan's personal data (`engine.personal.run_event`): the events come back
    as the router would have signalled them."""


class LoadEventsResult(_Message):
    events: list[EventMessage] = Field(default_factory=list)
    """The events found, in the order asked."""
    missing: list[str] = Field(default_factory=list)
    """Ids not in the events table for this customer (a signal not sent by the router)."""


class JourneyRunInput(_Message):
    """What a run starts with. The plan is pinned here for the run's whole life.

    ``profile`` is the customer as the starter read it just before starting the run
    (addresses masked, as `load_profile` gives it); ``recorded_by_starter`` says the starter
    writes the run's `runs` row itself (the event router does). With both, the run neither
    reads the profile nor writes its row at entry: one local activity less, or none at
    all when the plan starts with a step that decides nothing. Without them (a run started
    by hand, a test), the run reads and records at entry itself.
    """

    plan: Plan
    customer_id: str
    key: str | None = None
    trigger: EventMessage
    profile: CustomerContext | None = None
    recorded_by_starter: bool = False
    decided: DecideResult | None = None
    """The run's first walk (the set/branch/split steps from the plan's first step), decided
    by the starter with ``profile`` (`engine.decisions.decide_at_entry`): recorded here,
    in the run's input, with what each decision read. Only taken with ``profile``."""
    carry: RunCarry | None = None
    """Set when an earlier generation of this run continued as new: where it was."""


def run_context(
    plan: Plan,
    customer: CustomerContext,
    trigger: EventMessage,
    *,
    now: datetime,
    run_id: str | None,
    step: str | None,
    event: EventMessage | None = None,
    variables: dict[str, Any] | None = None,
    scores: dict[str, Any] | None = None,
    review: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a run's expressions and templates read (JOURNEY_DSL.md, Context). ``event`` is
    the event in hand (a waited-for one), the trigger otherwise."""
    return {
        "event": (event or trigger).properties,
        "trigger": {
            "name": trigger.name,
            "timestamp": trigger.timestamp.isoformat(),
            "message_id": trigger.message_id,
            "properties": trigger.properties,
        },
        "profile": customer.traits,
        "customer": customer.expression_view(),
        "vars": {} if variables is None else variables,
        "scores": {} if scores is None else scores,
        "review": review,
        "journey": {
            "id": plan.journey_id,
            "version": plan.version,
            "run_id": run_id,
            "step": step,
        },
        "now": now.isoformat(),
    }


class PathEntry(_Message):
    """One step of a run's path: what happened, when, and why."""

    step: str
    type: str
    at: datetime
    outcome: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class ReviewTaskRef(_Message):
    task_id: str
    queue: str
    decisions: list[str]
    due_at: datetime | None = None
    escalated: bool = False


class RunState(_Message):
    """The query answer: where a run is and how it got there."""

    journey_id: str
    version: str
    customer_id: str
    key: str | None = None
    status: Literal["running", "completed", "exited", "expired", "failed"] = "running"
    outcome: str | None = None
    current_step: str | None = None
    waiting_for: str | None = None
    wake_at: datetime | None = None
    holdout: bool = False
    path: list[PathEntry] = Field(default_factory=list)
    """This generation's path entries; the whole path is in the `run_path` table."""
    path_start: int = 0
    """The position of ``path[0]`` in the run's whole path (earlier generations' entries)."""
    generation: int = 0
    steps: int = 0
    """Steps the run has taken (all generations)."""
    pending_events: int = 0
    """Events signalled to the run and not handled yet."""
    vars: dict[str, Any] = Field(default_factory=dict)
    scores: dict[str, Any] = Field(default_factory=dict)
    review: dict[str, Any] | None = None
    open_review: ReviewTaskRef | None = None


class ReviewDecision(_Message):
    """The Update a reviewer's decision arrives as."""

    task_id: str
    decision: str
    reviewer: str
    note: str | None = None


class ReviewDecisionResult(_Message):
    accepted: bool
    next_step: str | None = None


# ----------------------------------------------------------------------------- activities


class EvaluateInput(_Message):
    """A condition checked against an event in hand (a wait's or an exit's `when`),
    recorded in history with what it read: the index of the first truthy expression."""

    step_id: str
    purpose: str
    expressions: list[str] = Field(default_factory=list)
    context: dict[str, Any] = Field(default_factory=dict)
    timezone: str = "UTC"


class EvaluateResult(_Message):
    """Expressions' values (up to the first truthy one in ``first`` mode), the index of
    that one (None: none held), what they read, and why any failed."""

    values: list[Any] = Field(default_factory=list)
    first_true: int | None = None
    reads: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class DecideInput(_Message):
    """Decide the pure steps (set, branch, split) from ``start`` on, in one local activity.

    ``steps`` holds the plan's decidable steps: set, branch, split, and score/call steps
    whose features/body are expressions. The walk stops at the first step that is not
    pure (a send, wait, review, exit, or the end), or after ``limit`` steps, and evaluates
    the expressions of a score or call step it stops at (``prepared``).
    ``salt`` prefixes a split's step id for its stable bucket.
    """

    start: str
    steps: dict[str, PlanStep]
    context: dict[str, Any] = Field(default_factory=dict)
    timezone: str = "UTC"
    salt: str = ""
    limit: int = 100


class LocalTimeInput(_Message):
    """When is the next local ``until`` time (``HH:MM``) in ``timezone``, after ``now``."""

    now: datetime
    timezone: str
    until: str


class LocalTimeResult(_Message):
    fire_at: datetime
    local: str
    reason: str


class DateWaitInput(_Message):
    """When does a wait on a date (``date``, an expression read against ``context``, moved
    by ``offset_seconds``, at ``at`` local) or on a ``weekday`` at ``at`` fire, after
    ``now``, for a customer in ``timezone``."""

    step_id: str
    now: datetime
    timezone: str
    date: str | None = None
    weekday: str | None = None
    offset_seconds: int = 0
    at: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)


class DateWaitResult(_Message):
    """``outcome`` ``waiting``: wake at ``fire_at`` (``local`` in the customer's zone);
    ``missing`` or ``past``: go on now. ``value`` is the date as read (text), with what the
    expression read and why it failed, for the run's path."""

    outcome: Literal["waiting", "missing", "past"]
    fire_at: datetime | None = None
    local: str | None = None
    value: Any = None
    reads: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    reason: str = ""


class LoadProfileInput(_Message):
    customer_id: str
    profile_marks: dict[str, str] = Field(default_factory=dict)
    """The catalogue's `profile:` marks (`engine.personal`): which traits to mask."""


class RecordRunInput(_Message):
    run_id: str
    workflow_id: str
    journey_id: str
    version: str
    customer_id: str
    key: str | None = None
    status: str = "running"
    step: str | None = None
    outcome: str | None = None
    holdout: bool = False
    trigger_message_id: str | None = None
    path: list[PathEntry] = Field(default_factory=list)
    """The path entries not recorded yet (the run's tail), the first of them at position
    ``path_start`` of the run's whole path. The activity writes them as `run_path` rows
    (idempotent by position): no activity ships the whole path."""
    path_start: int = 0
    current_run_id: str | None = None
    """Temporal's run id of the generation that records (``run_id`` is the first
    generation's, the run's id across continue-as-new)."""


class BeginRunInput(_Message):
    """A run's first local activity: its `runs` row, the customer's profile, the holdout,
    and the decisions of the pure steps the plan starts with.

    ``holdout_weights`` (holdout percent, rest) and ``holdout_salt`` are set when the plan
    has a holdout; the result's ``holdout_bucket`` is then 0 for a held-out customer.
    ``decide``, when the first step is decidable, is walked against the profile just read
    (its ``profile`` and ``customer`` replaced by it, its ``timezone`` by the customer's
    when they have one). With ``customer`` (the starter read the profile) and no ``record``
    (the starter writes the row), nothing is read or written: only decisions are taken.
    """

    record: RecordRunInput | None = None
    customer: CustomerContext | None = None
    holdout_weights: list[float] = Field(default_factory=list)
    holdout_salt: str = ""
    decide: DecideInput | None = None
    reload: bool = False
    """After a wait (`long-runs`): with neither ``record`` nor ``customer``, read the
    profile again (masked) and walk ``decide`` against it, in one local activity."""
    customer_id: str | None = None
    profile_marks: dict[str, str] = Field(default_factory=dict)
    """The catalogue's `profile:` marks: which traits a profile read here masks."""


class BeginRunResult(_Message):
    customer: CustomerContext
    holdout_bucket: int | None = None
    decided: DecideResult | None = None


class SendMessageInput(_Message):
    """One send step visit on one channel; policies are checked in the activity, just
    before the provider call and again on every retry. ``to_expression`` (the step's
    `to:`) is evaluated there, against the real profile: the workflow never holds it."""

    workflow_id: str
    run_id: str
    journey_id: str
    step_id: str
    visit: int
    channel: str
    template: str
    forms: dict[str, str]
    context: dict[str, Any] = Field(default_factory=dict)
    timezone: str = "UTC"
    to_expression: str | None = None
    event_message_id: str | None = None
    """The event in hand's message id: the activity reads the event's real properties
    back by it (and the trigger's by ``context.trigger.message_id``); the workflow holds
    them masked, and only those declared or read (`engine.personal`)."""
    channel_url: str | None = None
    quiet_start: str | None = None
    quiet_end: str | None = None
    cap_max: int | None = None
    cap_per_seconds: int | None = None
    # The run's end if this attempt delivers (the plan ends after this send, or exits):
    # the row as the run will record it, its path up to before this send. The activity
    # writes it with `delivered_record` and says so (`SendMessageResult.recorded_at`).
    finish: RecordRunInput | None = None


class SendMessageResult(_Message):
    """`sent` (by the provider), `captured` (dev outbox: no channel URL set), `quiet` and
    `capped` (try again at `retry_at`), or why nothing was sent on this channel."""

    status: Literal[
        "sent",
        "captured",
        "skipped",
        "failed",
        "quiet",
        "capped",
        "no_address",
        "no_consent",
        "suppressed",
    ]
    channel: str | None = None
    reason: str | None = None
    delivery_id: str | None = None
    retry_at: datetime | None = None
    recorded_at: datetime | None = None  # when the activity wrote `finish` (delivered)


def send_path_entry(
    step_id: str, template: str, channel: str, result: SendMessageResult, at: datetime
) -> PathEntry:
    """A send attempt's entry in the run's path (the interpreter's, and the one a
    delivering send writes with the run's end)."""
    return PathEntry(
        step=step_id,
        type="send",
        at=at,
        outcome=result.status,
        detail={"channel": channel, "reason": result.reason, "template": template},
    )


def delivered_record(finish: RecordRunInput, entry: PathEntry) -> RecordRunInput:
    """The runs row of a run that ends with the send whose path entry is ``entry``: the
    send, then the end, both at the send's time."""
    end = PathEntry(step="end", type=finish.status, at=entry.at, outcome=finish.outcome)
    return finish.model_copy(update={"path": [*finish.path, entry, end]})


class ScoreInput(_Message):
    """The model call of a `score` step: the model's declaration and the features."""

    workflow_id: str
    step_id: str
    model: str
    spec: dict[str, Any]
    features: dict[str, Any]


class ScoreResult(_Message):
    score: float
    model: str
    model_version: str | None = None
    latency_ms: float = 0.0
    fallback_used: bool = False
    error: str | None = None


class ScoreStepInput(_Message):
    """A whole `score` step in one activity: its features
    evaluated against ``context`` (``feature_expressions``; or given in ``score.features``
    when a walk evaluated them already), the model called, then the set/branch/split steps
    from ``then`` on decided with the score in `scores` (as `decide_steps` would, right
    after). The history records it all: this input, and the features, what they read and
    the walk in the result."""

    score: ScoreInput
    feature_expressions: dict[str, str] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    timezone: str = "UTC"
    then: str | None = None
    steps: dict[str, PlanStep] = Field(default_factory=dict)
    salt: str = ""
    limit: int = 100


class ScoreStepResult(_Message):
    score: ScoreResult
    features: dict[str, Any] = Field(default_factory=dict)
    reads: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    decided: DecideResult | None = None
    defaulted: list[str] = Field(default_factory=list)
    """The features whose value is their `coalesce` default, not a value read
    (`engine.decisions.defaulted_by`); empty in older histories."""


class OpenReviewInput(_Message):
    workflow_id: str
    run_id: str
    journey_id: str
    customer_id: str
    step_id: str
    visit: int
    queue: str
    title: str
    details: str | None = None
    decisions: list[str]
    due_at: datetime | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    path: list[PathEntry] = Field(default_factory=list)
    """The run's path entries not recorded yet, from position ``path_start``: the activity
    writes them as `run_path` rows and reads the case's path from the table."""
    path_start: int = 0
    timezone: str = "UTC"
    announce_url: str | None = Field(
        None,
        description="The plan's `ops` channel URL (`${VAR}` unresolved): where the task is announced.",
    )


class ReviewTaskChange(_Message):
    """What `escalate_review_task` and `close_review_task` change on a task."""

    task_id: str
    status: str
    queue: str | None = None
    due_at: datetime | None = None
    announce_url: str | None = None
    decision: str | None = None
    reviewer: str | None = None
    note: str | None = None


class CallHttpInput(_Message):
    workflow_id: str
    step_id: str
    visit: int
    method: str
    url: str
    json_body: dict[str, Any] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: int = 10
    context: dict[str, Any] = Field(default_factory=dict)


class CallHttpResult(_Message):
    status_code: int
    body: Any = None


class UpdateProfileInput(_Message):
    customer_id: str
    traits: dict[str, Any]
