"""`journeys deploy --dry-run` and `journeys diff` against a real SQLite file: per journey
the steps a deploy would add, remove and change against the active version, how many open
runs wait at the removed or changed ones, and nothing stored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from engine.database import Run, make_engine, session_scope
from service.cli.main import app
from tests.unit.journey_docs import HEAD

runner = CliRunner()

RECOVERY = """\
  - id: payment_recovery
    entry: {event: payment_failed}
    steps:
      - {id: grace_sms, send: offer, channel: sms}
      - {id: wait_for_morning, wait: 1d}
      - {id: reminder, send: offer, channel: email}
      - {id: y, wait: 2d}
      - {id: done, exit: recovered}
"""

ONBOARDING = """\
  - id: onboarding
    entry: {event: payment_received}
    steps:
      - {id: hello, send: offer, channel: sms}
"""


def _doc(recovery: str = RECOVERY, head: str = HEAD) -> str:
    return head + "journeys:\n" + recovery + ONBOARDING


CHANGED = RECOVERY.replace("wait: 1d", "wait: 2d").replace(
    "      - {id: y, wait: 2d}\n", "      - {id: x, wait: 3h}\n"
)
"""wait_for_morning waits longer; y is gone, x takes its place (so reminder, which went on
to y, goes on to x: changed too)."""


@pytest.fixture
def database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'state' / 'journeys.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    return url


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def _snapshot(database_url: str) -> dict[str, list[Any]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return {
                table: [tuple(row) for row in connection.execute(text(f"SELECT * FROM {table}"))]
                for table in ("plan_versions", "runs", "channel_rates")
            }
    finally:
        engine.dispose()


def _deployed(tmp_path: Path, database_url: str) -> str:
    """The first catalogue deployed, with open runs at its steps; its recovery version."""
    first = runner.invoke(app, ["deploy", str(_write(tmp_path, "a.yaml", _doc()))])
    assert first.exit_code == 0, first.output
    version = first.output.split("payment_recovery: new version ")[1].split()[0]
    engine = make_engine(database_url)
    rows = [
        ("grace_sms", "running"),
        ("wait_for_morning", "running"),
        ("wait_for_morning", "running"),
        ("y", "running"),
        ("y", "completed"),  # not open
        ("reminder", "running"),
    ]
    with session_scope(engine) as session:
        for number, (step, status) in enumerate(rows):
            session.add(
                Run(
                    run_id=f"r{number}",
                    workflow_id=f"journey/payment_recovery/c{number}",
                    journey_id="payment_recovery",
                    version=version,
                    customer_id=f"c{number}",
                    status=status,
                    step=step,
                )
            )
        session.add(
            Run(
                run_id="other",
                workflow_id="journey/onboarding/c9",
                journey_id="onboarding",
                version="v0",
                customer_id="c9",
                step="y",
            )
        )
    engine.dispose()
    return version


def test_a_dry_run_says_what_would_change_and_stores_nothing(
    tmp_path: Path, database_url: str
) -> None:
    _deployed(tmp_path, database_url)
    before = _snapshot(database_url)
    changed = _write(tmp_path, "b.yaml", _doc(CHANGED))

    result = runner.invoke(app, ["deploy", "--dry-run", str(changed)])

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "payment_recovery: 2 steps changed (wait_for_morning, reminder), 1 added (x), "
        "1 removed (y); 4 open runs wait at changed or removed steps",
        "onboarding: unchanged",
    ]
    assert _snapshot(database_url) == before
    # `journeys diff` says the same.
    same = runner.invoke(app, ["diff", str(changed)])
    assert same.exit_code == 0 and same.output == result.output
    assert _snapshot(database_url) == before


def test_a_changed_template_changes_the_sends_that_use_it(
    tmp_path: Path, database_url: str
) -> None:
    _deployed(tmp_path, database_url)
    head = HEAD.replace(
        "Hi {{ profile.first_name }}, {{ event.amount }}", "Hello {{ event.amount }}"
    )
    result = runner.invoke(app, ["diff", str(_write(tmp_path, "c.yaml", _doc(head=head)))])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        # The SMS form changed: the sends by SMS, not the one by email.
        "payment_recovery: 1 step changed (grace_sms); 1 open run waits at changed or "
        "removed steps",
        "onboarding: 1 step changed (hello); 0 open runs wait at changed or removed steps",
    ]


def test_new_and_retired_journeys_in_text_and_json(tmp_path: Path, database_url: str) -> None:
    version = _deployed(tmp_path, database_url)
    welcome_only = HEAD + "journeys:\n" + ONBOARDING.replace("id: onboarding", "id: welcome")
    path = _write(tmp_path, "d.yaml", welcome_only)

    lines = runner.invoke(app, ["deploy", "--dry-run", str(path)]).output.splitlines()
    assert lines[0] == "welcome: new journey (1 step)"
    assert lines[1].startswith("onboarding: retired (no longer in the file, was ")
    assert lines[1].endswith("); 1 open run carries on")
    assert lines[2] == (
        f"payment_recovery: retired (no longer in the file, was {version}); 5 open runs carry on"
    )

    result = runner.invoke(app, ["diff", "--format", "json", str(path)])
    assert result.exit_code == 0, result.output
    by_id = {entry["journey"]: entry for entry in json.loads(result.output)["journeys"]}
    assert by_id["welcome"]["status"] == "new" and by_id["welcome"]["added"] == ["hello"]
    recovery = by_id["payment_recovery"]
    assert recovery["status"] == "retired" and recovery["active_version"] == version
    assert recovery["open_runs_waiting"] == 5
    assert recovery["open_runs_by_step"] == {
        "grace_sms": 1,
        "reminder": 1,
        "wait_for_morning": 2,
        "y": 1,
    }


def test_a_dry_run_without_a_database_creates_none(tmp_path: Path, database_url: str) -> None:
    result = runner.invoke(app, ["deploy", "--dry-run", str(_write(tmp_path, "a.yaml", _doc()))])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "payment_recovery: new journey (5 steps)",
        "onboarding: new journey (1 step)",
    ]
    assert not (tmp_path / "state").exists()


def test_a_dry_run_of_a_broken_file_exits_1_with_its_errors(
    tmp_path: Path, database_url: str
) -> None:
    broken = _write(tmp_path, "e.yaml", _doc(RECOVERY.replace("channel: sms", "chanel: sms")))
    result = runner.invoke(app, ["deploy", "--dry-run", str(broken)])
    assert result.exit_code == 1
    assert "unknown key 'chanel'" in result.output
    assert not (tmp_path / "state").exists()


def test_operations_md_dry_run_example_is_real_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/operations.md's `journeys deploy --dry-run` example: the example catalogue
    deployed with `old_promo` and without `welcome_back`, open runs at payment_recovery's
    steps and old_promo's; then the catalogue with payment_recovery edited (the morning
    wait moved, the grace SMS reworded, the collections call replaced by an email) dry-run.
    Each line shown is printed, in order (versions may differ); nothing is stored."""
    from tests.unit.test_doc_examples import DOCS, ROOT, VERSION, block_after, unprinted

    shown = block_after(DOCS / "operations.md", "**Before a deploy: `journeys deploy --dry-run`**")
    database_url = f"sqlite:///{tmp_path / 'state' / 'journeys.db'}"
    monkeypatch.setenv("DATABASE_URL", database_url)
    for folder in ("templates", "risk_models"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    text = (ROOT / "journeys.yaml").read_text(encoding="utf-8")
    old_promo = (
        "\n  - id: old_promo\n    entry: {event: signed_up}\n    steps:\n"
        "      - {id: promo, send: welcome, channel: email}\n"
    )
    welcome_back = old_promo.replace("old_promo", "welcome_back").replace(
        "signed_up", "login_succeeded"
    )
    handover = text[text.index("      - id: handover\n") : text.index("      - id: handed_over\n")]
    edits = (
        ('wait: {until: "09:00"}', 'wait: {until: "10:00"}'),
        ("Reply YES to accept.", "Reply YES and we move it."),
        (handover, "      - {id: notify_collections, send: payment_reminder, channel: email}\n"),
    )
    after_text = text
    for old, new in edits:
        assert after_text.count(old) == 1, old
        after_text = after_text.replace(old, new)
    first = runner.invoke(app, ["deploy", str(_write(tmp_path, "before.yaml", text + old_promo))])
    assert first.exit_code == 0, first.output
    engine = make_engine(database_url)
    with session_scope(engine) as session:
        waiting = [("payment_recovery", "wait_for_morning")] * 2 + [
            ("payment_recovery", "grace_sms"),
            ("payment_recovery", "wait_for_payment"),  # unchanged: not counted
            *[("old_promo", "promo")] * 3,
        ]
        for number, (journey, step) in enumerate(waiting):
            session.add(
                Run(
                    run_id=f"r{number}",
                    workflow_id=f"journey/{journey}/c{number}",
                    journey_id=journey,
                    version="v",
                    customer_id=f"c{number}",
                    step=step,
                )
            )
    engine.dispose()
    before = _snapshot(database_url)

    after = _write(tmp_path, "journeys.yaml", after_text + welcome_back)
    result = runner.invoke(app, ["deploy", "--dry-run", str(after)])

    assert result.exit_code == 0, result.output
    missing = unprinted(shown, result.output, [VERSION])
    assert missing == [], f"docs/operations.md shows {missing}, printed:\n{result.output}"
    assert _snapshot(database_url) == before


def test_a_real_deploy_speaks_json_too(tmp_path: Path, database_url: str) -> None:
    path = _write(tmp_path, "a.yaml", _doc())
    result = runner.invoke(app, ["deploy", "--format", "json", str(path)])
    assert result.exit_code == 0, result.output
    lines = json.loads(result.output)["journeys"]
    assert [(line["journey"], line["status"]) for line in lines] == [
        ("payment_recovery", "new"),
        ("onboarding", "new"),
    ]
    again = runner.invoke(app, ["diff", str(path)])
    assert again.output == "payment_recovery: unchanged\nonboarding: unchanged\n"


def test_a_database_without_the_runs_columns_is_said_not_a_traceback(
    tmp_path: Path, database_url: str
) -> None:
    deployed = _write(tmp_path, "a.yaml", _doc())
    assert runner.invoke(app, ["deploy", str(deployed)]).exit_code == 0
    engine = make_engine(database_url)
    with engine.begin() as connection:  # as an older release's table might be
        connection.execute(text("DROP TABLE runs"))
        connection.execute(text("CREATE TABLE runs (run_id TEXT)"))
    engine.dispose()
    result = runner.invoke(app, ["diff", str(_write(tmp_path, "b.yaml", _doc(CHANGED)))])
    assert result.exit_code == 1
    assert "cannot read the deployed versions (OperationalError)" in result.output
