"""The `score` step's activity and the model adapters behind it.

Lives here: `score_step` (the activity: a whole `score` step, its features, the model, and
the decisions right after it), `score` (the model call of a step, which the benchmark's
hand-written baseline registers as its own activity), `score_with_model` (the same call
without Temporal, which `journeys models check` uses), and one adapter per `kind:` of
model:

- ``python``: ``package.module:function``, called in a thread with a dict of features;
- ``onnx``: a local ``.onnx`` file run with onnxruntime (sessions cached per path and
  modification time), its inputs fed by feature name, or one tensor of N columns;
- ``http``: the Open Inference Protocol v2 (KServe, MLServer, Triton), or plain JSON
  (a ``body:`` template and a ``score:`` path into the reply), with retries and an
  optional bearer token.

None of them raises for a model's failure: a model that fails, times out, answers
something that is not a finite number, or a number outside its declared ``range``,
yields the declared ``fallback``, with ``fallback_used`` and the ``error`` saying why, so
a journey can route it (and the history shows it). Features must be finite numbers (or
booleans); a missing or bad one is named in the error.

Secrets: ``${VAR}`` in a model's ``url`` and ``token`` are resolved here, at call time,
and neither the resolved URL nor the token is ever logged, recorded or put in an error.
Must not live here: the expression language (engine/decisions.py evaluates features and
walks the steps after a score), Temporal retries (a model's failure is an answer, not
an activity failure).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import TypeAdapter, ValidationError
from temporalio import activity

from engine import spec
from engine.decisions import decide, defaulted_by, evaluate_expressions
from engine.durations import parse_duration
from engine.environment import MissingVariableError, resolve_env
from engine.payloads import (
    ActivityName,
    DecideInput,
    DecideResult,
    ScoreInput,
    ScoreResult,
    ScoreStepInput,
    ScoreStepResult,
)
from engine.settings import RuntimeSettings
from engine.validator import MODEL_BODY_NAMES
from rules import CompiledTemplate, RenderError, TemplateError
from rules.cache import cached_template

__all__ = [
    "ModelAnswer",
    "ModelFailure",
    "call_http_model",
    "call_onnx_model",
    "call_python_model",
    "default_model_root",
    "score",
    "score_step",
    "score_with_model",
    "validate_features",
]

Feature = float | int | bool
Features = list[tuple[str, Feature]]

MAX_REPLY_BYTES = 1024 * 1024
MAX_BODY_CHARS = 64 * 1024
CALL_BUDGET_SECONDS = 55.0  # the workflow gives the activity 60 s: stop retrying before that
_ONNX_CACHE_SIZE = 32
_MODEL_ADAPTER: TypeAdapter[spec.ModelSpec] = TypeAdapter(spec.ModelSpec)


class ModelFailure(Exception):
    """The model could not give a valid score (the message says why, with no secret)."""


@dataclass(frozen=True)
class ModelAnswer:
    """What a model answered: its score, and the version it reported, if any."""

    score: float
    version: str | None = None


# ----------------------------------------------------------------------------- values


def validate_features(features: Mapping[str, Any]) -> dict[str, Feature]:
    """``features`` if every value is a finite number or a boolean; else ModelFailure
    naming the first bad feature and what it is."""
    checked: dict[str, Feature] = {}
    for name, value in features.items():
        if value is None:
            raise ModelFailure(
                f"feature '{name}' is missing (None): give it a default, "
                f"e.g. coalesce(profile.{name}, 0)"
            )
        if isinstance(value, bool):
            checked[name] = value
        elif isinstance(value, int | float):
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an int beyond any float
                raise ModelFailure(f"feature '{name}' is too large to be a number") from None
            if not finite:
                raise ModelFailure(f"feature '{name}' is {value}, not a finite number")
            checked[name] = value
        else:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise ModelFailure(f"feature '{name}' is {_kind_of(value)} {shown}, not a number")
    return checked


def _kind_of(value: Any) -> str:
    names: dict[type, str] = {str: "text", list: "a list", dict: "a mapping"}
    return names.get(type(value), type(value).__name__)


def _ordered(model: spec.ModelSpec, features: Mapping[str, Feature]) -> Features:
    """The features in the model's declared order (all of them, no others), else as given."""
    if model.features is None:
        return list(features.items())
    missing = [name for name in model.features if name not in features]
    if missing:
        raise ModelFailure(
            f"feature {', '.join(repr(m) for m in missing)} is missing: "
            f"the model takes {', '.join(model.features)}"
        )
    extra = [name for name in features if name not in model.features]
    if extra:
        raise ModelFailure(
            f"the model takes no feature {', '.join(repr(e) for e in extra)} "
            f"(it takes {', '.join(model.features)})"
        )
    return [(name, features[name]) for name in model.features]


def _as_score(answer: Any, *, what: str = "the model") -> float:
    """A finite float from a model's answer, or ModelFailure saying what it was."""
    if isinstance(answer, np.generic):
        answer = answer.item()
    if isinstance(answer, bool) or not isinstance(answer, int | float):
        if isinstance(answer, str | bytes):
            text = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else answer
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise ModelFailure(f"{what} answered text ({shown!r}), not a number")
        raise ModelFailure(f"{what} answered {_kind_of(answer)}, not a number")
    try:
        score = float(answer)
    except OverflowError:
        raise ModelFailure(f"{what} answered a number too large for a score") from None
    if not math.isfinite(score):
        raise ModelFailure(f"{what} answered {score}, not a finite number")
    return score


def _class_probability(
    probabilities: Mapping[Any, Any], positive_class: int | str | None, *, what: str
) -> Any:
    """The positive class's probability from a {class label: probability} map."""
    labels = list(probabilities)
    if positive_class is not None:
        for candidate in (positive_class, str(positive_class), _as_int(positive_class)):
            if candidate is not None and candidate in probabilities:
                return probabilities[candidate]
        raise ModelFailure(
            f"{what} has no class {positive_class!r} (its classes: "
            f"{', '.join(str(label) for label in labels)})"
        )
    if len(labels) == 2:
        for candidate in (1, "1", True):
            if candidate in probabilities:
                return probabilities[candidate]
        return probabilities[labels[1]]
    raise ModelFailure(
        f"{what} gives probabilities for classes {', '.join(str(label) for label in labels)}: "
        "name the one to score with positive_class:"
    )


def _as_int(value: int | str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def _score_of_output(value: Any, positive_class: int | str | None, *, what: str) -> float:
    """The score in a model output: a number, a tensor of one value, a row of class
    probabilities (a tensor [1, K] or a ZipMap's list of {label: probability})."""
    if isinstance(value, list) and value and isinstance(value[0], Mapping):
        value = value[0]
    if isinstance(value, Mapping):
        return _as_score(_class_probability(value, positive_class, what=what), what=what)
    if isinstance(value, list | tuple):
        try:
            value = np.asarray(value)
        except ValueError:
            raise ModelFailure(f"{what} is not a tensor of numbers") from None
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "USO":
            first = value.ravel()[0] if value.size else ""
            return _as_score(first if isinstance(first, str | bytes) else str(first), what=what)
        if value.size == 0:
            raise ModelFailure(f"{what} is empty")
        row = value[0].ravel() if value.ndim >= 2 else value.ravel()
        if row.size == 1:
            return _as_score(row[0], what=what)
        if isinstance(positive_class, str):
            raise ModelFailure(
                f"{what} is a tensor of {row.size} columns: positive_class must be a column "
                f"number (0 to {row.size - 1}), not {positive_class!r}"
            )
        column = positive_class if positive_class is not None else (1 if row.size == 2 else None)
        if column is None:
            raise ModelFailure(
                f"{what} has {row.size} values per row: name the column to score with "
                "positive_class: (0 is the first)"
            )
        if not 0 <= column < row.size:
            raise ModelFailure(f"{what} has no column {column} (it has {row.size})")
        return _as_score(row[column], what=what)
    return _as_score(value, what=what)


# ----------------------------------------------------------------------------- python


def _load_function(path: str) -> Callable[[dict[str, Any]], Any]:
    module_name, _, function_name = path.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ModelFailure(f"cannot load {path}: {error}") from None
    if not callable(function):
        raise ModelFailure(f"{path} is not a function")
    return function  # type: ignore[no-any-return]


async def call_python_model(model: spec.PythonModel, features: Features) -> ModelAnswer:
    """Run a `kind: python` model in a thread, bounded by its timeout.

    A function that overruns is abandoned, not stopped: its thread finishes on its own.
    """
    function = _load_function(model.function)
    try:
        answer = await asyncio.wait_for(
            asyncio.to_thread(function, dict(features)), timeout=parse_duration(model.timeout)
        )
    except TimeoutError:
        raise ModelFailure(f"the model did not answer within {model.timeout}") from None
    except Exception as error:
        raise ModelFailure(f"the model raised {type(error).__name__}: {error}") from None
    version = answer.get("model_version") if isinstance(answer, Mapping) else None
    if isinstance(answer, Mapping):
        if "score" not in answer:
            raise ModelFailure("the model answered a mapping without 'score'")
        answer = answer["score"]
    return ModelAnswer(_as_score(answer), str(version) if version is not None else None)


# ----------------------------------------------------------------------------- onnx


@dataclass(frozen=True)
class _OnnxModelFile:
    session: Any  # onnxruntime.InferenceSession
    digest: str
    stamp: tuple[int, int]  # (mtime_ns, size) of the file it was loaded from


_ONNX_SESSIONS: OrderedDict[str, _OnnxModelFile] = OrderedDict()
_ONNX_LOCK = threading.Lock()

_ONNX_TYPES: Mapping[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def default_model_root() -> Path:
    """Where relative model paths start: the folder of the journeys file (``JOURNEYS_FILE``)."""
    return RuntimeSettings.from_env().journeys_file.resolve().parent


def _onnx_model_file(path: Path) -> _OnnxModelFile:
    """The session for ``path``, loaded once per modification of the file."""
    try:
        status = path.stat()
    except OSError:
        raise ModelFailure(f"the model file {path} does not exist") from None
    stamp = (status.st_mtime_ns, status.st_size)
    key = str(path)
    with _ONNX_LOCK:
        cached = _ONNX_SESSIONS.get(key)
        if cached is not None and cached.stamp == stamp:
            _ONNX_SESSIONS.move_to_end(key)
            return cached
    # Loaded outside the lock, so a big model loading never holds up the cached ones; two
    # first calls at once may both load it, which is harmless.
    loaded = _load_onnx(path, stamp)
    with _ONNX_LOCK:
        _ONNX_SESSIONS[key] = loaded
        _ONNX_SESSIONS.move_to_end(key)
        while len(_ONNX_SESSIONS) > _ONNX_CACHE_SIZE:
            _ONNX_SESSIONS.popitem(last=False)
    return loaded


def _load_onnx(path: Path, stamp: tuple[int, int]) -> _OnnxModelFile:
    try:
        import onnxruntime  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - a dependency of the project
        raise ModelFailure("onnxruntime is not installed in this worker") from None
    try:
        data = path.read_bytes()
        options = onnxruntime.SessionOptions()
        # Many scores run at once on few cores: one thread per call, not one per core.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            data, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:
        raise ModelFailure(
            f"cannot load the ONNX model {path.name}: {type(error).__name__}: {str(error)[:200]}"
        ) from None
    return _OnnxModelFile(
        session=session, digest=hashlib.sha256(data).hexdigest()[:12], stamp=stamp
    )


def _input_tensor(name: str, value: Feature, declared: Any) -> np.ndarray[Any, Any]:
    """One feature as the tensor an ONNX input takes (its type and rank, batch of one)."""
    dtype = _ONNX_TYPES.get(declared.type)
    if dtype is None:
        raise ModelFailure(
            f"the model's input '{declared.name}' is {declared.type}: only number inputs are "
            "supported"
        )
    if np.issubdtype(dtype, np.integer) and float(value) != int(value):
        raise ModelFailure(
            f"feature '{name}' is {value}, but the model's input takes whole numbers"
        )
    shape = list(declared.shape or [])
    if any(isinstance(dim, int) and dim > 1 for dim in shape):
        raise ModelFailure(
            f"the model's input '{declared.name}' has shape {shape}: one value per input "
            "is supported"
        )
    return np.full([1] * len(shape), value, dtype=dtype)


def _onnx_feeds(session: Any, features: Features) -> dict[str, np.ndarray[Any, Any]]:
    inputs = session.get_inputs()
    values = dict(features)
    names = [declared.name for declared in inputs]
    if len(inputs) == 1 and names[0] not in values:
        # One tensor of N columns: the features in their declared order.
        declared = inputs[0]
        dtype = _ONNX_TYPES.get(declared.type)
        shape = list(declared.shape or [])
        if dtype is None or not np.issubdtype(dtype, np.floating) or len(shape) != 2:
            raise ModelFailure(
                f"the model's one input '{declared.name}' ({declared.type} {shape}) is neither "
                "named like a feature nor a float tensor [batch, columns]"
            )
        width = shape[1]
        if isinstance(width, int) and width != len(features):
            raise ModelFailure(
                f"the model's input '{declared.name}' takes {width} columns, the step gives "
                f"{len(features)} features"
            )
        row = [float(value) for _, value in features]
        return {declared.name: np.asarray([row], dtype=dtype)}
    missing = [name for name in names if name not in values]
    if missing:
        raise ModelFailure(
            f"the model needs input {', '.join(repr(m) for m in missing)}, which the step does "
            f"not give (it gives {', '.join(values) or 'no features'})"
        )
    extra = [name for name in values if name not in names]
    if extra:
        raise ModelFailure(
            f"feature {', '.join(repr(e) for e in extra)} is not an input of the model "
            f"(its inputs: {', '.join(names)})"
        )
    return {
        declared.name: _input_tensor(declared.name, values[declared.name], declared)
        for declared in inputs
    }


def _onnx_output(session: Any, wanted: str | None) -> str:
    names = [declared.name for declared in session.get_outputs()]
    if wanted is not None:
        if wanted not in names:
            raise ModelFailure(
                f"the model has no output '{wanted}' (its outputs: {', '.join(names)})"
            )
        return wanted
    if len(names) == 1:
        return str(names[0])
    for conventional in ("output_probability", "probabilities"):  # skl2onnx classifiers
        if conventional in names:
            return conventional
    raise ModelFailure(f"the model has outputs {', '.join(names)}: name one with output:")


def _run_onnx(model: spec.OnnxModel, path: Path, features: Features) -> ModelAnswer:
    loaded = _onnx_model_file(path)
    feeds = _onnx_feeds(loaded.session, features)
    output = _onnx_output(loaded.session, model.output)
    try:
        (value,) = loaded.session.run([output], feeds)
    except Exception as error:
        raise ModelFailure(
            f"the model failed: {type(error).__name__}: {str(error)[:200]}"
        ) from None
    score = _score_of_output(value, model.positive_class, what=f"the model's output '{output}'")
    return ModelAnswer(score, f"sha256:{loaded.digest}")


async def call_onnx_model(
    model: spec.OnnxModel, features: Features, *, model_root: Path
) -> ModelAnswer:
    """Run a `kind: onnx` model (path relative to ``model_root``) in a thread, bounded by
    its timeout. Its version, unless declared, is the file's SHA-256 (first 12 digits)."""
    path = (model_root / model.path).resolve()
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(_run_onnx, model, path, features),
            timeout=parse_duration(model.timeout),
        )
    except TimeoutError:
        raise ModelFailure(f"the model did not answer within {model.timeout}") from None


# ----------------------------------------------------------------------------- http


def _body_template(source: str) -> CompiledTemplate:
    """A json model's `body:` template, compiled once per process (`rules.cache`)."""
    try:
        return cached_template(source, html=False, names=MODEL_BODY_NAMES)
    except TemplateError as error:
        raise ModelFailure(f"the body template does not compile: {error.message}") from None


def _oip_request(model: spec.HttpModel, features: Features) -> dict[str, Any]:
    request: dict[str, Any] = {
        "inputs": [
            {
                "name": model.input,
                "shape": [1, len(features)],
                "datatype": "FP64",
                "data": [float(value) for _, value in features],
            }
        ]
    }
    if model.output is not None:
        request["outputs"] = [{"name": model.output}]
    return request


def _json_request(model: spec.HttpModel, name: str, features: Features) -> Any:
    if model.body is None:
        raise ModelFailure("protocol json needs body:")
    try:
        text = _body_template(model.body).render(
            {"features": dict(features), "model": name}, max_length=MAX_BODY_CHARS
        )
    except RenderError as error:
        raise ModelFailure(f"cannot render the body: {error.message}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelFailure(
            f"the body did not render as JSON: {error.msg} at line {error.lineno} "
            f"column {error.colno}"
        ) from None


def _oip_answer(model: spec.HttpModel, reply: Any) -> ModelAnswer:
    outputs = reply.get("outputs") if isinstance(reply, Mapping) else None
    if not isinstance(outputs, list) or not outputs:
        raise ModelFailure("the reply has no outputs (not an Open Inference Protocol answer)")
    named = {str(o.get("name")): o for o in outputs if isinstance(o, Mapping)}
    if model.output is not None:
        chosen = named.get(model.output)
        if chosen is None:
            raise ModelFailure(
                f"the reply has no output '{model.output}' (it has {', '.join(named)})"
            )
    elif len(named) == 1:
        chosen = next(iter(named.values()))
    else:
        raise ModelFailure(f"the reply has outputs {', '.join(named)}: name one with output:")
    what = f"the model's output '{chosen.get('name')}'"
    data = chosen.get("data")
    if chosen.get("datatype") == "BYTES":
        first = _first_leaf(data)
        raise ModelFailure(f"{what} is text ({str(first)[:40]!r}), not a number")
    if not isinstance(data, list) or not data:
        raise ModelFailure(f"{what} has no data")
    try:
        tensor = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        return ModelAnswer(_as_score(_first_leaf(data), what=what))
    shape = chosen.get("shape")
    if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
        try:
            tensor = tensor.reshape(shape)
        except ValueError:
            raise ModelFailure(f"{what} has shape {shape} but {tensor.size} values") from None
    version = reply.get("model_version")
    return ModelAnswer(
        _score_of_output(tensor, model.positive_class, what=what),
        str(version) if version not in (None, "") else None,
    )


def _first_leaf(data: Any) -> Any:
    while isinstance(data, list) and data:
        data = data[0]
    return data


def _json_answer(model: spec.HttpModel, reply: Any) -> ModelAnswer:
    path = model.score or ""
    value = reply
    walked: list[str] = []
    for part in path.split("."):
        walked.append(part)
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise ModelFailure(f"the reply has no {'.'.join(walked)}")
    return ModelAnswer(_as_score(value, what=f"the model's {path}"))


class _Retry(Exception):
    """A failure worth another try (timeout, unreachable, HTTP 429 or 5xx)."""


async def _post_once(
    client: httpx.AsyncClient, url: str, body: Any, headers: dict[str, str], timeout: str
) -> Any:
    try:
        response = await client.post(url, json=body, headers=headers)
    except httpx.TimeoutException:
        raise _Retry(f"the model did not answer within {timeout}") from None
    except httpx.TransportError as error:
        raise _Retry(f"cannot reach the model ({type(error).__name__})") from None
    if response.status_code == 429 or response.status_code >= 500:
        raise _Retry(f"the model answered HTTP {response.status_code}")
    if len(response.content) > MAX_REPLY_BYTES:
        raise ModelFailure(f"the reply is larger than {MAX_REPLY_BYTES // 1024} KiB")
    if response.status_code >= 300:
        raise ModelFailure(
            f"the model answered HTTP {response.status_code}: {response.text[:200].strip()}"
        )
    try:
        return json.loads(response.content)
    except ValueError:
        raise ModelFailure(f"the reply is not JSON: {response.text[:80].strip()!r}") from None


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


async def call_http_model(
    model: spec.HttpModel,
    name: str,
    features: Features,
    *,
    environ: Mapping[str, str] | None = None,
) -> ModelAnswer:
    """Call a `kind: http` model: one POST per try, ``1 + retries`` tries at most, each
    bounded by the model's timeout. ``${VAR}`` in ``url`` and ``token`` are read from
    ``environ`` (default: the process environment) now, and never appear in an error."""
    secrets: list[str] = []
    try:
        url = resolve_env(model.url, environ)
        headers = {"Accept": "application/json"}
        if model.token is not None:
            token = resolve_env(model.token, environ)
            secrets.append(token)
            headers["Authorization"] = f"Bearer {token}"
    except MissingVariableError as error:
        raise ModelFailure(str(error)) from None
    if url != model.url:
        secrets.append(url)
    body = (
        _oip_request(model, features)
        if model.protocol == "oip"
        else _json_request(model, name, features)
    )
    deadline = time.monotonic() + CALL_BUDGET_SECONDS
    tries = model.retries + 1
    try:
        async with httpx.AsyncClient(
            timeout=parse_duration(model.timeout), follow_redirects=False
        ) as client:
            for attempt in range(tries):
                try:
                    reply = await _post_once(client, url, body, headers, model.timeout)
                except _Retry as retry:
                    reason = str(retry)
                    pause = min(0.2 * 2**attempt, 1.0)
                    if attempt + 1 == tries or time.monotonic() + pause > deadline:
                        suffix = f" ({attempt + 1} tries)" if attempt else ""
                        raise ModelFailure(reason + suffix) from None
                    await asyncio.sleep(pause)
                    continue
                if model.protocol == "oip":
                    return _oip_answer(model, reply)
                return _json_answer(model, reply)
    except ModelFailure as failure:
        raise ModelFailure(_redact(str(failure), secrets)) from None
    except Exception as error:
        raise ModelFailure(
            _redact(f"the call failed: {type(error).__name__}: {error}", secrets)
        ) from None
    raise ModelFailure("the model was not called")  # pragma: no cover - tries >= 1


# ----------------------------------------------------------------------------- the step


async def score_with_model(
    name: str,
    declaration: Mapping[str, Any],
    features: Mapping[str, Any],
    *,
    model_root: Path | None = None,
) -> ScoreResult:
    """Score ``features`` with the model declared as ``declaration`` (its `models:` entry),
    or fall back (recorded). Never raises for anything the model or its inputs do.

    ``model_root`` is where a relative onnx ``path`` starts (default: the folder of the
    journeys file, `JOURNEYS_FILE`).
    """
    started = time.perf_counter()
    declared_fallback = declaration.get("fallback", 0.5)
    fallback = float(declared_fallback) if isinstance(declared_fallback, int | float) else 0.5
    version = declaration.get("version")
    try:
        model = _declared_model(declaration)
        answer = await _answer(
            model, name, _ordered(model, validate_features(features)), model_root
        )
        return ScoreResult(
            score=answer.score,
            model=name,
            model_version=model.version or answer.version,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        )
    except Exception as failure:
        reason = (
            str(failure)
            if isinstance(failure, ModelFailure)
            else f"unexpected {type(failure).__name__}: {failure}"
        )
        return ScoreResult(
            score=fallback,
            model=name,
            model_version=str(version) if version is not None else None,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            fallback_used=True,
            error=reason,
        )


def _declared_model(declaration: Mapping[str, Any]) -> spec.ModelSpec:
    """The model's `models:` entry, checked; ModelFailure naming the first problem."""
    try:
        return _MODEL_ADAPTER.validate_python(dict(declaration))
    except ValidationError as error:
        problem = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in problem["loc"][1:]) or "models"
        raise ModelFailure(
            f"the model's declaration is invalid: {where}: {problem['msg']}"
        ) from None


async def _answer(
    model: spec.ModelSpec, name: str, checked: Features, model_root: Path | None
) -> ModelAnswer:
    """Call the model by its kind; ModelFailure for a score outside its declared range."""
    if isinstance(model, spec.PythonModel):
        answer = await call_python_model(model, checked)
    elif isinstance(model, spec.OnnxModel):
        root = model_root if model_root is not None else default_model_root()
        answer = await call_onnx_model(model, checked, model_root=root)
    else:
        answer = await call_http_model(model, name, checked)
    if model.range is not None:
        low, high = model.range
        if not low <= answer.score <= high:
            raise ModelFailure(
                f"score {answer.score:g} is outside the declared range [{low:g}, {high:g}]"
            )
    return answer


async def score(request: ScoreInput) -> ScoreResult:
    """Score with the declared model, or fall back (logged, and recorded in the result)."""
    result = await score_with_model(request.model, request.spec, request.features)
    if result.fallback_used:
        activity.logger.warning(
            "model %s failed, using fallback %g: %s", request.model, result.score, result.error
        )
    return result


@activity.defn(name=ActivityName.SCORE_STEP)
async def score_step(request: ScoreStepInput) -> ScoreStepResult:
    """A whole `score` step: evaluate its features against the run's context (an expression
    that fails gives None, named in ``error``, and the model's feature check then falls
    back), score, and decide the set/branch/split steps after it with the score in
    `scores`, so the run goes on to its next send, wait or review with no local activity
    in between. Everything it read and chose is in its input and result."""
    features = dict(request.score.features)
    reads: dict[str, Any] = {}
    error: str | None = None
    defaulted: list[str] = []
    if request.feature_expressions:
        names = list(request.feature_expressions)
        sources = [request.feature_expressions[n] for n in names]
        evaluated = evaluate_expressions(sources, "all", request.context, request.timezone)
        features = dict(zip(names, evaluated.values, strict=True))
        reads, error = evaluated.reads, evaluated.error
        defaulted = defaulted_by(names, sources, request.context, request.timezone)
    result = await score(request.score.model_copy(update={"features": features}))
    return ScoreStepResult(
        score=result,
        features=features,
        reads=reads,
        error=error,
        decided=_walk_after(request, result),
        defaulted=defaulted,
    )


def _walk_after(request: ScoreStepInput, result: ScoreResult) -> DecideResult | None:
    """The set/branch/split steps from ``request.then`` on, decided with the score in
    `scores` (as `decide_steps` would, right after)."""
    if request.then is None:
        return None
    context = dict(request.context)
    context["scores"] = {
        **(context.get("scores") or {}),
        request.score.model: result.model_dump(mode="json"),
    }
    return decide(
        DecideInput(
            start=request.then,
            steps=request.steps,
            context=context,
            timezone=request.timezone,
            salt=request.salt,
            limit=request.limit,
        )
    )
