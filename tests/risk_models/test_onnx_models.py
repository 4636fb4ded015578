"""The ONNX adapter on models each test trains with scikit-learn and exports with skl2onnx
into tmp_path: scores match scikit-learn's own, inputs by name or as one tensor, the
classifier's probability read from ZipMap or tensor outputs, and every failure falls back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from activities.scoring import score_with_model

FEATURES = ["amount", "days_past_due", "failed_payments_90d", "tenure_months"]
CUSTOMER = {"amount": 420000, "days_past_due": 9, "failed_payments_90d": 1, "tenure_months": 30}
OPSET = {"": 17, "ai.onnx.ml": 3}


def training_data(seed: int = 3) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [
            rng.uniform(10_000, 1_000_000, 3000),
            rng.integers(0, 60, 3000),
            rng.poisson(0.8, 3000),
            rng.integers(0, 120, 3000),
        ]
    ).astype(np.float32)
    z = -1.0 + 3e-6 * x[:, 0] + 0.05 * x[:, 1] + 0.7 * x[:, 2] - 0.03 * x[:, 3]
    y = (rng.random(3000) < 1 / (1 + np.exp(-z))).astype(np.int64)
    return x, y


def classifier(seed: int = 3) -> Any:
    x, y = training_data(seed)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)


def export(
    model: Any, path: Path, *, named: bool = True, zipmap: bool = True, tensor: Any = None
) -> Path:
    tensor = tensor or FloatTensorType
    inputs = (
        [(name, tensor([None, 1])) for name in FEATURES]
        if named
        else [("features", tensor([None, len(FEATURES)]))]
    )
    options = None if zipmap else {id(model): {"zipmap": False}}
    onnx = convert_sklearn(model, initial_types=inputs, options=options, target_opset=OPSET)
    path.write_bytes(onnx.SerializeToString())
    return path


def expected_probability(model: Any, features: dict[str, float]) -> float:
    row = np.array([[features[name] for name in FEATURES]], dtype=np.float32)
    return float(model.predict_proba(row)[0, 1])


def onnx_model(path: Path | str, **extra: Any) -> dict[str, Any]:
    return {"kind": "onnx", "path": str(path), "fallback": 0.5, "range": [0, 1], **extra}


async def score(declaration: dict[str, Any], features: dict[str, Any], root: Path) -> Any:
    return await score_with_model("risk", declaration, features, model_root=root)


async def test_a_classifier_with_zipmap_output_scores_its_positive_class_probability(
    tmp_path: Path,
) -> None:
    model = classifier()
    export(model, tmp_path / "risk.onnx")
    result = await score(onnx_model("risk.onnx", output="output_probability"), CUSTOMER, tmp_path)
    assert result.fallback_used is False, result.error
    assert result.score == pytest.approx(expected_probability(model, CUSTOMER), abs=1e-5)


async def test_a_classifier_exported_without_zipmap_gives_the_same_score(tmp_path: Path) -> None:
    model = classifier()
    export(model, tmp_path / "zip.onnx")
    export(model, tmp_path / "plain.onnx", zipmap=False)
    with_zipmap = await score(onnx_model("zip.onnx"), CUSTOMER, tmp_path)
    without = await score(onnx_model("plain.onnx", output="probabilities"), CUSTOMER, tmp_path)
    assert without.fallback_used is False, without.error
    assert without.score == pytest.approx(with_zipmap.score, abs=1e-6)
    assert without.score == pytest.approx(expected_probability(model, CUSTOMER), abs=1e-5)


async def test_one_tensor_model_reads_the_features_in_their_declared_order(tmp_path: Path) -> None:
    model = classifier()
    export(model, tmp_path / "tensor.onnx", named=False, zipmap=False)
    shuffled = {name: CUSTOMER[name] for name in reversed(FEATURES)}  # the step's own order
    result = await score(onnx_model("tensor.onnx", features=FEATURES), shuffled, tmp_path)
    assert result.fallback_used is False, result.error
    assert result.score == pytest.approx(expected_probability(model, CUSTOMER), abs=1e-5)


async def test_one_tensor_model_without_declared_features_reads_the_steps_order(
    tmp_path: Path,
) -> None:
    model = classifier()
    export(model, tmp_path / "tensor.onnx", named=False, zipmap=False)
    in_order = await score(onnx_model("tensor.onnx"), dict(CUSTOMER), tmp_path)
    assert in_order.score == pytest.approx(expected_probability(model, CUSTOMER), abs=1e-5)


async def test_double_precision_inputs_are_fed_as_doubles(tmp_path: Path) -> None:
    model = classifier()
    export(model, tmp_path / "double.onnx", tensor=DoubleTensorType, zipmap=False)
    result = await score(onnx_model("double.onnx"), CUSTOMER, tmp_path)
    assert result.fallback_used is False, result.error
    assert result.score == pytest.approx(expected_probability(model, CUSTOMER), abs=1e-5)


async def test_whole_number_inputs_refuse_a_fraction(tmp_path: Path) -> None:
    x, y = training_data()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x.astype(np.int64), y)
    export(model, tmp_path / "ints.onnx", tensor=Int64TensorType)
    ok = await score(onnx_model("ints.onnx"), CUSTOMER, tmp_path)
    assert ok.fallback_used is False, ok.error
    fraction = await score(onnx_model("ints.onnx"), {**CUSTOMER, "days_past_due": 2.5}, tmp_path)
    assert fraction.error == (
        "feature 'days_past_due' is 2.5, but the model's input takes whole numbers"
    )


async def test_a_regressor_scores_its_one_output_and_its_range_is_enforced(
    tmp_path: Path,
) -> None:
    x, _ = training_data()
    target = x[:, 0] / 1_000_000
    export(
        make_pipeline(StandardScaler(), LinearRegression()).fit(x, target), tmp_path / "amount.onnx"
    )
    inside = await score(onnx_model("amount.onnx"), CUSTOMER, tmp_path)
    assert inside.fallback_used is False, inside.error
    assert inside.score == pytest.approx(0.42, abs=1e-3)
    outside = await score(onnx_model("amount.onnx"), {**CUSTOMER, "amount": 3e6}, tmp_path)
    assert (outside.score, outside.fallback_used) == (0.5, True)
    assert outside.error is not None
    assert outside.error.startswith("score 3 is outside the declared range [0, 1]")


async def test_the_model_version_is_the_files_digest_unless_declared(tmp_path: Path) -> None:
    export(classifier(), tmp_path / "risk.onnx")
    digest = await score(onnx_model("risk.onnx"), CUSTOMER, tmp_path)
    declared = await score(onnx_model("risk.onnx", version="2024.09"), CUSTOMER, tmp_path)
    assert digest.model_version is not None and digest.model_version.startswith("sha256:")
    assert len(digest.model_version) == len("sha256:") + 12
    assert declared.model_version == "2024.09"


async def test_a_retrained_file_is_used_without_a_restart(tmp_path: Path) -> None:
    path = export(classifier(seed=3), tmp_path / "risk.onnx")
    first = await score(onnx_model("risk.onnx"), CUSTOMER, tmp_path)
    again = await score(onnx_model("risk.onnx"), CUSTOMER, tmp_path)
    retrained = classifier(seed=99)
    export(retrained, path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = await score(onnx_model("risk.onnx"), CUSTOMER, tmp_path)
    assert first.model_version == again.model_version != second.model_version
    assert second.score == pytest.approx(expected_probability(retrained, CUSTOMER), abs=1e-5)


async def test_an_absolute_path_is_used_as_it_is(tmp_path: Path) -> None:
    path = export(classifier(), tmp_path / "risk.onnx")
    result = await score(onnx_model(path), CUSTOMER, Path("/nonexistent"))
    assert result.fallback_used is False, result.error


async def test_a_multiclass_model_needs_its_positive_class(tmp_path: Path) -> None:
    x, _ = training_data()
    grade = np.digitize(x[:, 2], [1, 2]).astype(np.int64)  # 0, 1 or 2 failed payments+
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, grade)
    export(model, tmp_path / "grades.onnx")
    export(model, tmp_path / "grades-tensor.onnx", zipmap=False)
    unnamed = await score(onnx_model("grades.onnx"), CUSTOMER, tmp_path)
    assert unnamed.fallback_used is True
    assert unnamed.error == (
        "the model's output 'output_probability' gives probabilities for classes 0, 1, 2: "
        "name the one to score with positive_class:"
    )
    row = np.array([[CUSTOMER[name] for name in FEATURES]], dtype=np.float32)
    worst = float(model.predict_proba(row)[0, 2])
    named = await score(onnx_model("grades.onnx", positive_class=2), CUSTOMER, tmp_path)
    column = await score(onnx_model("grades-tensor.onnx", positive_class=2), CUSTOMER, tmp_path)
    assert named.score == pytest.approx(worst, abs=1e-5)
    assert column.score == pytest.approx(worst, abs=1e-5)


@pytest.mark.parametrize(
    ("declaration", "features", "error"),
    [
        (
            {"path": "risk.onnx"},
            {k: v for k, v in CUSTOMER.items() if k != "tenure_months"},
            "the model needs input 'tenure_months', which the step does not give "
            "(it gives amount, days_past_due, failed_payments_90d)",
        ),
        (
            {"path": "risk.onnx"},
            {**CUSTOMER, "segment_score": 1},
            "feature 'segment_score' is not an input of the model (its inputs: amount, "
            "days_past_due, failed_payments_90d, tenure_months)",
        ),
        (
            {"path": "risk.onnx", "output": "score"},
            CUSTOMER,
            "the model has no output 'score' (its outputs: output_label, output_probability)",
        ),
        (
            {"path": "tensor.onnx", "features": FEATURES[:3]},
            {k: CUSTOMER[k] for k in FEATURES[:3]},
            "the model's input 'features' takes 4 columns, the step gives 3 features",
        ),
        ({"path": "missing.onnx"}, CUSTOMER, "the model file "),
        ({"path": "corrupt.onnx"}, CUSTOMER, "cannot load the ONNX model corrupt.onnx: "),
    ],
    ids=["missing-input", "extra-feature", "unknown-output", "wrong-width", "no-file", "corrupt"],
)
async def test_an_onnx_model_that_cannot_score_falls_back_and_says_why(
    tmp_path: Path, declaration: dict[str, Any], features: dict[str, Any], error: str
) -> None:
    model = classifier()
    export(model, tmp_path / "risk.onnx")
    export(model, tmp_path / "tensor.onnx", named=False)
    (tmp_path / "corrupt.onnx").write_bytes(b"not a model")
    result = await score(onnx_model(**declaration), features, tmp_path)
    assert (result.score, result.fallback_used) == (0.5, True)
    assert result.error is not None and result.error.startswith(error), result.error
