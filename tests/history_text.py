"""A workflow history as searchable text, payloads decoded.

`WorkflowHistory.to_json()` keeps every payload base64-encoded, so a plain `in` check on it
can never find a secret; tests that assert what a history does not contain search this."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from temporalio.client import WorkflowHistory

from tests.history_keys import opened_history_json


def history_text(history: WorkflowHistory) -> str:
    """The history's JSON with each payload opened (`tests.history_keys`) and its ``data``
    decoded to text in place."""
    document = json.loads(opened_history_json(history))
    decoded = 0

    def walk(node: Any) -> Any:
        nonlocal decoded
        if isinstance(node, dict):
            out = {key: walk(value) for key, value in node.items()}
            data = node.get("data")
            if isinstance(data, str) and "metadata" in node:
                try:
                    out["data"] = base64.b64decode(data, validate=True).decode("utf-8")
                    decoded += 1
                except (binascii.Error, UnicodeDecodeError):
                    pass
            return out
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    text = json.dumps(walk(document), ensure_ascii=False)
    assert decoded > 0, "the history has no payloads to search: the check would prove nothing"
    return text
