"""The console's runs list and run page in a real browser: Debian's Chromium, driven by
Playwright (no browser download), against the real system on loopback (dev server,
`python worker.py`, the API), the repository's catalogue deployed as it is.

A low-risk customer's failed payment starts a payment-recovery run that waits at
`wait_for_morning` for 09:00 in the customer's zone (a zone where it is daytime now, so
09:00 is many hours away). An ops user signs in, opens Runs from the navigation, searches
by the customer's id, opens the run and reads until when it waits, in the customer's
zone, named. Screenshots of the list and the run page are saved under test-artifacts/
(not committed).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from datetime import datetime
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

CATALOGUE = ROOT / "journeys.yaml"
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
NEW_PASSWORD = "runs-reader-password-1"
WAIT_TIMEOUT = 60.0

playwright_sync = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, temporal_server: TemporalServer
) -> Iterator[JourneysStack]:
    with start_stack(tmp_path_factory.mktemp("runs"), temporal_server, CATALOGUE) as running:
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


def waiting_run(stack: JourneysStack, customer: str) -> tuple[str, datetime]:
    """The customer's payment-recovery run once it waits at `wait_for_morning`, and when
    its recorded wait entry says it wakes."""
    run_id = str(stack.only_run(customer, "payment_recovery")["run_id"])

    def recorded_wait() -> dict[str, Any] | None:
        detail = stack.run(run_id)
        recorded = detail["path"][: detail["path_total"]]
        waits = [e for e in recorded if e["step"] == "wait_for_morning"]
        return waits[-1] if waits and detail["step"] == "wait_for_morning" else None

    entry: dict[str, Any] = eventually(
        recorded_wait,
        check=lambda found: found is not None and found["outcome"] == "waiting",
        timeout=WAIT_TIMEOUT,
        what=f"run {run_id} recorded as waiting at wait_for_morning",
    )
    return run_id, datetime.fromisoformat(entry["detail"]["until"])


def test_an_ops_user_finds_a_waiting_run_by_customer_and_sees_until_when_it_waits(
    stack: JourneysStack,
) -> None:
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make test` installs it"
    zone = daytime_zone()
    password = add_user(stack, "rita", "ops")
    customer = holdout_customer(CATALOGUE, "payment_recovery", prefix="runs")
    # A long tenure keeps the demo model's risk low: no review, the wait for 09:00.
    stack.identify(customer, first_name="Mina", phone="+15550100", timezone=zone, tenure_months=24)
    stack.track(
        customer,
        "payment_failed",
        amount=15000,
        currency="KRW",
        days_past_due=1,
        invoice_id=f"inv-{customer}",
    )
    run_id, wake = waiting_run(stack, customer)
    local = wake.astimezone(ZoneInfo(zone))
    assert local.strftime("%H:%M") == "09:00"
    shown = local.strftime("%Y-%m-%d %H:%M %Z")

    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_sync.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
            sign_in(page, stack, "rita", password)

            page.click("header nav a:has-text('Runs')")
            page.wait_for_url(re.compile(r".*/console/runs$"))
            assert page.locator("header nav a.on").inner_text() == "Runs"
            page.fill("#customer", customer)
            page.click("form.filters button[type=submit]")
            page.wait_for_url(re.compile(r".*/console/runs\?customer="))
            rows = page.locator("tbody tr[data-run]")
            assert rows.count() == 1, page.inner_text("tbody")
            row = rows.first.inner_text()
            assert "payment_recovery" in row and customer in row
            assert "running" in row and "wait_for_morning" in row
            page.screenshot(path=str(ARTIFACTS / "console-runs.png"), full_page=True)

            rows.first.locator("a", has_text="payment_recovery").click()
            page.wait_for_url(re.compile(rf".*/console/runs/{re.escape(run_id)}$"))
            waiting = page.inner_text(".banner.waiting")
            assert re.fullmatch(
                rf"Waiting until {re.escape(shown)} \(in (\d+ h|\d+ min)\)", waiting.strip()
            ), waiting
            main = page.inner_text("main")
            assert "at step wait_for_morning" in main
            assert f"Times in {zone} (the customer's zone)." in main
            assert "No messages: no send step has run." in main
            assert "+15550100" not in page.content()
            page.screenshot(path=str(ARTIFACTS / "console-run-waiting.png"), full_page=True)
        finally:
            browser.close()
