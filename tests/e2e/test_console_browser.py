"""The ops console in a real browser: Debian's Chromium, driven by Playwright (no browser
download), against the real system on loopback (dev server, `python worker.py`, the API).

The payment-recovery journey of the repository's catalogue opens a case for a high-risk
customer (the module's one case, shared by its tests). An ops reviewer signs in
(replacing the one-time password `journeys user add` printed, and seeing the change
confirmed) and finds the case in the queue. One test for each thing the case page shows
or does:

- why the case is here: the rule as the journey wrote it, with the values it read;
- the feature the profile lacked, marked as having taken its default;
- where each decision leads, from the run's plan;
- claim, then decide: the decisions disabled (and saying why) until the claim, a second
  reviewer refused the claimed case, the approval with a note, and afterwards the decided
  case refused too;
- the run moving on to the grace-offer SMS once the case is approved (captured, its
  content hidden from ops).

The tests that read the case (the first three) need only the case, not the claim; the
SMS test approves the case through the console's own forms if the claim-and-decide test
has not. They run in file order: the reading tests see the case open, as a reviewer
first does. Each saves its screenshot under test-artifacts/ (not committed).

The catalogue's SMS waits for 09:00 in the customer's zone; the module deploys the
catalogue with that time moved to two minutes from now in a zone where it is daytime (so
quiet hours do not apply either), which is the one change it makes to the journey.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.e2e.conftest import (
    JOURNEYS_CLI,
    ROOT,
    JourneysStack,
    TemporalServer,
    daytime_zone,
    eventually,
    holdout_customer,
    start_stack,
)

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NEW_PASSWORD = "reviewer-password-1"
APPROVAL_NOTE = "Income verified by phone; grace period agreed."

playwright_sync = pytest.importorskip("playwright.sync_api")


@dataclass(frozen=True)
class Case:
    """The review task the high-risk customer's payment-recovery run opened."""

    customer: str
    review: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.review["id"])

    @property
    def run_id(self) -> str:
        return str(self.review["run_id"])


# ----------------------------------------------------------------------------- the stack


@pytest.fixture(scope="module")
def zone() -> str:
    return daytime_zone()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, temporal_server: TemporalServer, zone: str
) -> Iterator[JourneysStack]:
    directory = tmp_path_factory.mktemp("console")
    send_at = (datetime.now(UTC) + timedelta(minutes=2)).astimezone(ZoneInfo(zone))
    text = (ROOT / "journeys.yaml").read_text(encoding="utf-8")
    assert 'wait: {until: "09:00"}' in text
    text = text.replace('wait: {until: "09:00"}', f'wait: {{until: "{send_at:%H:%M}"}}')
    journeys = directory / "journeys.yaml"
    journeys.write_text(text, encoding="utf-8")
    for folder in ("templates", "risk_models"):  # what the catalogue names relative to itself
        shutil.copytree(
            ROOT / folder, directory / folder, ignore=shutil.ignore_patterns("*.py", "__pycache__")
        )
    with start_stack(directory, temporal_server, journeys) as running:
        yield running


@pytest.fixture(scope="module")
def case(stack: JourneysStack, zone: str) -> Case:
    """A high-risk customer identified, their failed payment tracked, and the review task
    the run opened for them, once listed."""
    customer = treated_customer(stack)
    stack.identify(
        customer,
        first_name="Mina",
        phone="+821055501234",
        timezone=zone,
        failed_payments_90d=3,
    )
    stack.track(
        customer,
        "payment_failed",
        amount=900000,
        currency="KRW",
        days_past_due=30,
        invoice_id=f"inv-{customer}",
    )
    review: dict[str, Any] = eventually(
        lambda: stack.get("/v1/reviews", customer=customer)["reviews"],
        check=lambda found: len(found) == 1,
        timeout=60,
        what="the review task for the high-risk customer",
    )[0]
    assert review["queue"] == "collections" and review["risk"] >= 0.7
    return Case(customer=customer, review=review)


def add_user(stack: JourneysStack, name: str, role: str) -> str:
    """`journeys user add NAME --role ROLE` as an admin runs it; the one-time password."""
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
    return found.group(1)


def treated_customer(stack: JourneysStack) -> str:
    return holdout_customer(stack.journeys_file, "payment_recovery", prefix="browser")


# ----------------------------------------------------------------------------- the browser


@pytest.fixture
def _end_open_runs() -> None:
    """Replaces tests/conftest.py's autouse fixture of that name for this module: that one
    is async, and pytest-asyncio cannot run it while the module's Playwright loop runs
    (Playwright's sync API keeps its loop running in this thread from the first test to
    the last). It ends the runs a test left on the time-skipping server; these tests
    start none there (their runs are on the module's own stack)."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, for the module's tests."""
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make test` installs it"
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_sync.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


def signed_in(
    browser: Any, stack: JourneysStack, name: str, *, viewport: dict[str, int]
) -> Iterator[Any]:
    """A browser context of a new ops user `name`, signed in (its one-time password
    replaced, the change confirmed); closed afterwards."""
    one_time = add_user(stack, name, "ops")
    context = browser.new_context(viewport=viewport)
    try:
        page = context.new_page()
        sign_in(page, stack, name, one_time)
        page.close()
        yield context
    finally:
        context.close()


@pytest.fixture(scope="module")
def ana_session(browser: Any, stack: JourneysStack) -> Iterator[Any]:
    """Ana, the reviewer who claims and decides the case."""
    yield from signed_in(browser, stack, "ana", viewport={"width": 1366, "height": 900})


@pytest.fixture(scope="module")
def bob_session(browser: Any, stack: JourneysStack) -> Iterator[Any]:
    """Bob, a second reviewer of the same queue."""
    yield from signed_in(browser, stack, "bob", viewport={"width": 1024, "height": 768})


@pytest.fixture
def ana(ana_session: Any) -> Iterator[Any]:
    """A fresh tab of Ana's, for one test."""
    page = ana_session.new_page()
    try:
        yield page
    finally:
        page.close()


@pytest.fixture
def bob(bob_session: Any) -> Iterator[Any]:
    """A fresh tab of Bob's, for one test."""
    page = bob_session.new_page()
    try:
        yield page
    finally:
        page.close()


def sign_in(page: Any, stack: JourneysStack, name: str, one_time: str) -> None:
    page.goto(f"{stack.api_url}/console/login")
    page.fill("#name", name)
    page.fill("#password", one_time)
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/password$"))
    page.fill("#current", one_time)
    page.fill("#new", NEW_PASSWORD)
    page.fill("#repeat", NEW_PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/reviews\?notice=password-changed$"))
    assert "Your password was changed" in page.inner_text("#notice")


def form_token(page: Any) -> str:
    """The session's CSRF token, as every form on the page carries it (sign-out's too)."""
    return str(page.locator("input[name=csrf]").first.get_attribute("value"))


def open_case(page: Any, stack: JourneysStack, case: Case) -> None:
    page.goto(f"{stack.api_url}/console/reviews/{case.id}")


@pytest.fixture(scope="module")
def approved_case(ana_session: Any, stack: JourneysStack, case: Case) -> Case:
    """The case, approved by Ana through the console's forms unless it is already (the
    claim-and-decide test approves it when it runs first, as in file order)."""
    page = ana_session.new_page()
    try:
        open_case(page, stack, case)
        status = page.inner_text("#status")
        if status == "decided":
            decided = page.inner_text("#decision")
            assert "Decided approve by ana" in decided, decided
            return case
        if status == "open, not claimed":
            page.click("#claim")
            page.wait_for_selector("button:has-text('Release to the queue')")
        assert page.inner_text("#status") == "claimed by you"
        page.fill("#note", APPROVAL_NOTE)
        page.click("button[value=approve]")
        page.wait_for_selector(".banner.ok")
        assert "Decided: approve" in page.inner_text(".banner.ok")
        return case
    finally:
        page.close()


# ----------------------------------------------------------------------------- the tests


def test_the_reviewer_finds_the_case_in_the_queue(
    ana: Any, stack: JourneysStack, case: Case
) -> None:
    ana.goto(f"{stack.api_url}/console/reviews")
    row = ana.locator(f"tr[data-task='{case.id}']")
    row.wait_for()
    assert "collections" in row.inner_text()
    ana.screenshot(path=str(ARTIFACTS / "console-queue.png"), full_page=True)

    row.locator("a").first.click()
    ana.wait_for_url(re.compile(rf".*/console/reviews/{case.id}$"))
    body = ana.inner_text("main").lower()  # headings are styled in capitals
    assert "why this case is here" in body and "model default_risk scored" in body
    assert "+821055501234" not in ana.content()  # the phone number is masked
    assert "Mina" in ana.inner_text("#customer")  # the customer by name


def test_the_case_shows_the_rule_that_sent_it_to_review(
    ana: Any, stack: JourneysStack, case: Case
) -> None:
    open_case(ana, stack, case)
    why = ana.inner_text("#why")
    # The rule as the journey wrote it, with the values it read.
    assert "by rule 1: scores.default_risk.score >= 0.7" in why, why
    branch = ana.locator("#why li[data-why=branch]", has_text="by rule 1").inner_text()
    _, _, reads = branch.partition("it read:")
    read = re.search(r"^scores\.default_risk\.score\s+([0-9.]+)$", reads, re.MULTILINE)
    assert read is not None, branch
    assert float(read.group(1)) == pytest.approx(case.review["risk"], abs=0.01), branch
    assert "False" not in ana.inner_text("main") and "None" not in ana.inner_text("main")
    ana.locator("#why").screenshot(path=str(ARTIFACTS / "console-case-why.png"))


def test_the_case_marks_the_feature_that_took_its_default(
    ana: Any, stack: JourneysStack, case: Case
) -> None:
    open_case(ana, stack, case)
    defaulted = ana.locator("[data-defaulted='tenure_months']")
    assert defaulted.inner_text() == "not known (default 0)"
    ana.locator("#why dl.features").screenshot(path=str(ARTIFACTS / "console-case-defaulted.png"))


def test_each_decision_shows_where_it_leads(ana: Any, stack: JourneysStack, case: Case) -> None:
    open_case(ana, stack, case)
    # Where each decision leads, from the run's plan.
    approve_leads = ana.inner_text("[data-leads='approve']")
    assert approve_leads.startswith("→ SMS grace_offer, then wait up to 3 days"), approve_leads
    reject_leads = ana.inner_text("[data-leads='reject']")
    assert reject_leads.startswith("→ email payment_reminder, then wait 4 days"), reject_leads
    ana.locator("#decision").screenshot(path=str(ARTIFACTS / "console-case-leads.png"))


def test_the_reviewer_claims_the_case_then_approves_it(
    ana: Any, bob: Any, stack: JourneysStack, case: Case
) -> None:
    open_case(ana, stack, case)
    # Claim first: the decisions are disabled, and say why, until the claim.
    assert "open, not claimed" in ana.inner_text("#status")
    for decision in ("approve", "reject"):
        assert ana.locator(f"button[value={decision}]").is_disabled()
    assert "Claim this case to decide it" in ana.inner_text("#claim-reason")
    claim_box = ana.locator("#claim").bounding_box()
    approve_box = ana.locator("button[value=approve]").bounding_box()
    assert claim_box is not None and approve_box is not None
    assert claim_box["y"] < approve_box["y"]  # the claim comes first
    ana.screenshot(path=str(ARTIFACTS / "console-case-unclaimed.png"), full_page=True)
    ana.click("#claim")
    ana.wait_for_selector("button:has-text('Release to the queue')")
    assert ana.inner_text("#status") == "claimed by you"
    assert ana.locator("button[value=approve]").is_enabled()
    ana.screenshot(path=str(ARTIFACTS / "console-case.png"), full_page=True)

    # A second reviewer sees who holds the case, and the desk refuses their decision.
    open_case(bob, stack, case)
    assert "Claimed by ana" in bob.inner_text("#decision")
    assert bob.inner_text("#status") == "claimed by ana"
    assert bob.locator("button:has-text('Approve')").count() == 0
    refused = bob.request.post(
        f"{stack.api_url}/console/reviews/{case.id}/decide",
        form={"decision": "approve", "note": "me too", "csrf": form_token(bob)},
    )
    assert refused.status == 409 and "claimed by ana" in refused.text()

    ana.fill("#note", APPROVAL_NOTE)
    ana.click("button[value=approve]")
    ana.wait_for_selector(".banner.ok")
    assert "Decided: approve" in ana.inner_text(".banner.ok")

    assert "SLA" not in ana.inner_text("main")  # no deadline once decided
    ana.screenshot(path=str(ARTIFACTS / "console-case-decided.png"), full_page=True)

    bob.reload()
    assert "Decided approve by ana" in bob.inner_text("#decision")
    late = bob.request.post(
        f"{stack.api_url}/console/reviews/{case.id}/decide",
        form={"decision": "reject", "note": "no", "csrf": form_token(bob)},
    )
    assert late.status == 409 and "decided already" in late.text()


def test_after_approval_the_run_sends_the_grace_sms(
    ana: Any, stack: JourneysStack, approved_case: Case
) -> None:
    # The run moves on: the grace offer is captured (no SMS URL set) at the set time.
    ana.goto(f"{stack.api_url}/console/runs/{approved_case.run_id}")
    assert "open in temporal" in ana.inner_text("main").lower()
    for _ in range(200):  # bounded: the SMS is due within ~2 minutes
        if ana.locator("[data-outbox='grace_sms']").count():
            break
        ana.wait_for_timeout(1000)
        ana.reload()
    sms = ana.inner_text("[data-outbox='grace_sms']")
    # An ops user sees who got what, where and when, not the content (it holds the
    # customer's personal data): only admins, designers and auditors do.
    assert "sms" in sms and "captured" in sms and "content hidden" in sms
    assert "we can move your due date" not in sms and "Mina" not in sms
    ana.screenshot(path=str(ARTIFACTS / "console-run.png"), full_page=True)

    [message] = [m for m in stack.outbox(approved_case.customer) if m.step_id == "grace_sms"]
    assert message.channel == "sms" and message.body.startswith("Mina, we can move your due date")


def test_the_run_page_explains_why_the_sms_went_out(
    ana: Any, stack: JourneysStack, approved_case: Case, zone: str
) -> None:
    # The run page's "Why": what `journeys explain` says, from the same model.
    ana.goto(f"{stack.api_url}/console/runs/{approved_case.run_id}")
    sent = ana.locator("#why li[data-why='send'][data-step='grace_sms']")
    for _ in range(200):  # bounded: the SMS is due within ~2 minutes
        if sent.count():
            break
        ana.wait_for_timeout(1000)
        ana.reload()
    why = ana.inner_text("#why")
    assert "entered payment_recovery on payment_failed" in why, why
    assert "default_risk scored" in why and "not known (default 0)" in why, why
    assert "ops_review: ana decided approve" in why and APPROVAL_NOTE in why, why
    said = sent.inner_text()
    assert "SMS grace_offer captured in the outbox to +82" in said, said
    quiet = ana.inner_text("#why li[data-step='grace_sms'] [data-check='quiet hours']")
    assert f"21:00-09:00 in {zone}: not in them at" in quiet and "sent at once" in quiet, quiet
    consent = ana.inner_text("#why li[data-step='grace_sms'] [data-check='consent']")
    assert "passed" in consent, consent
    # Ops may see why, not the message itself (it holds the customer's personal data).
    assert "content hidden" in said and "Mina" not in said, said
    assert "+821055501234" not in ana.content()
    ana.locator("#why").screenshot(path=str(ARTIFACTS / "console-run-why.png"))
