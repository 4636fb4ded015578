"""The console's runs list and run page in a real browser: Debian's Chromium, driven by
Playwright (no browser download), against the real system on loopback (dev server,
`python worker.py`, the API), the repository's catalogue deployed as it is.

A low-risk customer's failed payment starts a payment-recovery run that waits at
`wait_for_morning` for 09:00 in the customer's zone (a zone where it is daytime now, so
09:00 is many hours away). An ops user signs in, opens Runs from the navigation, searches
by the customer's id (or the id's beginning) and opens the run; on the run's page they
read until when it waits, in the customer's zone, named. One test for the search, one for
the run page, sharing the module's stack, run and signed-in browser. A last test has a
designer preview a template from its journey (the Journeys page). Screenshots of the
list, the run page and the preview are saved under test-artifacts/ (not committed).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from channels.status_links import make_status_token, status_url
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

STATUS_SECRET = "status-links-secret-for-the-browser-test"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, temporal_server: TemporalServer
) -> Iterator[JourneysStack]:
    directory = tmp_path_factory.mktemp("runs")
    secret = {"JOURNEYS_SECRET_KEY": STATUS_SECRET}  # signs the customers' status links
    with start_stack(directory, temporal_server, CATALOGUE, env=secret) as running:
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


def sign_in(
    page: Any, stack: JourneysStack, name: str, one_time: str, landing: str = "reviews"
) -> None:
    """Sign in with the one-time password, replace it, and land on the role's first page
    (ops: the review queue; a designer: the journeys list), which confirms the change."""
    page.goto(f"{stack.api_url}/console/login")
    page.fill("#name", name)
    page.fill("#password", one_time)
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/password$"))
    page.fill("#current", one_time)
    page.fill("#new", NEW_PASSWORD)
    page.fill("#repeat", NEW_PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(rf".*/console/{landing}\?notice=password-changed$"))
    assert "Your password was changed" in page.inner_text("#notice")


@dataclass(frozen=True)
class WaitingRun:
    """The low-risk customer's run, waiting at `wait_for_morning`, and what its page
    should show as the time it wakes."""

    customer: str
    zone: str
    run_id: str
    shown: str


@pytest.fixture(scope="module")
def waiting(stack: JourneysStack) -> WaitingRun:
    """A low-risk customer identified and their failed payment tracked; their run, once
    recorded as waiting for 09:00 in their zone."""
    zone = daytime_zone()
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
    return WaitingRun(
        customer=customer, zone=zone, run_id=run_id, shown=local.strftime("%Y-%m-%d %H:%M %Z")
    )


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


@pytest.fixture(scope="module")
def rita_session(browser: Any, stack: JourneysStack) -> Iterator[Any]:
    """A browser context of Rita, a new ops user, signed in."""
    password = add_user(stack, "rita", "ops")
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    try:
        page = context.new_page()
        sign_in(page, stack, "rita", password)
        page.close()
        yield context
    finally:
        context.close()


@pytest.fixture
def page(rita_session: Any) -> Iterator[Any]:
    """A fresh tab of Rita's, for one test."""
    tab = rita_session.new_page()
    try:
        yield tab
    finally:
        tab.close()


def search_runs(page: Any, customer: str) -> Any:
    """Search the runs list by `customer` with its form; the rows listed."""
    page.fill("#customer", customer)
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(rf".*/console/runs\?customer={re.escape(customer)}(&.*)?$"))
    return page.locator("tbody tr[data-run]")


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


def test_an_ops_user_finds_a_waiting_run_by_customer(
    page: Any, stack: JourneysStack, waiting: WaitingRun
) -> None:
    page.goto(f"{stack.api_url}/console/reviews")
    page.click("header nav a:has-text('Runs')")
    page.wait_for_url(re.compile(r".*/console/runs$"))
    assert page.locator("header nav a.on").inner_text() == "Runs"

    # The id's beginning finds it too (the module's stack has no other customer).
    beginning = waiting.customer[:-4]
    rows = search_runs(page, beginning)
    assert rows.count() == 1, page.inner_text("tbody")
    assert waiting.customer in rows.first.inner_text()

    rows = search_runs(page, waiting.customer)
    assert rows.count() == 1, page.inner_text("tbody")
    row = rows.first.inner_text()
    assert "payment_recovery" in row and waiting.customer in row
    assert "running" in row and "wait_for_morning" in row
    page.screenshot(path=str(ARTIFACTS / "console-runs.png"), full_page=True)

    rows.first.locator("a", has_text="payment_recovery").click()
    page.wait_for_url(re.compile(rf".*/console/runs/{re.escape(waiting.run_id)}$"))


def test_the_run_page_says_until_when_the_run_waits(
    page: Any, stack: JourneysStack, waiting: WaitingRun
) -> None:
    page.goto(f"{stack.api_url}/console/runs/{waiting.run_id}")
    waiting_banner = page.inner_text(".banner.waiting")
    assert re.fullmatch(
        rf"Waiting until {re.escape(waiting.shown)} \(in (\d+ h|\d+ min)\)",
        waiting_banner.strip(),
    ), waiting_banner
    main = page.inner_text("main")
    assert "at step wait_for_morning" in main
    assert f"Times in {waiting.zone} (the customer's zone)." in main
    assert "No messages: no send step has run." in main
    assert "+15550100" not in page.content()
    page.screenshot(path=str(ARTIFACTS / "console-run-waiting.png"), full_page=True)


def test_a_designer_previews_a_template_from_a_journey(browser: Any, stack: JourneysStack) -> None:
    """Dana, a new designer, opens Journeys from the navigation, picks payment_recovery's
    grace_offer and previews it with values she types: the SMS with its segments, the
    email's subject and its HTML in the sandboxed frame."""
    password = add_user(stack, "dana", "designer")
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    try:
        page = context.new_page()
        sign_in(page, stack, "dana", password, landing="journeys")
        page.goto(f"{stack.api_url}/console/runs")
        page.click("header nav a:has-text('Journeys')")
        page.wait_for_url(re.compile(r".*/console/journeys$"))
        row = page.locator("tr[data-journey='payment_recovery']")
        row.locator("a[data-template='grace_offer']").click()
        page.wait_for_url(
            re.compile(r".*/journeys/payment_recovery/templates/grace_offer/preview$")
        )

        page.fill("#profile", "first_name=Mina\ntimezone=Asia/Seoul")
        page.fill("#event", "amount=25000\ncurrency=KRW")
        page.fill("#variables", "new_due=2026-12-10")
        page.click("#preview-form button[type=submit]")
        page.wait_for_selector("section[data-channel='sms']")

        sms = page.locator("section[data-channel='sms']")
        assert sms.locator("[data-part='body']").inner_text() == (
            "Mina, we can move your due date to 2026-12-10. Reply YES to accept."
        )
        assert sms.locator("[data-part='segments']").inner_text().startswith("1 (GSM-7, ")
        email = page.locator("section[data-channel='email']")
        assert (
            email.locator("[data-part='subject']").inner_text() == "About your payment of ₩25,000"
        )
        frame = page.frame_locator("iframe[data-part='html']")
        assert "Hi Mina," in frame.locator("body").inner_text()
        assert "2026-12-10" in frame.locator("body").inner_text()
        # Chromium paints a frame below the fold only once it is scrolled to.
        page.locator("iframe[data-part='html']").scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / "console-preview.png"), full_page=True)
    finally:
        context.close()


def test_the_customer_sees_where_the_run_stands_on_its_status_page(
    page: Any, stack: JourneysStack, waiting: WaitingRun
) -> None:
    """The link a message carries (`{{ run.status_url }}`), opened in Chromium: the run is
    in progress and moves on at 09:00 in the customer's zone; nothing internal shows. A
    token for another run, or an altered one, reads nothing."""
    token = make_status_token(run_id=waiting.run_id, secret=STATUS_SECRET)
    page.goto(status_url(stack.api_url, token))
    assert page.inner_text("#state") == "Status: in progress"
    assert page.inner_text("#expected") == f"Next update expected by {waiting.shown}."
    shown = page.inner_text("body")
    for internal in ("wait_for_morning", "payment_recovery", waiting.customer, "score", "0."):
        assert internal not in shown, internal
    page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)

    other = make_status_token(run_id="another-run", secret=STATUS_SECRET)
    altered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for bad in (other, altered):
        answer = page.goto(status_url(stack.api_url, bad))
        assert answer is not None and answer.status == 404
        assert "This status link is not valid" in page.inner_text("body")
