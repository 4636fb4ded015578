"""The console's journey numbers over HTTP (issue #19): the overview and a journey's page
for the roles with ``view_stats`` (admin, designer, supervisor, auditor), 403 for ops;
the numbers shown are the `JourneyStats` the stats module answered (here a stand-in:
`stand_in_stats` monkeypatches `engine.stats`); alerts for a send step failing above 5%
and for open review tasks past their SLA; the vendored chart scripts served as
JavaScript, and a policy without 'unsafe-eval'."""

from __future__ import annotations

import html
import re
import sys
import types
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from engine.catalog import build_catalog
from engine.database import ReviewTask, session_scope
from engine.deploy import deploy_catalog
from engine.stats_models import (
    ArmStats,
    ChannelSends,
    Conversions,
    EdgeStats,
    ExperimentStats,
    FunnelStats,
    FunnelStep,
    JourneyStats,
    ReviewStats,
    StepStats,
)
from engine.timestamps import utcnow
from service.api.middleware import CONTENT_SECURITY_POLICY
from tests.api.test_console_runs_api import NoTemporal, signed_in

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]
JOURNEY = "payment_recovery"
STATS_PAGE = f"/console/journeys/{JOURNEY}/stats"

# The stand-in's numbers for payment_recovery over any window longer than a day.
STEPS = {
    "score_risk": StepStats(reached=120, waiting=0, left=0, p50_seconds=1.0, p90_seconds=2.0),
    "route_by_risk": StepStats(reached=120, waiting=0, left=0),
    "ops_review": StepStats(reached=40, waiting=6, left=4, p50_seconds=5400, p90_seconds=12600),
    "offer_date": StepStats(reached=96, waiting=0, left=0),
    "choose_strategy": StepStats(reached=96, waiting=0, left=0),
    "when_to_send": StepStats(reached=96, waiting=0, left=0),
    "wait_for_morning": StepStats(reached=61, waiting=17, left=0),
    "grace_sms": StepStats(reached=79, waiting=0, left=3),
    "wait_for_payment": StepStats(reached=76, waiting=22, left=0),
    "paid": StepStats(reached=31, waiting=0, left=31),
    "reminder_email": StepStats(reached=37, waiting=0, left=2),
    "final_wait": StepStats(reached=35, waiting=9, left=0),
    "handover": StepStats(reached=26, waiting=0, left=0),
    "handed_over": StepStats(reached=26, waiting=0, left=26),
}
EDGES = [
    ("score_risk", "route_by_risk", 120),
    ("route_by_risk", "ops_review", 40),
    ("route_by_risk", "offer_date", 80),
    ("ops_review", "offer_date", 16),
    ("ops_review", "reminder_email", 20),
    ("offer_date", "choose_strategy", 96),
    ("choose_strategy", "when_to_send", 96),
    ("when_to_send", "grace_sms", 18),
    ("when_to_send", "wait_for_morning", 78),
    ("wait_for_morning", "grace_sms", 61),
    ("grace_sms", "wait_for_payment", 76),
    ("wait_for_payment", "paid", 31),
    ("wait_for_payment", "reminder_email", 15),
    ("reminder_email", "final_wait", 35),
    ("final_wait", "handover", 26),
    ("handover", "handed_over", 26),
]
FULL = JourneyStats(
    journey_id=JOURNEY,
    entries=126,
    active=54,
    outcomes={"recovered": 31, "handed_to_collections": 26, "holdout": 6},
    conversions=Conversions(count=31, rate=31 / 126, value=46500.0),
    steps=STEPS,
    edges=[EdgeStats(source=s, target=t, count=n) for s, t, n in EDGES],
    sends={
        "grace_sms": {
            "sms": ChannelSends(attempted=79, sent=70, failed=6, skipped={"quiet hours": 3})
        },
        "reminder_email": {"email": ChannelSends(attempted=37, sent=37, failed=0)},
    },
    reviews={
        "ops_review": ReviewStats(
            opened=40,
            decided={"approve": 16, "reject": 14},
            escalated=5,
            timed_out=6,
            p50_seconds_to_decision=5400,
            p90_seconds_to_decision=12600,
        )
    },
    experiments={
        "holdout": ExperimentStats(
            arms={
                "control": ArmStats(entries=6, conversions=0, rate=0.0, ci_low=0.0, ci_high=0.39),
                "treated": ArmStats(
                    entries=120, conversions=31, rate=0.258, ci_low=0.19, ci_high=0.34, lift=None
                ),
            },
            control="control",
            p_value=0.19,
            winner=None,
            warning="small sample: fewer than 30 runs in an arm",
        )
    },
)


def daily(start: datetime | None) -> JourneyStats:
    """The stand-in's numbers for one day: a few entries, varying by the day."""
    day = start.day if start is not None else 1
    return JourneyStats(
        journey_id=JOURNEY, entries=10 + day % 7, conversions=Conversions(count=2 + day % 3)
    )


class StandIn:
    """What `engine.stats` answers, until the real module is merged: FULL for a window
    longer than a day, `daily` for a day; the calls it got."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def journey_stats(
        self,
        db: Any,
        journey_id: str,
        *,
        version: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> JourneyStats:
        self.calls.append(
            {"journey_id": journey_id, "version": version, "start": start, "end": end}
        )
        if start is not None and end is not None and end - start <= timedelta(days=1):
            return daily(start)
        if journey_id != JOURNEY:
            return JourneyStats(journey_id=journey_id)
        return FULL.model_copy(update={"version": version, "window_from": start, "window_to": end})

    def funnel(
        self,
        db: Any,
        journey_id: str,
        steps: list[str],
        *,
        version: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> FunnelStats:
        reached = [STEPS[s].reached if s in STEPS else 0 for s in steps]
        return FunnelStats(
            journey_id=journey_id,
            version=version,
            entries=FULL.entries,
            steps=[
                FunnelStep(
                    step=s,
                    reached=n,
                    rate_from_entry=n / FULL.entries,
                    rate_from_previous=n / (reached[i - 1] or 1) if i else n / FULL.entries,
                )
                for i, (s, n) in enumerate(zip(steps, reached, strict=True))
            ],
        )


def install_stand_in(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    """Put the stand-in in `engine.stats`'s place (its functions, if the module exists)."""
    stand_in = StandIn()
    try:
        import engine.stats as real  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        module = types.ModuleType("engine.stats")
        module.journey_stats = stand_in.journey_stats  # type: ignore[attr-defined]
        module.funnel = stand_in.funnel  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "engine.stats", module)
    else:
        monkeypatch.setattr(real, "journey_stats", stand_in.journey_stats)
        monkeypatch.setattr(real, "funnel", stand_in.funnel)
    return stand_in


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    yield install_stand_in(monkeypatch)


def deploy(db: Engine) -> None:
    catalog = build_catalog(ROOT / "journeys.yaml")
    assert catalog.ok
    deploy_catalog(catalog, engine=db, source_text=(ROOT / "journeys.yaml").read_text())


def overdue_task(db: Engine, *, step: str = "ops_review", hours_late: float = 2.0) -> None:
    now = utcnow()
    with session_scope(db) as session:
        session.add(
            ReviewTask(
                id=f"task-{hours_late}",
                workflow_id=f"wf-{hours_late}",
                run_id=f"run-{hours_late}",
                journey_id=JOURNEY,
                customer_id="cust-1",
                step_id=step,
                visit=1,
                queue="collections",
                title="Grace offer",
                status="open",
                due_at=now - timedelta(hours=hours_late),
            )
        )
        session.commit()


def attr(tag: str, name: str) -> str | None:
    found = re.search(rf'\b{name}="([^"]*)"', tag)
    return html.unescape(found.group(1)) if found else None


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("role", ["admin", "designer", "supervisor", "auditor"])
async def test_the_roles_with_view_stats_open_both_pages(
    database_url: str, db: Engine, stand_in: StandIn, role: str
) -> None:
    deploy(db)
    async with signed_in(database_url, db, role=role, client=NoTemporal()) as http:
        overview = await http.get("/console/stats")
        journey = await http.get(STATS_PAGE)
    assert overview.status_code == 200, overview.text
    assert journey.status_code == 200, journey.text
    assert 'href="/console/stats"' in overview.text  # the navigation's link
    assert f'href="/console/journeys/{JOURNEY}/stats"' in overview.text


async def test_ops_may_not_open_them(database_url: str, db: Engine, stand_in: StandIn) -> None:
    deploy(db)
    async with signed_in(database_url, db, role="ops", client=NoTemporal()) as http:
        overview = await http.get("/console/stats")
        journey = await http.get(STATS_PAGE)
        queue = await http.get("/console/reviews")
    assert overview.status_code == 403 and journey.status_code == 403
    assert 'href="/console/stats"' not in queue.text
    assert stand_in.calls == []


async def test_a_journey_page_shows_the_numbers_it_was_given(
    database_url: str, db: Engine, stand_in: StandIn
) -> None:
    deploy(db)
    async with signed_in(database_url, db, role="designer", client=NoTemporal()) as http:
        page = await http.get(STATS_PAGE, params={"from": "2026-11-01", "to": "2026-11-30"})
    assert page.status_code == 200, page.text
    text = page.text
    window = stand_in.calls[0]
    assert window["start"].isoformat() == "2026-11-01T00:00:00+00:00"
    assert window["end"].isoformat() == "2026-12-01T00:00:00+00:00"  # "to" is included
    assert window["version"] is None

    # The map: every step's counts and every edge's, as the stats said.
    nodes = {attr(tag, "data-step"): tag for tag in re.findall(r'<g class="node"[^>]*>', text)}
    for step, numbers in STEPS.items():
        tag = nodes[step]
        assert attr(tag, "data-reached") == str(numbers.reached), step
        assert attr(tag, "data-waiting") == str(numbers.waiting), step
        assert attr(tag, "data-left") == str(numbers.left), step
        assert (
            f"reached {numbers.reached} · waiting {numbers.waiting} · left {numbers.left}" in text
        )
    edges = {
        (attr(tag, "data-from"), attr(tag, "data-to")): attr(tag, "data-taken")
        for tag in re.findall(r'<g class="edge"[^>]*>', text)
    }
    for source, target, count in EDGES:
        assert edges[(source, target)] == str(count), (source, target)

    headline = re.search(r'<dl class="facts headline".*?</dl>', text, re.S)
    assert headline is not None
    assert '<dd data-field="entries">126</dd>' in headline.group(0)
    assert '<dd data-field="active">54</dd>' in headline.group(0)
    assert "31 (24.6%)" in headline.group(0)

    # Sends: grace_sms fails 6 of 79 (7.6%): above 5%, flagged.
    sms = re.search(r'<tr data-step="grace_sms" data-channel="sms">.*?</tr>', text, re.S)
    assert sms is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", sms.group(0), re.S)
    assert cells[:5] == ["grace_sms", "sms", "79", "70", "6"]
    assert "chip bad" in cells[5] and "7.6%" in cells[5]
    assert cells[6] == "0"  # conversions attributed to the send (none in the stand-in)
    assert "quiet hours 3" in cells[7]
    assert "grace_sms on sms: 6 of 79 sends failed (7.6%)" in text

    review = re.search(r'<table class="stats" id="reviews">.*?</table>', text, re.S)
    assert review is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", review.group(0), re.S)
    assert cells[:5] == ["ops_review", "40", "approve 16 · reject 14", "5", "6"]
    assert cells[5] == "1h30m" or "1h" in cells[5]

    # The experiment and its verdict.
    assert 'data-experiment="holdout"' in text
    assert "No significant difference yet (p = 0.19)" in text
    assert "small sample: fewer than 30 runs in an arm" in text

    # The charts' specs: the funnel along the most taken way, and the per-day trend.
    specs = [html.unescape(s) for s in re.findall(r'data-spec="([^"]*)"', text)]
    assert len(specs) == 2
    assert '"step":"score_risk","reached":120' in specs[0].replace(" ", "") or (
        '"reached":120' in specs[0] and '"step":"score_risk"' in specs[0]
    )
    funnel_rows = re.findall(
        r'<tr data-step="([^"]+)"><td>[^<]*</td><td class="num">(\d+)</td>', text
    )
    assert funnel_rows[:4] == [
        ("score_risk", "120"),
        ("route_by_risk", "120"),
        ("offer_date", "96"),
        ("choose_strategy", "96"),
    ]
    assert '"series":"entries"' in specs[1]


async def test_the_version_selector_and_range_reach_the_numbers(
    database_url: str, db: Engine, stand_in: StandIn
) -> None:
    deploy(db)
    async with signed_in(database_url, db, role="admin", client=NoTemporal()) as http:
        first = await http.get(STATS_PAGE)
        version = re.search(r'<option value="([0-9a-f]+)"', first.text)
        assert version is not None
        stand_in.calls.clear()
        chosen = await http.get(STATS_PAGE, params={"version": version.group(1)})
        unknown = await http.get(STATS_PAGE, params={"version": "nope"})
        bad_date = await http.get(STATS_PAGE, params={"from": "yesterday"})
        nothing = await http.get("/console/journeys/nope/stats")
    assert chosen.status_code == 200
    assert f'<option value="{version.group(1)}" selected>' in chosen.text
    assert {call["version"] for call in stand_in.calls} == {version.group(1)}
    assert unknown.status_code == 404 and bad_date.status_code == 400
    assert nothing.status_code == 404


async def test_the_overview_shows_each_journey_and_the_alerts(
    database_url: str, db: Engine, stand_in: StandIn
) -> None:
    deploy(db)
    overdue_task(db, hours_late=2)
    overdue_task(db, hours_late=5)
    async with signed_in(database_url, db, role="supervisor", client=NoTemporal()) as http:
        page = await http.get("/console/stats")
    assert page.status_code == 200, page.text
    row = re.search(rf'<tr data-journey="{JOURNEY}">.*?</tr>', page.text, re.S)
    assert row is not None
    assert '<td class="num" data-field="entries">126</td>' in row.group(0)
    assert '<td class="num" data-field="conversions">31</td>' in row.group(0)
    assert '<td class="num" data-field="rate">24.6%</td>' in row.group(0)
    assert 'class="chart spark"' in row.group(0)
    assert all(
        j in page.text for j in ('data-journey="onboarding"', 'data-journey="abandoned_cart"')
    )
    alerts = re.findall(r'<div class="banner alert (\w+)"[^>]*>(.*?)</div>', page.text, re.S)
    texts = [(kind, re.sub(r"<[^>]+>", "", body)) for kind, body in alerts]
    assert ("send", f"{JOURNEY} · grace_sms on sms: 6 of 79 sends failed (7.6%)") in texts
    assert ("review", f"{JOURNEY} · ops_review: 2 review tasks past the SLA, still open") in texts
    assert len(texts) == 2  # reminder_email fails none
    # The overview's window: the last 7 days.
    whole = [c for c in stand_in.calls if c["end"] - c["start"] > timedelta(days=1)]
    assert whole and all(c["end"] - c["start"] == timedelta(days=7) for c in whole)


async def test_without_the_stats_module_the_pages_say_so(
    database_url: str, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until `engine.stats` is there (or were it missing from a build): a 503 that says
    why, not an error page; the rest of the console works."""
    monkeypatch.setitem(sys.modules, "engine.stats", None)  # import raises ImportError
    deploy(db)
    async with signed_in(database_url, db, role="admin", client=NoTemporal()) as http:
        overview = await http.get("/console/stats")
        journey = await http.get(STATS_PAGE)
        runs = await http.get("/console/runs")
    assert overview.status_code == 503 and journey.status_code == 503
    assert "this build has no engine.stats" in overview.text
    assert runs.status_code == 200


async def test_the_chart_scripts_are_served_and_the_policy_has_no_eval(
    database_url: str, db: Engine, stand_in: StandIn
) -> None:
    deploy(db)
    async with signed_in(database_url, db, role="designer", client=NoTemporal()) as http:
        page = await http.get(STATS_PAGE)
        scripts = re.findall(r'<script src="([^"]+)"', page.text)
        served = {src: await http.get(src) for src in scripts}
    assert scripts == [
        "/console/static/vendor/vega.min.js",
        "/console/static/vendor/vega-lite.min.js",
        "/console/static/vendor/vega-embed.min.js",
        "/console/static/vendor/vega-interpreter.min.js",
        "/console/static/journey_charts.js",
        "/console/static/console.js",
    ]
    for src, answer in served.items():
        assert answer.status_code == 200, src
        assert answer.headers["content-type"].startswith("text/javascript"), src
    policy = page.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY
    assert "unsafe-eval" not in policy and "unsafe-inline" not in policy
    assert "script-src 'self'" in policy
    assert "<script>" not in page.text and " style=" not in page.text
    assert "http://" not in page.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
