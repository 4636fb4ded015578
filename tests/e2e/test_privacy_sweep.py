"""Issue #15: the privacy sweep. Personal data under unusual names, in traits and in event
properties, never reaches a workflow history, a log, the runs table or a console page for
a role that need not see it; the messages themselves still carry it.

The example catalogue is deployed with what a designer adds for their own data: its
`profile:` block already declares `contact` (email), `backup_mobile` (phone),
`legal_name` (pii) and `national_id` (secret); the test adds event declarations for
`signed_up` (`referred_by: email`, `promo_secret: secret`) and makes the welcome email
use the personal values, so the real message shows them. The customer also carries
undeclared data: a trait `alt` holding an email address (masked by form), an undeclared
property holding one, and an undeclared property no step reads (never given to the run).

Then every place is searched as text: each of the customer's Temporal histories with
payloads decoded, every log file of the worker, the API and the Temporal server, every
row of `runs` and `run_path` for the customer, the API's run detail (the state query) and
the console pages an ops user sees.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from temporalio.client import Client

from engine.catalog import build_catalog
from engine.database import make_engine
from engine.decisions import bucket_of
from engine.plan import bucket_salt
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
from tests.history_text import history_text

pytestmark = pytest.mark.e2e

# The personal values, each unusual enough that finding it anywhere is a leak.
CONTACT = "zoe.quill.contact@sweep-mail.test"
BACKUP_MOBILE = "+82 10 7341 9926"
LEGAL_NAME = "Zoe Quillfeather"
NATIONAL_ID = "NID-58213-QX"
ALT_ADDRESS = "zq.alt.sweep@other-mail.test"  # an undeclared trait, caught by its form
REFERRED_BY = "ref.quill.sweep@partner.test"  # declared `email` on signed_up
PROMO_SECRET = "PROMO-VELVET-8841"  # declared `secret` on signed_up
UNDECLARED_ADDRESS = "und.quill.sweep@elsewhere.test"  # undeclared, unread property
UNREAD_WORD = "Rumpelstiltskin-7731"  # undeclared, unread property

SECRETS = {
    "contact": CONTACT,
    "contact (local part)": "zoe.quill.contact",
    "backup mobile": "7341 9926",
    "backup mobile (digits)": "73419926",
    "legal name": "Quillfeather",
    "national id": NATIONAL_ID,
    "alt trait": "zq.alt.sweep",
    "referred by": "ref.quill.sweep",
    "promo secret": PROMO_SECRET,
    "undeclared address": "und.quill.sweep",
    "unread property": UNREAD_WORD,
}

OPS_PASSWORD = "sweep-ops-password-1"


def _catalogue(directory: Path) -> Path:
    """The example catalogue with `signed_up` declaring personal fields and the welcome
    email reading them (and the customer's personal traits)."""
    source = (ROOT / "journeys.yaml").read_text(encoding="utf-8")
    declared = "  signed_up:\n    plan: string\n    source: string\n"
    assert declared in source, "the example's signed_up schema moved: update this test"
    source = source.replace(
        declared, declared + "    referred_by: email\n    promo_secret: secret\n", 1
    )
    subject = 'subject: "Welcome aboard"'
    assert subject in source, "the example's welcome subject moved: update this test"
    source = source.replace(
        subject,
        'subject: "Welcome aboard, {{ profile.legal_name }} ({{ event.referred_by }}, '
        '{{ event.promo_secret }}, {{ profile.contact }})"',
        1,
    )
    shutil.copytree(ROOT / "templates", directory / "templates")
    (directory / "risk_models").mkdir()
    shutil.copy(ROOT / "risk_models" / "default_risk.onnx", directory / "risk_models")
    path = directory / "journeys.yaml"
    path.write_text(source, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, temporal_server: TemporalServer
) -> Iterator[JourneysStack]:
    directory = tmp_path_factory.mktemp("privacy")
    catalogue = _catalogue(directory)
    (directory / "stack").mkdir()
    with start_stack(directory / "stack", temporal_server, catalogue) as running:
        yield running


def _leaks(where: str, text_: str) -> list[str]:
    return [f"{what} in {where}" for what, value in SECRETS.items() if value in text_]


async def _histories(stack: JourneysStack, workflow_ids: list[str]) -> dict[str, str]:
    client = await Client.connect(stack.temporal.address)
    found: dict[str, str] = {}
    for workflow_id in workflow_ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        found[workflow_id] = history_text(history)
    return found


def _table_rows(stack: JourneysStack, customer: str) -> str:
    engine = make_engine(stack.database_url)
    try:
        with engine.connect() as connection:
            runs = connection.execute(
                text("SELECT * FROM runs WHERE customer_id = :c"), {"c": customer}
            ).all()
            run_ids = [row._mapping["run_id"] for row in runs]
            path = [
                connection.execute(
                    text("SELECT * FROM run_path WHERE run_id = :r"), {"r": run_id}
                ).all()
                for run_id in run_ids
            ]
            tasks = connection.execute(
                text("SELECT * FROM review_tasks WHERE customer_id = :c"), {"c": customer}
            ).all()
    finally:
        engine.dispose()
    assert runs, "no runs rows: the check would prove nothing"
    return repr([dict(r._mapping) for r in runs]) + repr(path) + repr(tasks)


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, page[:500]
    return found.group(1)


def _console(stack: JourneysStack, name: str, role: str) -> httpx.Client:
    """A user of ``role`` signed in to the console (one-time password changed)."""
    done = subprocess.run(
        [str(JOURNEYS_CLI), "user", "add", name, "--role", role],
        cwd=ROOT,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = re.search(r"one-time password: (\S+)", done.stdout)
    assert found is not None, done.stdout
    one_time = found.group(1)
    console = httpx.Client(base_url=stack.api_url, timeout=30.0, follow_redirects=True)
    login = console.get("/console/login")
    answer = console.post(
        "/console/login",
        data={"name": name, "password": one_time, "csrf": _csrf(login.text)},
    )
    assert answer.url.path == "/console/password", answer.text[:500]
    answer = console.post(
        "/console/password",
        data={
            "current": one_time,
            "new": OPS_PASSWORD,
            "repeat": OPS_PASSWORD,
            "csrf": _csrf(answer.text),
        },
    )
    assert answer.url.path != "/console/password", answer.text[:500]
    return console


def _treated_by_both(stack: JourneysStack) -> str:
    """A customer neither onboarding nor payment_recovery holds out."""
    plan = build_catalog(stack.journeys_file).plans["payment_recovery"]
    weights = [plan.holdout_percent, 100 - plan.holdout_percent]
    for _ in range(200):
        customer = holdout_customer(stack.journeys_file, "onboarding", prefix="sweep")
        if bucket_of(bucket_salt(plan, customer, "holdout"), weights) != 0:
            return customer
    raise AssertionError("no customer outside both holdouts")


def test_personal_data_reaches_only_the_message(stack: JourneysStack) -> None:
    customer = _treated_by_both(stack)
    stack.identify(
        customer,
        email=f"{customer}@example.test",
        first_name="Zoe",
        contact=CONTACT,
        backup_mobile=BACKUP_MOBILE,
        legal_name=LEGAL_NAME,
        national_id=NATIONAL_ID,
        alt=ALT_ADDRESS,
        timezone=daytime_zone(),
        tenure_months=2,
        failed_payments_90d=4,
    )
    stack.track(
        customer,
        "signed_up",
        plan="pro",
        source="partner",
        referred_by=REFERRED_BY,
        promo_secret=PROMO_SECRET,
        fav_contact=UNDECLARED_ADDRESS,
        pet_word=UNREAD_WORD,
    )
    invoice = f"inv-{uuid.uuid4().hex[:8]}"
    stack.track(
        customer,
        "payment_failed",
        amount=950000,
        currency="KRW",
        days_past_due=40,
        invoice_id=invoice,
        payer_note=f"call me on {BACKUP_MOBILE} or {CONTACT}",
    )

    # The message carries the real values: the send reads the real profile and event.
    welcome = eventually(
        lambda: [m for m in stack.outbox(customer) if m.step_id == "welcome_email"],
        check=lambda found: len(found) == 1,
        timeout=RUN_TIMEOUT,
        what="the welcome email in the outbox",
    )[0]
    assert LEGAL_NAME in (welcome.subject or ""), welcome.subject
    assert REFERRED_BY in (welcome.subject or ""), welcome.subject
    assert PROMO_SECRET in (welcome.subject or ""), welcome.subject
    assert CONTACT in (welcome.subject or ""), welcome.subject
    runs = eventually(
        lambda: stack.runs(customer),
        check=lambda found: {r["journey_id"] for r in found} >= {"onboarding", "payment_recovery"},
        timeout=RUN_TIMEOUT,
        what="both runs recorded",
    )
    # The payment run scores high and waits for an ops review: its case is a page.
    payment = next(r for r in runs if r["journey_id"] == "payment_recovery")
    eventually(
        lambda: stack.run(payment["run_id"]),
        check=lambda run: any(e["type"] == "review" for e in (run.get("path") or [])),
        timeout=RUN_TIMEOUT,
        what="the payment run at its review",
    )

    leaks: list[str] = []
    import asyncio

    workflow_ids = sorted({r["workflow_id"] for r in runs})
    for workflow_id, history in asyncio.run(_histories(stack, workflow_ids)).items():
        assert customer in history, "the history is not this customer's: the check proves nothing"
        leaks += _leaks(f"the history of {workflow_id}", history)

    logs = sorted((stack.directory / "logs").glob("*.log"))
    assert logs, "no log files: the check would prove nothing"
    logs.append(stack.temporal.child.log)
    for log in logs:
        leaks += _leaks(f"log {log.name}", log.read_text(encoding="utf-8", errors="replace"))

    leaks += _leaks("the runs, run_path and review_tasks rows", _table_rows(stack, customer))

    for run in runs:
        detail: dict[str, Any] = stack.run(run["run_id"])
        leaks += _leaks(f"GET /v1/runs/{run['run_id']}", repr(detail))

    console = _console(stack, "sweep-ops", "ops")
    pages = [
        "/console/reviews",
        f"/console/outbox?customer={customer}",
        f"/console/runs?customer={customer}",
    ]
    pages += [f"/console/runs/{r['run_id']}" for r in runs]
    queue = console.get("/console/reviews").text
    cases = sorted(set(re.findall(r'href="(/console/reviews/[^"?#]+)"', queue)))
    assert cases, "no review case to look at: the high-risk payment opened no review"
    pages += cases
    for page in pages:
        answer = console.get(page)
        assert answer.status_code == 200, f"{page}: {answer.status_code}"
        assert "sign in" not in answer.text.lower() or "sign out" in answer.text.lower()
        leaks += _leaks(f"console page {page}", answer.text)

    assert not leaks, "personal data leaked:\n" + "\n".join(leaks)

    # A designer (like an admin or an auditor) does see what the message said.
    designer = _console(stack, "sweep-designer", "designer")
    outbox = designer.get(f"/console/outbox?customer={customer}")
    assert outbox.status_code == 200
    assert LEGAL_NAME in outbox.text and "content hidden" not in outbox.text
