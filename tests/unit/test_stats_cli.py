"""`journeys stats` against the real API app (in-process, starlette's TestClient in place
of the command's HTTP client): what it asks for and how it prints the answer."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from service.api.app import create_app
from service.cli import main as cli_main
from tests.api.conftest import AUTH, api_settings
from tests.api.test_stats_api import _store_versions
from tests.unit.test_stats import _mix

runner = CliRunner()


@pytest.fixture
def calls(database_url: str, db: Engine, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    _store_versions(db)
    _mix(db)
    app = create_app(api_settings(database_url=database_url, task_queue="unused"))
    seen: list[Any] = []

    @contextlib.contextmanager
    def api() -> Iterator[TestClient]:
        with TestClient(app, headers=AUTH) as client:
            original = client.get

            def get(url: str, **kwargs: Any) -> Any:
                seen.append((url, dict(kwargs.get("params") or {})))
                return original(url, **kwargs)

            client.get = get  # type: ignore[method-assign]
            yield client

    monkeypatch.setattr(cli_main, "_api", api)
    return seen


def test_text_names_the_numbers(calls: list[Any]) -> None:
    result = runner.invoke(cli_main.app, ["stats", "j", "--version", "v1"])

    assert result.exit_code == 0, result.output
    assert calls == [("/v1/journeys/j/stats", {"version": "v1"})]
    assert "entries 5, active 2" in result.output
    assert "outcomes: done 1, holdout 1, unsubscribed 1" in result.output
    assert "entry -> ab: 4" in result.output
    assert "nudge email: attempted 1, sent 0, failed 0, skipped: fallback 1, no_consent 1" in (
        result.output
    )
    assert "check: opened 5, decided approve 2, reject 1" in result.output
    assert "a: entries 3" in result.output


def test_json_csv_since_and_funnel(calls: list[Any]) -> None:
    as_json = runner.invoke(cli_main.app, ["stats", "j", "--format", "json"])
    as_csv = runner.invoke(cli_main.app, ["stats", "j", "--format", "csv", "--since", "30d"])
    as_funnel = runner.invoke(cli_main.app, ["stats", "j", "--funnel", "ab,nudge"])

    assert json.loads(as_json.output)["entries"] == 6
    assert as_csv.output.startswith("section,item,sub,metric,value\n")
    assert calls[1][1]["format"] == "csv" and "from" in calls[1][1]
    assert calls[2] == ("/v1/journeys/j/funnel", {"steps": "ab,nudge"})
    assert "ab" in as_funnel.output and "of entries" in as_funnel.output


def test_refusals_name_the_problem(calls: list[Any]) -> None:
    unknown = runner.invoke(cli_main.app, ["stats", "nope"])
    bad_since = runner.invoke(cli_main.app, ["stats", "j", "--since", "soon"])
    bad_step = runner.invoke(cli_main.app, ["stats", "j", "--funnel", "ab,nowhere"])

    assert unknown.exit_code == 1 and "no journey with id 'nope'" in unknown.output
    assert bad_since.exit_code == 2 and "--since" in bad_since.output
    assert bad_step.exit_code == 1 and "nowhere" in bad_step.output
