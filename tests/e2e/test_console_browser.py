"""The ops console in a real browser: Debian's Chromium, driven by Playwright (no browser
download), against the real system on loopback (dev server, `python worker.py`, the API).

The payment-recovery journey of the repository's catalogue opens a case for a high-risk
customer; an ops reviewer signs in (replacing the one-time password `journeys user add`
printed, and seeing the change confirmed), finds the case in the queue, reads why it is
there (the rule as written, the feature that took its default) and where each decision
leads, finds the decisions disabled until the claim, claims it, approves it with a note,
and sees the run move on to the grace-offer SMS. A second reviewer can neither decide the claimed case nor,
afterwards, the decided one. Screenshots of the queue and the case page are saved under
test-artifacts/ (not committed).

The catalogue's SMS waits for 09:00 in the customer's zone; the test deploys the catalogue
with that time moved to two minutes from now in a zone where it is daytime (so quiet hours
do not apply either), which is the one change it makes to the journey.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
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

playwright_sync = pytest.importorskip("playwright.sync_api")


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


def test_an_ops_reviewer_approves_a_high_risk_case_and_the_grace_sms_goes_out(
    stack: JourneysStack, zone: str
) -> None:
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make test` installs it"
    ana_password = add_user(stack, "ana", "ops")
    bob_password = add_user(stack, "bob", "ops")

    customer = treated_customer(stack)
    stack.identify(
        customer,
        first_name="Mina",
        phone="+821055501234",
        timezone=zone,
        failed_payments_90d=3,
    )
    invoice = f"inv-{customer}"
    stack.track(
        customer,
        "payment_failed",
        amount=900000,
        currency="KRW",
        days_past_due=30,
        invoice_id=invoice,
    )
    review: dict[str, Any] = eventually(
        lambda: stack.get("/v1/reviews", customer=customer)["reviews"],
        check=lambda found: len(found) == 1,
        timeout=60,
        what="the review task for the high-risk customer",
    )[0]
    assert review["queue"] == "collections" and review["risk"] >= 0.7

    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_sync.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            ana = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
            sign_in(ana, stack, "ana", ana_password)
            row = ana.locator(f"tr[data-task='{review['id']}']")
            row.wait_for()
            assert "collections" in row.inner_text()
            ana.screenshot(path=str(ARTIFACTS / "console-queue.png"), full_page=True)

            row.locator("a").first.click()
            ana.wait_for_url(re.compile(rf".*/console/reviews/{review['id']}$"))
            body = ana.inner_text("main").lower()  # headings are styled in capitals
            assert "why this case is here" in body and "model default_risk scored" in body
            assert "+821055501234" not in ana.content()  # the phone number is masked
            assert "Mina" in ana.inner_text("#customer")  # the customer by name

            # Why: the rule as the journey wrote it, and the feature the profile lacked.
            why = ana.inner_text("#why")
            assert "by rule 1: scores.default_risk.score >= 0.7" in why, why
            assert ana.inner_text("[data-defaulted='tenure_months']") == "not known (default 0)"
            assert "False" not in ana.inner_text("main") and "None" not in ana.inner_text("main")

            # Where each decision leads, from the run's plan.
            approve_leads = ana.inner_text("[data-leads='approve']")
            assert approve_leads.startswith("→ SMS grace_offer, then wait up to 3 days"), (
                approve_leads
            )
            reject_leads = ana.inner_text("[data-leads='reject']")
            assert reject_leads.startswith("→ email payment_reminder, then wait 4 days"), (
                reject_leads
            )

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
            bob = browser.new_context(viewport={"width": 1024, "height": 768}).new_page()
            sign_in(bob, stack, "bob", bob_password)
            bob.goto(f"{stack.api_url}/console/reviews/{review['id']}")
            assert "Claimed by ana" in bob.inner_text("#decision")
            assert bob.inner_text("#status") == "claimed by ana"
            assert bob.locator("button:has-text('Approve')").count() == 0
            refused = bob.request.post(
                f"{stack.api_url}/console/reviews/{review['id']}/decide",
                form={"decision": "approve", "note": "me too", "csrf": form_token(bob)},
            )
            assert refused.status == 409 and "claimed by ana" in refused.text()

            ana.fill("#note", "Income verified by phone; grace period agreed.")
            ana.click("button[value=approve]")
            ana.wait_for_selector(".banner.ok")
            assert "Decided: approve" in ana.inner_text(".banner.ok")

            assert "SLA" not in ana.inner_text("main")  # no deadline once decided
            ana.screenshot(path=str(ARTIFACTS / "console-case-decided.png"), full_page=True)

            bob.reload()
            assert "Decided approve by ana" in bob.inner_text("#decision")
            late = bob.request.post(
                f"{stack.api_url}/console/reviews/{review['id']}/decide",
                form={"decision": "reject", "note": "no", "csrf": form_token(bob)},
            )
            assert late.status == 409 and "decided already" in late.text()

            # The run moves on: the grace offer is captured (no SMS URL set) at the set time.
            ana.goto(f"{stack.api_url}/console/runs/{review['run_id']}")
            assert "open in temporal" in ana.inner_text("main").lower()
            for _ in range(200):  # bounded: the SMS is due within ~2 minutes
                if ana.locator("[data-outbox='grace_sms']").count():
                    break
                ana.wait_for_timeout(1000)
                ana.reload()
            sms = ana.inner_text("[data-outbox='grace_sms']")
            # An ops user sees who got what, where and when, not the content (it holds
            # the customer's personal data): only admins, designers and auditors do.
            assert "sms" in sms and "captured" in sms and "content hidden" in sms
            assert "we can move your due date" not in sms and "Mina" not in sms
            ana.screenshot(path=str(ARTIFACTS / "console-run.png"), full_page=True)
        finally:
            browser.close()
    [message] = [m for m in stack.outbox(customer) if m.step_id == "grace_sms"]
    assert message.channel == "sms" and message.body.startswith("Mina, we can move your due date")
