"""Risk models the workflow tests call: one that fails on purpose."""

from __future__ import annotations

from collections.abc import Mapping


def explode(features: Mapping[str, object]) -> float:
    """Always raises, like a model with a bug."""
    return 1 / 0
