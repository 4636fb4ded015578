"""The validator: a pure function from a loaded journeys document to every violation in it.

It checks structure (pydantic, with the closest valid key for typos), the step graph
(duplicate ids, dangling references, unreachable steps, loops that never wait),
expressions and templates (parsed once here, with names and event properties checked
against the declared schemas) and cross references (templates, channels, models).

Where a step leads is not worked out here: each step is compiled (`compile_step`) and
`engine.successors` names its ways out; this module only knows where each way out is
written, for the messages. It never raises on any input and knows nothing of Temporal
or the database.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, assert_never

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from engine import spec
from engine.compiler import compile_step
from engine.durations import parse_duration
from engine.loader import LoadedDocument
from engine.plan import CORRELATE_NONE
from engine.stats_models import RESERVED_ARM_NAMES
from engine.successors import Successor, successors
from engine.tables import gaps, overlapping
from engine.typecheck import (
    Scope,
    Type,
    check_cell,
    check_expression,
    check_template,
    expression_type,
    journey_var_types,
    scope_for,
)
from engine.unary import HELP, UnaryTest, UnaryTestError, parse_test
from engine.violations import Path, Violation
from rules import (
    MESSAGE_NAMES,
    CompiledTemplate,
    Expression,
    ExpressionError,
    TemplateError,
    compile_expression,
    compile_template,
)

__all__ = [
    "GOAL_NAMES",
    "MODEL_BODY_NAMES",
    "CheckedDocument",
    "check_document",
    "closest",
    "validate",
]

TRIGGER_FIELDS = ("properties", "name", "timestamp", "message_id")
CUSTOMER_FIELDS = ("id", "email", "phone", "push_token")
JOURNEY_FIELDS = ("id", "version", "run_id", "step")
REVIEW_FIELDS = ("decision", "reviewer", "note", "at")
RUN_FIELDS = ("status_url",)  # a message template's `run` (rules.MESSAGE_NAMES)
SCORE_FIELDS = ("score", "model", "model_version", "latency_ms", "fallback_used", "error")
MODEL_CALL_BUDGET_SECONDS = 45  # timeout x tries; the workflow gives the activity 60 s
MAX_TEMPLATE_FILE = 256 * 1024
GOAL_NAMES = frozenset({"event", "profile", "customer", "now"})
"""What a goal's `value` and `when` read: the goal event and the customer, as it is stored."""
MODEL_BODY_NAMES = frozenset({"features", "model"})
"""The names a json model's `body:` template reads: the step's features and the model's name."""


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to a misspelt ``word``, if one is close enough."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    options = sorted(set(choices))
    match = closest(word, options)
    if match:
        return f"did you mean '{match}'?"
    if options and len(options) <= 12:
        return "valid: " + ", ".join(options)
    return None


@dataclass
class CheckedDocument:
    """What validation produced: the typed document (if structurally sound) and violations."""

    loaded: LoadedDocument
    document: spec.Document | None
    violations: list[Violation]
    templates: dict[tuple[str, str], CompiledTemplate] = field(default_factory=dict)
    template_sources: dict[str, dict[str, str]] = field(default_factory=dict)
    broken_journeys: set[str] = field(default_factory=set)
    event_reads: dict[str, frozenset[str] | None] = field(default_factory=dict)
    """For each journey, the event properties its expressions read (None: the event whole)."""
    key_reads: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    """For each journey with an entry key, the paths the key expression reads."""

    @property
    def errors(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors


def validate(loaded: LoadedDocument) -> list[Violation]:
    """Every violation in ``loaded``, in file order; empty when it is valid."""
    return check_document(loaded).violations


def check_document(loaded: LoadedDocument) -> CheckedDocument:
    """Validate ``loaded``; never raises, whatever the input."""
    checker = _Checker(loaded)
    try:
        checker.run()
    except Exception as exc:
        checker.add("internal", (), f"the validator failed on this document: {exc!r}")
    checker.violations.sort(key=lambda v: (v.file, v.line, v.column, v.message))
    return CheckedDocument(
        loaded=loaded,
        document=checker.document,
        violations=checker.violations,
        templates=checker.compiled_templates,
        template_sources=checker.template_sources,
        broken_journeys=checker.broken_journeys,
        event_reads={
            journey: None if reads is None else frozenset(reads)
            for journey, reads in checker.event_reads.items()
        },
        key_reads=checker.key_reads,
    )


# ----------------------------------------------------------------------------- pydantic errors

_TAGGED_PARENTS: dict[str, frozenset[str]] = {
    "wait": frozenset({"text", "until", "event"}),
    "until": frozenset({"text", "date", "weekday"}),
    "push": frozenset({"text", "title"}),
    "channel": frozenset({"text", "list"}),
}


def _clean_loc(loc: tuple[int | str, ...]) -> Path:
    """Drop the union tags pydantic puts in error locations, leaving the data path."""
    out: list[str | int] = []
    items = list(loc)
    i = 0
    while i < len(items):
        elem = items[i]
        out.append(elem)
        i += 1
        if i >= len(items):
            break
        nxt = items[i]
        if isinstance(elem, int) and len(out) >= 2 and out[-2] == "steps":
            i += 1  # the step union's tag
        elif (
            isinstance(elem, int)
            and len(out) >= 2
            and out[-2] == "goals"
            and nxt in ("event", "outcome")
        ):
            i += 1  # the goal union's tag
        elif (
            (len(out) >= 2 and out[-2] == "models" and nxt in ("python", "http", "onnx"))
            or (len(out) >= 2 and out[-2] == "channels" and nxt in ("text", "url"))
            or (len(out) == 2 and out[0] == "profile" and nxt in ("text", "spec"))
            or (len(out) == 3 and out[0] == "events" and nxt in ("text", "spec"))
            or (isinstance(elem, str) and elem in _TAGGED_PARENTS and nxt in _TAGGED_PARENTS[elem])
            or (
                isinstance(nxt, str)
                and (
                    nxt in ("str", "float", "int")
                    or nxt.startswith(("function-", "list[", "dict["))
                )
            )
        ):
            i += 1
    return tuple(out)


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types inside an annotation (through Annotated, unions, Optional)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        found: list[Any] = []
        for arg in typing.get_args(annotation):
            found.extend(_unwrap(arg))
        return found
    return [annotation]


def _model_at(root: type[BaseModel], path: Path, data: Any) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` below ``root``."""
    current: list[Any] = [root]
    value = data
    for elem in path:
        current = [inner for candidate in current for inner in _types_below(candidate, elem)]
        value = _item(value, elem)
    models = [c for c in current if isinstance(c, type) and issubclass(c, BaseModel)]
    if len(models) > 1 and isinstance(value, dict):
        chosen = _tagged_model(models, value)
        if chosen is not None:
            return chosen
    return models[0] if models else None


def _types_below(candidate: Any, elem: str | int) -> list[Any]:
    """The types that may hold the value at ``elem`` inside a ``candidate`` value."""
    if isinstance(candidate, type) and issubclass(candidate, BaseModel):
        if not isinstance(elem, str):
            return []
        return [
            inner
            for name, info in candidate.model_fields.items()
            if elem in (name, info.alias)
            for inner in _unwrap(info.annotation)
        ]
    origin = typing.get_origin(candidate)
    args = typing.get_args(candidate)
    if origin is list and args:
        return _unwrap(args[0])
    if origin is dict and len(args) == 2:
        return _unwrap(args[1])
    return []


def _item(value: Any, elem: str | int) -> Any:
    """``value[elem]`` when there is one, else None."""
    if isinstance(value, dict):
        return value.get(elem)
    if isinstance(value, list) and isinstance(elem, int) and elem < len(value):
        return value[elem]
    return None


def _tagged_model(models: list[type[BaseModel]], value: dict[str, Any]) -> type[BaseModel] | None:
    """Which of a union's ``models`` a mapping is: by its step type key, or its ``kind``."""
    for model in models:
        key = getattr(model, "step_type", None)
        if key and key in value:
            return model
    kind = value.get("kind")
    for model in models:
        literal = model.model_fields.get("kind")
        if kind and literal and kind in typing.get_args(literal.annotation):
            return model
    if "kind" in value:
        return None

    # No tag: the form with the most of its required keys present, then of the keys given
    # (`wait: {event: e, withn: 1d}` is an event wait, `wait: {until: ..., within: 1d}` not).
    def fit(model: type[BaseModel]) -> tuple[int, int]:
        keys = set(_allowed_keys(model))
        required = {
            info.alias or name for name, info in model.model_fields.items() if info.is_required()
        }
        return len(required & value.keys()), len(keys & value.keys())

    best = max(models, key=fit)
    return best if fit(best) > (0, 0) else None


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _describe(value: Any) -> str:
    names = {
        str: "text",
        int: "a whole number",
        float: "a number",
        bool: "true/false",
        list: "a list",
        dict: "a mapping",
        type(None): "nothing",
    }
    return names.get(type(value), type(value).__name__)


# ----------------------------------------------------------------------------- the checker


class _Checker:
    def __init__(self, loaded: LoadedDocument) -> None:
        self.loaded = loaded
        self.source = loaded.source
        self.raw: dict[str, Any] = loaded.data if isinstance(loaded.data, dict) else {}
        self.violations: list[Violation] = list(loaded.violations)
        self.document: spec.Document | None = None
        self.compiled_templates: dict[tuple[str, str], CompiledTemplate] = {}
        self.template_sources: dict[str, dict[str, str]] = {}
        self.broken_journeys: set[str] = set()
        self.broken_steps: dict[str, set[str]] = {}
        self.event_reads: dict[str, set[str] | None] = {}
        self.key_reads: dict[str, tuple[tuple[str, ...], ...]] = {}

    # -- reporting

    def add(
        self,
        code: str,
        path: Path,
        message: str,
        *,
        hint: str | None = None,
        key: bool = False,
        warning: bool = False,
        offset: int | None = None,
    ) -> None:
        """``offset``: the character of the value at ``path`` the problem is at, when the
        source holds that value verbatim (else the value's own position is used)."""
        inside = self.source.locate_inside(path, offset) if offset is not None else None
        loc = inside or self.source.locate(path, key=key)
        journey, step = self._names_at(path)
        self.violations.append(
            Violation(
                code=code,
                message=message,
                file=loc.file,
                line=loc.line,
                column=loc.column,
                journey=journey,
                step=step,
                hint=hint,
                severity="warning" if warning else "error",
            )
        )

    def _names_at(self, path: Path) -> tuple[str | None, str | None]:
        journey = step = None
        if len(path) >= 2 and path[0] == "journeys" and isinstance(path[1], int):
            journeys = self.raw.get("journeys")
            if isinstance(journeys, list) and path[1] < len(journeys):
                raw_journey = journeys[path[1]]
                if isinstance(raw_journey, dict):
                    journey = (
                        raw_journey.get("id") if isinstance(raw_journey.get("id"), str) else None
                    )
                    if len(path) >= 4 and path[2] == "steps" and isinstance(path[3], int):
                        steps = raw_journey.get("steps")
                        if (
                            isinstance(steps, list)
                            and path[3] < len(steps)
                            and isinstance(steps[path[3]], dict)
                        ):
                            sid = steps[path[3]].get("id")
                            step = sid if isinstance(sid, str) else f"#{path[3] + 1}"
        return journey, step

    def add_pydantic(
        self, root: type[BaseModel], prefix: Path, data: Any, errors: list[ErrorDetails]
    ) -> None:
        """Report pydantic's ``errors`` for ``data`` (validated as ``root``, at ``prefix``)."""
        for error in errors:
            loc = _clean_loc(tuple(error["loc"]))
            if error["type"] == "extra_forbidden":
                self._add_extra_key(root, prefix + loc, loc, data)
            else:
                self._add_invalid(prefix + loc, loc, error)

    def _add_extra_key(self, root: type[BaseModel], path: Path, loc: Path, data: Any) -> None:
        key = str(loc[-1])
        parent = _model_at(root, loc[:-1], data)
        if parent is not None and issubclass(parent, spec.STEP_MODELS) and key in spec.STEP_TYPES:
            self.add(
                "step-type",
                path,
                f"a step has one type key, but this one has '{getattr(parent, 'step_type', '?')}' and '{key}'",
                key=True,
                hint="split it into two steps",
            )
            return
        allowed = _allowed_keys(parent) if parent else []
        self.add(
            "unknown-key", path, f"unknown key '{key}'", key=True, hint=_did_you_mean(key, allowed)
        )

    def _add_invalid(self, path: Path, loc: Path, error: ErrorDetails) -> None:
        kind = error["type"]
        value = error.get("input")
        names = [p for p in loc if isinstance(p, str)]
        if names and names[-1] == "[key]":  # a mapping key refused: name its mapping
            names = names[:-2]
        field_name = names[-1] if names else "value"
        if kind == "union_tag_invalid":
            ctx = error.get("ctx") or {}
            tag = str(ctx.get("discriminator", "kind")).strip("'")
            options = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
            self.add(
                "value",
                (*path, tag),
                f"{tag}: '{value.get(tag) if isinstance(value, dict) else value}' is not one "
                f"of {', '.join(options)}",
                hint=_did_you_mean(str(ctx.get("tag", "")), options),
            )
            return
        if kind == "missing":
            self.add("missing-key", path[:-1], f"missing required key '{loc[-1]}'")
        elif kind == "literal_error" and loc == ("version",):
            self.add(
                "version",
                path,
                f"language version {value!r} is not supported: this engine reads version 1",
                hint="set version: 1",
            )
        elif kind == "value_error":
            message = str(error["msg"]).removeprefix("Value error, ")
            code = "duration" if "duration" in message or "time of day" in message else "value"
            self.add(code, path, message)
        elif kind == "string_pattern_mismatch":
            self.add(
                "identifier",
                path,
                f"{field_name}: '{value}' is not a valid id",
                hint="use lowercase letters, digits and _ (like payment_recovery)",
            )
        elif kind in (
            "step_type",
            "wait_shape",
            "until_shape",
            "push_shape",
            "channel_shape",
            "channel_spec_shape",
            "goal_shape",
        ):
            self.add("type", path, str(error["msg"]))
        elif kind.endswith("_type") or kind in ("model_attributes_type", "dict_type", "list_type"):
            expected = str(error["msg"]).removeprefix("Input should be ")
            self.add("type", path, f"{field_name}: expected {expected}, got {_describe(value)}")
        else:
            self.add("value", path, f"{field_name}: {error['msg']}")

    # -- the run

    def run(self) -> None:
        if any(
            v.severity == "error" and v.code in ("yaml", "unsafe-yaml", "yaml-too-large", "file")
            for v in self.loaded.violations
        ):
            return
        catalogue = self._check_catalogue()
        journeys = self._check_journeys(catalogue)
        self.document = spec.Document.model_construct(**catalogue, journeys=journeys)
        self._check_templates(self.document)
        self._check_catalogue_secrets()
        self._check_models(self.document)
        seen: dict[str, int] = {}
        for index, journey in self._journeys_with_index(journeys):
            if journey.id in seen:
                self.add(
                    "duplicate-id",
                    ("journeys", index, "id"),
                    f"journey id '{journey.id}' is used twice",
                    hint="journey ids must be unique",
                )
            seen[journey.id] = index
            _JourneyChecker(self, self.document, journey, index).run()

    def _journeys_with_index(
        self, journeys: list[spec.Journey]
    ) -> Iterator[tuple[int, spec.Journey]]:
        raw = self.raw.get("journeys")
        ids = (
            [j.get("id") if isinstance(j, dict) else None for j in raw]
            if isinstance(raw, list)
            else []
        )
        used: set[int] = set()
        for journey in journeys:
            index = next((i for i, rid in enumerate(ids) if rid == journey.id and i not in used), 0)
            used.add(index)
            yield index, journey

    def _check_catalogue(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        fields = spec.Document.model_fields
        if "version" not in self.raw:
            self.add(
                "version", (), "missing 'version: 1' at the top of the file", hint="add version: 1"
            )
        for key in self.raw:
            if key not in fields:
                self.add(
                    "unknown-key",
                    (key,),
                    f"unknown key '{key}'",
                    key=True,
                    hint=_did_you_mean(key, [*fields, "include"]),
                )
        for name, info in fields.items():
            if name == "journeys":
                continue
            if name not in self.raw:
                values[name] = info.get_default(call_default_factory=True)
                continue
            adapter = _field_adapter(spec.Document, name)
            try:
                values[name] = adapter.validate_python(self.raw[name])
            except ValidationError as exc:
                wrapper = {name: self.raw[name]}
                self.add_pydantic(spec.Document, (), wrapper, _prefixed(exc, name))
                values[name] = self._salvage(name, info)
        return values

    def _salvage(self, name: str, info: Any) -> Any:
        """Keep the valid entries of a catalogue section that has some invalid ones."""
        raw = self.raw.get(name)
        if name in ("events", "channels", "models", "templates") and isinstance(raw, dict):
            value_type = typing.get_args(_unwrap(info.annotation)[0])[1]
            adapter: TypeAdapter[Any] = TypeAdapter(value_type)
            kept: dict[str, Any] = {}
            for key, item in raw.items():
                try:
                    kept[key] = adapter.validate_python(item)
                except ValidationError:
                    kept[key] = None  # declared, but broken: references to it are not "unknown"
            return kept
        return info.get_default(call_default_factory=True)

    def _check_journeys(self, catalogue: dict[str, Any]) -> list[spec.Journey]:
        raw = self.raw.get("journeys")
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.add("type", ("journeys",), f"journeys: expected a list, got {_describe(raw)}")
            return []
        result: list[spec.Journey] = []
        for index, raw_journey in enumerate(raw):
            if not isinstance(raw_journey, dict):
                self.add(
                    "type",
                    ("journeys", index),
                    f"a journey must be a mapping, got {_describe(raw_journey)}",
                )
                continue
            journey = self._check_journey(("journeys", index), raw_journey)
            if journey is not None:
                result.append(journey)
        return result

    def _check_journey(self, path: Path, raw_journey: dict[str, Any]) -> spec.Journey | None:
        """The journey with the steps that validate; None when its head does not.

        A journey with any invalid part is marked broken: it gets no plan, but the valid
        rest of it is still checked."""
        head, head_ok = self._journey_head(path, raw_journey)
        steps, broken_ids = self._check_steps(path, raw_journey)
        if broken_ids or steps is None or not head_ok:
            journey_id = raw_journey.get("id")
            if isinstance(journey_id, str):
                self.broken_journeys.add(journey_id)
        if not head_ok or "id" not in head:
            return None
        journey = spec.Journey.model_construct(**head, steps=steps or [])
        self.broken_steps[journey.id] = broken_ids
        return journey

    def _journey_head(self, path: Path, raw_journey: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """A journey's fields but its steps, each validated on its own; and whether all were."""
        head_ok = True
        for key in raw_journey:
            if key not in spec.Journey.model_fields:
                self.add(
                    "unknown-key",
                    (*path, key),
                    f"unknown key '{key}'",
                    key=True,
                    hint=_did_you_mean(key, spec.Journey.model_fields),
                )
                head_ok = False
        head: dict[str, Any] = {}
        for name, info in spec.Journey.model_fields.items():
            if name == "steps":
                continue
            if name in raw_journey:
                head_ok = self._journey_field(path, name, raw_journey[name], head) and head_ok
            elif info.is_required():
                self.add("missing-key", path, f"missing required key '{name}'")
                head_ok = False
            else:
                head[name] = info.get_default(call_default_factory=True)
        return head, head_ok

    def _journey_field(self, path: Path, name: str, raw: Any, head: dict[str, Any]) -> bool:
        """Validate one journey field into ``head``; False when it is invalid."""
        try:
            head[name] = _field_adapter(spec.Journey, name).validate_python(raw)
            if name == "holdout":
                spec.holdout_percent(head[name])
        except ValidationError as exc:
            self.add_pydantic(spec.Journey, path, {name: raw}, _prefixed(exc, name))
            return False
        except ValueError as exc:
            self.add("value", (*path, name), str(exc))
            return False
        return True

    def _check_steps(
        self, path: Path, raw_journey: dict[str, Any]
    ) -> tuple[list[spec.Step] | None, set[str]]:
        """The steps that validate, and the ids of those that do not (None: no usable list)."""
        raw_steps = raw_journey.get("steps")
        if raw_steps is None:
            self.add("missing-key", path, "missing required key 'steps'")
            return None, set()
        if not isinstance(raw_steps, list) or not raw_steps:
            self.add("type", (*path, "steps"), "steps: expected a non-empty list of steps")
            return None, set()
        adapter = _STEP_ADAPTER
        steps: list[spec.Step] = []
        broken: set[str] = set()
        for index, raw_step in enumerate(raw_steps):
            raw_id = raw_step.get("id") if isinstance(raw_step, dict) else None
            marker = raw_id if isinstance(raw_id, str) else f"#{index + 1}"
            step_path = (*path, "steps", index)
            if isinstance(raw_step, dict) and spec.step_type_of(raw_step) is None:
                unknown = [k for k in raw_step if k not in ("id", "next", "description")]
                typo = next((k for k in unknown if closest(k, spec.STEP_TYPES)), None)
                guess = closest(typo, spec.STEP_TYPES) if typo is not None else None
                self.add(
                    "step-type",
                    step_path if typo is None else (*step_path, typo),
                    "a step needs one type key: " + ", ".join(spec.STEP_TYPES),
                    hint=f"did you mean '{guess}'?" if guess else None,
                    key=typo is not None,
                )
                broken.add(marker)
                continue
            try:
                steps.append(adapter.validate_python(raw_step))
            except ValidationError as exc:
                self.add_pydantic(
                    spec.Journey, path, {"steps": {index: raw_step}}, _prefixed(exc, "steps", index)
                )
                broken.add(marker)
        return steps, broken

    def _check_catalogue_secrets(self) -> None:
        """A channel URL with credentials written in the file would end up in plans and
        histories: refuse it, and ask for an environment variable instead."""
        channels = self.raw.get("channels")
        if not isinstance(channels, dict):
            return
        for name, value in channels.items():
            url = value.get("url") if isinstance(value, dict) else value
            path: Path = (
                ("channels", name, "url") if isinstance(value, dict) else ("channels", name)
            )
            if isinstance(url, str) and _has_literal_credentials(url):
                self.add(
                    "secret",
                    path,
                    f"channel '{name}' has credentials written in the file",
                    hint='put the URL (or its secret parts) in an environment variable and write "${VAR}"',
                )

    # -- models

    def _check_models(self, document: spec.Document) -> None:
        """What the model's own declaration can get wrong, beyond its structure."""
        for name, model in (document.models or {}).items():
            if model is None:
                continue
            at: Path = ("models", name)
            self._check_model_scores(at, name, model)
            self._check_model_example(at, name, model)
            tries = 1 + (model.retries if isinstance(model, spec.HttpModel) else 0)
            seconds = parse_duration(model.timeout) * tries
            if seconds > MODEL_CALL_BUDGET_SECONDS:
                self.add(
                    "value",
                    (*at, "timeout"),
                    f"model '{name}' may take {seconds} s (timeout {model.timeout} x {tries} "
                    f"tries), longer than the {MODEL_CALL_BUDGET_SECONDS} s a score step waits",
                    hint="lower timeout: or retries:",
                )
            if isinstance(model, spec.OnnxModel):
                self._check_onnx_file(at, name, model)
            elif isinstance(model, spec.HttpModel):
                self._check_http_model(at, name, model)

    def _check_model_scores(self, at: Path, name: str, model: spec.ModelSpec) -> None:
        if model.range is not None:
            low, high = model.range
            if not low < high:
                self.add(
                    "value",
                    (*at, "range"),
                    f"model '{name}': range [{low:g}, {high:g}] is empty",
                    hint="write [min, max] with min < max, e.g. [0, 1]",
                )
            elif not low <= model.fallback <= high:
                self.add(
                    "value",
                    (*at, "fallback"),
                    f"model '{name}': fallback {model.fallback:g} is outside its range "
                    f"[{low:g}, {high:g}]",
                    hint="a fallback must be a score the journey can route",
                )
        if not math.isfinite(model.fallback):
            self.add(
                "value", (*at, "fallback"), f"model '{name}': fallback must be a finite number"
            )

    def _check_model_example(self, at: Path, name: str, model: spec.ModelSpec) -> None:
        if model.features is not None and len(set(model.features)) != len(model.features):
            repeated = sorted({f for f in model.features if model.features.count(f) > 1})
            self.add(
                "value",
                (*at, "features"),
                f"model '{name}' lists feature {', '.join(repeated)} twice",
            )
        if model.example is None:
            return
        for feature, value in model.example.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.add(
                    "type",
                    (*at, "example", feature),
                    f"model '{name}': example feature '{feature}' must be a number, "
                    f"got {_describe(value)}",
                )
            elif not math.isfinite(value):
                self.add(
                    "value",
                    (*at, "example", feature),
                    f"model '{name}': example feature '{feature}' must be a finite number",
                )
        if model.features is not None:
            missing = [f for f in model.features if f not in model.example]
            extra = [f for f in model.example if f not in model.features]
            if missing:
                self.add(
                    "value",
                    (*at, "example"),
                    f"model '{name}': example has no {', '.join(missing)}",
                    hint="give every feature listed under features:",
                )
            for feature in extra:
                self.add(
                    "value",
                    (*at, "example", feature),
                    f"model '{name}' takes no feature '{feature}'",
                    hint=_did_you_mean(feature, model.features),
                )

    def _check_onnx_file(self, at: Path, name: str, model: spec.OnnxModel) -> None:
        root = self.loaded.root.resolve()
        target = (root / model.path).resolve()
        if root not in target.parents:
            self.add(
                "model-file",
                (*at, "path"),
                f"model '{name}': the file '{model.path}' is outside the journeys folder",
                hint=f"model files must stay inside {root}, as html_file and include: do",
            )
            return
        if not target.is_file():
            self.add(
                "model-file",
                (*at, "path"),
                f"model '{name}': the file '{model.path}' does not exist",
                hint=f"paths are relative to {root}",
            )

    def _check_http_model(self, at: Path, name: str, model: spec.HttpModel) -> None:
        given = model.model_fields_set
        if model.protocol == "json":
            self._check_json_protocol(at, name, model, given)
        else:
            for key in sorted({"body", "score"} & given):
                self.add(
                    "value",
                    (*at, key),
                    f"model '{name}': {key}: is for protocol json",
                    key=True,
                    hint="add protocol: json, or remove it (oip sends the features as a tensor)",
                )
        self._check_model_secrets(at, name, model)

    def _check_json_protocol(
        self, at: Path, name: str, model: spec.HttpModel, given: set[str]
    ) -> None:
        for key in ("body", "score"):
            if getattr(model, key) is None:
                self.add(
                    "missing-key",
                    at,
                    f"model '{name}': protocol json needs {key}:",
                    hint=(
                        "body: the request's JSON as a template, e.g. "
                        "'{\"amount\": {{ features.amount }}}'"
                        if key == "body"
                        else "score: the dotted path to the score in the reply, e.g. result.score"
                    ),
                )
        for key in sorted({"input", "output", "positive_class"} & given):
            self.add(
                "value",
                (*at, key),
                f"model '{name}': {key}: is for protocol oip",
                key=True,
                hint="protocol json reads the reply at score:",
            )
        if model.body is not None:
            try:
                compile_template(model.body, html=False, names=MODEL_BODY_NAMES)
            except TemplateError as exc:
                self.add(
                    "template",
                    (*at, "body"),
                    f"model '{name}': body, line {exc.line}: {exc.message}",
                    hint=exc.hint,
                )

    def _check_model_secrets(self, at: Path, name: str, model: spec.HttpModel) -> None:
        if _has_literal_credentials(model.url):
            self.add(
                "secret",
                (*at, "url"),
                f"model '{name}' has credentials written in its url",
                hint='put them in an environment variable and write "${VAR}"',
            )
        if model.token is not None and "${" not in model.token:
            self.add(
                "secret",
                (*at, "token"),
                f"model '{name}' has its token written in the file",
                hint='write token: "${MODEL_TOKEN}" and set MODEL_TOKEN in the environment',
            )

    # -- templates

    def _check_templates(self, document: spec.Document) -> None:
        for name, template in (document.templates or {}).items():
            if template is None:
                continue
            for form, text, html in self._template_parts(name, template):
                try:
                    compiled = compile_template(text, html=html, names=MESSAGE_NAMES)
                except TemplateError as exc:
                    self.add(
                        "template",
                        ("templates", name, *form.split(".")),
                        f"template '{name}' ({form}), line {exc.line}: {exc.message}",
                        hint=exc.hint,
                    )
                    continue
                self.compiled_templates[(name, form)] = compiled
                self.template_sources.setdefault(name, {})[form] = text
            if not any(
                k[0] == name for k in self.compiled_templates
            ) and not self._template_has_form(template):
                self.add(
                    "template",
                    ("templates", name),
                    f"template '{name}' has no message form",
                    hint="give it sms:, email:, push: or text:",
                )

    @staticmethod
    def _template_has_form(template: spec.TemplateSpec) -> bool:
        return any(getattr(template, f) is not None for f in ("email", "sms", "push", "text"))

    def _template_parts(
        self, name: str, template: spec.TemplateSpec
    ) -> Iterator[tuple[str, str, bool]]:
        if template.sms is not None:
            yield "sms", template.sms, False
        if template.text is not None:
            yield "text", template.text, False
        if isinstance(template.push, str):
            yield "push", template.push, False
        elif template.push is not None:
            yield "push.title", template.push.title, False
            yield "push.body", template.push.body, False
        email = template.email
        if email is not None:
            yield "email.subject", email.subject, False
            if email.text is not None:
                yield "email.text", email.text, False
            if email.html is not None and email.html_file is not None:
                self.add(
                    "value", ("templates", name, "email"), "email: give html or html_file, not both"
                )
            if email.html is not None:
                yield "email.html", email.html, True
            elif email.html_file is not None:
                html = self._read_template_file(name, email.html_file)
                if html is not None:
                    yield "email.html", html, True
            elif email.text is None:
                self.add(
                    "missing-key",
                    ("templates", name, "email"),
                    "email: needs a body: html, html_file or text",
                )

    def _read_template_file(self, name: str, relative: str) -> str | None:
        path = ("templates", name, "email", "html_file")
        root = self.loaded.root.resolve()
        target = (root / relative).resolve()
        if root not in target.parents:
            self.add("template", path, f"html_file '{relative}' is outside the journeys folder")
            return None
        try:
            data = target.read_bytes()[: MAX_TEMPLATE_FILE + 1]
        except OSError:
            self.add(
                "unknown-template",
                path,
                f"html_file '{relative}' does not exist",
                hint=f"paths are relative to {root}",
            )
            return None
        if len(data) > MAX_TEMPLATE_FILE:
            self.add("template", path, f"html_file '{relative}' is larger than 256 KiB")
            return None
        return data.decode("utf-8", "replace")


_STEP_ADAPTER: TypeAdapter[spec.Step] = TypeAdapter(spec.Step)


@functools.cache
def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    """A (cached) validator for one field of ``model`` on its own."""
    return TypeAdapter(model.model_fields[name].annotation)  # type: ignore[arg-type]


_SECRET_PARAMS = ("pass", "password", "token", "key", "apikey", "secret", "auth")


def _has_literal_credentials(url: str) -> bool:
    """User info or secret-looking query values written literally (not as ``${VAR}``)."""
    if "://" not in url:
        return False
    rest = url.split("://", 1)[1]
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    if "@" in netloc and "${" not in netloc.split("@", 1)[0]:
        return True
    query = rest.split("?", 1)[1] if "?" in rest else ""
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name.lower() in _SECRET_PARAMS and value and "${" not in value:
            return True
    return False


def _prefixed(exc: ValidationError, *prefix: str | int) -> list[ErrorDetails]:
    """The errors of ``exc`` with ``prefix`` put before each location."""
    errors = exc.errors(include_url=False)
    for error in errors:
        error["loc"] = (*prefix, *error["loc"])
    return errors


# ----------------------------------------------------------------------------- where ways are written

_Written = tuple[tuple[str | int, ...], str]
"""Where (below the step) a way out's target is written, and what messages call it."""


def _written_at(step: spec.Step, way: Successor) -> _Written | None:
    """Where ``way`` out of ``step`` was written; None: a default the compiler filled in
    that another way out already stands for (an event's timeout carrying on to next).

    This knows only where things are written; where they lead is engine.successors'.
    """
    at_next: _Written = (("next",) if step.next else (), "next")
    match way.kind:
        case "rule" if isinstance(step, spec.DecideStep):
            rule = step.decide.rules[way.index or 0]
            return (("decide", "rules", way.index or 0, "goto"), "goto") if rule.goto else at_next
        case "rule":
            return ("branch", way.index or 0, "goto"), "goto"
        case "else" if isinstance(step, spec.DecideStep):
            return (("decide", "else"), "else") if step.decide.else_ else at_next
        case "else":
            written_else = isinstance(step, spec.BranchStep) and step.else_
            return (("else",), "else") if written_else else at_next
        case "arm":
            return ("paths", way.name or ""), "path"
        case "decision":
            return ("decisions", way.name or ""), "decision"
        case "received":
            return at_next[0], "arrival"
        case "next":
            return at_next
        case "timeout":
            written_timeout = isinstance(step, spec.WaitStep | spec.ReviewStep) and step.on_timeout
            return (("on_timeout",), "on_timeout") if written_timeout else None
        case "failure":
            return ("on_failure",), "on_failure"
        case "missing":
            return ("on_missing",), "on_missing"
        case _:
            assert_never(way.kind)


def _arms_as_written(step: spec.Step) -> spec.Step:
    """A split with one arm per path written, in the order written, so that a path for an
    unknown arm is still checked (the mismatch with ``split:`` is reported on its own)."""
    if not isinstance(step, spec.SplitStep):
        return step
    arms = {arm: step.split.get(arm, 0.0) for arm in step.paths}
    return step.model_copy(update={"split": arms})


def _ignored_timeout(step: spec.Step, ways: list[Successor]) -> str | None:
    """An ``on_timeout:`` written where it never fires (no ``within:``, no ``sla:``, not a
    wait for an event)."""
    if not isinstance(step, spec.WaitStep | spec.ReviewStep) or not step.on_timeout:
        return None
    return None if any(way.kind == "timeout" for way in ways) else step.on_timeout


def _ignored_missing(step: spec.Step, ways: list[Successor]) -> str | None:
    """An ``on_missing:`` written where it never fires (not a wait on a date)."""
    if not isinstance(step, spec.WaitStep) or not step.on_missing:
        return None
    return None if any(way.kind == "missing" for way in ways) else step.on_missing


# ----------------------------------------------------------------------------- one journey


@dataclass
class _Edge:
    target: str
    path: Path
    kind: str  # what messages call it: next | goto | else | path | decision | on_timeout |
    # on_failure | arrival (the awaited event came: `event` is that event from there on)


class _JourneyChecker:
    def __init__(
        self, checker: _Checker, document: spec.Document, journey: spec.Journey, index: int
    ) -> None:
        self.c = checker
        self.doc = document
        self.journey = journey
        self.path: Path = ("journeys", index)
        self.ids = [s.id for s in journey.steps]
        self.index_of = {s.id: i for i, s in reversed(list(enumerate(journey.steps)))}
        self.broken = checker.broken_steps.get(journey.id, set())
        self.var_types: dict[str, Type] = {}

    def step_path(self, position: int, *rest: str | int) -> Path:
        return (*self.path, "steps", position, *rest)

    def run(self) -> None:
        self.c.event_reads.setdefault(self.journey.id, set())
        unique = self._check_duplicates()
        edges = self._edges()
        self._check_references(edges)
        if unique and not self.broken:  # the graph is only known when every step is
            self._check_reachability(edges)
            self._check_loops(edges)
        events = self._event_flow(edges)
        self.var_types = journey_var_types(self.doc, self.journey, events)
        self._check_entry_and_exits()
        for position, step in enumerate(self.journey.steps):
            self._check_step(position, step, events.get(step.id, set()))
        self._check_goals()

    # -- graph

    def _check_duplicates(self) -> bool:
        seen: set[str] = set()
        unique = True
        for position, step in enumerate(self.journey.steps):
            if step.id in seen:
                unique = False
                self.c.add(
                    "duplicate-id",
                    self.step_path(position, "id"),
                    f"step id '{step.id}' is used twice in journey '{self.journey.id}'",
                    hint="step ids must be unique within a journey",
                )
            seen.add(step.id)
        return unique

    def _edges(self) -> dict[str, list[_Edge]]:
        """Every way out of every step, with where its target is written."""
        edges: dict[str, list[_Edge]] = {}
        steps = self.journey.steps
        for position, step in enumerate(steps):
            following = steps[position + 1].id if position + 1 < len(steps) else None
            out = self._ways_out(position, step, following)
            self._check_next_taken(position, step, out)
            edges[step.id] = out if step.id not in edges else edges[step.id] + out
        return edges

    def _ways_out(self, position: int, step: spec.Step, following: str | None) -> list[_Edge]:
        """Where the engine goes from ``step`` (engine.successors over the compiled step),
        each way placed where the author wrote it."""
        ways = successors(compile_step(_arms_as_written(step), following, self.doc))
        out: list[_Edge] = []
        for way in ways:
            written = _written_at(step, way)
            if way.target is not None and written is not None:
                suffix, kind = written
                out.append(_Edge(way.target, self.step_path(position, *suffix), kind))
        timeout = _ignored_timeout(step, ways)
        if timeout is not None:
            # The run never takes this on_timeout (_check_step says so); the graph still
            # follows it, so that one mistake gives one error, not also "unreachable".
            out.append(_Edge(timeout, self.step_path(position, "on_timeout"), "on_timeout"))
        missing = _ignored_missing(step, ways)
        if missing is not None:  # likewise: reported once, by _check_wait
            out.append(_Edge(missing, self.step_path(position, "on_missing"), "on_missing"))
        return out

    def _check_next_taken(self, position: int, step: spec.Step, out: list[_Edge]) -> None:
        """A ``next:`` that no way out goes through is a mistake the run would hide."""
        at_next = self.step_path(position, "next")
        if step.next and all(edge.path != at_next for edge in out):
            self.c.add(
                "value",
                at_next,
                f"next: is never taken after a {step.step_type} step",
                hint="remove it" + (" or use else:" if isinstance(step, spec.BranchStep) else ""),
            )

    def _check_references(self, edges: Mapping[str, list[_Edge]]) -> None:
        for out in edges.values():
            for edge in out:
                if edge.target not in self.index_of and edge.target not in self.broken:
                    self.c.add(
                        "unknown-step",
                        edge.path,
                        f"{edge.kind.replace('arrival', 'next')} names step '{edge.target}', "
                        f"which journey '{self.journey.id}' does not have",
                        hint=_did_you_mean(edge.target, self.ids),
                    )

    def _check_reachability(self, edges: Mapping[str, list[_Edge]]) -> None:
        if not self.ids:
            return
        reached = {self.ids[0]}
        todo = [self.ids[0]]
        while todo:
            for edge in edges.get(todo.pop(), []):
                if edge.target in self.index_of and edge.target not in reached:
                    reached.add(edge.target)
                    todo.append(edge.target)
        for position, step_id in enumerate(self.ids):
            if step_id not in reached and self.index_of[step_id] == position:
                self.c.add(
                    "unreachable",
                    self.step_path(position),
                    f"step '{step_id}' can never be reached",
                    hint="point a next:, goto:, paths: or decisions: at it, or remove it",
                )

    def _check_loops(self, edges: Mapping[str, list[_Edge]]) -> None:
        waiting = {
            s.id for s in self.journey.steps if isinstance(s, spec.WaitStep | spec.ReviewStep)
        }
        graph = {
            node: [e for e in out if e.target in self.index_of and e.target not in waiting]
            for node, out in edges.items()
            if node not in waiting
        }
        for component in _strongly_connected(graph):
            if len(component) == 1:
                only = next(iter(component))
                if not any(e.target == only for e in graph.get(only, [])):
                    continue
            # report the edge that jumps back into the component
            back = [
                (node, edge)
                for node in component
                for edge in graph.get(node, [])
                if edge.target in component and self.index_of[edge.target] <= self.index_of[node]
            ]
            _, edge = (
                min(back, key=lambda item: self.index_of[item[0]])
                if back
                else (
                    next(iter(component)),
                    _Edge("", self.step_path(self.index_of[next(iter(component))]), "next"),
                )
            )
            members = ", ".join(sorted(component, key=lambda s: self.index_of[s]))
            self.c.add(
                "loop-without-wait",
                edge.path,
                f"steps {members} form a loop with no wait: it would spin forever",
                hint="add a wait step inside the loop",
            )

    def _event_flow(self, edges: Mapping[str, list[_Edge]]) -> dict[str, set[str]]:
        """Which events `event` may be at each step (the entry event, or an awaited one)."""
        flow: dict[str, set[str]] = {sid: set() for sid in self.ids}
        if not self.ids:
            return flow
        flow[self.ids[0]] = {self.journey.entry.event}
        by_id = {s.id: s for s in self.journey.steps}
        changed = True
        rounds = 0
        while changed and rounds < len(self.ids) + 2:
            changed = False
            rounds += 1
            for sid, out in edges.items():
                step = by_id[sid]
                for edge in out:
                    if edge.target not in flow:
                        continue
                    if (
                        edge.kind == "arrival"
                        and isinstance(step, spec.WaitStep)
                        and isinstance(step.wait, spec.WaitEvent)
                    ):
                        incoming = {step.wait.event}
                    else:
                        incoming = flow[sid]
                    if not incoming <= flow[edge.target]:
                        flow[edge.target] |= incoming
                        changed = True
        return flow

    # -- entry, exits and steps

    def _declared_event(self, name: str, path: Path) -> None:
        if self.doc.events and name not in self.doc.events:
            self.c.add(
                "unknown-event",
                path,
                f"event '{name}' is not declared under events:",
                hint=_did_you_mean(name, self.doc.events)
                or "declare it to have its properties checked",
                warning=True,
            )

    def _check_entry_and_exits(self) -> None:
        entry = self.journey.entry
        self._declared_event(entry.event, (*self.path, "entry", "event"))
        if entry.when:
            self.expression((*self.path, "entry", "when"), entry.when, {entry.event})
        if entry.key:
            self.expression((*self.path, "entry", "key"), entry.key, {entry.event})
        for i, exit_on in enumerate(self.journey.exit_on):
            self._declared_event(exit_on.event, (*self.path, "exit_on", i, "event"))
            if exit_on.when:
                self.expression((*self.path, "exit_on", i, "when"), exit_on.when, {exit_on.event})
            self._check_correlate((*self.path, "exit_on", i), exit_on.event, exit_on.correlate)

    def _check_goals(self) -> None:
        """Goals: an event goal's event is declared (its `value` and `when` read it and the
        profile, `value` a number); an outcome goal names an outcome an exit gives."""
        outcomes = {s.exit for s in self.journey.steps if isinstance(s, spec.ExitStep)}
        outcomes |= {e.outcome for e in self.journey.exit_on}
        seen: set[str] = set()
        for i, goal in enumerate(self.journey.goals):
            at: Path = (*self.path, "goals", i)
            if isinstance(goal, spec.OutcomeGoal):
                self._check_outcome_goal(at, goal.outcome, outcomes, seen)
            else:
                self._check_event_goal(at, goal)

    def _check_outcome_goal(
        self, at: Path, outcome: str, outcomes: set[str], seen: set[str]
    ) -> None:
        if outcome in seen:
            self.c.add("goal", (*at, "outcome"), f"goal outcome '{outcome}' is listed twice")
        seen.add(outcome)
        if outcome not in outcomes:
            self.c.add(
                "goal",
                (*at, "outcome"),
                f"goal outcome '{outcome}' is not an outcome of journey '{self.journey.id}'",
                hint=_did_you_mean(outcome, outcomes)
                or "an outcome goal names what an exit: step or an exit_on: rule ends runs with",
            )

    def _check_event_goal(self, at: Path, goal: spec.EventGoal) -> None:
        if goal.event not in self.doc.events:
            self.c.add(
                "goal",
                (*at, "event"),
                f"goal event '{goal.event}' is not declared under events:",
                hint=_did_you_mean(goal.event, self.doc.events)
                or "declare it, with the properties its value and when read",
            )
            return
        events = {goal.event}
        if goal.when:
            self.expression((*at, "when"), goal.when, events, names=GOAL_NAMES)
        if goal.value and self.expression((*at, "value"), goal.value, events, names=GOAL_NAMES):
            kind = expression_type(goal.value, self._scope(events))
            if kind.known and kind.kind != "number":
                self.c.add(
                    "type-mismatch",
                    (*at, "value"),
                    f"goal value {goal.value!r} is {_type_name(kind)}, not a number",
                    hint="a goal's value is a number, e.g. event.amount",
                )

    def _check_correlate(self, path: Path, event: str, correlate: str | None) -> None:
        """Which runs an awaited event reaches: `correlate` needs a keyed journey, and the
        default (the entry key read from the event) needs the event to carry the key."""
        key = self.journey.entry.key
        if correlate == CORRELATE_NONE:
            return
        if correlate is not None:
            if key is None:
                self.c.add(
                    "value",
                    (*path, "correlate"),
                    "correlate: only applies to a journey with entry.key",
                    hint="add entry.key, or remove correlate (every run of the customer hears it)",
                )
            else:
                self.expression((*path, "correlate"), correlate, {event})
            return
        declared = self.doc.events.get(event)
        if key is None or declared is None:
            return
        try:
            reads = compile_expression(key).attribute_paths
        except ExpressionError:
            return  # reported on entry.key
        missing = sorted(
            {ref[1] for ref in reads if len(ref) >= 2 and ref[0] == "event"} - set(declared)
        )
        if missing:
            self.c.add(
                "correlation",
                (*path, "event"),
                f"event '{event}' declares no {', '.join(missing)}: runs are keyed by "
                f"{key!r}, so it would reach none of them",
                hint=f"add {missing[0]} to events.{event}, or say which runs it is for: "
                f"correlate: event.<property> (or correlate: none for all of them)",
                warning=True,
            )

    def _check_step(self, position: int, step: spec.Step, events: set[str]) -> None:
        """What one step can get wrong beyond its structure and the graph."""
        match step:
            case spec.SendStep():
                self._check_send(position, step, events)
            case spec.WaitStep():
                self._check_wait(position, step, events)
            case spec.BranchStep() | spec.SetStep():
                self._check_conditions(position, step, events)
            case spec.SplitStep():
                self._check_split(position, step)
            case spec.ScoreStep():
                self._check_score(position, step, events)
            case spec.ReviewStep():
                self._check_review(position, step, events)
            case spec.CallStep():
                self._check_call(position, step, events)
            case spec.ExitStep():
                pass
            case spec.DecideStep():
                self._check_decide(position, step, events)
            case _:
                assert_never(step)

    def _check_wait(self, position: int, step: spec.WaitStep, events: set[str]) -> None:
        at = self.step_path
        wait = step.wait
        until = wait.until if isinstance(wait, spec.WaitUntil) else None
        if isinstance(until, spec.UntilDate):
            self.expression(at(position, "wait", "until", "date"), until.date, events)
        elif step.on_missing:
            self.c.add(
                "value",
                at(position, "on_missing"),
                "on_missing: only applies to a wait until a date",
                hint="use wait: {until: {date: <expression>}} or remove it",
            )
        if not isinstance(wait, spec.WaitEvent):
            if step.on_timeout:
                self.c.add(
                    "value",
                    at(position, "on_timeout"),
                    "on_timeout: only applies to a wait for an event",
                    hint="remove it",
                )
            return
        self._declared_event(wait.event, at(position, "wait", "event"))
        if wait.when:
            self.expression(at(position, "wait", "when"), wait.when, {wait.event})
        self._check_correlate(at(position, "wait"), wait.event, wait.correlate)
        if step.on_timeout and not wait.within:
            self.c.add(
                "value",
                at(position, "on_timeout"),
                "on_timeout: needs wait.within",
                hint="add within: 3d (how long to wait for the event)",
            )

    def _check_split(self, position: int, step: spec.SplitStep) -> None:
        total = sum(step.split.values())
        if abs(total - 100) > 1e-9:
            self.c.add(
                "split",
                self.step_path(position, "split"),
                f"split weights add up to {total:g}, not 100",
                hint="weights are percentages",
            )
        if set(step.split) != set(step.paths):
            self.c.add(
                "split",
                self.step_path(position, "paths"),
                f"paths: must name exactly the split's arms: {_arm_mismatch(step)}",
            )
        for arm in sorted(set(step.split) & RESERVED_ARM_NAMES):
            self.c.add(
                "split",
                (*self.step_path(position, "split"), arm),
                f"arm name {arm!r} is taken: a split's results name "
                f"{', '.join(sorted(RESERVED_ARM_NAMES))} beside its arms",
                hint="call the arm something else",
            )

    def _check_conditions(
        self, position: int, step: spec.BranchStep | spec.SetStep, events: set[str]
    ) -> None:
        """A branch's rules and a set step's values: expressions only."""
        at = self.step_path
        if isinstance(step, spec.BranchStep):
            for i, rule in enumerate(step.branch):
                self.expression(at(position, "branch", i, "when"), rule.when, events)
        else:
            for target, expr in step.set.items():
                self.expression(at(position, "set", target), expr, events)

    def _check_decide(self, position: int, step: spec.DecideStep, events: set[str]) -> None:
        """A table's expressions and cells, each at its line (a CSV rule's: its row), then
        its overlaps under ``hit: unique`` and its numeric gaps when it has no ``else``."""
        table = step.decide
        at = functools.partial(self.step_path, position, "decide")
        for name, expr in table.inputs.items():
            self.expression(at("inputs", name), expr, events)
        if not table.rules:  # a rules_csv: the loader could not read, it reported
            if table.rules_csv is None:
                self.c.add("decide", at(), "a decision table needs rules: or rules_csv:")
            return
        parsed = [
            self._table_rule(at, i, rule, table, events) for i, rule in enumerate(table.rules)
        ]
        if any(rule is None for rule in parsed):
            return  # overlaps and gaps only mean something once every cell is understood
        rules = [rule for rule in parsed if rule is not None]
        names = list(table.inputs)
        if table.hit == "unique":
            for first, second in overlapping(names, rules):
                self.c.add(
                    "decide-overlap",
                    at("rules", second),
                    f"rule {second + 1} overlaps rule {first + 1}: some inputs match both, "
                    "and hit: unique needs exactly one",
                    hint="narrow one of them, or use hit: first",
                )
        if table.else_ is None:
            for gap in gaps(names, rules):
                self.c.add(
                    "decide-gap",
                    at("rules", gap.nearest),
                    f"no rule matches {gap.description}; without else: the run goes on "
                    "to the next step",
                    hint=f"widen rule {gap.nearest + 1}, add a rule, or add else:",
                    warning=True,
                )

    def _table_rule(
        self,
        at: Callable[..., Path],
        index: int,
        rule: spec.DecideRule,
        table: spec.DecideTable,
        events: set[str],
    ) -> dict[str, UnaryTest] | None:
        """One rule's cells parsed (None: one is wrong, and reported), its outputs checked."""
        cells: dict[str, UnaryTest] = {}
        ok = True
        for name, cell in rule.when.items():
            if name not in table.inputs:
                self.c.add(
                    "decide",
                    at("rules", index, "when", name),
                    f"'{name}' is not one of the table's inputs",
                    hint=_did_you_mean(name, table.inputs) or "declare it under inputs:",
                    key=True,
                )
                ok = False
                continue
            try:
                cells[name] = parse_test(cell)
            except UnaryTestError as error:
                self.c.add("decide", at("rules", index, "when", name), str(error), hint=HELP)
                ok = False
        for name, test in cells.items():
            source, cell = table.inputs[name], rule.when[name]
            problem = check_cell(name, source, cell, test, self._scope(events))
            if problem is not None:
                at_cell = at("rules", index, "when", name)
                self.c.add("type-mismatch", at_cell, problem.message, hint=problem.hint)
        for name, expr in rule.set.items():
            self.expression(at("rules", index, "set", name), expr, events)
        return cells if ok else None

    def _check_score(self, position: int, step: spec.ScoreStep, events: set[str]) -> None:
        if step.score not in self.doc.models:
            self.c.add(
                "unknown-model",
                self.step_path(position, "score"),
                f"model '{step.score}' is not declared under models:",
                hint=_did_you_mean(step.score, self.doc.models),
            )
        else:
            self._check_score_features(position, step)
        for name, expr in step.features.items():
            self.expression(self.step_path(position, "features", name), expr, events)

    def _check_review(self, position: int, step: spec.ReviewStep, events: set[str]) -> None:
        at = self.step_path
        self.template(at(position, "title"), step.title, events)
        if step.details:
            self.template(at(position, "details"), step.details, events)
        if step.on_timeout and not step.sla:
            self.c.add(
                "value",
                at(position, "on_timeout"),
                "on_timeout: needs sla:",
                hint="add sla: 4h (how long the task may wait for a decision)",
            )
        if step.escalate_to and not step.sla:
            self.c.add(
                "value",
                at(position, "escalate_to"),
                "escalate_to: needs sla:",
                hint="add sla: 4h (escalation happens when the SLA passes)",
            )

    def _check_call(self, position: int, step: spec.CallStep, events: set[str]) -> None:
        at = self.step_path
        self.template(at(position, "call", "url"), step.call.url, events)
        for name, expr in (step.call.json_ or {}).items():
            self.expression(at(position, "call", "json", name), expr, events)
        for name, value in (step.call.headers or {}).items():
            self.template(at(position, "call", "headers", name), value, events)

    def _check_send(self, position: int, step: spec.SendStep, events: set[str]) -> None:
        at = self.step_path
        template = self.doc.templates.get(step.send) if step.send in self.doc.templates else None
        if step.send not in self.doc.templates:
            self.c.add(
                "unknown-template",
                at(position, "send"),
                f"template '{step.send}' is not declared under templates:",
                hint=_did_you_mean(step.send, self.doc.templates),
            )
        for where, channel in self._send_channels(position, step, template):
            self._check_channel(where, step.send, template, channel)
        if step.to:
            self.expression(at(position, "to"), step.to, events)
        if template is not None:
            for (name, form), compiled in self.c.compiled_templates.items():
                if name == step.send:
                    self._check_paths(
                        at(position, "send"),
                        compiled.attribute_paths,
                        events,
                        what=f"template '{name}' ({form})",
                    )
                    source = self.c.template_sources.get(name, {}).get(form, "")
                    what = f"template '{name}' ({form})"
                    self._check_template_types(at(position, "send"), source, events, what)

    def _send_channels(
        self, position: int, step: spec.SendStep, template: spec.TemplateSpec | None
    ) -> list[tuple[Path, str]]:
        """The channels a send uses, each with where it is written."""
        at = self.step_path
        channels = [step.channel] if isinstance(step.channel, str) else list(step.channel or [])
        if not channels and template is not None:
            channels = self._default_channel(position, step, template)
        if isinstance(step.channel, list):
            return [(at(position, "channel", i), c) for i, c in enumerate(channels)]
        return [(at(position, "channel"), c) for c in channels]

    def _default_channel(
        self, position: int, step: spec.SendStep, template: spec.TemplateSpec
    ) -> list[str]:
        """A send without channel: uses its template's one form; several are an error."""
        forms = [f for f in ("email", "sms", "push") if getattr(template, f) is not None]
        if len(forms) == 1:
            return forms
        self.c.add(
            "missing-key",
            self.step_path(position),
            f"send: template '{step.send}' has several forms; say which with channel:",
            hint="channel: " + " | ".join(forms or ["email", "sms", "push"]),
        )
        return []

    def _check_channel(
        self, where: Path, name: str, template: spec.TemplateSpec | None, channel: str
    ) -> None:
        if channel not in self.doc.channels:
            self.c.add(
                "unknown-channel",
                where,
                f"channel '{channel}' is not declared under channels:",
                hint=_did_you_mean(channel, self.doc.channels),
            )
        if template is not None and not _template_form_for(template, channel):
            form = channel if channel in ("email", "sms", "push") else "text"
            self.c.add(
                "template",
                where,
                f"template '{name}' has no form for channel '{channel}'",
                hint=f"add {form}: to the template",
            )

    # -- expressions and templates

    def expression(
        self,
        path: Path,
        source: str,
        events: set[str],
        *,
        names: frozenset[str] | None = None,
    ) -> bool:
        """Check one expression; False when it has an error. ``names``: the context names
        it may read (default: all of them); an expression limited to some is not one a
        run evaluates, so it adds nothing to what runs keep of events (`_note_reads`)."""
        try:
            compiled = (
                compile_expression(source)
                if names is None
                else compile_expression(source, names=names)
            )
        except ExpressionError as exc:
            self.c.add("expression", path, f"expression {source!r}: {exc.message}", hint=exc.hint)
            return False
        if names is None:
            self._note_reads(path, compiled)
        before = len(self.c.violations)
        self._check_paths(path, compiled.attribute_paths, events, what=f"expression {source!r}")
        for problem in check_expression(source, self._scope(events)):
            self.c.add(
                "type-mismatch",
                path,
                f"expression {source!r}: {problem.message}",
                hint=problem.hint,
                offset=problem.column,
            )
        return len(self.c.violations) == before

    def _scope(self, events: set[str]) -> Scope:
        entry = self.journey.entry.event
        return scope_for(self.doc, events=events, entry_event=entry, var_types=self.var_types)

    def _check_template_types(self, path: Path, source: str, events: set[str], what: str) -> None:
        for problem in check_template(source, self._scope(events)):
            message = f"{what}, line {problem.line}: {problem.message}"
            self.c.add("type-mismatch", path, message, hint=problem.hint)

    def _note_reads(self, path: Path, compiled: Expression | CompiledTemplate) -> None:
        """What of the event a run must hold for this expression (`engine.personal`)."""
        journey = self.journey.id
        if path == (*self.path, "entry", "key"):
            self.c.key_reads[journey] = compiled.attribute_paths
        reads = self.c.event_reads.setdefault(journey, set())
        if reads is None:
            return
        if isinstance(compiled, Expression):
            whole = compiled.whole_names
        else:  # a template: a name read with no dotted path under it is read whole
            whole = frozenset(
                name
                for name in compiled.names
                if all(r[0] != name for r in compiled.attribute_paths)
            )
        if whole & {"event", "trigger"}:
            self.c.event_reads[journey] = None
            return
        for ref in compiled.attribute_paths:
            if ref[0] == "event":
                reads.add(ref[1])
            elif ref[:2] == ("trigger", "properties"):
                if len(ref) < 3:
                    self.c.event_reads[journey] = None
                    return
                reads.add(ref[2])

    def template(self, path: Path, source: str, events: set[str]) -> None:
        try:
            compiled = compile_template(source, html=False)
        except TemplateError as exc:
            self.c.add("template", path, f"template line {exc.line}: {exc.message}", hint=exc.hint)
            return
        self._note_reads(path, compiled)
        self._check_paths(path, compiled.attribute_paths, events, what="template")
        self._check_template_types(path, source, events, "template")

    def _check_paths(
        self, path: Path, paths: Iterable[tuple[str, ...]], events: set[str], *, what: str
    ) -> None:
        reported: set[tuple[str, ...]] = set()
        for ref in paths:
            problem = self._path_problem(ref, events)
            if problem and ref[:2] not in reported:
                reported.add(ref[:2])
                message, hint, code = problem
                self.c.add(code, path, f"{what}: {message}", hint=hint)

    def _check_score_features(self, position: int, step: spec.ScoreStep) -> None:
        """A step gives exactly the features its model declares (when it declares them)."""
        model = self.doc.models.get(step.score)
        if model is None or model.features is None:
            return
        missing = [f for f in model.features if f not in step.features]
        if missing:
            self.c.add(
                "model-features",
                self.step_path(position, "features") if step.features else self.step_path(position),
                f"model '{step.score}' needs feature {', '.join(missing)}, "
                "which this step does not give",
                hint=f"the model takes: {', '.join(model.features)}",
            )
        for name in step.features:
            if name not in model.features:
                self.c.add(
                    "model-features",
                    self.step_path(position, "features", name),
                    f"model '{step.score}' takes no feature '{name}'",
                    key=True,
                    hint=_did_you_mean(name, model.features),
                )

    def _path_problem(
        self, ref: tuple[str, ...], events: set[str]
    ) -> tuple[str, str | None, str] | None:
        if len(ref) < 2:
            return None
        root, name = ref[0], ref[1]
        fixed = {
            "trigger": TRIGGER_FIELDS,
            "customer": CUSTOMER_FIELDS,
            "journey": JOURNEY_FIELDS,
            "review": REVIEW_FIELDS,
            "run": RUN_FIELDS,
        }
        if root in fixed and name not in fixed[root]:
            return (f"'{root}' has no '{name}'", _did_you_mean(name, fixed[root]), "unknown-name")
        if root == "scores":
            if name not in self.doc.models:
                return (
                    f"scores.{name}: no model '{name}' is declared",
                    _did_you_mean(name, self.doc.models),
                    "unknown-model",
                )
            if len(ref) >= 3 and ref[2] not in SCORE_FIELDS:
                return (
                    f"scores.{name} has no '{ref[2]}'",
                    _did_you_mean(ref[2], SCORE_FIELDS),
                    "unknown-name",
                )
            return None
        if root == "event":
            return self._event_property(name, events)
        if root == "trigger" and name == "properties" and len(ref) >= 3:
            return self._event_property(ref[2], {self.journey.entry.event})
        return None

    def _event_property(self, prop: str, events: set[str]) -> tuple[str, str | None, str] | None:
        for event in sorted(events):
            schema = self.doc.events.get(event)
            if schema is not None and prop not in schema:
                return (
                    f"event '{event}' has no property '{prop}'",
                    _did_you_mean(prop, schema) or f"declare it under events: {event}:",
                    "event-property",
                )
        return None


def _type_name(kind: Type) -> str:
    article = "an" if kind.kind[:1] in "aeiou" else "a"
    return f"{article} {kind.kind}"


def _template_form_for(template: spec.TemplateSpec, channel: str) -> bool:
    if channel == "email":
        return template.email is not None
    if channel == "sms":
        return template.sms is not None or template.text is not None
    if channel == "push":
        return template.push is not None or template.text is not None
    return template.text is not None or template.sms is not None


def _arm_mismatch(step: spec.SplitStep) -> str:
    """How a split's ``paths:`` differ from its arms, for the message."""
    missing = sorted(set(step.split) - set(step.paths))
    extra = sorted(set(step.paths) - set(step.split))
    parts = (
        f"no path for arm {', '.join(missing)}" if missing else "",
        f"path for unknown arm {', '.join(extra)}" if extra else "",
    )
    return "; ".join(part for part in parts if part)


def _strongly_connected(graph: Mapping[str, list[_Edge]]) -> list[set[str]]:
    """The strongly connected components of ``graph``, by Tarjan's algorithm."""
    tarjan = _Tarjan(
        {node: [e.target for e in out if e.target in graph] for node, out in graph.items()}
    )
    for start in graph:
        if start not in tarjan.index:
            tarjan.visit(start)
    return tarjan.components


class _Tarjan:
    """Tarjan's algorithm, iterative (journeys may be long: no recursion limit to hit)."""

    def __init__(self, out: dict[str, list[str]]) -> None:
        self.out = out
        self.index: dict[str, int] = {}
        self.low: dict[str, int] = {}
        self.on_stack: set[str] = set()
        self.stack: list[str] = []
        self.components: list[set[str]] = []

    def visit(self, start: str) -> None:
        work: list[tuple[str, int]] = [(start, 0)]  # a node, and its next child to look at
        while work:
            node, child = work.pop()
            if child == 0:
                self._enter(node)
            targets = self.out[node]
            if child == len(targets):
                self._leave(node)
                continue
            work.append((node, child + 1))
            target = targets[child]
            if target not in self.index:
                work.append((target, 0))
            elif target in self.on_stack:
                self.low[node] = min(self.low[node], self.index[target])

    def _enter(self, node: str) -> None:
        self.index[node] = self.low[node] = len(self.index)
        self.stack.append(node)
        self.on_stack.add(node)

    def _leave(self, node: str) -> None:
        for target in self.out[node]:
            if target in self.on_stack:
                self.low[node] = min(self.low[node], self.low[target])
        if self.low[node] != self.index[node]:
            return
        component: set[str] = set()
        while True:
            member = self.stack.pop()
            self.on_stack.discard(member)
            component.add(member)
            if member == node:
                break
        self.components.append(component)
