"""`kind: python` models the adapter tests call, each behaving like a real model can."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

_never = threading.Event()


def mapping(features: Mapping[str, Any]) -> dict[str, Any]:
    """Answers a mapping with the score and the version, like a model wrapper would."""
    return {"score": round(float(features["amount"]) / 1_000_000, 6), "model_version": "m-2"}


def explode(features: Mapping[str, Any]) -> float:
    """Raises, like a model with a bug."""
    return 1 / 0


def text(features: Mapping[str, Any]) -> str:
    """Answers a label instead of a number."""
    return "high"


def not_a_number(features: Mapping[str, Any]) -> float:
    """Answers NaN."""
    return math.nan


def above_one(features: Mapping[str, Any]) -> float:
    """Answers a score outside [0, 1]."""
    return 1.7


def slow(features: Mapping[str, Any]) -> float:
    """Takes longer than its 1 s timeout (bounded: gives up after 5 s)."""
    _never.wait(5.0)
    return 0.1


NOT_CALLABLE = 0.5
