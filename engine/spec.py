"""The journey language as pydantic models: what a designer writes in `journeys.yaml`.

One model per step type, gathered in the `Step` tagged union (the type key a step carries,
`send:`, `wait:`, ..., is its tag). Each model's docstring and field descriptions are what the
published JSON Schema shows designers in their editor. Structure only lives here: graph,
expression, template and cross-reference checks are in `engine.validator`. Nothing here
imports temporalio or does I/O.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
)

from engine.durations import parse_duration, parse_offset, parse_time_of_day

__all__ = [
    "DEFAULT_RATES",
    "OTHER_RATE",
    "STEP_MODELS",
    "STEP_TYPES",
    "BranchRule",
    "BranchStep",
    "CallSpec",
    "CallStep",
    "ChannelRetry",
    "ChannelSpec",
    "DecideRule",
    "DecideStep",
    "DecideTable",
    "Document",
    "EmailTemplate",
    "Entry",
    "EventGoal",
    "ExitOn",
    "ExitStep",
    "FrequencyCap",
    "Goal",
    "HttpModel",
    "Journey",
    "ModelSpec",
    "OnnxModel",
    "OutcomeGoal",
    "PushTemplate",
    "PythonModel",
    "QuietHours",
    "ReviewStep",
    "ScoreStep",
    "SendStep",
    "SetStep",
    "Settings",
    "SplitStep",
    "Step",
    "TemplateSpec",
    "UntilDate",
    "UntilWeekday",
    "WaitEvent",
    "WaitStep",
    "WaitUntil",
    "channel_rate",
    "parse_rate",
    "rate_burst",
    "step_type_of",
]

ID_PATTERN = r"^[a-z0-9_]+$"


def _shape(value: Any, keys: tuple[str, ...]) -> str | None:
    """Tag of a value that may be text or a mapping with one of ``keys`` (for clear errors)."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return next((key for key in keys if key in value), keys[0] if len(keys) == 1 else None)
    if isinstance(value, BaseModel):
        return next((key for key in keys if hasattr(value, key)), None)
    return None


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


def _check_time(value: str) -> str:
    parse_time_of_day(value)
    return value


def _check_reentry(value: str) -> str:
    if value not in ("never", "always"):
        parse_duration(value)
    return value


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ValueError, KeyError) as exc:
        raise ValueError(
            f"'{value}' is not an IANA time zone (like 'Asia/Seoul' or 'UTC')"
        ) from exc
    return value


Duration = Annotated[
    str,
    AfterValidator(_check_duration),
    Field(description="A duration: a number and a unit (s, m, h, d, w), e.g. 30s, 4h, 3d, 1d12h."),
]
TimeOfDay = Annotated[
    str, AfterValidator(_check_time), Field(description="A local time of day, 24-hour HH:MM.")
]


def _expression_text(value: Any) -> Any:
    """A plain YAML number or boolean (`vars.n: 1`) is an expression too."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int | float):
        return repr(value)
    return value


Expr = Annotated[
    str,
    BeforeValidator(_expression_text),
    WithJsonSchema(
        {
            "type": ["string", "number", "boolean"],
            "description": "An expression (Python-like; see docs/journeys.md), e.g. event.amount > 100.",
        }
    ),
    Field(
        min_length=1,
        description="An expression (Python-like; see docs/journeys.md), e.g. event.amount > 100.",
    ),
]
TemplateText = Annotated[
    str, Field(description="A Jinja2 template, e.g. 'Hi {{ profile.first_name }}'.")
]
StepRef = Annotated[str, Field(pattern=ID_PATTERN, description="The id of a step in this journey.")]
Identifier = Annotated[str, Field(pattern=ID_PATTERN)]
Salt = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=r"^[^\x00-\x1f]+$",
        description="Any short text, e.g. 'pricing-2025-06'; changing it reshuffles.",
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ----------------------------------------------------------------------------- settings


class QuietHours(_Model):
    """Local hours (the customer's timezone) when no message is sent; sends wait until `end`."""

    start: TimeOfDay
    end: TimeOfDay


class FrequencyCap(_Model):
    """At most `max` messages per customer within `per`, counted across ALL journeys."""

    max: int = Field(ge=1, le=1000)
    per: Duration


class Settings(_Model):
    """Defaults for every journey; a journey's own `settings:` overrides them key by key."""

    timezone: Annotated[str, AfterValidator(_check_timezone)] | None = Field(
        None, description="IANA zone used when profile.timezone is missing (default UTC)."
    )
    quiet_hours: QuietHours | None = Field(None, description="Set to null to send at any hour.")
    frequency_cap: FrequencyCap | None = Field(None, description="Set to null for no cap.")
    max_duration: Duration | None = Field(
        None, description="A run still open after this exits with outcome 'expired' (default 30d)."
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description=(
            "A run that has taken this many steps (across all its generations) ends as"
            " 'failed' with outcome 'step_limit' (default 1,000,000)."
        ),
    )


# ----------------------------------------------------------------------------- catalogue

EventPropertyType = Literal[
    "string", "number", "integer", "boolean", "timestamp", "object", "list", "any"
]
FieldType = Literal[
    "string",
    "number",
    "integer",
    "boolean",
    "timestamp",
    "object",
    "list",
    "any",
    "email",
    "phone",
    "pii",
    "secret",
]
"""A field's type; `email` and `phone` (strings) and `pii` and `secret` (any value) also
declare it personal (`engine.personal`)."""


class PropertySpec(_Model):
    """A field's long form: its type and whether it is personal."""

    type: EventPropertyType = Field("any", description="The value's type.")
    personal: Literal["email", "phone", "pii", "secret", "none"] | None = Field(
        None,
        description="Personal data: masked everywhere outside the send that uses it. `none` "
        "says a field with a well-known personal name (`name`, `address`) is not personal.",
    )


FieldDeclaration = Annotated[
    Annotated[FieldType, Tag("text")] | Annotated[PropertySpec, Tag("spec")],
    Discriminator(
        lambda v: "spec" if isinstance(v, dict | PropertySpec) else "text",
        custom_error_type="field_declaration_shape",
        custom_error_message="a field is a type (string, number, ..., email, phone, pii, "
        "secret) or {type: ..., personal: email|phone|pii|secret|none}",
    ),
]


def declared_mark(declaration: Any) -> str | None:
    """The personal mark a field declaration gives (None: none, the name decides)."""
    if isinstance(declaration, PropertySpec):
        return declaration.personal
    return declaration if declaration in ("email", "phone", "pii", "secret") else None


class ChannelRetry(_Model):
    """How a channel's sends are retried (by Temporal) before the next fallback or on_failure."""

    initial: Duration = Field("5s", description="The first retry's delay; it doubles each time.")
    maximum_interval: Duration = Field("5m", description="The longest delay between retries.")
    ttl: Duration | None = Field(
        None, description="Give up after this long (default: email 1d, sms and push 1h, others 1h)."
    )


_RATE = re.compile(r"^\s*(?P<count>\d+(?:\.\d+)?)\s*/\s*(?P<unit>[smh])\s*$")
_RATE_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
MAX_RATE_PER_SECOND = 10_000.0

DEFAULT_RATES: dict[str, str] = {"email": "20/s", "sms": "10/s", "push": "50/s"}
"""A channel's send rate when it has no `rate:` (any other channel: `OTHER_RATE`)."""
OTHER_RATE = "10/s"


def parse_rate(text: str) -> float:
    """Sends per second of a rate written ``<count>/s``, ``/m`` or ``/h`` (``50/s``,
    ``600/m``, ``1000/h``); ValueError, naming the value, for anything else."""
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"rate '{text}' is not a send rate: write a count per second, minute or hour, "
            "such as '50/s', '600/m' or '1000/h'"
        )
    per_second = float(match["count"]) / _RATE_UNIT_SECONDS[match["unit"]]
    if per_second <= 0 or per_second > MAX_RATE_PER_SECOND:
        raise ValueError(
            f"rate '{text}' must be more than 0 and at most {MAX_RATE_PER_SECOND:,.0f}/s"
        )
    return per_second


def rate_burst(per_second: float) -> int:
    """How many sends a full bucket lets out at once: one second's worth, at least one."""
    return max(1, math.floor(per_second))


def channel_rate(name: str, value: str | ChannelSpec) -> float:
    """Sends per second of channel ``name`` as declared (``rate:``, else its default)."""
    written = value.rate if isinstance(value, ChannelSpec) else None
    return parse_rate(written or DEFAULT_RATES.get(name, OTHER_RATE))


def _check_rate(value: str) -> str:
    parse_rate(value)
    return value


Rate = Annotated[
    str,
    # `rate: 50` (a YAML number) gets the rate's own message, not "expected a string".
    BeforeValidator(lambda value: str(value) if isinstance(value, int | float) else value),
    AfterValidator(_check_rate),
    Field(description="Sends per second, minute or hour, shared by all workers: 50/s, 600/m."),
]


class ChannelSpec(_Model):
    """A channel with its Apprise URL, retry policy and send rate."""

    url: str = Field(description="The Apprise URL; write ${VAR} for anything secret.")
    retry: ChannelRetry = Field(default_factory=ChannelRetry)
    rate: Rate | None = Field(
        None,
        description=(
            "The most sends per second, minute or hour on this channel, across all workers "
            "(default: email 20/s, sms 10/s, push 50/s, others 10/s)."
        ),
    )


class _ModelBase(_Model):
    timeout: Duration = Field("2s", description="How long one call may take before the fallback.")
    fallback: float = Field(
        description="Score used when the model fails, times out or answers something that is "
        "not a finite number in `range` (recorded with fallback_used: true and the error)."
    )
    range: tuple[float, float] | None = Field(
        None, description="[min, max] a valid score lies in; outside it, the fallback is used."
    )
    features: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None,
        description="The features the model takes, in order. Every score step calling it must "
        "give exactly these; a model that reads one tensor of N columns (an ONNX model with one "
        "input, an Open Inference Protocol model) gets them in this order.",
    )
    example: dict[str, Any] | None = Field(
        None, description="Example features `journeys models check` calls the model with."
    )
    version: str | None = Field(None, description="The model's version, recorded with each score.")


class PythonModel(_ModelBase):
    """A model called in-process: `function: package.module:function` takes a dict of features
    and returns a number or a mapping with `score`."""

    kind: Literal["python"]
    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


_PositiveClass = Annotated[
    int | str,
    Field(
        description="For a classifier's class probabilities: the class whose probability is the "
        "score, a label (for a map of probabilities) or a column number from 0 (for a tensor). "
        "Default: label 1, or the second column of two."
    ),
]


class HttpModel(_ModelBase):
    """A model behind HTTP: Open Inference Protocol v2 (KServe, MLServer, Triton) or plain JSON."""

    kind: Literal["http"]
    url: str = Field(
        description="The endpoint, for oip `.../v2/models/<name>/infer`; write ${VAR} for any "
        "secret part (read from the environment at call time, never recorded)."
    )
    protocol: Literal["oip", "json"] = Field(
        "oip",
        description="oip: one FP64 tensor [1, N] of the features in order; json: `body:` and "
        "`score:`.",
    )
    body: TemplateText | None = Field(
        None,
        description="json protocol: the request body, a template that renders JSON; it reads "
        "`features` (e.g. {{ features.amount }}).",
    )
    score: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="json protocol: dotted path to the score in the reply, e.g. "
        "result.probability or predictions.0.",
    )
    input: str = Field("input-0", description="oip protocol: the input tensor's name.")
    output: str | None = Field(
        None,
        description="oip protocol: the output tensor to read (and to ask for, e.g. "
        "predict_proba); default: the only one in the reply.",
    )
    positive_class: _PositiveClass | None = None
    token: str | None = Field(
        None, description="Bearer token, as '${VAR}' (read from the environment at call time)."
    )
    retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Tries after the first when the model times out, cannot be reached or "
        "answers HTTP 429 or 5xx.",
    )


class OnnxModel(_ModelBase):
    """A local ONNX file run with onnxruntime: inputs named like the features, or one tensor of
    N columns (the features in the order of `features:`)."""

    kind: Literal["onnx"]
    path: str = Field(description="The .onnx file, relative to journeys.yaml.")
    output: str | None = Field(
        None,
        description="The output to read the score from, e.g. output_probability (a scikit-learn "
        "classifier exported by skl2onnx); default: the only output, or output_probability or "
        "probabilities when the model has them.",
    )
    positive_class: _PositiveClass | None = None


ModelSpec = Annotated[PythonModel | HttpModel | OnnxModel, Field(discriminator="kind")]


class EmailTemplate(_Model):
    """An email: subject, an HTML part (inline or a file) and an optional plain-text part."""

    subject: TemplateText
    html: TemplateText | None = None
    html_file: str | None = Field(
        None, description="HTML template file, relative to journeys.yaml."
    )
    text: TemplateText | None = None


class PushTemplate(_Model):
    """A push notification with a title."""

    title: TemplateText
    body: TemplateText


class TemplateSpec(_Model):
    """A message in one or more channel forms; a send picks the form of its channel."""

    email: EmailTemplate | None = None
    sms: TemplateText | None = None
    push: (
        Annotated[
            Annotated[TemplateText, Tag("text")] | Annotated[PushTemplate, Tag("title")],
            Discriminator(
                lambda v: _shape(v, ("title",)),
                custom_error_type="push_shape",
                custom_error_message="push: must be text or {title: ..., body: ...}",
            ),
        ]
        | None
    ) = None
    text: TemplateText | None = Field(
        None, description="Plain text for any other channel (ops, chat)."
    )


# ----------------------------------------------------------------------------- journeys


class Entry(_Model):
    """Which event starts a run, and for whom."""

    event: str = Field(min_length=1, max_length=200)
    when: Expr | None = Field(None, description="Only enter when this holds.")
    reentry: Annotated[str, AfterValidator(_check_reentry)] = Field(
        "never",
        description="never | always | a duration: how soon the same customer may enter again.",
    )
    key: Expr | None = Field(
        None,
        description="One run per (customer, key) instead of per customer, e.g. event.invoice_id.",
    )


class ExitOn(_Model):
    """At any step, this event ends the run with `outcome`."""

    event: str = Field(min_length=1, max_length=200)
    when: Expr | None = None
    outcome: Identifier
    correlate: Expr | None = Field(
        None,
        description="Which runs the event is for: an expression on the event whose value "
        "must equal the run's key (default: the entry key, e.g. event.invoice_id), or "
        "`none` for every run of the customer.",
    )


class EventGoal(_Model):
    """A conversion: the customer's `event` within `within` of entering (and, for step
    attribution, of each send), worth `value`."""

    event: str = Field(
        min_length=1, max_length=200, description="The goal event; declare it under `events:`."
    )
    within: Duration = Field(description="How long after entry (or a send) the event counts.")
    value: Expr | None = Field(
        None,
        description="What the conversion is worth, a number read from `event` and `profile`, "
        "e.g. event.amount (default 0).",
    )
    when: Expr | None = Field(
        None, description="Only an event for which this holds converts, e.g. event.amount > 0."
    )


class OutcomeGoal(_Model):
    """A conversion: the run ended with this exit outcome (an `exit:` step's or an
    `exit_on:` rule's)."""

    outcome: Identifier = Field(description="An outcome the journey's exits can end with.")


def _goal_shape(value: Any) -> str | None:
    return None if isinstance(value, str | list) else _shape(value, ("event", "outcome"))


Goal = Annotated[
    Annotated[EventGoal, Tag("event")] | Annotated[OutcomeGoal, Tag("outcome")],
    Discriminator(
        _goal_shape,
        custom_error_type="goal_shape",
        custom_error_message="a goal is {event: <name>, within: 7d, value: ..., when: ...} "
        "or {outcome: <exit outcome>}",
    ),
]


class _Step(_Model):
    step_type: ClassVar[str]
    id: Identifier = Field(
        description="Unique within the journey; names the step in runs and audits."
    )
    next: StepRef | None = Field(
        None, description="The step after this one (default: the following)."
    )
    description: str | None = None
    public: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Text for the customer, e.g. 'Your request is being reviewed': the run's "
        "status page (`{{ run.status_url }}`) shows it once the run reaches this step.",
    )


class SendStep(_Step):
    """Renders a template and sends it on a channel, respecting consent, quiet hours and the cap."""

    step_type: ClassVar[str] = "send"
    send: Identifier = Field(description="The template to send.")
    channel: (
        Annotated[
            Annotated[Identifier, Tag("text")] | Annotated[list[Identifier], Tag("list")],
            Discriminator(
                lambda v: _shape(v, ()),
                custom_error_type="channel_shape",
                custom_error_message="channel: must be a channel name or a list of them",
            ),
        ]
        | None
    ) = Field(
        None,
        description="A channel, or a list tried in order as fallbacks (default: the template's one form).",
    )
    to: Expr | None = Field(
        None, description="The recipient (default: the channel's address on the profile)."
    )
    on_capped: Literal["delay", "skip"] = "delay"
    on_failure: StepRef | None = None


def _check_offset(value: str) -> str:
    parse_offset(value)
    return value


Offset = Annotated[
    str,
    AfterValidator(_check_offset),
    Field(description="A duration, before (leading '-') or after the date: -3d, 12h, -1d6h."),
]

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class UntilDate(_Model):
    """A date read from the run: `{date: profile.renewal_date, offset: -3d, at: "09:00"}`.

    A date-only value is taken in the customer's time zone at `at` (default 00:00); a value
    with a time keeps its instant, `at` replacing its local time of day if given. The
    offset moves the result on the customer's wall clock, so -3d keeps 09:00 across a DST
    change. A missing, unreadable or past date goes to the step's `on_missing` (default: on
    at once)."""

    date: Expr = Field(
        description="An expression giving a date or datetime (ISO-8601 text, a date, "
        "a datetime), e.g. profile.renewal_date."
    )
    offset: Offset | None = None
    at: TimeOfDay | None = Field(None, description="The local time of day (HH:MM) to wake at.")


class UntilWeekday(_Model):
    """The next such weekday at `at` in the customer's time zone (today if still ahead)."""

    weekday: Weekday = Field(description="mon, tue, wed, thu, fri, sat or sun.")
    at: TimeOfDay = Field("00:00", description="The local time of day (HH:MM) to wake at.")


class WaitUntil(_Model):
    """Wait until a local time: `"09:00"` (the next one), a date read from the run
    (`{date: ..., offset: -3d, at: "09:00"}`) or a weekday (`{weekday: mon, at: "10:00"}`)."""

    until: Annotated[
        Annotated[TimeOfDay, Tag("text")]
        | Annotated[UntilDate, Tag("date")]
        | Annotated[UntilWeekday, Tag("weekday")],
        Discriminator(
            lambda v: _shape(v, ("date", "weekday")),
            custom_error_type="until_shape",
            custom_error_message=(
                "until: must be a time like '09:00', {date: <expression>, offset: -3d, "
                "at: '09:00'} or {weekday: mon, at: '10:00'}"
            ),
        ),
    ]


class WaitEvent(_Model):
    """Wait for an event; it becomes `event` for the following steps."""

    event: str = Field(min_length=1, max_length=200)
    within: Duration | None = None
    when: Expr | None = None
    correlate: Expr | None = Field(
        None,
        description="Which runs the event is for: an expression on the event whose value "
        "must equal the run's key (default: the entry key, e.g. event.invoice_id), or "
        "`none` for every run of the customer.",
    )


class WaitStep(_Step):
    """A durable timer, the next local time of day, or a wait for an event."""

    step_type: ClassVar[str] = "wait"
    wait: Annotated[
        Annotated[Duration, Tag("text")]
        | Annotated[WaitUntil, Tag("until")]
        | Annotated[WaitEvent, Tag("event")],
        Discriminator(
            lambda v: _shape(v, ("event", "until")),
            custom_error_type="wait_shape",
            custom_error_message=(
                "wait: must be a duration like '3d', {until: 'HH:MM'}, {until: {date: ...}} "
                "or {event: name, within: 3d}"
            ),
        ),
    ]
    on_timeout: StepRef | None = Field(
        None, description="Where to go when `within` passes without the event."
    )
    on_missing: StepRef | None = Field(
        None,
        description="Where to go when `until: {date: ...}` is missing, unreadable or "
        "already past (default: on to the next step at once).",
    )


class BranchRule(_Model):
    when: Expr
    goto: StepRef


class BranchStep(_Step):
    """First matching condition wins; `else` when none matches (default: the following step)."""

    step_type: ClassVar[str] = "branch"
    branch: list[BranchRule] = Field(min_length=1)
    else_: StepRef | None = Field(None, alias="else")


class SplitStep(_Step):
    """A random but stable A/B/n split per customer; weights are percentages summing to 100."""

    step_type: ClassVar[str] = "split"
    split: dict[Identifier, Annotated[float, Field(ge=0, le=100)]] = Field(min_length=1)
    paths: dict[Identifier, StepRef]
    salt: Salt | None = Field(
        None,
        description=(
            "Starts a new experiment on purpose: a customer's arm comes from the journey id,"
            " the step id, the customer id and this salt, never from the journey's version,"
            " so edits keep everyone in their arm; a new salt reshuffles everyone."
        ),
    )


def _cell_text(value: Any) -> Any:
    """A plain YAML number or boolean in a table cell (`late: 0`) is that literal's test."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return value


Cell = Annotated[
    str,
    BeforeValidator(_cell_text),
    WithJsonSchema(
        {
            "type": ["string", "number", "boolean"],
            "description": "A unary test: - (any), < 0.3, >= 30, [0.3..0.7), "
            '(0..1], "gold", "silver" or = 5.',
        }
    ),
]


class DecideRule(_Model):
    """One row of a decision table: when every cell holds, set the outputs and go to `goto`."""

    when: dict[Identifier, Cell] = Field(
        default_factory=dict,
        description="A unary test per input (an input left out matches anything).",
    )
    set: dict[Identifier, Expr] = Field(
        default_factory=dict,
        description="Outputs, each an expression, into `vars.<name>`.",
    )
    goto: StepRef | None = Field(
        None, description="Where this rule leads (default: the step after the table)."
    )


class DecideTable(_Model):
    """A decision table: inputs read once, rules of unary tests, outputs into `vars`."""

    inputs: dict[Identifier, Expr] = Field(
        min_length=1, description="The values the rules test, each an expression, by name."
    )
    hit: Literal["first", "unique", "collect"] = Field(
        "first",
        description="first: the first matching rule; unique: rules must not overlap (the "
        "validator checks); collect: every matching rule's outputs, as lists in `vars`, and "
        "the first one's goto.",
    )
    rules: list[DecideRule] = Field(
        default_factory=list, description="The rules, in order; or `rules_csv:`."
    )
    rules_csv: str | None = Field(
        None,
        description="A CSV file beside this journeys file holding the rules: a header of "
        "input names, output names and `goto`, then one rule per row (read when the file "
        "is loaded, so the compiled plan carries the rules).",
    )
    else_: StepRef | None = Field(
        None, alias="else", description="Where to go when no rule matches (default: next)."
    )


class DecideStep(_Step):
    """A decision table (DMN-style): the first, the only or every matching rule sets
    `vars` and chooses where to go; `else` when none matches."""

    step_type: ClassVar[str] = "decide"
    decide: DecideTable


class ScoreStep(_Step):
    """Calls a risk model; the result is in `scores.<model>`."""

    step_type: ClassVar[str] = "score"
    score: Identifier = Field(description="A model declared under `models:`.")
    features: dict[str, Expr] = Field(default_factory=dict)


class ReviewStep(_Step):
    """Opens a human-review task and waits for a decision."""

    step_type: ClassVar[str] = "review"
    review: Identifier = Field(description="The queue the task goes to.")
    title: TemplateText
    details: TemplateText | None = None
    decisions: dict[Identifier, StepRef] = Field(min_length=1)
    sla: Duration | None = None
    on_timeout: StepRef | None = None
    escalate_to: Identifier | None = Field(
        None, description="Queue to re-queue to once, at the SLA."
    )


class SetStep(_Step):
    """Sets journey variables (`vars.x`) or profile attributes (`profile.x`)."""

    step_type: ClassVar[str] = "set"
    set: dict[Annotated[str, Field(pattern=r"^(vars|profile)\.[A-Za-z0-9_]+$")], Expr] = Field(
        min_length=1
    )


class CallSpec(_Model):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str = Field(description="The URL (a template; ${VAR} is read from the environment).")
    json_: dict[str, Expr] | None = Field(
        None, alias="json", description="Body fields, each an expression."
    )
    headers: dict[str, str] | None = None
    timeout: Duration = "10s"


class CallStep(_Step):
    """An outbound HTTP call with durable retries; the response is in `vars.<step id>`."""

    step_type: ClassVar[str] = "call"
    call: CallSpec
    on_failure: StepRef | None = None


class ExitStep(_Step):
    """Ends the run with an outcome."""

    step_type: ClassVar[str] = "exit"
    exit: Identifier


STEP_MODELS: tuple[type[_Step], ...] = (
    SendStep,
    WaitStep,
    BranchStep,
    SplitStep,
    ScoreStep,
    ReviewStep,
    SetStep,
    CallStep,
    ExitStep,
    DecideStep,
)
STEP_TYPES: tuple[str, ...] = tuple(m.step_type for m in STEP_MODELS)


def step_type_of(raw: Any) -> str | None:
    """The type key a raw step mapping carries (the first one, if it has several)."""
    if isinstance(raw, BaseModel):
        return getattr(raw, "step_type", None)
    if isinstance(raw, dict):
        for key in STEP_TYPES:
            if key in raw:
                return key
    return None


Step = Annotated[
    Annotated[SendStep, Tag("send")]
    | Annotated[WaitStep, Tag("wait")]
    | Annotated[BranchStep, Tag("branch")]
    | Annotated[SplitStep, Tag("split")]
    | Annotated[ScoreStep, Tag("score")]
    | Annotated[ReviewStep, Tag("review")]
    | Annotated[SetStep, Tag("set")]
    | Annotated[CallStep, Tag("call")]
    | Annotated[ExitStep, Tag("exit")]
    | Annotated[DecideStep, Tag("decide")],
    Discriminator(
        step_type_of,
        custom_error_type="step_type",
        custom_error_message="a step needs one type key: " + ", ".join(STEP_TYPES),
    ),
]


class Journey(_Model):
    """A customer journey: who enters, the steps they go through, and what ends it."""

    id: Identifier = Field(
        description="[a-z0-9_]+, unique and stable: it names runs and analytics."
    )
    name: str | None = None
    description: str | None = None
    entry: Entry
    exit_on: list[ExitOn] = Field(default_factory=list)
    holdout: str | float | None = Field(
        None, description="Global control group, e.g. '5%': enters, is recorded, gets nothing."
    )
    salt: Salt | None = Field(
        None,
        description=(
            "Starts a new holdout on purpose: who is held out comes from the journey id, the"
            " customer id and this salt, never from the journey's version; a new salt draws"
            " a new control group. Splits have their own `salt:`."
        ),
    )
    settings: Settings | None = None
    goals: list[Goal] = Field(
        default_factory=list,
        description="What counts as a conversion: an event within a window after entry "
        "({event: payment_received, within: 7d, value: event.amount}) or an exit outcome "
        "({outcome: converted}). Holdout runs are measured by the same goals.",
    )
    steps: list[Step] = Field(min_length=1)

    @field_validator("holdout")
    @classmethod
    def _holdout(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            holdout_percent(value)
        return value


def holdout_percent(value: str | float | None) -> float:
    """The holdout as a percentage: `'5%'` and `5` both mean five percent."""
    if value is None:
        return 0.0
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", value)
        if not match:
            raise ValueError(f"holdout '{value}' must be a percentage like '5%'")
        number = float(match.group(1))
    else:
        number = float(value)
    if not 0 <= number < 100:
        raise ValueError(f"holdout {value} must be between 0% and 100%")
    return number


class Document(_Model):
    """A journeys file: settings, the catalogue (events, channels, models, templates), journeys."""

    version: Literal[1] = Field(description="The language version; only 1 exists.")
    settings: Settings = Field(default_factory=Settings)
    events: dict[str, dict[Identifier, FieldDeclaration]] = Field(
        default_factory=dict,
        description="Optional event schemas; expressions are checked against them, and "
        "fields marked email, phone, pii or secret are masked outside sends.",
    )
    profile: dict[Identifier, FieldDeclaration] = Field(
        default_factory=dict,
        description="Optional profile schema: traits marked email, phone, pii or secret "
        "(well-known names are marked without it) are masked outside sends.",
    )
    channels: dict[
        Identifier,
        Annotated[
            Annotated[str, Tag("text")] | Annotated[ChannelSpec, Tag("url")],
            Discriminator(
                lambda v: _shape(v, ("url",)),
                custom_error_type="channel_spec_shape",
                custom_error_message="a channel is an Apprise URL or {url: ..., retry: ..., rate: ...}",
            ),
        ],
    ] = Field(
        default_factory=dict,
        description="Apprise URLs by channel name (or {url, retry, rate}); use ${VAR} for secrets.",
    )
    models: dict[Identifier, ModelSpec] = Field(default_factory=dict)
    templates: dict[Identifier, TemplateSpec] = Field(default_factory=dict)
    journeys: list[Journey] = Field(default_factory=list)
