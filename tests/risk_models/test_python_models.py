"""The python adapter: an in-process function, called for real, and each way it can fail
yields the declared fallback with the reason."""

from __future__ import annotations

from typing import Any

import pytest

from activities.scoring import score_with_model
from risk_models.default_risk import predict

HIGH_RISK = {"amount": 900000, "days_past_due": 30, "failed_payments_90d": 3, "tenure_months": 12}


def python_model(function: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "python", "function": function, "fallback": 0.5, "timeout": "1s", **extra}


async def test_demo_python_model_scores_the_features_it_is_given() -> None:
    result = await score_with_model(
        "default_risk", python_model("risk_models.default_risk:predict", range=[0, 1]), HIGH_RISK
    )
    assert result.fallback_used is False and result.error is None
    assert result.score == predict(HIGH_RISK)
    assert result.score >= 0.7
    assert result.model == "default_risk"
    assert result.latency_ms >= 0


async def test_a_mapping_answer_gives_its_score_and_version() -> None:
    result = await score_with_model(
        "wrapped", python_model("tests.risk_models.python_models:mapping"), {"amount": 250000}
    )
    assert (result.score, result.model_version, result.fallback_used) == (0.25, "m-2", False)


async def test_a_declared_version_is_recorded_over_the_answered_one() -> None:
    result = await score_with_model(
        "wrapped",
        python_model("tests.risk_models.python_models:mapping", version="2024-09"),
        {"amount": 1},
    )
    assert result.model_version == "2024-09"


@pytest.mark.parametrize(
    ("function", "error"),
    [
        ("explode", "the model raised ZeroDivisionError: division by zero"),
        ("text", "the model answered text ('high'), not a number"),
        ("not_a_number", "the model answered nan, not a finite number"),
        ("above_one", "score 1.7 is outside the declared range [0, 1]"),
        ("slow", "the model did not answer within 1s"),
        ("missing", "cannot load tests.risk_models.python_models:missing"),
        ("NOT_CALLABLE", "tests.risk_models.python_models:NOT_CALLABLE is not a function"),
    ],
)
async def test_a_failing_python_model_yields_the_fallback_and_says_why(
    function: str, error: str
) -> None:
    result = await score_with_model(
        "risk",
        python_model(f"tests.risk_models.python_models:{function}", range=[0, 1], fallback=0.8),
        {"amount": 100},
    )
    assert (result.score, result.fallback_used) == (0.8, True)
    assert result.error is not None and result.error.startswith(error), result.error


@pytest.mark.parametrize(
    ("features", "error"),
    [
        ({"amount": None}, "feature 'amount' is missing (None): give it a default"),
        ({"amount": float("nan")}, "feature 'amount' is nan, not a finite number"),
        ({"amount": float("inf")}, "feature 'amount' is inf, not a finite number"),
        ({"amount": 1, "segment": "vip"}, "feature 'segment' is text 'vip', not a number"),
        ({"amount": [1, 2]}, "feature 'amount' is a list [1, 2], not a number"),
        ({"amount": 10**400}, "feature 'amount' is too large to be a number"),
    ],
)
async def test_a_bad_feature_value_is_named_and_the_model_is_not_called(
    features: dict[str, Any], error: str
) -> None:
    result = await score_with_model(
        "risk", python_model("tests.risk_models.python_models:explode"), features
    )
    assert result.fallback_used is True
    assert result.error is not None and result.error.startswith(error), result.error


async def test_a_feature_the_model_does_not_declare_is_refused() -> None:
    declaration = python_model("risk_models.default_risk:predict", features=["amount"])
    result = await score_with_model("risk", declaration, {"amount": 1, "tenure": 3})
    assert result.fallback_used is True
    assert result.error == "the model takes no feature 'tenure' (it takes amount)"


async def test_booleans_are_features_too() -> None:
    result = await score_with_model(
        "wrapped", python_model("tests.risk_models.python_models:mapping"), {"amount": True}
    )
    assert (result.score, result.fallback_used) == (0.000001, False)


async def test_a_broken_declaration_falls_back_with_the_problem() -> None:
    result = await score_with_model(
        "risk", {"kind": "python", "fallback": 0.4, "function": "no colon"}, {"amount": 1}
    )
    assert (result.score, result.fallback_used) == (0.4, True)
    assert result.error is not None
    assert result.error.startswith("the model's declaration is invalid: function:")
