"""Per-customer history keys (runtime/customer_keys.py, runtime/codec.py): a run's payloads
sealed under its customer's key; deleting the customer's seed (crypto-shredding) leaves
them sealed for good, and nothing else."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import ActivitySerializationContext, WorkflowSerializationContext
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from engine.database import ErasedCustomer
from engine.payloads import workflow_id_for
from engine.pseudonyms import customer_ref, is_ref, pseudonym_key
from engine.settings import RuntimeSettings
from runtime.codec import (
    CUSTOMER_METADATA,
    KEY_ID_METADATA,
    CustomerKeyErased,
    HistoryCodec,
    HistoryDecodeError,
    KeyRing,
)
from runtime.customer_keys import (
    CUSTOMER_KEYS,
    CustomerErased,
    CustomerKeyStore,
    shared_store,
)
from runtime.temporal import data_converter
from tests.database import database_url, fresh_engine
from tests.history_keys import TEST_KEY_RING, TEST_KEYS, opened_history_json, test_data_converter

ANN = "ann@example.com"
BOB = "bob/42"  # a '/' in a customer id: the workflow id escapes it
K1 = "k1:" + base64.b64encode(bytes(range(32))).decode()
K2 = "k2:" + base64.b64encode(bytes(range(32, 64))).decode()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = fresh_engine(tmp_path)
    try:
        yield made
    finally:
        made.dispose()


@pytest.fixture
def store(engine: Engine) -> CustomerKeyStore:
    return CustomerKeyStore(lambda: engine)


def _payload(value: object) -> Payload:
    return pydantic_data_converter.payload_converter.to_payloads([value])[0]


def _bound(codec: HistoryCodec, customer: str, key: str | None = None) -> HistoryCodec:
    context = WorkflowSerializationContext(
        namespace="default", workflow_id=workflow_id_for("recovery", customer, key)
    )
    return codec.with_context(context)


def _ref(engine: Engine, customer: str) -> str:
    return customer_ref(customer, pseudonym_key(engine))


def _shred(engine: Engine, store: CustomerKeyStore, ref: str) -> None:
    """What the erasure does to the keys: delete the seed, forget it in this process."""
    with engine.begin() as connection:
        connection.execute(delete(CUSTOMER_KEYS).where(CUSTOMER_KEYS.c.ref == ref))
    store.forget(ref)


# ----------------------------------------------------------------------------- the codec


async def test_a_run_payload_is_sealed_under_its_customers_key(
    engine: Engine, store: CustomerKeyStore
) -> None:
    codec = HistoryCodec(TEST_KEY_RING, customer_keys=store)
    original = _payload({"first_name": "Ann", "amount": 25000})
    [sealed] = await _bound(codec, ANN, "inv/1").encode([original])
    ref = _ref(engine, ANN)
    assert sealed.metadata[CUSTOMER_METADATA] == ref.encode() and is_ref(ref)
    assert sealed.metadata[KEY_ID_METADATA] == b"test-2"
    assert ANN.encode() not in sealed.SerializeToString()
    assert b"Ann" not in sealed.data
    with engine.connect() as connection:
        rows = connection.execute(select(CUSTOMER_KEYS.c.ref, CUSTOMER_KEYS.c.seed)).all()
    assert [row.ref for row in rows] == [ref] and len(rows[0].seed) == 32
    # Any codec on the database opens it: a fresh store (another process) and no context.
    other = HistoryCodec(TEST_KEY_RING, customer_keys=CustomerKeyStore(lambda: engine))
    assert await other.decode([sealed]) == [original]


async def test_shredding_a_customer_leaves_their_payloads_sealed_and_no_others(
    engine: Engine, store: CustomerKeyStore
) -> None:
    codec = HistoryCodec(TEST_KEY_RING, customer_keys=store)
    ann, bob = _payload({"who": "Ann"}), _payload({"who": "Bob"})
    [ann_sealed] = await _bound(codec, ANN).encode([ann])
    [bob_sealed] = await _bound(codec, BOB).encode([bob])
    [ring_only] = await codec.encode([_payload("no workflow")])  # unbound: the ring's key
    assert CUSTOMER_METADATA not in ring_only.metadata
    unsealed = _payload("recorded before the codec")
    assert await codec.decode([ann_sealed, bob_sealed]) == [ann, bob]

    ann_ref = _ref(engine, ANN)
    _shred(engine, store, ann_ref)
    with pytest.raises(CustomerKeyErased, match="history key was erased") as caught:
        await codec.decode([ann_sealed])
    assert ann_ref in str(caught.value) and ANN not in str(caught.value)
    # A fresh process fails alike (the row is gone, not just the cache).
    fresh = HistoryCodec(TEST_KEY_RING, customer_keys=CustomerKeyStore(lambda: engine))
    with pytest.raises(CustomerKeyErased):
        await fresh.decode([ann_sealed])
    # Everything else still opens.
    opened = await codec.decode([bob_sealed, ring_only, unsealed])
    assert opened == [bob, _payload("no workflow"), unsealed]


async def test_an_erased_customer_gets_no_new_key(engine: Engine, store: CustomerKeyStore) -> None:
    codec = HistoryCodec(TEST_KEY_RING, customer_keys=store)
    ref = _ref(engine, ANN)
    with engine.begin() as connection:
        connection.execute(
            insert(ErasedCustomer.__table__),  # type: ignore[attr-defined]
            {"ref": ref, "status": "erased", "actor": "test", "counts": {}},
        )
    with pytest.raises(CustomerErased, match=f"customer {ref} was erased") as caught:
        await _bound(codec, ANN).encode([_payload(1)])
    assert ANN not in str(caught.value)
    with engine.connect() as connection:
        assert connection.execute(select(CUSTOMER_KEYS.c.ref)).all() == []


async def test_rotation_opens_customer_payloads_sealed_under_the_older_key(
    engine: Engine, store: CustomerKeyStore
) -> None:
    old = HistoryCodec(KeyRing.parse(K1), customer_keys=store)
    [before] = await _bound(old, ANN).encode([_payload({"n": 1})])
    assert before.metadata[KEY_ID_METADATA] == b"k1"
    rotated = HistoryCodec(KeyRing.parse(f"{K2},{K1}"), customer_keys=store)
    [opened] = await rotated.decode([before])
    assert json.loads(opened.data) == {"n": 1}
    [after] = await _bound(rotated, ANN).encode([_payload({"n": 2})])
    assert after.metadata[KEY_ID_METADATA] == b"k2"
    assert after.metadata[CUSTOMER_METADATA] == before.metadata[CUSTOMER_METADATA]
    assert json.loads((await rotated.decode([after]))[0].data) == {"n": 2}
    # The older ring key removed: its payloads no longer open, the customer's seed or not.
    with pytest.raises(HistoryDecodeError, match="'k1'"):
        await HistoryCodec(KeyRing.parse(K2), customer_keys=store).decode([before])


async def test_the_customer_metadata_is_authenticated(
    engine: Engine, store: CustomerKeyStore
) -> None:
    codec = HistoryCodec(TEST_KEY_RING, customer_keys=store)
    [ann_sealed] = await _bound(codec, ANN).encode([_payload({"who": "Ann"})])
    await _bound(codec, BOB).encode([_payload(0)])  # Bob has a seed too
    swapped = Payload(
        metadata={**dict(ann_sealed.metadata), CUSTOMER_METADATA: _ref(engine, BOB).encode()},
        data=ann_sealed.data,
    )
    with pytest.raises(HistoryDecodeError, match="failed authentication"):
        await codec.decode([swapped])
    stripped = Payload(
        metadata={k: v for k, v in ann_sealed.metadata.items() if k != CUSTOMER_METADATA},
        data=ann_sealed.data,
    )
    with pytest.raises(HistoryDecodeError, match="failed authentication"):
        await codec.decode([stripped])
    named = Payload(
        metadata={**dict(ann_sealed.metadata), CUSTOMER_METADATA: ANN.encode()},
        data=ann_sealed.data,
    )
    with pytest.raises(HistoryDecodeError, match="not a pseudonym"):
        await codec.decode([named])


async def test_without_a_store_customer_payloads_fail_clearly(store: CustomerKeyStore) -> None:
    [sealed] = await _bound(HistoryCodec(TEST_KEY_RING, customer_keys=store), ANN).encode(
        [_payload(1)]
    )
    with pytest.raises(HistoryDecodeError, match="no customer key store") as caught:
        await HistoryCodec(TEST_KEY_RING).decode([sealed])
    assert not isinstance(caught.value, CustomerKeyErased)


def test_with_context_is_cheap_and_binds_only_customer_runs(tmp_path: Path) -> None:
    store = CustomerKeyStore(database_url(tmp_path))
    codec = HistoryCodec(TEST_KEY_RING, customer_keys=store)
    no_customer = [
        WorkflowSerializationContext(namespace="default", workflow_id="scenario-1"),
        ActivitySerializationContext(
            namespace="default",
            activity_id="1",
            activity_type="a",
            activity_task_queue="q",
            workflow_id=None,
            workflow_type=None,
            is_local=False,
        ),
    ]
    for context in no_customer:
        assert codec.with_context(context) is codec
    activity_context = ActivitySerializationContext(
        namespace="default",
        activity_id="1",
        activity_type="a",
        activity_task_queue="q",
        workflow_id=workflow_id_for("recovery", ANN),
        workflow_type="JourneyRunWorkflow",
        is_local=False,
    )
    bound = codec.with_context(activity_context)
    assert bound is not codec and bound._customer == ANN
    assert _bound(codec, ANN).customer_keys is store
    assert not store.engine_made  # binding touched no database
    # No store or no ring: nothing to bind.
    plain = HistoryCodec(TEST_KEY_RING)
    assert plain.with_context(activity_context) is plain
    ringless = HistoryCodec(None, customer_keys=store)
    assert ringless.with_context(activity_context) is ringless


async def test_a_seed_outlives_its_row_in_another_process_for_the_ttl(engine: Engine) -> None:
    now = [1000.0]
    elsewhere = CustomerKeyStore(lambda: engine, ttl=60, clock=lambda: now[0])
    here = CustomerKeyStore(lambda: engine)
    codec = HistoryCodec(TEST_KEY_RING, customer_keys=elsewhere)
    [sealed] = await _bound(codec, ANN).encode([_payload(1)])
    _shred(engine, here, _ref(engine, ANN))  # erased by another process
    now[0] += 59
    assert await codec.decode([sealed]) == [_payload(1)]  # still cached here
    now[0] += 1
    with pytest.raises(CustomerKeyErased):
        await codec.decode([sealed])


async def test_concurrent_first_seals_agree_on_one_seed(engine: Engine) -> None:
    ref = _ref(engine, ANN)
    stores = [CustomerKeyStore(lambda: engine) for _ in range(8)]
    seeds = await asyncio.gather(*(s.seed(ref, create=True) for s in stores))
    assert len(set(seeds)) == 1
    assert await stores[0].seed("cus_" + "a" * 26, create=False) is None


def test_the_cache_is_bounded(engine: Engine) -> None:
    store = CustomerKeyStore(lambda: engine, cache_size=3)
    for n in range(5):
        store.seed_blocking(f"cus_{'a' * 25}{'abcde'[n]}", create=True)
    assert len(store._seeds) == 3


async def test_the_data_converter_of_settings_has_a_lazy_store(tmp_path: Path) -> None:
    url = database_url(tmp_path)
    shared_store(url).close()  # the same URL in every test on PostgreSQL
    shared_store(url).clear()
    converter = data_converter(RuntimeSettings(history_keys=TEST_KEYS, database_url=url))
    codec = converter.payload_codec
    assert isinstance(codec, HistoryCodec) and codec.customer_keys is shared_store(url)
    assert not codec.customer_keys.engine_made
    [unbound] = await converter.encode(["no run"])  # ring only: no database either
    assert CUSTOMER_METADATA not in unbound.metadata and not codec.customer_keys.engine_made
    bound = converter.with_context(
        WorkflowSerializationContext(namespace="n", workflow_id=workflow_id_for("j", ANN))
    )
    [sealed] = await bound.encode(["Ann's"])
    assert CUSTOMER_METADATA in sealed.metadata and codec.customer_keys.engine_made
    assert await converter.decode([sealed], [str]) == ["Ann's"]
    codec.customer_keys.close()
    # A ring alone (the tests' converter): no store, as before; given a URL, the store.
    ring_only = data_converter(TEST_KEY_RING).payload_codec
    assert isinstance(ring_only, HistoryCodec) and ring_only.customer_keys is None
    tests_own = test_data_converter(url).payload_codec
    assert isinstance(tests_own, HistoryCodec) and tests_own.customer_keys is shared_store(url)


# ----------------------------------------------------------------------------- a real run


@activity.defn(name="customer_keys_greet")
async def greet(profile: dict[str, str]) -> str:
    return f"Dear {profile['first_name']}"


@workflow.defn(name="CustomerKeysRun", sandboxed=False)
class CustomerKeysRun:
    def __init__(self) -> None:
        self.note: str | None = None

    @workflow.run
    async def run(self, profile: dict[str, str]) -> str:
        greeting = await workflow.execute_activity(
            greet, profile, start_to_close_timeout=timedelta(seconds=30)
        )
        await workflow.wait_condition(lambda: self.note is not None)
        return f"{greeting}: {self.note}"

    @workflow.signal
    def add_note(self, note: str) -> None:
        self.note = note


def _history_payloads(history: WorkflowHistory) -> list[Payload]:
    """Every payload the converter wrote into the history (search attributes are not
    converted by the codec: Temporal indexes them)."""
    found: list[Payload] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "metadata" in node:
                found.append(
                    Payload(
                        metadata={k: base64.b64decode(v) for k, v in node["metadata"].items()},
                        data=base64.b64decode(node.get("data", "")),
                    )
                )
                return
            for key, value in node.items():
                if key != "searchAttributes":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(history.to_json()))
    return found


async def test_a_real_runs_history_is_shredded_with_its_customers_key(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    url = database_url(tmp_path)
    fresh_engine(tmp_path).dispose()
    shared_store(url).clear()  # the same URL in every test on PostgreSQL
    settings = RuntimeSettings(history_keys=TEST_KEYS, database_url=url)
    converter = data_converter(settings)
    config = env.client.config()
    config["data_converter"] = converter
    client = Client(**config)
    queue = f"customer-keys-{uuid.uuid4().hex[:8]}"
    histories: dict[str, WorkflowHistory] = {}
    async with Worker(
        client,
        task_queue=queue,
        workflows=[CustomerKeysRun],
        activities=[greet],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        for customer, name in ((ANN, "Ann"), (BOB, "Bob")):
            handle = await client.start_workflow(
                CustomerKeysRun.run,
                {"first_name": name, "email": customer},
                id=workflow_id_for("recovery", customer, uuid.uuid4().hex[:6]),
                task_queue=queue,
            )
            await handle.signal(CustomerKeysRun.add_note, f"{name} paid")
            assert await handle.result() == f"Dear {name}: {name} paid"
            histories[customer] = await handle.fetch_history()

    store = shared_store(url)
    engine = store.engine()
    refs = {customer: _ref(engine, customer) for customer in (ANN, BOB)}
    for customer, history in histories.items():
        payloads = _history_payloads(history)
        # start input, signal, activity input and result, workflow result (at least)
        assert len(payloads) >= 5, len(payloads)
        for payload in payloads:
            assert payload.metadata[CUSTOMER_METADATA] == refs[customer].encode(), payload
            assert customer.encode() not in payload.SerializeToString()
        opened = opened_history_json(history, database_url=url)
        assert "Dear" in _decoded_text(opened)

    _shred(engine, store, refs[ANN])
    for payload in _history_payloads(histories[ANN]):
        with pytest.raises(CustomerKeyErased):
            await converter.payload_codec.decode([payload])  # type: ignore[union-attr]
    with pytest.raises(CustomerKeyErased):
        opened_history_json(histories[ANN], database_url=url)
    bob_payloads = _history_payloads(histories[BOB])
    opened_bob = await converter.payload_codec.decode(bob_payloads)  # type: ignore[union-attr]
    assert any(b"Bob paid" in payload.data for payload in opened_bob)
    store.close()


def _decoded_text(history_json: str) -> str:
    texts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "metadata" in node and "data" in node:
                texts.append(base64.b64decode(node["data"]).decode("utf-8", errors="replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(history_json))
    return "\n".join(texts)
