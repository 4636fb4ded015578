"""A journey's numbers over HTTP: GET /v1/journeys/{id}/stats and /funnel, as JSON and as
CSV, and their 404 and 422 (the counting itself: tests/unit/test_stats.py)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.engine import Engine

from engine.catalog import build_catalog_from_text
from engine.database import PlanVersion, session_scope
from service.api.app import create_app
from tests.api.conftest import AUTH, RunningApi, api_settings, running_api
from tests.unit.journey_docs import journey_doc
from tests.unit.test_stats import _at, _mix

pytestmark = pytest.mark.asyncio(loop_scope="session")

STEPS = """
- {id: ab, split: {a: 50, b: 50}, paths: {a: nudge, b: wait}}
- {id: nudge, send: offer, channel: sms}
- {id: wait, wait: 1d}
- {id: done, exit: done}
"""


def _store_versions(db: Engine) -> None:
    """The journey's plan stored as versions v1 and v2 (the runs of `_mix` name them)."""
    catalog = build_catalog_from_text(journey_doc(STEPS))
    assert catalog.ok, [v.format() for v in catalog.violations]
    plan = catalog.plans["j"]
    with session_scope(db) as session:
        for version in ("v1", "v2"):
            session.add(
                PlanVersion(
                    journey_id="j",
                    version=version,
                    plan_json=plan.model_copy(update={"version": version}).model_dump_json(),
                    source_yaml="",
                    active=version == "v2",
                )
            )


@pytest_asyncio.fixture
async def api(database_url: str, db: Engine) -> AsyncIterator[RunningApi]:
    _store_versions(db)
    _mix(db)
    settings = api_settings(database_url=database_url, task_queue="unused")
    async with running_api(create_app(settings)) as running:
        yield running


async def _get(api: RunningApi, path: str, **params: Any) -> Any:
    return await api.http.get(path, params=params, headers=AUTH)


async def test_stats_as_json_with_the_api_names(api: RunningApi) -> None:
    answer = await _get(api, "/v1/journeys/j/stats", version="v1")

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["journey_id"], body["version"], body["entries"], body["active"]) == (
        "j",
        "v1",
        5,
        2,
    )
    assert body["outcomes"] == {"done": 1, "holdout": 1, "unsubscribed": 1}
    assert body["steps"]["nudge"]["reached"] == 3
    assert {"from": "entry", "to": "ab", "count": 4} in body["edges"]
    assert body["sends"]["nudge"]["email"]["skipped"] == {"fallback": 1, "no_consent": 1}
    assert body["reviews"]["check"]["decided"] == {"approve": 2, "reject": 1}
    assert body["experiments"]["ab"]["a"]["entries"] == 3
    assert body["experiments"]["holdout"]["control_arm"] == "control"


async def test_a_window_counts_the_runs_that_entered_in_it(api: RunningApi) -> None:
    answer = await _get(
        api,
        "/v1/journeys/j/stats",
        **{"from": _at(10).isoformat(), "to": "2026-12-01T11:45:00"},  # no offset: UTC
    )

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["entries"], body["from"], body["to"]) == (
        4,  # r2, r3, r4 of v1 and r6 of v2
        "2026-12-01T10:10:00Z",
        "2026-12-01T11:45:00Z",
    )


async def test_stats_as_csv_one_number_a_row(api: RunningApi) -> None:
    by_query = await _get(api, "/v1/journeys/j/stats", version="v1", format="csv")
    by_accept = await api.http.get(
        "/v1/journeys/j/stats", params={"version": "v1"}, headers={**AUTH, "Accept": "text/csv"}
    )

    assert by_query.status_code == 200, by_query.text
    assert by_query.headers["content-type"].startswith("text/csv")
    assert by_accept.text == by_query.text
    rows = list(csv.reader(io.StringIO(by_query.text)))
    assert rows[0] == ["section", "item", "sub", "metric", "value"]
    assert ["totals", "", "", "entries", "5"] in rows
    assert ["step", "nudge", "", "reached", "3"] in rows
    assert ["edge", "entry", "ab", "count", "4"] in rows
    assert ["send", "nudge", "email", "skipped:no_consent", "1"] in rows
    assert ["review", "check", "", "decided:approve", "2"] in rows
    assert ["experiment", "ab", "a", "entries", "3"] in rows
    assert ["step", "wait", "", "p50_seconds", ""] in rows  # unknown: empty


async def test_the_funnel_as_json_and_csv(api: RunningApi) -> None:
    answer = await _get(api, "/v1/journeys/j/funnel", steps="ab,nudge,done", version="v1")
    as_csv = await _get(api, "/v1/journeys/j/funnel", steps="ab,nudge,done", format="csv")

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["entries"] == 5
    assert [(s["step"], s["reached"]) for s in body["steps"]] == [
        ("ab", 4),
        ("nudge", 3),
        ("done", 1),
    ]
    assert ["funnel", "nudge", "2", "reached", "3"] in list(csv.reader(io.StringIO(as_csv.text)))


async def test_an_unknown_journey_is_a_404_naming_it(api: RunningApi) -> None:
    for path in ("/v1/journeys/nope/stats", "/v1/journeys/nope/funnel?steps=a"):
        answer = await api.http.get(path, headers=AUTH)
        assert answer.status_code == 404, answer.text
        assert "'nope'" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("stats", {"from": "yesterday"}, "from"),
        ("stats", {"to": "2026-13-01"}, "to"),
        ("stats", {"from": "2026-12-02", "to": "2026-12-01"}, "from"),
        ("stats", {"version": "v9"}, "version"),
        ("stats", {"format": "xml"}, "format"),
        ("funnel", {"steps": "ab,nowhere"}, "steps"),
        ("funnel", {"steps": " , "}, "steps"),
        ("funnel", {}, "steps"),
    ],
)
async def test_a_bad_parameter_is_a_422_naming_it(
    api: RunningApi, path: str, params: dict[str, str], field: str
) -> None:
    answer = await _get(api, f"/v1/journeys/j/{path}", **params)

    assert answer.status_code == 422, answer.text
    assert [error["field"] for error in answer.json()["errors"]] == [field]
