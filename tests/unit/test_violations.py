"""Validation messages stay readable whatever the source: a 200 KB expression is quoted
back as a prefix with an ellipsis and its position, never in full."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.violations import MAX_QUOTED_CHARS, Violation
from service.cli.main import app
from tests.unit.journey_docs import check, journey_doc, line_of, only_error

MAX_MESSAGE = 400  # generous: the message's own words, a prefix, its length and position


def _with_branch(source: str) -> str:
    return journey_doc(
        f"""
        - id: route
          branch:
            - when: "{source}"
              goto: done
        - id: done
          exit: ok
        """
    )


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("event.amount > " + " + ".join(["1"] * 70_000), id="long-sum"),
        pytest.param("event.amount > 1 and " + "x" * 200_000, id="long-name"),
        pytest.param("'" + "y" * 200_000 + "'", id="long-string"),
    ],
)
def test_a_200_kb_expression_is_quoted_as_a_prefix_with_its_position(source: str) -> None:
    text = _with_branch(source)
    violation = only_error(check(text))

    assert violation.code == "expression"
    assert len(violation.message) < MAX_MESSAGE, violation.message[:MAX_MESSAGE]
    assert source[:100] in violation.message.replace("\\'", "'")
    assert "…" in violation.message
    line = line_of(text, "- when:")
    assert f"at {line}:{violation.column}" in violation.message
    assert f"{len(source)} characters" in violation.message
    assert "expression is too long" in violation.message
    assert len(violation.format()) < MAX_MESSAGE + 100


def test_journeys_validate_prints_the_short_message(tmp_path: Path) -> None:
    source = "event.amount > 1 and " + "x" * 200_000
    path = tmp_path / "journeys.yaml"
    path.write_text(_with_branch(source), encoding="utf-8")

    shown = CliRunner().invoke(app, ["validate", str(path)])
    as_json = CliRunner().invoke(app, ["validate", str(path), "--format", "json"])

    assert shown.exit_code == as_json.exit_code == 1
    assert len(shown.output) < 2000, shown.output[:2000]
    [violation] = json.loads(as_json.output)["violations"]
    assert len(violation["message"]) < MAX_MESSAGE
    assert "x" * (MAX_QUOTED_CHARS + 1) not in as_json.output


def test_short_quotes_are_left_alone() -> None:
    message = "expression 'event.amount > 1': 'event' has no 'amount'"
    violation = Violation(code="expression", message=message, file="j.yaml", line=3, column=9)
    assert violation.message == message


def test_a_long_quote_is_cut_at_its_start_with_the_position() -> None:
    long = "a" * 5000
    violation = Violation(
        code="unknown-key",
        message=f"unknown key {long!r} (and more)",
        file="j.yaml",
        line=7,
        column=3,
        hint=f"did you mean {long!r}?",
    )
    assert violation.message == (
        f"unknown key '{'a' * MAX_QUOTED_CHARS}…' (5000 characters, at 7:3) (and more)"
    )
    assert violation.hint is not None and len(violation.hint) < 200
    assert violation.as_dict()["message"] == violation.message


def test_a_long_message_without_quotes_is_cut_too() -> None:
    violation = Violation(code="internal", message="b " * 20_000, file="j.yaml", line=1, column=1)
    assert len(violation.message) <= 1000 and violation.message.endswith("…")
