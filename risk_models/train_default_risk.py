"""Trains the demo default-risk model and writes it as ONNX (`risk_models/default_risk.onnx`).

The data are SYNTHETIC: payments generated here from a fixed seed, labelled by a known
logistic rule (bigger, later, repeatedly failing payments from newer customers default
more often). Nothing here is real customer data, and the model is only fit to show the
`score` step working; it must not make real credit decisions. The run is deterministic:
the same seed gives the same data, the same coefficients and the same scores.

    .venv/bin/python risk_models/train_default_risk.py            # writes risk_models/default_risk.onnx
    .venv/bin/python risk_models/train_default_risk.py --out x.onnx

The model is a scikit-learn pipeline (standard scaling, then logistic regression) exported
with skl2onnx: one float input per feature, named like the features the catalogue's
`score_risk` step gives, and the class probabilities as the `probabilities` tensor (label
1 = default). Training needs the dev extras (scikit-learn, skl2onnx); running the model
needs only onnxruntime. Before writing, the script checks the scores the example
catalogue relies on (payment_recovery routes on 0.7) and refuses to write a model that
would route the documented examples differently.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "FEATURES",
    "ROUTING_EXAMPLES",
    "SEED",
    "check_routing",
    "export_onnx",
    "synthetic_payments",
    "train",
]

FEATURES = ("amount", "days_past_due", "failed_payments_90d", "tenure_months")
"""The model's inputs, in the order the catalogue declares them."""

SEED = 20240917
SAMPLES = 20_000
OUTPUT = Path(__file__).resolve().parent / "default_risk.onnx"

# The rule the synthetic labels are drawn from: log-odds of default.
_INTERCEPT = 0.9
_WEIGHTS = {
    "amount": 4e-6,  # +0.4 per 100,000 of the failed payment
    "days_past_due": 0.09,
    "failed_payments_90d": 0.8,
    "tenure_months": -0.07,
}

ROUTING_EXAMPLES: tuple[tuple[dict[str, float], bool], ...] = (
    # (features, must score >= 0.7 and go to ops review)
    ({"amount": 900_000, "days_past_due": 30, "failed_payments_90d": 3, "tenure_months": 12}, True),
    ({"amount": 900_000, "days_past_due": 30, "failed_payments_90d": 3, "tenure_months": 48}, True),
    ({"amount": 250_000, "days_past_due": 12, "failed_payments_90d": 2, "tenure_months": 18}, True),
    ({"amount": 25_000, "days_past_due": 3, "failed_payments_90d": 0, "tenure_months": 0}, True),
    ({"amount": 15_000, "days_past_due": 1, "failed_payments_90d": 0, "tenure_months": 48}, False),
    ({"amount": 15_000, "days_past_due": 1, "failed_payments_90d": 0, "tenure_months": 24}, False),
)
"""Customers whose route the README, the catalogue and the end-to-end tests describe."""

Matrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]


def synthetic_payments(samples: int = SAMPLES, seed: int = SEED) -> tuple[Matrix, Labels]:
    """Failed payments and whether each defaulted, generated from ``seed`` (synthetic)."""
    rng = np.random.default_rng(seed)
    amount = np.exp(rng.uniform(np.log(10_000), np.log(2_000_000), samples))
    days_past_due = np.minimum(rng.geometric(1 / 8, samples) - 1, 90)
    failed = np.minimum(rng.poisson(0.8, samples), 10)
    tenure = rng.integers(0, 121, samples)
    columns = {
        "amount": amount,
        "days_past_due": days_past_due,
        "failed_payments_90d": failed,
        "tenure_months": tenure,
    }
    log_odds = _INTERCEPT + sum(_WEIGHTS[name] * columns[name] for name in FEATURES)
    defaulted = rng.random(samples) < 1.0 / (1.0 + np.exp(-log_odds))
    features = np.column_stack([columns[name] for name in FEATURES]).astype(np.float32)
    return features, defaulted.astype(np.int64)


def train(features: Matrix, labels: Labels) -> Any:
    """A fitted scikit-learn pipeline: standard scaling, then logistic regression."""
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]
    from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=10.0, max_iter=1000))
    return pipeline.fit(features, labels)


def export_onnx(model: Any) -> bytes:
    """``model`` as ONNX bytes: one float input per feature, `probabilities` out (no ZipMap)."""
    from skl2onnx import convert_sklearn  # type: ignore[import-untyped]
    from skl2onnx.common.data_types import FloatTensorType  # type: ignore[import-untyped]

    converted = convert_sklearn(
        model,
        name="default_risk",
        initial_types=[(name, FloatTensorType([None, 1])) for name in FEATURES],
        options={id(model): {"zipmap": False}},
        # Opsets onnxruntime has run since 1.17, the oldest release pyproject allows.
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    converted.doc_string = (
        "Demo default-risk model trained on SYNTHETIC data by risk_models/train_default_risk.py "
        f"(seed {SEED}); not for real decisions."
    )
    for key, value in (("training_data", "synthetic"), ("seed", str(SEED))):
        entry = converted.metadata_props.add()
        entry.key, entry.value = key, value
    data: bytes = converted.SerializeToString()
    return data


def check_routing(onnx_bytes: bytes) -> list[str]:
    """Run the exported model on `ROUTING_EXAMPLES`; what routes differently (empty: fine)."""
    import onnxruntime  # type: ignore[import-untyped]

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    problems: list[str] = []
    for features, high in ROUTING_EXAMPLES:
        feeds = {name: np.array([[features[name]]], dtype=np.float32) for name in FEATURES}
        probabilities = session.run(["probabilities"], feeds)[0]
        score = float(probabilities[0][1])
        if (score >= 0.7) != high:
            want = ">= 0.7" if high else "< 0.7"
            problems.append(f"{features} scores {score:.3f}, want {want}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Train on the synthetic data, check the routing examples, write the ONNX file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUTPUT, help="where to write the model")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the synthetic data")
    arguments = parser.parse_args(argv)
    features, labels = synthetic_payments(seed=arguments.seed)
    model = train(features, labels)
    onnx_bytes = export_onnx(model)
    problems = check_routing(onnx_bytes)
    if problems:
        print("not written: the model routes the documented examples differently:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    arguments.out.write_bytes(onnx_bytes)
    accuracy = float(model.score(features, labels))
    print(
        f"wrote {arguments.out} ({len(onnx_bytes)} bytes): {len(labels)} synthetic payments, "
        f"{labels.mean():.1%} defaulted, training accuracy {accuracy:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
