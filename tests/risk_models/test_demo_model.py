"""The shipped demo model (risk_models/default_risk.onnx), called the way the catalogue calls it:
it routes high-risk customers above the journey's 0.7 line and low-risk ones below, and
risk_models/train_default_risk.py retrains it reproducibly from its synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from activities.scoring import score_with_model
from risk_models.train_default_risk import ROUTING_EXAMPLES, main

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "risk_models" / "default_risk.onnx"


def declaration() -> dict[str, object]:
    catalogue = yaml.safe_load((ROOT / "journeys.yaml").read_text(encoding="utf-8"))
    model: dict[str, object] = catalogue["models"]["default_risk"]
    return model


@pytest.mark.parametrize(
    ("features", "high"),
    ROUTING_EXAMPLES,
    ids=[f"{f['amount']}-{f['tenure_months']}mo" for f, _ in ROUTING_EXAMPLES],
)
async def test_the_shipped_model_routes_the_documented_customers(
    features: dict[str, float], high: bool
) -> None:
    result = await score_with_model("default_risk", declaration(), features, model_root=ROOT)
    assert result.fallback_used is False, result.error
    assert (result.score >= 0.7) is high, result.score
    assert 0 <= result.score <= 1


async def test_the_shipped_model_is_small() -> None:
    assert SHIPPED.stat().st_size < 16 * 1024


async def test_retraining_reproduces_the_shipped_models_scores(tmp_path: Path) -> None:
    retrained = tmp_path / "default_risk.onnx"
    assert main(["--out", str(retrained)]) == 0
    shipped_model = declaration()
    retrained_model = {**shipped_model, "path": str(retrained)}
    for features, _ in ROUTING_EXAMPLES:
        shipped = await score_with_model("d", shipped_model, features, model_root=ROOT)
        again = await score_with_model("d", retrained_model, features, model_root=ROOT)
        assert again.score == pytest.approx(shipped.score, abs=1e-3)
