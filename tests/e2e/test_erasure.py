"""Issue #18: `journeys erase CUSTOMER` on a running system.

The customer has three runs of the example catalogue: onboarding waiting on its one-day
timer, payment_recovery waiting in the ops review queue, and an abandoned cart that ended
when the order came. Their histories are sealed under a key ring, as `journeys up` runs.
After `journeys erase` (the CLI, through the API):

- none of their values (email, phone, name, other traits, event properties) and not their
  id is in any row of any table of the app database; none of their values is in a log;
- their runs are gone from Temporal, and a copy of a history fetched before the erasure
  (a backup, an export) can no longer be opened: their history key was deleted;
- the audit chain verifies (`journeys audit verify`), and it recorded the erasure;
- a new event naming them is answered with its id in ``erased`` and starts nothing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import SQLModel
from temporalio.client import Client, WorkflowHistory
from temporalio.service import RPCError, RPCStatusCode

from engine.catalog import build_catalog
from engine.database import make_engine
from engine.decisions import bucket_of
from engine.plan import bucket_salt
from runtime.codec import CustomerKeyErased
from runtime.customer_keys import shared_store
from tests.e2e.conftest import (
    JOURNEYS_CLI,
    ROOT,
    RUN_TIMEOUT,
    JourneysStack,
    TemporalServer,
    daytime_zone,
    eventually,
    holdout_customer,
    start_stack,
)
from tests.history_keys import TEST_KEYS, opened_history_json
from tests.unit.test_doc_examples import block_after, unprinted

SECURITY = ROOT / "docs" / "security.md"
PSEUDONYM = r"cus_[a-z2-7]{26}"

pytestmark = pytest.mark.e2e

FIRST_NAME = "Quorrisande"
LEGAL_NAME = "Quorrisande Vantablack"
PHONE = "+82 10 5550 8842"
FAVOURITE = "Vermilion-Erase-4471"  # an ordinary trait
INVOICE = "inv-erase-93317"  # an entry key: a business id, kept (service/erasure.py)
CART = "cart-erase-55102"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, temporal_server: TemporalServer
) -> Iterator[JourneysStack]:
    directory = tmp_path_factory.mktemp("erasure")
    shutil.copytree(ROOT / "templates", directory / "templates")
    (directory / "risk_models").mkdir()
    shutil.copy(ROOT / "risk_models" / "default_risk.onnx", directory / "risk_models")
    catalogue = directory / "journeys.yaml"
    catalogue.write_text((ROOT / "journeys.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (directory / "stack").mkdir()
    with start_stack(
        directory / "stack", temporal_server, catalogue, env={"JOURNEYS_HISTORY_KEYS": TEST_KEYS}
    ) as running:
        yield running


def _treated_by_both(stack: JourneysStack) -> str:
    """A customer neither onboarding nor payment_recovery holds out."""
    plan = build_catalog(stack.journeys_file).plans["payment_recovery"]
    weights = [plan.holdout_percent, 100 - plan.holdout_percent]
    for _ in range(200):
        customer = holdout_customer(stack.journeys_file, "onboarding", prefix="erase")
        if bucket_of(bucket_salt(plan, customer, "holdout"), weights) != 0:
            return customer
    raise AssertionError("no customer outside both holdouts")


def _cli(
    stack: JourneysStack, *args: str, answer: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(JOURNEYS_CLI), *args],
        input=answer,
        cwd=ROOT,
        env={**stack.env(), "JOURNEYS_API_URL": stack.api_url},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _database_text(stack: JourneysStack) -> str:
    """Every row of every table of the app database, as text."""
    engine = make_engine(stack.database_url)
    try:
        with engine.connect() as connection:
            parts = []
            for table in SQLModel.metadata.sorted_tables:
                rows = connection.execute(select(table)).all()
                parts.append(f"{table.name}: {[tuple(row) for row in rows]!r}")
    finally:
        engine.dispose()
    return "\n".join(parts)


async def _fetch(stack: JourneysStack, workflow_ids: list[str]) -> dict[str, WorkflowHistory]:
    """The histories as Temporal holds them (sealed), as a backup would copy them."""
    client = await Client.connect(stack.temporal.address)
    return {
        workflow_id: await client.get_workflow_handle(workflow_id).fetch_history()
        for workflow_id in workflow_ids
    }


async def _gone(stack: JourneysStack, workflow_ids: list[str]) -> list[str]:
    """Which of ``workflow_ids`` Temporal still has."""
    client = await Client.connect(stack.temporal.address)
    left = []
    for workflow_id in workflow_ids:
        try:
            await client.get_workflow_handle(workflow_id).describe()
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                continue
            raise
        left.append(workflow_id)
    return left


def _three_runs(stack: JourneysStack, customer: str) -> list[dict[str, Any]]:
    """Onboarding on its timer, payment_recovery in review, a cart run ended."""
    stack.identify(
        customer,
        email=f"{customer}@erase-mail.test",
        phone=PHONE,
        first_name=FIRST_NAME,
        legal_name=LEGAL_NAME,
        favourite=FAVOURITE,
        timezone=daytime_zone(),
        tenure_months=2,
        failed_payments_90d=4,
    )
    stack.track(customer, "signed_up", plan="pro", source="partner")
    stack.track(
        customer,
        "payment_failed",
        amount=950000,
        currency="KRW",
        days_past_due=40,
        invoice_id=INVOICE,
    )
    stack.track(customer, "cart_updated", items=2, cart_id=CART)
    stack.track(customer, "order_completed", cart_id=CART)
    runs: list[dict[str, Any]] = eventually(
        lambda: stack.runs(customer),
        check=lambda found: len(found) == 3,
        timeout=RUN_TIMEOUT,
        what="three runs recorded",
    )
    by_journey = {run["journey_id"]: run for run in runs}
    eventually(
        lambda: stack.run(by_journey["onboarding"]["run_id"]),
        check=lambda run: run.get("step") == "wait_a_day",
        timeout=RUN_TIMEOUT,
        what="onboarding waiting a day",
    )
    eventually(
        lambda: stack.run(by_journey["payment_recovery"]["run_id"]),
        check=lambda run: run.get("step") == "ops_review",
        timeout=RUN_TIMEOUT,
        what="payment_recovery in the review queue",
    )
    stack.wait_until_ended(by_journey["abandoned_cart"]["run_id"])
    return runs


def test_an_erased_customer_leaves_no_trace_and_the_chain_verifies(
    stack: JourneysStack,
) -> None:
    customer = _treated_by_both(stack)
    runs = _three_runs(stack, customer)
    values = {
        "email": f"{customer}@erase-mail.test",
        "email local part": f"{customer}@",
        "phone": "5550 8842",
        "phone digits": "55508842",
        "first name": FIRST_NAME,
        "legal name": "Vantablack",
        "trait": FAVOURITE,
    }
    before = _database_text(stack)
    seen = [what for what, value in values.items() if value in before]
    assert {"email", "first name", "trait"} <= set(seen), seen  # the check bites
    workflow_ids = sorted({run["workflow_id"] for run in runs})
    copies = asyncio.run(_fetch(stack, workflow_ids))
    for workflow_id, copy in copies.items():  # sealed under the customer's own key
        assert "encryption-customer" in copy.to_json(), workflow_id
        assert customer in opened_history_json(copy, database_url=stack.database_url)

    refused = _cli(stack, "erase", customer, answer="n\n")
    assert refused.returncode == 1 and "not erased" in refused.stdout, refused.stdout
    assert len(stack.runs(customer)) == 3

    erased = _cli(stack, "erase", customer, answer="y\n")  # as docs/security.md shows it
    assert erased.returncode == 0, erased.stdout + erased.stderr
    prompt = f"Erase customer {customer!r}? This cannot be undone [y/N]: "
    assert erased.stdout.startswith(prompt), erased.stdout
    shown = block_after(SECURITY, "## Erasure")
    assert shown[0] == "Erase customer 'c1'? This cannot be undone [y/N]: y", shown
    printed = erased.stdout[len(prompt) :]
    assert unprinted(shown[1:], printed, [PSEUDONYM, r"(?<=: )\d+$", r"(?<=rows: ).*"]) == []
    assert "runs ended: 2" in erased.stdout, erased.stdout
    assert customer not in printed

    leaks = [f"{what} in the database" for what, v in values.items() if v in _database_text(stack)]
    if customer in _database_text(stack):
        leaks.append("the customer id in the database")
    logs = [*sorted((stack.directory / "logs").glob("*.log")), stack.temporal.child.log]
    for log in logs:
        content = log.read_text(encoding="utf-8", errors="replace")
        leaks += [f"{what} in {log.name}" for what, value in values.items() if value in content]
    assert not leaks, "left after the erasure:\n" + "\n".join(leaks)

    # Their runs are gone from Temporal (deletion is asynchronous there).
    eventually(
        lambda: asyncio.run(_gone(stack, workflow_ids)),
        check=lambda left: not left,
        timeout=RUN_TIMEOUT,
        what="the customer's executions deleted from Temporal",
    )
    # Open runs ended with outcome erased, the others kept theirs, all under the pseudonym.
    ref = erased.stdout.split("erased: ", 1)[1].split()[0]
    assert ref.startswith("cus_"), erased.stdout
    kept = {run["journey_id"]: run for run in stack.runs(ref)}
    assert kept["onboarding"]["outcome"] == "erased", kept
    assert kept["payment_recovery"]["outcome"] == "erased", kept
    assert kept["abandoned_cart"]["outcome"] == "purchased", kept

    verify = _cli(stack, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    export = stack.directory / "erase-export.jsonl"
    exported = _cli(
        stack,
        "audit",
        "export",
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
        "--customer",
        customer,
        "-o",
        str(export),
    )
    assert exported.returncode == 0, exported.stdout + exported.stderr
    entries = [json.loads(line) for line in export.read_text(encoding="utf-8").splitlines()]
    kinds = [entry.get("kind") for entry in entries]
    assert "customer.erased" in kinds and "run.started" in kinds, kinds
    assert customer not in export.read_text(encoding="utf-8")

    # A new event for them starts nothing and is not stored.
    answer = stack.client().post(
        "/v1/track",
        json={
            "type": "track",
            "event": "payment_failed",
            "userId": customer,
            "messageId": f"after-erase-{uuid.uuid4().hex[:8]}",
            "properties": {"amount": 950000, "currency": "KRW", "invoice_id": "inv-2"},
        },
    )
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["started"] == [] and len(body["erased"]) == 1, body
    assert stack.runs(customer) == []
    assert customer not in _database_text(stack)

    # A copy of their histories taken before (a backup) can no longer be opened: the key
    # ring is the same, their seed is gone. (A new reader: no seed cached from above.)
    shared_store(stack.database_url).clear()
    for copy in copies.values():
        with pytest.raises(CustomerKeyErased):
            opened_history_json(copy, database_url=stack.database_url)
