"""Every recorded history in tests/histories replays on the current interpreter.

A failure here means a change to workflows/ would break runs already in flight: put the
change behind `workflow.patched(...)` and record a history of the new behaviour.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.journey_run import JourneyRunWorkflow

HISTORIES = sorted((Path(__file__).resolve().parents[1] / "histories").glob("*.json"))


def test_there_is_a_history_for_every_example_journey() -> None:
    journeys = {path.name.split("_")[0] for path in HISTORIES}
    assert {"payment", "onboarding", "suspicious", "abandoned"} <= journeys


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    workflow_id = json.loads(text)["events"][0]["workflowExecutionStartedEventAttributes"].get(
        "workflowId", path.stem
    )
    history = WorkflowHistory.from_json(workflow_id, text)
    replayer = Replayer(workflows=[JourneyRunWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
