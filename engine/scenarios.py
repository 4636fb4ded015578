"""Scenario tests of journeys (`journeys test`): the file format, loaded with line numbers.

A scenario file (default `scenarios/*.yaml` beside journeys.yaml) holds `scenarios:`, each
one customer's run of one journey on simulated time: who the customer is, when it starts,
what happens when (events, review decisions), the model scores and call answers to use,
and what must come out (path, outcome, waits, messages, messages not sent, review tasks).
docs/testing.md ("Scenario tests") is the reference; `scenario_schema()` the JSON Schema.

Pure: loading and checking only. Running a scenario needs Temporal and a worker, so it
lives in `service.scenario_runner`. Errors point at FILE:LINE:COL, as the catalogue's do
(`engine.loader` parses with the positions, `engine.violations` formats).
"""

from __future__ import annotations

import difflib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from engine.durations import parse_duration
from engine.loader import load_text
from engine.violations import Path as DataPath
from engine.violations import SourceMap, Violation

__all__ = [
    "SEND_REFUSALS",
    "CallAnswer",
    "Expectations",
    "ExpectedMessage",
    "ExpectedReview",
    "ExpectedWait",
    "LoadedScenarios",
    "Moment",
    "Scenario",
    "ScenarioFile",
    "TimelineEntry",
    "UnsentMessage",
    "load_scenario_file",
    "load_scenario_text",
    "moment_seconds",
    "scenario_schema",
]

SEND_REFUSALS = ("quiet", "capped", "no_consent", "no_address", "suppressed", "skipped", "failed")
"""Why a send step sent nothing on a channel (a `not_sent` entry's `reason`): quiet hours
(`quiet`: deferred, then sent later unless the run ended first), the frequency cap, no
consent, no address, a suppressed address, skipped, failed."""


def moment_seconds(text: str) -> int:
    """Seconds from the start: a duration (`90m`, `2h`, `1d12h`), or `0s` (the start)."""
    if text.strip() in ("0", "0s", "0m", "0h", "0d"):
        return 0
    return parse_duration(text)


def _check_moment(value: str) -> str:
    try:
        moment_seconds(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a duration such as 0s, 30m, 2h or 3d") from None
    return value


Moment = Annotated[
    str,
    AfterValidator(_check_moment),
    Field(description="A time after the scenario's start, as a duration: `0s`, `90m`, `2h`, `3d`."),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimelineEntry(_Model):
    """Something that happens at `at`: an event (`event:`) or a reviewer's decision on the
    run's open review task (`decision:`)."""

    at: Moment
    event: str | None = Field(None, description="An event's name; the customer sends it.")
    properties: dict[str, Any] = Field(default_factory=dict, description="The event's properties.")
    decision: str | None = Field(
        None, description="A decision on the open review task, e.g. approve or reject."
    )
    by: str = Field("reviewer", description="Who decides (a reviewer's name).")
    note: str | None = Field(None, description="The reviewer's note (a rejection needs one).")

    @model_validator(mode="after")
    def _one_thing(self) -> TimelineEntry:
        if (self.event is None) == (self.decision is None):
            raise ValueError("a timeline entry has either `event:` or `decision:`")
        if self.event is None and self.properties:
            raise ValueError("`properties:` goes with `event:`")
        return self

    @property
    def seconds(self) -> int:
        return moment_seconds(self.at)


class CallAnswer(_Model):
    """What a `call` step's endpoint answers, instead of calling it."""

    status: int = Field(200, ge=100, le=599)
    body: Any = None


class ExpectedWait(_Model):
    """At `at`, the run waits at step `step`."""

    at: Moment
    step: str


class ExpectedMessage(_Model):
    """A message sent (captured): its channel, template, and text it contains (the subject
    or the body). `after` / `before`: sent within that time from the start."""

    channel: str
    template: str | None = None
    step: str | None = None
    contains: list[str] = Field(default_factory=list)
    after: Moment | None = None
    before: Moment | None = None

    @field_validator("contains", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class UnsentMessage(_Model):
    """A message that must not be sent: no message on `channel` (from `template` or
    `step`, when given); with `reason`, the run's path says why (quiet hours, the cap,
    consent...)."""

    channel: str
    template: str | None = None
    step: str | None = None
    reason: (
        Literal["quiet", "capped", "no_consent", "no_address", "suppressed", "skipped", "failed"]
        | None
    ) = None
    before: Moment | None = Field(
        None, description="Only not before this time (quiet hours: sent later, not at once)."
    )


class ExpectedReview(_Model):
    """A review task opened: its queue, and text its title contains."""

    queue: str
    step: str | None = None
    title: str | None = Field(None, description="Text the title contains.")


class Expectations(_Model):
    path: list[str] | None = Field(
        None,
        description="The steps the run takes, exactly, in order (a repeated step listed again).",
    )
    passes_through: list[str] | None = Field(
        None, description="Steps the run takes in this order, others allowed in between."
    )
    avoids: list[str] | None = Field(None, description="Steps the run never takes.")
    outcome: str | None = Field(
        None,
        description="How the run ends: an exit's outcome, `completed`, `not_entered`, "
        "`holdout`, or `running` (still going at the end of the scenario).",
    )
    waits: list[ExpectedWait] = Field(default_factory=list)
    messages: list[ExpectedMessage] | None = Field(
        None, description="Every message the run sends, in order (none: `[]`)."
    )
    not_sent: list[UnsentMessage] = Field(default_factory=list)
    reviews: list[ExpectedReview] | None = Field(
        None, description="Every review task the run opens, in order."
    )


class Scenario(_Model):
    name: str = Field(min_length=1)
    journey: str
    customer: str = Field("customer-1", min_length=1, description="The customer's id.")
    profile: dict[str, Any] = Field(
        default_factory=dict,
        description="The customer's traits: addresses (email, phone, push_token), timezone, "
        "and any other trait the journey reads (consent: `sms_opt_out: true`...).",
    )
    start: datetime = Field(
        description="When the timeline's 0s is: a date and time with its offset, "
        "e.g. 2026-03-02T20:30:00+09:00."
    )
    timeline: list[TimelineEntry] = Field(min_length=1)
    scores: dict[str, float | Literal["fail"]] = Field(
        default_factory=dict,
        description="A score per model name, used instead of calling the model; `fail`: "
        "the model fails (its fallback is used). A model not listed runs for real.",
    )
    calls: dict[str, CallAnswer] = Field(
        default_factory=dict,
        description="Per `call` step id, its answer. A call step not listed answers 200 "
        "with no body.",
    )
    run_for: Moment | None = Field(
        None,
        description="How long the scenario lasts; default: until the run ends (at most the "
        "journey's max_duration) or waits with nothing left to happen.",
    )
    expect: Expectations

    @field_validator("start")
    @classmethod
    def _zoned(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("the start needs an offset (e.g. +09:00 or Z)")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Scenario:
        if self.timeline[0].event is None:
            raise ValueError("the timeline starts with an event (the one that starts the run)")
        times = [entry.seconds for entry in self.timeline]
        if times != sorted(times):
            raise ValueError("the timeline's `at:` times go in order")
        return self

    def moment(self, at: str) -> datetime:
        return self.start + timedelta(seconds=moment_seconds(at))


class ScenarioFile(_Model):
    """A scenario file: `scenarios:`, a list of scenarios."""

    scenarios: list[Scenario] = Field(min_length=1)


def scenario_schema() -> dict[str, Any]:
    """The JSON Schema of a scenario file (`journeys test --schema`)."""
    schema = ScenarioFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "journeys scenario file"
    return schema


class LoadedScenarios(BaseModel):
    """One file's scenarios (each with the line it starts on), or what is wrong with it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    file: str
    scenarios: list[Scenario] = Field(default_factory=list)
    lines: list[int] = Field(default_factory=list)
    violations: list[Violation] = Field(default_factory=list)
    source: SourceMap | None = None

    def line_of(self, index: int, *path: str | int) -> int:
        """The line of scenario ``index`` (or of ``path`` inside it)."""
        if self.source is None:
            return 1
        return self.source.locate(("scenarios", index, *path)).line


def load_scenario_file(path: str | Path) -> LoadedScenarios:
    """Load and check a scenario file; problems come back as violations, never raised."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return LoadedScenarios(
            file=file, violations=[Violation("io", f"cannot read: {error}", file, 1, 1)]
        )
    return load_scenario_text(text, file=file)


def load_scenario_text(text: str, *, file: str = "scenarios.yaml") -> LoadedScenarios:
    """Load and check scenario-file text."""
    loaded = load_text(text, file=file)
    if not loaded.ok:
        violations = [
            v
            if v.code != "type"
            else Violation("type", "a scenario file is a mapping with `scenarios:`", file, 1, 1)
            for v in loaded.violations
        ]
        return LoadedScenarios(file=file, violations=violations)
    try:
        parsed = ScenarioFile.model_validate(loaded.data)
    except ValidationError as error:
        violations = [_violation(e, loaded.source, file) for e in error.errors(include_url=False)]
        return LoadedScenarios(file=file, violations=violations, source=loaded.source)
    lines = [loaded.source.locate(("scenarios", i)).line for i in range(len(parsed.scenarios))]
    return LoadedScenarios(file=file, scenarios=parsed.scenarios, lines=lines, source=loaded.source)


_KEYS: dict[str, type[BaseModel]] = {
    "scenarios": Scenario,
    "timeline": TimelineEntry,
    "expect": Expectations,
    "waits": ExpectedWait,
    "messages": ExpectedMessage,
    "not_sent": UnsentMessage,
    "reviews": ExpectedReview,
    "calls": CallAnswer,
}


def _violation(error: ErrorDetails, source: SourceMap, file: str) -> Violation:
    """A pydantic error at its place in the file, with the closest key for a typo."""
    path: DataPath = tuple(part for part in error["loc"] if isinstance(part, str | int))
    if error["type"] == "union_tag_invalid" or (path and path[-1] in ("float", "literal['fail']")):
        path = path[:-1]
    where = source.locate(path, key=error["type"] == "extra_forbidden")
    message = error["msg"].removeprefix("Value error, ")
    hint: str | None = None
    if error["type"] == "extra_forbidden" and path:
        name = str(path[-1])
        model = _model_at(path[:-1])
        if model is not None:
            close = difflib.get_close_matches(name, list(model.model_fields), n=1)
            hint = f"did you mean `{close[0]}`?" if close else None
        message = f"unknown key `{name}`"
    elif error["type"] == "missing" and path:
        message = f"`{path[-1]}` is missing"
    shown = ".".join(str(part) for part in path) or "file"
    return Violation("scenario", f"{shown}: {message}", file, where.line, where.column, hint=hint)


def _model_at(path: DataPath) -> type[BaseModel] | None:
    """The model whose keys the mapping at ``path`` may have."""
    if not path:
        return ScenarioFile
    names = [part for part in path if isinstance(part, str)]
    last = names[-1] if names else None
    if isinstance(path[-1], str) and last == "calls":
        return None  # a step id: any
    if isinstance(path[-1], str) and path[-1] == "expect":
        return Expectations
    if len(path) >= 2 and path[-2] == "calls":
        return CallAnswer
    return _KEYS.get(last) if last is not None else None
