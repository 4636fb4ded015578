"""The JSON answers docs/security.md shows for `POST /v1/batch` are the API's (issue #16):
each test sends what the doc describes and compares the whole answer, every key and
value, with the doc's JSON block. The other docs' example outputs are checked in
tests/unit/test_doc_examples.py (which says where the rest are)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from tests.api.conftest import AUTH, RunningApi
from tests.database import deploy
from tests.unit.test_doc_examples import block_after

SECURITY = Path(__file__).resolve().parents[2] / "docs" / "security.md"

JOURNEYS = """\
version: 1
events:
  payment_failed: {amount: number}
  payment_received: {amount: number}
journeys:
  - id: recovery
    entry: {event: payment_failed}
    steps:
      - id: wait_for_payment
        wait: {event: payment_received, within: 3d}
"""


def shown_json(marker: str) -> Any:
    return json.loads("\n".join(block_after(SECURITY, marker, lang="json")))


@pytest.fixture
async def journeys_api(api: RunningApi, db: Engine) -> AsyncIterator[RunningApi]:
    deploy(db, JOURNEYS)
    yield api


def track(customer: str, event: str, message_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": customer,
        "event": event,
        "messageId": message_id,
        "properties": properties,
    }


async def test_security_md_unrouted_answer_is_the_apis(journeys_api: RunningApi) -> None:
    """Two events, one a journey listens to (a `payment_received` no run waits for yet:
    nothing starts or is signalled) and one nothing listens to (`page_viewd`, a typo):
    both stored, the second named in `unrouted`."""
    shown = shown_json("Without `strict`, such an event is stored and the answer names it")
    customer = f"c-{uuid.uuid4().hex[:8]}"
    batch = [
        track(customer, "payment_received", uuid.uuid4().hex, amount=5),
        track(customer, "page_viewd", uuid.uuid4().hex),
    ]
    answer = await journeys_api.http.post("/v1/batch", json={"batch": batch}, headers=AUTH)
    assert answer.status_code == 202, answer.text
    assert answer.json() == shown, "update docs/security.md's example answer"


async def test_security_md_conflict_answer_is_the_apis(journeys_api: RunningApi) -> None:
    """`m-42` stored for one customer, then sent in a batch for another: not accepted, a
    duplicate, and named in `conflicts`."""
    shown = shown_json("**Message ids are global.**")
    first, second = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    stored = await journeys_api.http.post(
        "/v1/batch",
        json={"batch": [track(first, "payment_received", "m-42", amount=5)]},
        headers=AUTH,
    )
    assert stored.status_code == 202 and stored.json()["accepted"] == 1, stored.text
    batch = [track(second, "payment_received", "m-42", amount=5)]
    answer = await journeys_api.http.post("/v1/batch", json={"batch": batch}, headers=AUTH)
    assert answer.status_code == 202, answer.text
    assert answer.json() == shown, "update docs/security.md's example answer"
