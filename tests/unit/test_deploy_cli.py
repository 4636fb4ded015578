"""`journeys deploy` against a real SQLite file: new, unchanged and retired versions, the
runs that stay on an old version, and a broken file that changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.database import Run, make_engine, session_scope
from service.cli.main import app
from tests.unit.journey_docs import journey_doc

runner = CliRunner()


@pytest.fixture
def database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'state' / 'journeys.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    return url


def _journeys_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "journeys.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _version(output: str, journey: str = "j") -> str:
    line = next(line for line in output.splitlines() if line.startswith(f"{journey}: "))
    return line.split("version ")[1].split()[0].rstrip(")")


def test_deploy_reports_first_deploy_unchanged_and_runs_staying_on_the_old_version(
    tmp_path: Path, database_url: str
) -> None:
    path = _journeys_file(tmp_path, journey_doc("- {id: hi, send: offer, channel: sms}"))

    first = runner.invoke(app, ["deploy", str(path)])
    assert first.exit_code == 0, first.output
    old = _version(first.output)
    assert first.output == f"j: new version {old}\n"

    again = runner.invoke(app, ["deploy", str(path)])
    assert again.exit_code == 0, again.output
    assert again.output == f"j: unchanged (version {old})\n"

    engine = make_engine(database_url)
    with session_scope(engine) as session:
        for number, status in enumerate(["running", "running", "completed"]):
            session.add(
                Run(
                    run_id=f"r{number}",
                    workflow_id=f"journey/j/c{number}",
                    journey_id="j",
                    version=old,
                    customer_id=f"c{number}",
                    status=status,
                )
            )
        session.add(
            Run(
                run_id="other",
                workflow_id="journey/k/c9",
                journey_id="k",
                version=old,
                customer_id="c9",
            )
        )
    engine.dispose()

    path.write_text(journey_doc("- {id: hi, send: offer, channel: email}"), encoding="utf-8")
    changed = runner.invoke(app, ["deploy", str(path)])
    assert changed.exit_code == 0, changed.output
    new = _version(changed.output)
    assert new != old
    assert changed.output == f"j: new version {new} (was {old}), 2 runs stay on {old}\n"


def test_deploy_retires_a_journey_removed_from_the_file(tmp_path: Path, database_url: str) -> None:
    text = journey_doc("- {id: hi, send: offer, channel: sms}")
    path = _journeys_file(tmp_path, text)
    old = _version(runner.invoke(app, ["deploy", str(path)]).output)

    path.write_text(text.replace("  - id: j\n", "  - id: k\n"), encoding="utf-8")
    result = runner.invoke(app, ["deploy", str(path)])

    assert result.exit_code == 0, result.output
    new = _version(result.output, "k")
    assert result.output.splitlines() == [
        f"k: new version {new}",
        f"j: retired (was {old}, no longer in the file), 0 runs stay on {old}",
    ]


def test_deploy_of_a_broken_file_prints_the_errors_and_changes_nothing(
    tmp_path: Path, database_url: str
) -> None:
    good = _journeys_file(tmp_path, journey_doc("- {id: hi, send: offer, channel: sms}"))
    deployed = runner.invoke(app, ["deploy", str(good)])
    version = _version(deployed.output)

    broken = tmp_path / "broken.yaml"
    broken.write_text(journey_doc("- {id: hi, send: offer, chanel: sms}"), encoding="utf-8")
    result = runner.invoke(app, ["deploy", str(broken)])

    assert result.exit_code == 1
    assert "unknown key 'chanel'" in result.output
    assert result.output.rstrip().endswith(f"{broken}: 1 error")
    again = runner.invoke(app, ["deploy", str(good)])
    assert again.output == f"j: unchanged (version {version})\n"
