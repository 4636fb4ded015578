"""The score activity: call a risk model with the step's features, safely.

A model that fails, times out or answers something that is not a finite number in its
declared range yields the declared fallback, marked as such, so the journey can route it.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from temporalio import activity

from engine.durations import parse_duration
from engine.messages import ScoreInput, ScoreResult

__all__ = ["ModelFailure", "call_python_model", "score_customer"]


class ModelFailure(Exception):
    """The model could not give a valid score (the message says why)."""


def _load_function(path: str) -> Callable[[dict[str, Any]], Any]:
    module_name, _, function_name = path.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ModelFailure(f"cannot load {path}: {error}") from None
    if not callable(function):
        raise ModelFailure(f"{path} is not a function")
    return function  # type: ignore[no-any-return]


def _as_score(answer: Any) -> float:
    if isinstance(answer, Mapping):
        answer = answer.get("score")
    if isinstance(answer, bool) or not isinstance(answer, int | float):
        raise ModelFailure(f"the model answered {type(answer).__name__}, not a number")
    score = float(answer)
    if not math.isfinite(score):
        raise ModelFailure(f"the model answered {score}, not a finite number")
    return score


async def call_python_model(spec: Mapping[str, Any], features: dict[str, Any]) -> float:
    """Run a `kind: python` model in a thread, bounded by its timeout."""
    function = _load_function(str(spec["function"]))
    timeout = parse_duration(spec.get("timeout") or "2s")
    try:
        answer = await asyncio.wait_for(
            asyncio.to_thread(function, dict(features)), timeout=timeout
        )
    except TimeoutError:
        raise ModelFailure(
            f"the model did not answer within {spec.get('timeout') or '2s'}"
        ) from None
    except ModelFailure:
        raise
    except Exception as error:
        raise ModelFailure(f"the model raised {type(error).__name__}: {error}") from None
    return _as_score(answer)


@activity.defn(name="score_customer")
async def score_customer(request: ScoreInput) -> ScoreResult:
    """Score with the declared model, or fall back (recorded) when it fails."""
    spec = request.spec
    started = time.perf_counter()
    fallback = float(spec.get("fallback", 0.5))
    try:
        for name, value in request.features.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ModelFailure(f"feature {name} is {value}")
        kind = spec.get("kind")
        if kind == "python":
            score = await call_python_model(spec, request.features)
        else:
            raise ModelFailure(f"model kind '{kind}' is not available in this worker")
        bounds = spec.get("range")
        if bounds and not (bounds[0] <= score <= bounds[1]):
            raise ModelFailure(f"score {score} is outside the declared range {bounds}")
        return ScoreResult(
            score=score,
            model=request.model,
            model_version=spec.get("version"),
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        )
    except ModelFailure as failure:
        activity.logger.warning("model %s failed, using fallback: %s", request.model, failure)
        return ScoreResult(
            score=fallback,
            model=request.model,
            model_version=spec.get("version"),
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            fallback_used=True,
            error=str(failure),
        )
