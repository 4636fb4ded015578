"""Every recorded history in tests/histories replays on the current interpreter.

A failure here means a change to workflows/ would break runs already in flight: put the
change behind `workflow.patched(...)` and record a history of the new behaviour
(tests/histories/record.py, ``--tag <patch-id>``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.histories.record import ROUTED, SCENARIOS
from workflows.journey_run import JourneyRunWorkflow

HISTORIES = sorted((Path(__file__).resolve().parents[1] / "histories").glob("*.json"))


def _payload_texts(node: Any) -> Iterator[str]:
    """Every payload in a history as text (histories keep payloads base64-encoded)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "data" and isinstance(value, str):
                try:
                    yield base64.b64decode(value).decode("utf-8", "replace")
                except binascii.Error:
                    continue
            else:
                yield from _payload_texts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _payload_texts(value)


def test_there_is_a_history_for_every_recorded_scenario() -> None:
    # `<scenario>.json` or `<scenario>.<patch-id>.json`: a scenario added with a patch has
    # only tagged files.
    assert {path.name.split(".")[0] for path in HISTORIES} >= {*SCENARIOS, *ROUTED}
    journeys = {(scenario.catalogue.name, scenario.journey) for scenario in SCENARIOS.values()}
    assert journeys == {
        ("journeys.yaml", "payment_recovery"),
        ("journeys.yaml", "onboarding"),
        ("journeys.yaml", "suspicious_login"),
        ("journeys.yaml", "abandoned_cart"),
        ("date_waits.yaml", "renewal_reminder"),  # waits until a date or a weekday
        ("long_runs.yaml", "tally"),  # continues as new
    }


def test_no_history_holds_a_customer_address() -> None:
    addresses = {
        str(value)
        for scenario in SCENARIOS.values()
        for name, value in scenario.traits.items()
        if name in ("email", "phone", "push_token")
    }
    for path in HISTORIES:
        text = "\n".join(_payload_texts(json.loads(path.read_text(encoding="utf-8"))))
        assert not [a for a in addresses if a in text], path.name


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
