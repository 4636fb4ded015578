"""`journeys models check`: one line per declared model with its latency and score, or why it
would fall back; exit 1 when any model fails."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli.main import app
from tests.risk_models.servers import ModelService

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def write(tmp_path: Path, models: str) -> Path:
    path = tmp_path / "journeys.yaml"
    path.write_text(
        "version: 1\nmodels:\n" + textwrap.indent(textwrap.dedent(models).strip("\n"), "  ") + "\n",
        encoding="utf-8",
    )
    return path


def test_the_shipped_catalogue_model_answers() -> None:
    result = runner.invoke(app, ["models", "check", str(ROOT / "journeys.yaml")])
    assert result.exit_code == 0, result.output
    line, summary = result.output.strip().splitlines()
    assert re.fullmatch(
        r"ok    default_risk  onnx    score 0\.9\d{3}  \d+\.\d ms  version sha256:[0-9a-f]{12}",
        line,
    ), line
    assert summary == "1 model: 1 ok, 0 failed"


def test_each_failing_model_is_named_with_its_reason_and_the_exit_code_is_1(
    tmp_path: Path,
) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "risk.onnx").write_bytes(
        (ROOT / "risk_models/default_risk.onnx").read_bytes()
    )
    file = write(
        tmp_path,
        """
        good:
          kind: python
          function: risk_models.default_risk:predict
          fallback: 0.5
          example: {amount: 900000, days_past_due: 30, failed_payments_90d: 3}
        buggy:
          kind: python
          function: tests.risk_models.python_models:explode
          fallback: 0.5
          example: {amount: 1}
        no_example:
          kind: python
          function: risk_models.default_risk:predict
          fallback: 0.5
        wrong_inputs:
          kind: onnx
          path: models/risk.onnx
          fallback: 0.5
          example: {amount: 1}
        """,
    )
    result = runner.invoke(app, ["models", "check", str(file)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert re.fullmatch(r"ok    good          python  score 0\.\d{4}  \d+\.\d ms", lines[0])
    assert lines[1].startswith(
        "FAIL  buggy         python  would fall back to 0.5: the model raised "
        "ZeroDivisionError: division by zero after "
    )
    assert lines[2] == (
        "FAIL  no_example    python  no example: give it example: {feature: value, ...} to check it"
    )
    assert lines[3].startswith(
        "FAIL  wrong_inputs  onnx    would fall back to 0.5: the model needs input "
        "'days_past_due', 'failed_payments_90d', 'tenure_months'"
    )
    assert lines[4] == "4 models: 1 ok, 3 failed"


def test_an_http_model_is_called_with_its_token_and_neither_is_printed(
    tmp_path: Path, service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RISK_URL", service.url("/json/auth"))
    monkeypatch.setenv("RISK_TOKEN", service.token)
    file = write(
        tmp_path,
        """
        remote:
          kind: http
          protocol: json
          url: "${RISK_URL}"
          token: "${RISK_TOKEN}"
          body: '{"amount": {{ features.amount }}}'
          score: result.probability
          fallback: 0.5
          example: {amount: 400000}
        """,
    )
    result = runner.invoke(app, ["models", "check", str(file)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok    remote  http    score 0.4000  ")
    assert service.token not in result.output and str(service.port) not in result.output


def test_a_broken_declaration_is_reported_and_fails(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        """
        risk:
          kind: onnx
          fallback: 0.5
          example: {amount: 1}
        """,
    )
    result = runner.invoke(app, ["models", "check", str(file)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{file}:4:5: -: missing required key 'path'",
        "FAIL  risk  onnx    its declaration has errors (see above)",
        "1 model: 0 ok, 1 failed",
    ]


def test_a_file_without_models_says_so(tmp_path: Path) -> None:
    file = tmp_path / "journeys.yaml"
    file.write_text("version: 1\n", encoding="utf-8")
    result = runner.invoke(app, ["models", "check", str(file)])
    assert (result.exit_code, result.output.strip()) == (0, f"{file}: no models declared")


def test_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "check", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
