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
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from runtime.codec import HistoryCodec, KeyRing
from tests.histories.record import ROUTED, SCENARIOS
from tests.history_keys import TEST_KEY_RING, opened_history_json, test_data_converter
from workflows.journey_run import JourneyRunWorkflow

HISTORIES = sorted((Path(__file__).resolve().parents[1] / "histories").glob("*.json"))


def _replayer() -> Replayer:
    """A replayer of the interpreter. ``debug_mode`` turns off the SDK's 2 s deadlock timer:
    a replay checks determinism, and on a busy machine (the whole suite on two cores) an
    activation of a long history once took over 2 s and failed as a "potential deadlock"."""
    return Replayer(
        workflows=[JourneyRunWorkflow], data_converter=test_data_converter(), debug_mode=True
    )


def _payload_texts(node: Any) -> Iterator[str]:
    """Every payload in a history as text (histories keep payloads base64-encoded; sealed
    ones are opened first, `tests.history_keys.opened_history_json`)."""
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
        history = WorkflowHistory.from_json(path.stem, path.read_text(encoding="utf-8"))
        text = "\n".join(_payload_texts(json.loads(opened_history_json(history))))
        assert not [a for a in addresses if a in text], path.name


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    workflow_id = json.loads(text)["events"][0]["workflowExecutionStartedEventAttributes"].get(
        "workflowId", path.stem
    )
    history = WorkflowHistory.from_json(workflow_id, text)
    replayer = _replayer()
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


def _sealed_copy(text: str, codec: HistoryCodec) -> str:
    """A recorded history with every payload sealed by ``codec``, as the product now writes
    it (the recorded files hold plain payloads: they predate the codec)."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "markerName" in node:  # the SDK core writes its markers' own fields plainly
                details = dict(node.get("details", {}))
                if "result" in details:
                    details["result"] = walk(details["result"])
                return {**node, "details": details}
            if "data" in node and isinstance(node.get("metadata"), dict):
                payload = Payload(
                    metadata={k: base64.b64decode(v) for k, v in node["metadata"].items()},
                    data=base64.b64decode(node["data"]),
                )
                sealed = codec.seal(payload)
                return {
                    "metadata": {
                        k: base64.b64encode(v).decode() for k, v in sealed.metadata.items()
                    },
                    "data": base64.b64encode(sealed.data).decode(),
                }
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    return json.dumps(walk(json.loads(text)))


@pytest.mark.parametrize("key_id", ["test-2", "test-1"])
async def test_a_sealed_history_replays_under_the_current_or_an_older_key(key_id: str) -> None:
    # The old key (test-1) seals as the ring did before a rotation; the ring has both.
    only = KeyRing(tuple(key for key in TEST_KEY_RING.keys if key[0] == key_id))
    path = next(p for p in HISTORIES if p.stem == "payment_recovery_high_risk_approved_paid")
    sealed = _sealed_copy(path.read_text(encoding="utf-8"), HistoryCodec(only))
    start = json.loads(sealed)["events"][0]["workflowExecutionStartedEventAttributes"]
    metadata = start["input"]["payloads"][0]["metadata"]
    assert base64.b64decode(metadata["encryption-key-id"]) == key_id.encode()
    workflow_id = json.loads(sealed)["events"][0]["workflowExecutionStartedEventAttributes"].get(
        "workflowId", path.stem
    )
    history = WorkflowHistory.from_json(workflow_id, sealed)
    replayer = _replayer()
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name} sealed: {result.replay_failure}"
