"""A transparent demo default-risk model: a logistic score of a few payment features.

Synthetic and hand-set: it exists so the example catalogue's `score` step works with no
model server. Real deployments point `models:` at their own model (python, onnx or http).
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def predict(features: Mapping[str, object]) -> float:
    """Probability-like default risk in [0, 1] from amount, days past due and history."""

    def number(name: str) -> float:
        value = features.get(name)
        return (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
        )

    z = (
        -3.0
        + 0.9 * math.log10(1.0 + number("amount"))
        + 0.08 * number("days_past_due")
        + 0.6 * number("failed_payments_90d")
        - 0.04 * number("tenure_months")
    )
    return round(1.0 / (1.0 + math.exp(-z)), 4)
