"""`journeys test`: the example catalogue's scenarios pass, a wrong expectation fails
with a diff pointing at its scenario's line, and a scenario file with mistakes gets
line-numbered errors. Each runs the real command (Typer's runner) as a user would."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.scenarios import load_scenario_text
from service.cli.main import app
from tests.unit.test_doc_examples import block_after, unprinted

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = ROOT / "journeys.yaml"

WRONG_PATH = """\
scenarios:
  - name: one failed login is no alert
    journey: suspicious_login
    customer: s-2
    profile: {email: sue@example.com}
    start: 2026-05-11T13:00:00+09:00
    timeline:
      - {at: 0s, event: login_failed, properties: {ip: 198.51.100.4, device: app}}
    expect:
      outcome: no_alert

  - name: expects an alert that never comes
    journey: suspicious_login
    customer: s-9
    profile: {email: sue@example.com}
    start: 2026-05-11T13:00:00+09:00
    timeline:
      - {at: 0s, event: login_failed, properties: {ip: 198.51.100.4, device: app}}
    expect:
      path: [count_attempts, wait_for_more, alert_push]
      messages:
        - {channel: push, template: login_alert}
"""


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["test", "--file", str(CATALOGUE), *args])
    return result.exit_code, result.output


@pytest.mark.slow
def test_the_example_scenarios_all_pass_and_reach_every_step_and_arm(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    code, output = run(str(ROOT / "scenarios"), "--coverage", "--junit", str(junit))
    lines = output.splitlines()
    assert code == 0, output
    results = [line for line in lines if line.startswith(("ok ", "FAIL"))]
    assert len(results) >= 15 and all(line.startswith("ok ") for line in results), output
    assert "0 failed" in output
    coverage = next(line for line in lines if line.startswith("coverage:"))
    assert coverage == "coverage: 100% of steps and arms reached", output
    assert "not reached" not in output
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == str(len(results)) and suite.get("failures") == "0"


def test_a_wrong_path_fails_with_a_diff_at_the_scenario_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scenarios").mkdir()
    scenarios = Path("scenarios/login.yaml")
    scenarios.write_text(WRONG_PATH)
    junit = tmp_path / "junit.xml"
    code, output = run(str(scenarios), "--junit", str(junit))
    assert code == 1, output
    # docs/testing.md shows this very output (only the time taken may differ).
    shown = block_after(ROOT / "docs/testing.md", "`--coverage` lists the steps")
    assert unprinted(shown, output, variable=[r"\d+\.\d+(?= s$)"]) == [], output
    assert f"ok   one failed login is no alert  ({scenarios}:2)" in output
    assert f"FAIL expects an alert that never comes  ({scenarios}:12)" in output
    diff = output.split("FAIL expects an alert that never comes")[1]
    assert "path:" in diff
    assert "  count_attempts  " in diff  # the same on both sides
    assert "! alert_push" in diff and "calm" in diff  # expected alert_push, it went calm
    assert "! push login_alert" in diff  # the message never sent
    assert "1 passed, 1 failed" in output
    failure = (
        ET.parse(junit)
        .getroot()
        .find("testcase[@name='expects an alert that never comes']/failure")
    )
    assert failure is not None and f"{scenarios}:12" in (failure.get("message") or "")


def test_a_scenario_file_with_mistakes_gets_line_numbered_errors(tmp_path: Path) -> None:
    scenarios = tmp_path / "bad.yaml"
    scenarios.write_text(
        "scenarios:\n"
        "  - name: typos\n"
        "    journey: suspicious_login\n"
        "    start: 2026-05-11T13:00:00\n"
        "    timeline:\n"
        "      - at: soon\n"
        "        evnt: login_failed\n"
        "    expect:\n"
        "      pathh: [calm]\n"
    )
    code, output = run(str(scenarios))
    assert code == 2
    assert f"{scenarios}:4:12: " in output and "needs an offset" in output
    assert f"{scenarios}:6:13: " in output and "'soon' is not a duration" in output
    assert f"{scenarios}:7:9: " in output and "unknown key `evnt` (did you mean `event`?)" in output
    assert f"{scenarios}:9:7: " in output and "unknown key `pathh` (did you mean `path`?)" in output


def test_a_scenario_for_a_journey_not_in_the_catalogue_fails_at_its_journey_line() -> None:
    loaded = load_scenario_text(WRONG_PATH.replace("suspicious_login", "no_such", 1), file="s.yaml")
    assert not loaded.violations and loaded.line_of(0, "journey") == 3


def test_yaml_syntax_errors_have_their_line() -> None:
    loaded = load_scenario_text("scenarios:\n  - name: [x\n", file="s.yaml")
    [violation] = loaded.violations
    assert (
        violation.format().startswith("s.yaml:3:1: ") and "YAML syntax error" in violation.message
    )
