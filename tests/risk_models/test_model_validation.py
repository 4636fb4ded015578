"""`journeys validate` on model declarations: each mistake is named at its line, with a
hint, before anything is deployed; the shipped catalogue's ONNX model validates clean."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.catalog import build_catalog, build_catalog_from_text
from engine.violations import Violation

ROOT = Path(__file__).resolve().parents[2]

STEP = """\
journeys:
  - id: j
    entry: {event: payment_failed}
    steps:
      - id: risk
        score: risk
        features: {amount: event.amount, days_past_due: event.days_past_due}
      - id: route
        branch:
          - {when: scores.risk.fallback_used, goto: manual}
        else: done
      - {id: manual, exit: manual}
      - {id: done, exit: done}
"""


def document(model: str, steps: str = STEP) -> str:
    return (
        "version: 1\n"
        "events:\n"
        "  payment_failed: {amount: number, days_past_due: integer}\n"
        "models:\n"
        "  risk:\n" + textwrap.indent(textwrap.dedent(model).strip("\n"), "    ") + "\n" + steps
    )


def errors(text: str, root: Path | None = None) -> list[Violation]:
    catalog = build_catalog_from_text(text, root=root or ROOT)
    return [v for v in catalog.violations if v.severity == "error"]


def only_error(text: str, root: Path | None = None) -> Violation:
    found = errors(text, root)
    assert len(found) == 1, [v.format() for v in found]
    return found[0]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_the_shipped_catalogue_declares_an_onnx_demo_model_and_validates_clean() -> None:
    catalog = build_catalog(ROOT / "journeys.yaml")
    assert catalog.violations == []
    assert catalog.document is not None
    model = catalog.document.models["default_risk"]
    assert model.kind == "onnx" and model.fallback == 0.5 and model.range == (0, 1)
    assert model.features == ["amount", "days_past_due", "failed_payments_90d", "tenure_months"]
    assert catalog.plans["payment_recovery"].models["default_risk"]["path"] == (
        "risk_models/default_risk.onnx"
    )


def test_an_onnx_path_that_does_not_exist_is_an_error_at_its_line(tmp_path: Path) -> None:
    text = document("""
        kind: onnx
        path: models/churn.onnx
        fallback: 0.5
    """)
    violation = only_error(text, tmp_path)
    assert violation.code == "model-file"
    assert violation.message == "model 'risk': the file 'models/churn.onnx' does not exist"
    assert violation.hint == f"paths are relative to {tmp_path.resolve()}"
    assert violation.line == line_of(text, "path: models/churn.onnx")


@pytest.mark.parametrize("outside", ["../elsewhere/churn.onnx", "/etc/passwd"])
def test_an_onnx_path_outside_the_journeys_folder_is_an_error(tmp_path: Path, outside: str) -> None:
    """As for html_file and include: the file out there is never read."""
    folder = tmp_path / "catalogue"
    folder.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "churn.onnx").write_bytes(b"not a model")
    text = document(f"""
        kind: onnx
        path: {outside}
        fallback: 0.5
    """)
    violation = only_error(text, folder)
    assert violation.code == "model-file"
    assert violation.message == (
        f"model 'risk': the file '{outside}' is outside the journeys folder"
    )
    assert violation.line == line_of(text, f"path: {outside}")


def test_an_onnx_path_is_relative_to_the_journeys_file(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "churn.onnx").write_bytes(b"")
    text = document("""
        kind: onnx
        path: models/churn.onnx
        fallback: 0.5
    """)
    assert errors(text, tmp_path) == []


def test_a_json_model_needs_its_body_and_score() -> None:
    text = document("""
        kind: http
        protocol: json
        url: http://risk.internal/score
        fallback: 0.5
    """)
    found = errors(text)
    assert [(v.code, v.message) for v in found] == [
        ("missing-key", "model 'risk': protocol json needs body:"),
        ("missing-key", "model 'risk': protocol json needs score:"),
    ]
    assert all(v.line == line_of(text, "kind: http") for v in found)


def test_a_body_template_may_read_only_features_and_the_model() -> None:
    text = document("""
        kind: http
        protocol: json
        url: http://risk.internal/score
        body: '{"amount": {{ event.amount }}}'
        score: result.score
        fallback: 0.5
    """)
    violation = only_error(text)
    assert violation.code == "template"
    assert violation.message.startswith("model 'risk': body, line 1: unknown name 'event'")
    assert violation.line == line_of(text, "body:")


def test_body_and_score_are_refused_on_an_oip_model() -> None:
    text = document("""
        kind: http
        url: http://risk.internal/v2/models/risk/infer
        score: result.score
        fallback: 0.5
    """)
    violation = only_error(text)
    assert violation.message == "model 'risk': score: is for protocol json"
    assert violation.line == line_of(text, "score: result.score")


def test_a_token_written_in_the_file_is_refused() -> None:
    text = document("""
        kind: http
        url: http://risk.internal/v2/models/risk/infer
        token: s3cr3t-token
        fallback: 0.5
    """)
    violation = only_error(text)
    assert violation.code == "secret"
    assert violation.message == "model 'risk' has its token written in the file"
    assert "s3cr3t-token" not in violation.format()


def test_credentials_in_a_model_url_are_refused() -> None:
    text = document("""
        kind: http
        url: https://user:pa55@risk.internal/v2/models/risk/infer
        fallback: 0.5
    """)
    violation = only_error(text)
    assert violation.code == "secret"
    assert violation.line == line_of(text, "url:")


def test_a_token_from_the_environment_is_fine() -> None:
    text = document("""
        kind: http
        url: "${RISK_URL}"
        token: "${RISK_TOKEN}"
        fallback: 0.5
    """)
    assert errors(text) == []


@pytest.mark.parametrize(
    ("model", "needle", "message"),
    [
        (
            "{kind: python, function: 'risk_models.default_risk:predict', fallback: 1.5, range: [0, 1]}",
            "kind: python",
            "model 'risk': fallback 1.5 is outside its range [0, 1]",
        ),
        (
            "{kind: python, function: 'risk_models.default_risk:predict', fallback: 0.5, range: [1, 0]}",
            "kind: python",
            "model 'risk': range [1, 0] is empty",
        ),
        (
            "{kind: http, url: 'http://m/v2/models/m/infer', timeout: 20s, retries: 2, fallback: 0.5}",
            "kind: http",
            "model 'risk' may take 60 s (timeout 20s x 3 tries), longer than the 45 s a score "
            "step waits",
        ),
    ],
    ids=["fallback-outside-range", "empty-range", "too-slow"],
)
def test_scores_and_time_budget_are_checked(model: str, needle: str, message: str) -> None:
    text = document(model)
    violation = only_error(text)
    assert violation.message == message
    assert violation.line == line_of(text, needle)


def test_a_step_must_give_every_feature_its_model_declares() -> None:
    text = document("""
        kind: python
        function: risk_models.default_risk:predict
        features: [amount, days_past_due, tenure_months]
        fallback: 0.5
    """)
    violation = only_error(text)
    assert violation.code == "model-features"
    assert violation.message == (
        "model 'risk' needs feature tenure_months, which this step does not give"
    )
    assert violation.hint == "the model takes: amount, days_past_due, tenure_months"
    assert (violation.journey, violation.step) == ("j", "risk")


def test_a_step_feature_the_model_does_not_take_is_named_with_a_suggestion() -> None:
    text = document(
        """
        kind: python
        function: risk_models.default_risk:predict
        features: [amount, days_past_due]
        fallback: 0.5
        """,
        STEP.replace("days_past_due: event", "days_past_du: event"),
    )
    found = errors(text)
    assert [v.message for v in found] == [
        "model 'risk' needs feature days_past_due, which this step does not give",
        "model 'risk' takes no feature 'days_past_du'",
    ]
    assert found[1].hint == "did you mean 'days_past_due'?"
    assert found[1].line == line_of(text, "days_past_du:")


def test_an_example_must_match_the_declared_features_and_be_numbers() -> None:
    text = document("""
        kind: python
        function: risk_models.default_risk:predict
        features: [amount, days_past_due]
        fallback: 0.5
        example: {amount: "a lot", days_past_du: 3}
    """)
    assert sorted(v.message for v in errors(text)) == [
        "model 'risk' takes no feature 'days_past_du'",
        "model 'risk': example feature 'amount' must be a number, got text",
        "model 'risk': example has no days_past_due",
    ]


def test_a_journey_may_read_why_its_model_fell_back() -> None:
    text = document(
        "{kind: python, function: 'risk_models.default_risk:predict', fallback: 0.5}",
        STEP.replace("scores.risk.fallback_used", "scores.risk.error != None"),
    )
    assert errors(text) == []


def test_an_unknown_model_key_suggests_the_right_one() -> None:
    text = document("""
        kind: onnx
        path: risk_models/default_risk.onnx
        ouput: probabilities
        fallback: 0.5
    """)
    violation = only_error(text)
    assert violation.message == "unknown key 'ouput'"
    assert violation.hint == "did you mean 'output'?"
