"""The console's journey numbers in a real browser (issue #19): Debian's Chromium driven
by Playwright (no browser download). A designer signs in, opens Numbers from the
navigation (the overview: each journey's entries, rate, sparkline and the alerts), then
payment_recovery's page: the Vega charts draw (an SVG in each chart's container) under
the console's unchanged policy (no 'unsafe-eval'), no policy violation or script error
shows in the console, and the map's counts on steps and edges are the numbers the stats
answered. Screenshots of both pages are saved under test-artifacts/ (not committed).

The app runs in this process under uvicorn on loopback, on a fresh SQLite database with
the repository's catalogue deployed, and `engine.stats` replaced by the stand-in of
tests/api/test_console_stats_api.py (its fixed numbers): no Temporal, no worker, no run.
Switched to real runs, the expected numbers would come from ``GET /v1/journeys/{id}/
stats`` instead of the stand-in's.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
from temporalio.client import Client

from engine.catalog import build_catalog
from engine.database import make_engine
from engine.deploy import deploy_catalog
from service.api.app import create_app
from service.users import add_user
from tests.api.conftest import api_settings
from tests.api.test_console_runs_api import NoTemporal
from tests.api.test_console_stats_api import EDGES, FULL, JOURNEY, STEPS, install_stand_in
from tests.database import fresh_database_url
from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.browser

playwright_sync = pytest.importorskip("playwright.sync_api")
uvicorn = pytest.importorskip("uvicorn")

from tests.e2e.test_console_runs_browser import (  # noqa: E402  (after the skip)
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    sign_in,
)

START_TIMEOUT = 30.0
CHART_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class InProcessApp:
    """What `sign_in` needs of a stack: where the API answers; and its database."""

    api_url: str
    database_url: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessApp]:
    """The API with the console under uvicorn in a thread, the stand-in's numbers."""
    database_url = fresh_database_url(tmp_path_factory.mktemp("stats-browser"))
    db = make_engine(database_url)
    catalog = build_catalog(ROOT / "journeys.yaml")
    assert catalog.ok
    deploy_catalog(catalog, engine=db, source_text=(ROOT / "journeys.yaml").read_text())
    db.dispose()
    settings = api_settings(database_url=database_url, task_queue="unused").model_copy(
        update={"secret_key": "console-secret-for-the-stats-browser-test"}
    )
    port = _free_port()
    with pytest.MonkeyPatch.context() as patch:
        install_stand_in(patch)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings, client=cast(Client, NoTemporal())),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                lifespan="on",
            )
        )
        thread = threading.Thread(target=server.run, name="stats-browser-api", daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            assert thread.is_alive(), "the API did not start"
            assert time.monotonic() < deadline, "the API did not start in time"
            time.sleep(0.05)
        try:
            yield InProcessApp(api_url=f"http://127.0.0.1:{port}", database_url=database_url)
        finally:
            server.should_exit = True
            thread.join(timeout=15)


@pytest.fixture
def _end_open_runs() -> None:
    """Replaces tests/conftest.py's async autouse fixture of that name, which cannot run
    while Playwright's sync API holds this thread's loop; this module starts no run."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
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


@dataclass
class Watched:
    """A signed-in tab and what its console said."""

    page: Any
    problems: list[str]


@pytest.fixture(scope="module")
def designer(browser: Any, app: InProcessApp) -> Iterator[Watched]:
    """Dana, a new designer, signed in; every console error and page error noted."""
    db = make_engine(app.database_url)
    try:
        password = add_user(db, name="dana", role="designer")
    finally:
        db.dispose()
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    problems: list[str] = []
    try:
        page = context.new_page()
        page.on(
            "console",
            lambda m: (
                problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None
            ),
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        sign_in(page, cast(Any, app), "dana", password, landing="journeys")
        yield Watched(page, problems)
    finally:
        context.close()


def wait_for_charts(page: Any, selector: str) -> None:
    """Every chart under ``selector`` drawn by Vega: marked rendered, an SVG inside."""
    page.wait_for_function(
        """(selector) => {
            const charts = [...document.querySelectorAll(selector + ' [data-spec]')];
            return charts.length > 0 && charts.every(c => c.dataset.rendered);
        }""",
        arg=selector,
        timeout=CHART_TIMEOUT_MS,
    )
    charts = page.locator(f"{selector} [data-spec]")
    for i in range(charts.count()):
        chart = charts.nth(i)
        assert chart.get_attribute("data-rendered") == "yes", chart.inner_text()
        assert chart.locator("svg").count() >= 1


def test_the_overview_lists_the_journeys_with_their_trends_and_alerts(
    designer: Watched, app: InProcessApp
) -> None:
    page = designer.page
    page.click("header nav a:has-text('Numbers')")
    page.wait_for_url(re.compile(r".*/console/stats$"))
    assert page.locator("header nav a.on").inner_text() == "Numbers"
    wait_for_charts(page, "table.stats")
    row = page.locator(f"tr[data-journey='{JOURNEY}']")
    assert row.locator("[data-field='entries']").inner_text() == str(FULL.entries)
    assert row.locator("[data-field='conversions']").inner_text() == str(FULL.conversions.count)
    alert = page.locator(f"#alerts .banner.alert.send[data-journey='{JOURNEY}']")
    assert "grace_sms on sms: 6 of 79 sends failed (7.6%)" in alert.inner_text()
    page.screenshot(path=str(ARTIFACTS / "console-stats-overview.png"), full_page=True)
    assert designer.problems == []


def test_the_journey_page_draws_its_charts_and_the_map_shows_the_counts(
    designer: Watched, app: InProcessApp
) -> None:
    page = designer.page
    page.goto(f"{app.api_url}/console/stats")
    page.click(f"tr[data-journey='{JOURNEY}'] a")
    page.wait_for_url(re.compile(rf".*/console/journeys/{JOURNEY}/stats$"))
    wait_for_charts(page, "main")
    assert page.locator("#funnel-chart svg .mark-rect path").count() >= 1  # the bars
    assert page.locator("#trend-chart svg .mark-line path").count() >= 1  # the lines

    nodes = page.locator("#map svg g.node[data-step]")
    assert nodes.count() == len(STEPS)  # every path ends at an exit step: no end node
    for step, numbers in STEPS.items():
        node = page.locator(f"#map svg g.node[data-step='{step}']")
        shown = node.locator("text.counts").text_content()
        assert shown == (
            f"reached {numbers.reached} · waiting {numbers.waiting} · left {numbers.left}"
        ), step
        assert node.get_attribute("data-reached") == str(numbers.reached)
    for source, target, count in EDGES:
        edge = page.locator(f"#map svg g.edge[data-from='{source}'][data-to='{target}']").first
        assert edge.get_attribute("data-taken") == str(count), (source, target)
        assert edge.locator("text").text_content().split("· ")[-1] == str(count)
    assert page.locator("#headline [data-field='entries']").inner_text() == str(FULL.entries)
    assert "No significant difference yet" in page.inner_text("[data-experiment='holdout']")
    page.screenshot(path=str(ARTIFACTS / "console-stats-journey.png"), full_page=True)
    assert designer.problems == []


def test_the_version_and_range_form_reloads_the_page(designer: Watched, app: InProcessApp) -> None:
    page = designer.page
    page.goto(f"{app.api_url}/console/journeys/{JOURNEY}/stats")
    page.select_option("#version", index=1)
    page.fill("#from", "2026-11-01")
    page.fill("#to", "2026-11-07")
    page.click("#range button[type=submit]")
    page.wait_for_url(re.compile(r".*\?version=[0-9a-f]+&from=2026-11-01&to=2026-11-07$"))
    wait_for_charts(page, "main")
    assert "from 2026-11-01 to 2026-11-07" in page.inner_text("main")
    assert designer.problems == []
