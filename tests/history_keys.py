"""The fixed key ring every test seals histories with, and a history's JSON with its
sealed payloads opened (what a test reads to check what a history records or omits).

The keys are test data, derived from their names; no deployment uses them. The tests'
converter has no customer key store (`runtime.customer_keys`), so what the tests' workers
seal is sealed under the ring's key only. A history sealed under customers' keys (a stack
whose processes have a ring and a database) opens when the database is named: pass
``database_url`` to `opened_history_json`, or wrap the reading in
`customer_keys_from(url)` (which also reaches `tests.history_text.history_text`).
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import json
from collections.abc import Iterator
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter

from runtime.codec import CUSTOMER_METADATA, ENCODING, CustomerKeyErased, HistoryCodec, KeyRing
from runtime.customer_keys import shared_store
from runtime.temporal import data_converter

__all__ = [
    "TEST_KEYS",
    "TEST_KEY_RING",
    "customer_keys_from",
    "opened_history_json",
    "test_data_converter",
]

TEST_KEYS = (
    "test-2:se6IgrwX5qGjA6oDIE5gJPl2QoiLLbUMfx+VnV1Y86Q=,"
    "test-1:8GBzuP7myY8IsKor1u0MgqjQWgR6+3bLYbJd1aDcct4="
)
"""As ``JOURNEYS_HISTORY_KEYS`` would hold them: ``test-2`` seals, ``test-1`` still opens."""

TEST_KEY_RING = KeyRing.parse(TEST_KEYS)
_CODEC = HistoryCodec(TEST_KEY_RING)
_SEALED = base64.b64encode(ENCODING).decode("ascii")


_DATABASE_URL: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "history_keys_database_url", default=None
)


def test_data_converter(database_url: str | None = None) -> DataConverter:
    """The converter of the tests' clients, environments and replayers; with
    ``database_url``, it also seals a run's payloads under its customer's key (as the
    product's converter does) and opens them."""
    if database_url is None:
        return data_converter(TEST_KEY_RING)
    return data_converter(TEST_KEY_RING, customer_keys=shared_store(database_url))


test_data_converter.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest


@contextlib.contextmanager
def customer_keys_from(database_url: str) -> Iterator[None]:
    """Within: `opened_history_json` opens customer-keyed payloads with the seeds in
    ``database_url`` when it is given none itself."""
    token = _DATABASE_URL.set(database_url)
    try:
        yield
    finally:
        _DATABASE_URL.reset(token)


def opened_history_json(history: WorkflowHistory, *, database_url: str | None = None) -> str:
    """``history.to_json()`` with every sealed payload replaced by the payload it seals
    (base64 data, as the JSON keeps it); unsealed payloads as they are. A payload sealed
    under a customer's key needs the database holding the seeds (``database_url``, or
    `customer_keys_from`); it raises `runtime.codec.CustomerKeyErased` once that
    customer's seed is gone."""
    document = json.loads(history.to_json())
    url = database_url or _DATABASE_URL.get()
    store = shared_store(url) if url else None

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            metadata = node.get("metadata")
            if isinstance(metadata, dict) and metadata.get("encoding") == _SEALED:
                sealed = Payload(
                    metadata={k: base64.b64decode(v) for k, v in metadata.items()},
                    data=base64.b64decode(node.get("data", "")),
                )
                opened = _open(sealed)
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

    def _open(sealed: Payload) -> Payload:
        raw_ref = sealed.metadata.get(CUSTOMER_METADATA)
        if raw_ref is None:
            return _CODEC.open(sealed)
        if store is None:
            raise AssertionError(
                "the history holds payloads sealed under a customer's key: pass "
                "database_url (or use customer_keys_from) to open them"
            )
        ref = raw_ref.decode("ascii")
        seed = store.seed_blocking(ref, create=False)
        if seed is None:  # as the product's codec says it
            raise CustomerKeyErased(
                f"history payload of customer {ref} cannot be opened: the customer's "
                "history key was erased"
            )
        return _CODEC.open(sealed, seed=seed)

    return json.dumps(walk(document))
