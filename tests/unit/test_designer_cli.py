"""The designer's command line (`service.cli.design`), the design-time commands that need no
server: validate, schema (the JSON Schema of the language), graph, show."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli.design import app
from service.cli.main import app as full_app
from tests.unit.journey_docs import journey_doc, line_of

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "journeys.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_validate_prints_a_summary_per_journey(tmp_path: Path) -> None:
    path = _write(tmp_path, journey_doc("- {id: hi, send: offer, channel: sms}"))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok  j  version ")
    assert result.output.splitlines()[0].endswith("1 steps  enters on payment_failed")
    assert "\npersonal data (masked in histories" in result.output  # then what is personal


def test_validate_prints_each_violation_and_exits_1(tmp_path: Path) -> None:
    text = journey_doc(
        """
        - id: hi
          send: offer
          chanel: sms
        - id: pause
          wait: soon
        """
    )
    path = _write(tmp_path, text)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert (
        f"{path}:{line_of(text, 'chanel')}:9: j/hi: unknown key 'chanel' (did you mean 'channel'?)"
        in lines
    )
    assert any(
        line.startswith(f"{path}:{line_of(text, 'wait: soon')}:")
        and "'soon' is not a duration" in line
        for line in lines
    )
    assert lines[-1] == f"{path}: 2 errors"


def test_validate_json_format_for_tools(tmp_path: Path) -> None:
    path = _write(tmp_path, journey_doc("- {id: hi, send: nope, channel: sms}"))
    result = runner.invoke(app, ["validate", str(path), "--format", "json"])
    assert result.exit_code == 1
    payload = json.loads(result.output)
    assert payload["ok"] is False
    assert payload["violations"][0]["code"] == "unknown-template"
    assert payload["violations"][0]["journey"] == "j"


def test_schema_describes_every_step_type(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    result = runner.invoke(app, ["schema", "-o", str(out)])
    assert result.exit_code == 0
    schema = json.loads(out.read_text())
    defs = schema["$defs"]
    for name in (
        "SendStep",
        "WaitStep",
        "BranchStep",
        "SplitStep",
        "ScoreStep",
        "ReviewStep",
        "SetStep",
        "CallStep",
        "ExitStep",
    ):
        assert defs[name]["description"], name
        assert defs[name]["additionalProperties"] is False
    assert "include" in schema["properties"]


def test_schema_accepts_the_example_catalogue() -> None:
    jsonschema = __import__("importlib").util.find_spec("jsonschema")
    if jsonschema is None:  # pragma: no cover - jsonschema comes with the dev tools
        raise AssertionError("jsonschema is a dev dependency")
    import jsonschema as js
    import yaml

    result = runner.invoke(app, ["schema"])
    schema = json.loads(result.output)
    document = yaml.safe_load((ROOT / "journeys.yaml").read_text())
    js.validate(document, schema)
    broken = dict(document)
    broken["journeys"] = [dict(document["journeys"][0], stepz=[])]
    try:
        js.validate(broken, schema)
    except js.ValidationError:
        pass
    else:
        raise AssertionError("the schema accepted an unknown key")


def test_graph_mermaid_of_the_example() -> None:
    result = runner.invoke(
        app, ["graph", "payment_recovery", "--file", str(ROOT / "journeys.yaml")]
    )
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.startswith("flowchart TD\n")
    assert 'route_by_risk -->|"scores.default_risk.score #gt;= 0.7"| ops_review' in text
    assert 'ops_review -->|"approve"| offer_date' in text
    assert 'wait_for_payment -->|"not within 3d"| reminder_email' in text


def test_graph_svg_is_standalone(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["graph", "onboarding", "--file", str(ROOT / "journeys.yaml"), "--format", "svg"]
    )
    assert result.exit_code == 0
    svg = result.output
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    assert "tips_test" in svg and "push_tips 50%" in svg
    assert "http://" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_graph_of_an_unknown_journey_exits_2() -> None:
    result = runner.invoke(app, ["graph", "nope", "--file", str(ROOT / "journeys.yaml")])
    assert result.exit_code == 2
    assert "no journey 'nope'" in result.output


def test_show_prints_the_plan_and_version() -> None:
    result = runner.invoke(app, ["show", "abandoned_cart", "--file", str(ROOT / "journeys.yaml")])
    assert result.exit_code == 0
    plan = json.loads(result.stdout)
    assert plan["journey_id"] == "abandoned_cart"
    assert plan["settings"]["quiet_hours"] == {"start": "22:00", "end": "09:00"}
    assert len(plan["version"]) == 12


@pytest.mark.slow  # ~1.8 s: runs the installed command (test-fast stays under 2 min)
def test_installed_command_validates_the_example_from_the_repo_root() -> None:
    exe = shutil.which("journeys", path=str(Path(sys.executable).parent))
    assert exe, "the journeys command is installed by `pip install -e .`"
    done = subprocess.run([exe, "validate"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len([line for line in done.stdout.splitlines() if line.startswith("ok  ")]) == 4


def test_show_with_no_journey_lists_them_and_exits_2() -> None:
    """`journeys show` alone says what it needs, with the file's journeys to choose from."""
    result = runner.invoke(app, ["show", "--file", str(ROOT / "journeys.yaml")])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"show: which journey? One of these in {ROOT / 'journeys.yaml'}:"
    assert [line.split()[0] for line in lines[1:]] == [
        "payment_recovery",
        "onboarding",
        "suspicious_login",
        "abandoned_cart",
    ]
    assert lines[1].endswith("Payment failure recovery")


# --------------------------------------------------------------- the docs' example outputs


def _plain_blocks(markdown: Path, start: str, end: str) -> list[list[str]]:
    """The plain fenced blocks (example outputs) of ``markdown`` between two headings."""
    text = markdown.read_text(encoding="utf-8")
    section = text[text.index(start) :]
    section = section[: section.index(end)]
    fences = re.findall(r"^```(\w*)\n(.*?)^```$", section, re.M | re.S)
    return [body.splitlines() for lang, body in fences if not lang]


def _designing_outputs() -> list[list[str]]:
    """The README's clean and failing `journeys validate` outputs (after the scenarios')."""
    blocks = _plain_blocks(ROOT / "README.md", "### Designing journeys", "## What it is")
    assert len(blocks) == 3, "README: `journeys test`'s output, then `journeys validate`'s two"
    return blocks[1:]


@pytest.mark.slow  # in `make test`; over 2 s, out of `make test-fast`
def test_readme_journeys_test_output_is_the_real_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README shows `journeys test --coverage` on the example scenarios: the lines it
    shows are printed, in order (``...`` alone: any lines; in a line: any text)."""
    shown = _plain_blocks(ROOT / "README.md", "### Designing journeys", "## What it is")[0]
    monkeypatch.chdir(ROOT)
    result = runner.invoke(full_app, ["test", "--coverage"])
    assert result.exit_code == 0, result.output
    printed = result.output.splitlines()
    at = 0
    for line in (line for line in shown if line != "..."):
        pattern = re.compile(".*".join(re.escape(part) for part in line.split("...")))
        found = next((i for i in range(at, len(printed)) if pattern.fullmatch(printed[i])), None)
        assert found is not None, f"README shows {line!r}, not printed in order:\n{result.output}"
        at = found + 1


def test_readme_validate_output_is_the_real_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README shows `journeys validate` on the example catalogue: every journey line,
    with its version and step count, as printed (it changes with journeys.yaml)."""
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    journeys = [line for line in result.stdout.splitlines() if line.startswith("ok  ")]
    assert journeys == _designing_outputs()[0], "update the README's example output"


def test_readme_validate_error_example_is_the_real_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's error example, line and column included, is what `journeys validate`
    prints for the example catalogue with `channel:` misspelt in `grace_sms`."""
    for folder in ("templates", "risk_models"):  # what the catalogue names relative to itself
        shutil.copytree(ROOT / folder, tmp_path / folder)
    text = (ROOT / "journeys.yaml").read_text(encoding="utf-8")
    step = "      - id: grace_sms\n        send: grace_offer\n        channel: sms\n"
    assert text.count(step) == 1
    _write(tmp_path, text.replace(step, step.replace("channel:", "chanel:")))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 1
    assert result.output.splitlines() == _designing_outputs()[1], "update the README's example"


def test_journeys_md_personal_data_example_is_real_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/journeys.md shows part of `journeys validate`'s personal-data list: each line it
    shows is printed for the example catalogue, in that order."""
    [shown] = [
        block
        for block in _plain_blocks(ROOT / "docs/journeys.md", "## ", "## What the validator")
        if block and block[0].startswith("personal data (masked")
    ]
    monkeypatch.chdir(ROOT)
    printed = runner.invoke(app, ["validate"]).stdout.splitlines()
    at = 0
    for line in shown:
        assert line in printed[at:], f"docs/journeys.md shows {line!r}, not printed in order"
        at = printed.index(line, at) + 1


def test_the_quick_start_zone_is_at_noon_at_every_hour() -> None:
    """`journeys identify --timezone-at-noon` (the README's quick start): at any hour, a
    real zone where it is noon, so the catalogue's quiet hours (21:00-09:00) are far."""
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    from service.cli.main import noon_zone

    start = datetime(2026, 3, 29, 0, 59, tzinfo=UTC)
    for hour in range(24):
        now = start + timedelta(hours=hour)
        zone, local = noon_zone(now)
        assert (local.hour, local.minute) == (12, 59), (now, zone)
        assert now.astimezone(ZoneInfo(zone)) == local
