"""Issue #19 on a running system: a known mix of customers driven through the API, and the
journey numbers (`GET /v1/journeys/{id}/stats` and `/funnel`, `journeys stats`, the
console's journey page) equal to what was sent, exactly.

The stack runs the example catalogue plus two small test journeys that both enter on
`trial_started` and split at once (their runs end immediately, so 2,000 customers go
through in real time, no timer to wait for), with the goal `trial_converted` within 7
days:
- `ab_test` (arms `push`/`email`): a planted difference: seeded, 30% of the push arm and
  10% of the email arm convert. The split is declared significant, push the winner.
- `aa_test` (arms `left`/`right`, its own salt): the same conversions, which do not
  depend on its arm: an A/A split, not declared significant.
Which arm a customer is in comes from the engine's own bucketing (`bucket_of` over the
split's salt), as the run computes it; customer ids are fixed, so the outcome is the same
on every run of the test.

Also: onboarding's holdout as an experiment, with `first_purchase` exits counted by the
outcome goal; and, in Chromium, the console's journey page showing the API's counts on
its map (screenshot saved under test-artifacts/, and copied to docs/images/ for the
README when `JOURNEYS_UPDATE_SCREENSHOTS=1`).
"""

from __future__ import annotations

import csv
import io
import os
import random
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from engine.catalog import build_catalog
from engine.decisions import bucket_of
from engine.plan import Plan, SplitPlan, bucket_salt, split_salt
from tests.e2e.conftest import (
    JOURNEYS_CLI,
    ROOT,
    JourneysStack,
    TemporalServer,
    daytime_zone,
    eventually,
    start_stack,
)

pytestmark = pytest.mark.e2e

CUSTOMERS = 2_000
SEED = 1919
RATES = {"push": 0.30, "email": 0.10}
TEST_JOURNEYS = """
  - id: ab_test
    name: Trial offer test
    entry: {event: trial_started}
    goals: [{event: trial_converted, within: 7d, value: event.amount}]
    steps:
      - id: offer
        split: {push: 50, email: 50}
        paths: {push: done, email: done}
      - id: done
        exit: offered
  - id: aa_test
    name: A/A check
    entry: {event: trial_started}
    goals: [{event: trial_converted, within: 7d}]
    steps:
      - id: same
        split: {left: 50, right: 50}
        salt: aa-1
        paths: {left: done, right: done}
      - id: done
        exit: offered
"""
EVENTS = "  trial_started: {}\n  trial_converted: {amount: number}\n"
WAIT = 240.0  # 4,000 runs on one worker


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, temporal_server: TemporalServer
) -> Iterator[JourneysStack]:
    directory = tmp_path_factory.mktemp("numbers")
    shutil.copytree(ROOT / "templates", directory / "templates")
    (directory / "risk_models").mkdir()
    shutil.copy(ROOT / "risk_models" / "default_risk.onnx", directory / "risk_models")
    source = (ROOT / "journeys.yaml").read_text(encoding="utf-8")
    assert "\nevents:\n" in source and "\njourneys:\n" in source
    source = source.replace("\nevents:\n", "\nevents:\n" + EVENTS, 1)
    source = source.rstrip() + "\n" + TEST_JOURNEYS
    catalogue = directory / "journeys.yaml"
    catalogue.write_text(source, encoding="utf-8")
    (directory / "stack").mkdir()
    with start_stack(directory / "stack", temporal_server, catalogue) as running:
        yield running


def _arm(plan: Plan, step_id: str, customer: str) -> str:
    """The arm the run puts ``customer`` in, computed as the engine does."""
    step = plan.steps[step_id]
    assert isinstance(step, SplitPlan)
    salt = split_salt(bucket_salt(plan, customer), step)
    return step.arms[bucket_of(salt, [arm.weight for arm in step.arms])].name


def _batch(stack: JourneysStack, messages: list[dict[str, Any]]) -> None:
    for start in range(0, len(messages), 500):
        answer = stack.client().post("/v1/batch", json={"batch": messages[start : start + 500]})
        assert answer.status_code == 202, answer.text
        assert answer.json()["accepted"] == len(messages[start : start + 500]), answer.text


def _stats(stack: JourneysStack, journey: str, **params: str) -> dict[str, Any]:
    return stack.get(f"/v1/journeys/{journey}/stats", **params)


@pytest.fixture(scope="module")
def trial(stack: JourneysStack) -> dict[str, Any]:
    """2,000 customers start a trial; the seeded share of each ab arm converts."""
    plans = build_catalog(stack.journeys_file).plans
    customers = [f"trial-{n:04d}" for n in range(CUSTOMERS)]
    _batch(
        stack,
        [
            {"type": "track", "event": "trial_started", "userId": c, "messageId": f"ts-{c}"}
            for c in customers
        ],
    )
    for journey in ("ab_test", "aa_test"):

        def read(journey: str = journey) -> dict[str, Any]:
            return _stats(stack, journey)

        eventually(
            read,
            check=lambda s: s["entries"] == CUSTOMERS and s["active"] == 0,
            timeout=WAIT,
            interval=2.0,
            what=f"{CUSTOMERS} {journey} runs ended",
        )
    ab = {c: _arm(plans["ab_test"], "offer", c) for c in customers}
    aa = {c: _arm(plans["aa_test"], "same", c) for c in customers}
    rng = random.Random(SEED)
    converted = [c for c in customers if rng.random() < RATES[ab[c]]]
    _batch(
        stack,
        [
            {
                "type": "track",
                "event": "trial_converted",
                "userId": c,
                "messageId": f"tc-{c}",
                "properties": {"amount": 12.5},
            }
            for c in converted
        ],
    )
    return {"ab": ab, "aa": aa, "converted": set(converted)}


def test_the_numbers_are_what_was_sent(stack: JourneysStack, trial: dict[str, Any]) -> None:
    ab, converted = trial["ab"], trial["converted"]
    stats = _stats(stack, "ab_test")
    assert stats["entries"] == CUSTOMERS and stats["active"] == 0
    assert stats["outcomes"] == {"offered": CUSTOMERS}
    assert stats["conversions"]["count"] == len(converted)
    assert stats["conversions"]["value"] == pytest.approx(12.5 * len(converted))
    assert stats["conversions"]["rate"] == pytest.approx(len(converted) / CUSTOMERS)
    assert stats["steps"]["offer"]["reached"] == CUSTOMERS
    assert stats["steps"]["done"]["reached"] == CUSTOMERS
    assert stats["steps"]["done"]["left"] == CUSTOMERS
    assert {(e["from"], e["to"]): e["count"] for e in stats["edges"]} == {
        ("entry", "offer"): CUSTOMERS,
        ("offer", "done"): CUSTOMERS,
    }
    arms = Counter(ab.values())
    won = Counter(ab[c] for c in converted)
    experiment = stats["experiments"]["offer"]
    for arm in ("push", "email"):
        assert experiment[arm]["entries"] == arms[arm], arm
        assert experiment[arm]["conversions"] == won[arm], arm

    funnel = stack.get("/v1/journeys/ab_test/funnel", steps="offer,done")
    assert [(s["step"], s["reached"]) for s in funnel["steps"]] == [
        ("offer", CUSTOMERS),
        ("done", CUSTOMERS),
    ]
    rows = list(
        csv.reader(io.StringIO(stack.client().get("/v1/journeys/ab_test/stats?format=csv").text))
    )
    assert ["totals", "", "", "entries", str(CUSTOMERS)] in rows

    printed = subprocess.run(
        [str(JOURNEYS_CLI), "stats", "ab_test"],
        cwd=ROOT,
        env={**stack.env(), "JOURNEYS_API_URL": stack.api_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    assert re.search(rf"\b{CUSTOMERS:,}\b|\b{CUSTOMERS}\b", printed.stdout), printed.stdout
    assert "push wins" in printed.stdout, printed.stdout


def test_a_planted_difference_is_significant_and_an_aa_split_is_not(
    stack: JourneysStack, trial: dict[str, Any]
) -> None:
    ab = _stats(stack, "ab_test")["experiments"]["offer"]
    assert ab["p_value"] < 0.05 and ab["winner"] == "push", ab
    assert ab["push"]["rate"] > ab["email"]["rate"]
    assert ab["push"]["ci_low"] > ab["email"]["ci_high"], ab  # clear apart at 30% vs 10%
    aa = _stats(stack, "aa_test")["experiments"]["same"]
    assert aa["winner"] is None and aa["p_value"] > 0.05, aa
    entries = Counter(trial["aa"].values())
    assert aa["left"]["entries"] == entries["left"] and aa["right"]["entries"] == entries["right"]


def test_the_holdout_is_measured_against_the_rest(stack: JourneysStack) -> None:
    """Onboarding: 40 sign-ups, 12 of them buy (their runs exit as converted, held out or
    not); the holdout experiment counts each side exactly."""
    plan = build_catalog(stack.journeys_file).plans["onboarding"]
    weights = [plan.holdout_percent, 100 - plan.holdout_percent]
    customers = [f"onb-{n:03d}" for n in range(40)]
    held = {c for c in customers if bucket_of(bucket_salt(plan, c, "holdout"), weights) == 0}
    assert 0 < len(held) < 40, "no customer (or every one) held out: the check says nothing"
    _batch(
        stack,
        [
            {
                "type": "identify",
                "userId": c,
                "messageId": f"id-{c}",
                "traits": {"email": f"{c}@numbers.test", "timezone": daytime_zone()},
            }
            for c in customers
        ],
    )
    _batch(
        stack,
        [
            {
                "type": "track",
                "event": "signed_up",
                "userId": c,
                "messageId": f"su-{c}",
                "properties": {"plan": "pro", "source": "web"},
            }
            for c in customers
        ],
    )
    eventually(
        lambda: _stats(stack, "onboarding"),
        check=lambda s: (
            s["entries"] == 40
            and s["steps"].get("wait_a_day", {}).get("waiting", 0) == 40 - len(held)
        ),
        timeout=WAIT,
        interval=1.0,
        what="40 onboarding runs at the holdout or waiting a day",
    )
    buyers = customers[::3][:12]
    _batch(
        stack,
        [
            {"type": "track", "event": "first_purchase", "userId": c, "messageId": f"fp-{c}"}
            for c in buyers
        ],
    )
    stats = eventually(
        lambda: _stats(stack, "onboarding"),
        check=lambda s: s["outcomes"].get("converted", 0) == len(buyers),
        timeout=WAIT,
        interval=1.0,
        what="the buyers' runs converted",
    )
    holdout = stats["experiments"]["holdout"]
    assert holdout["control"]["entries"] == len(held)
    assert holdout["treated"]["entries"] == 40 - len(held)
    assert holdout["control"]["conversions"] == len(held & set(buyers))
    assert holdout["treated"]["conversions"] == len(set(buyers) - held)
    assert holdout["control_arm"] == "control"
    assert stats["conversions"]["count"] == len(buyers)
    assert stats["steps"]["welcome_email"]["reached"] == 40 - len(held)
    # Attribution: the treated buyers converted after their welcome email was sent.
    assert stats["sends"]["welcome_email"]["email"]["conversions"] == len(set(buyers) - held)


# ----------------------------------------------------------------------------- the console


@pytest.fixture
def _end_open_runs() -> None:
    """Replaces tests/conftest.py's async autouse fixture: Playwright's sync API holds this
    thread's loop; this module's runs are on its own stack."""


def test_the_journey_page_shows_the_apis_counts(
    stack: JourneysStack, trial: dict[str, Any]
) -> None:
    playwright_sync = pytest.importorskip("playwright.sync_api")
    from tests.e2e.test_console_runs_browser import (
        ARTIFACTS,
        CHROMIUM,
        CHROMIUM_ARGS,
        add_user,
        sign_in,
    )
    from tests.e2e.test_console_stats_browser import wait_for_charts

    stats = _stats(stack, "ab_test")
    password = add_user(stack, "carla", "designer")
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_sync.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            sign_in(page, stack, "carla", password, landing="journeys")
            page.goto(f"{stack.api_url}/console/stats")
            row = page.locator("tr[data-journey='ab_test']")
            assert row.locator("[data-field='entries']").inner_text() == f"{CUSTOMERS:,}" or (
                row.locator("[data-field='entries']").inner_text() == str(CUSTOMERS)
            )
            page.goto(f"{stack.api_url}/console/journeys/ab_test/stats")
            wait_for_charts(page, "main")
            for step in ("offer", "done"):  # the plan's steps (the map draws no entry)
                numbers = stats["steps"][step]
                node = page.locator(f"#map svg g.node[data-step='{step}']")
                assert node.get_attribute("data-reached") == str(numbers["reached"]), step
            edge = page.locator("#map svg g.edge[data-from='offer'][data-to='done']").first
            assert edge.get_attribute("data-taken") == str(CUSTOMERS)
            assert "push" in page.inner_text("[data-experiment='offer']")
            shot = ARTIFACTS / "console-journey-numbers.png"
            page.screenshot(path=str(shot), full_page=True)
            assert problems == []
        finally:
            browser.close()
    if os.environ.get("JOURNEYS_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(shot, ROOT / "docs" / "images" / "journey-numbers.png")
