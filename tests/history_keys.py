"""The fixed key ring every test seals histories with, and a history's JSON with its
sealed payloads opened (what a test reads to check what a history records or omits).

The keys are test data, derived from their names; no deployment uses them.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter

from runtime.codec import ENCODING, HistoryCodec, KeyRing
from runtime.temporal import data_converter

__all__ = ["TEST_KEYS", "TEST_KEY_RING", "opened_history_json", "test_data_converter"]

TEST_KEYS = (
    "test-2:se6IgrwX5qGjA6oDIE5gJPl2QoiLLbUMfx+VnV1Y86Q=,"
    "test-1:8GBzuP7myY8IsKor1u0MgqjQWgR6+3bLYbJd1aDcct4="
)
"""As ``JOURNEYS_HISTORY_KEYS`` would hold them: ``test-2`` seals, ``test-1`` still opens."""

TEST_KEY_RING = KeyRing.parse(TEST_KEYS)
_CODEC = HistoryCodec(TEST_KEY_RING)
_SEALED = base64.b64encode(ENCODING).decode("ascii")


def test_data_converter() -> DataConverter:
    """The converter of the tests' clients, environments and replayers."""
    return data_converter(TEST_KEY_RING)


test_data_converter.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest


def opened_history_json(history: WorkflowHistory) -> str:
    """``history.to_json()`` with every sealed payload replaced by the payload it seals
    (base64 data, as the JSON keeps it); unsealed payloads as they are."""
    document = json.loads(history.to_json())

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            metadata = node.get("metadata")
            if isinstance(metadata, dict) and metadata.get("encoding") == _SEALED:
                sealed = Payload(
                    metadata={k: base64.b64decode(v) for k, v in metadata.items()},
                    data=base64.b64decode(node.get("data", "")),
                )
                opened = _CODEC.open(sealed)
                # As protobuf's JSON writes a payload: empty fields left out.
                out: dict[str, Any] = {}
                if opened.metadata:
                    out["metadata"] = {
                        k: base64.b64encode(v).decode("ascii") for k, v in opened.metadata.items()
                    }
                if opened.data:
                    out["data"] = base64.b64encode(opened.data).decode("ascii")
                return out
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return json.dumps(walk(document))
