"""A journey's numbers (`engine.stats`) over hand-built runs on a real database: runs rows,
path entries written as the engine writes them (`write_path`, which keeps the rollup),
review tasks; exact numbers expected (times within the histogram's 9.05%)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine

from engine.database import ReviewTask, Run, RunArm, StepRollup, session_scope
from engine.payloads import PathEntry
from engine.run_path import write_path
from engine.stats import funnel, journey_stats
from engine.step_rollup import Key, backfill, path_counts, quantile, time_bucket
from tests.database import fresh_engine

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def _at(minutes: float, seconds: float = 0) -> datetime:
    return T0 + timedelta(minutes=minutes, seconds=seconds)


def _e(step: str, type_: str, at: datetime, outcome: str | None = None, **detail: Any) -> PathEntry:
    return PathEntry(step=step, type=type_, at=at, outcome=outcome, detail=detail)


def _run(
    db: Engine,
    run_id: str,
    started: datetime,
    path: list[PathEntry],
    *,
    status: str = "running",
    step: str | None = None,
    outcome: str | None = None,
    version: str = "v1",
    holdout: bool = False,
) -> None:
    with session_scope(db) as session:
        session.add(
            Run(
                run_id=run_id,
                workflow_id=f"journey/j/{run_id}",
                journey_id="j",
                version=version,
                customer_id=f"c-{run_id}",
                status=status,
                step=step,
                outcome=outcome,
                holdout=holdout,
                started_at=started,
            )
        )
        session.flush()
        write_path(session.connection(), run_id=run_id, start=0, entries=path)
        for entry in path:  # as `activities.runs.upsert_run` writes a run's arms
            if entry.type == "split":
                session.add(RunArm(run_id=run_id, step_id=entry.step, arm=entry.detail["arm"]))


def _mix(db: Engine) -> None:
    """Five runs of v1 and one of v2:

    r1 10:05 completed at done: entry, ab(a), nudge sms sent (after 10 s), done (60 s)
    r2 10:20 running at wait:   entry, ab(b), wait
    r3 11:30 exited at nudge:   entry, ab(a), nudge email no_consent, nudge sms sent (fallback)
    r4 11:40 running at nudge:  entry, ab(a), nudge sms deferred by quiet hours
    r5 12:10 completed, holdout: entry, holdout
    r6 10:30 v2 running at wait: entry, ab(b), wait
    """
    s = 0.0
    _run(
        db,
        "r1",
        _at(5),
        [
            _e("entry", "entry", _at(5)),
            _e("ab", "split", _at(5, 1), arm="a"),
            _e("nudge", "send", _at(5, 11), "sent", channel="sms", reason=None),
            _e("done", "exit", _at(6, 11), "done"),
            _e("end", "completed", _at(6, 11), "done"),
        ],
        status="completed",
        step="done",
        outcome="done",
    )
    _run(
        db,
        "r2",
        _at(20),
        [
            _e("entry", "entry", _at(20)),
            _e("ab", "split", _at(20, 2), arm="b"),
            _e("wait", "wait", _at(20, 2)),
        ],
        step="wait",
    )
    _run(
        db,
        "r3",
        _at(90),
        [
            _e("entry", "entry", _at(90)),
            _e("ab", "split", _at(90, 1), arm="a"),
            _e("nudge", "send", _at(90, 3), "no_consent", channel="email", reason="opted out"),
            _e("nudge", "send", _at(90, 4), "sent", channel="sms"),
            _e("end", "exited", _at(91, 4), "unsubscribed"),
        ],
        status="exited",
        step="nudge",
        outcome="unsubscribed",
    )
    _run(
        db,
        "r4",
        _at(100),
        [
            _e("entry", "entry", _at(100)),
            _e("ab", "split", _at(100, 1), arm="a"),
            _e(
                "nudge",
                "send",
                _at(100, 5 + s),
                "deferred",
                channel="sms",
                reason="quiet hours 21:00-08:00 in UTC",
            ),
        ],
        step="nudge",
    )
    _run(
        db,
        "r5",
        _at(130),
        [
            _e("entry", "entry", _at(130)),
            _e("holdout", "holdout", _at(130), "control"),
            _e("end", "completed", _at(130, 30), "holdout"),
        ],
        status="completed",
        step="holdout",
        outcome="holdout",
        holdout=True,
    )
    _run(
        db,
        "r6",
        _at(30),
        [
            _e("entry", "entry", _at(30)),
            _e("ab", "split", _at(30, 1), arm="b"),
            _e("wait", "wait", _at(30, 1)),
        ],
        version="v2",
        step="wait",
    )
    with session_scope(db) as session:
        for n, (run_id, status, decision, escalated, minutes) in enumerate(
            [
                ("r1", "decided", "approve", False, 10),
                ("r2", "decided", "reject", True, 30),
                ("r3", "expired", None, True, None),
                ("r4", "open", None, False, None),
                ("r1", "decided", "approve", False, 50),
            ]
        ):
            created = _at(200)
            session.add(
                ReviewTask(
                    id=f"t{n}",
                    workflow_id=f"journey/j/{run_id}",
                    run_id=run_id,
                    journey_id="j",
                    customer_id=f"c-{run_id}",
                    step_id="check",
                    visit=n,
                    queue="q",
                    title="t",
                    status=status,
                    escalated=escalated,
                    decision=decision,
                    created_at=created,
                    decided_at=created + timedelta(minutes=minutes) if minutes else None,
                )
            )


@pytest.fixture
def mixed(tmp_path: Path) -> Engine:
    db = fresh_engine(tmp_path)
    _mix(db)
    return db


def _near(value: float | None, expected: float) -> bool:
    assert value is not None
    return abs(value - expected) <= 0.0906 * expected


def test_the_numbers_of_a_known_mix_of_runs(mixed: Engine) -> None:
    stats = journey_stats(mixed, "j", version="v1")

    assert stats.entries == 5
    assert stats.active == 2
    assert stats.outcomes == {"done": 1, "holdout": 1, "unsubscribed": 1}
    assert {name: (s.reached, s.waiting, s.left) for name, s in stats.steps.items()} == {
        "ab": (4, 0, 0),
        "done": (1, 0, 1),
        "entry": (5, 0, 0),
        "holdout": (1, 0, 1),
        "nudge": (3, 1, 1),
        "wait": (1, 1, 0),
    }
    assert [(e.source, e.target, e.count) for e in stats.edges] == [
        ("ab", "nudge", 3),
        ("ab", "wait", 1),
        ("entry", "ab", 4),
        ("entry", "holdout", 1),
        ("nudge", "done", 1),
    ]
    # Time at nudge: 60 s (r1), 1 s (r3 email -> sms), 60 s (r3 sms -> end).
    nudge = stats.steps["nudge"]
    assert _near(nudge.p50_seconds, 60) and _near(nudge.p90_seconds, 60)
    assert _near(stats.steps["holdout"].p50_seconds, 30)
    assert stats.steps["wait"].p50_seconds is None  # still there: no time spent yet
    sends = stats.sends["nudge"]
    assert sends["sms"].model_dump() == {
        "attempted": 2,
        "sent": 2,
        "failed": 0,
        "skipped": {"quiet_hours": 1},
        "conversions": 0,  # this mix has no goal
    }
    assert sends["email"].model_dump() == {
        "attempted": 1,
        "sent": 0,
        "failed": 0,
        "skipped": {"fallback": 1, "no_consent": 1},
        "conversions": 0,
    }
    check = stats.reviews["check"]
    assert (check.opened, check.decided, check.escalated, check.timed_out) == (
        5,
        {"approve": 2, "reject": 1},
        2,
        1,
    )
    assert (check.p50_seconds_to_decision, check.p90_seconds_to_decision) == (1800.0, 3000.0)
    ab = stats.experiments["ab"]
    assert {arm: a.entries for arm, a in ab.arms.items()} == {"a": 3, "b": 1}
    holdout = stats.experiments["holdout"]
    assert {arm: a.entries for arm, a in holdout.arms.items()} == {"control": 1, "treated": 4}
    assert holdout.control == "control"


def test_all_versions_and_a_json_body_with_the_api_names(mixed: Engine) -> None:
    stats = journey_stats(mixed, "j")

    assert stats.entries == 6
    assert stats.steps["wait"].reached == 2
    assert stats.experiments["ab"].arms["b"].entries == 2
    body = stats.model_dump(mode="json", by_alias=True)
    assert body["from"] is None and body["edges"][0].keys() == {"from", "to", "count"}
    assert body["experiments"]["ab"]["a"]["entries"] == 3  # arms flat


def test_windows_count_the_runs_that_entered_in_them_to_the_second(mixed: Engine) -> None:
    # 10:10 to 11:45: r2, r3, r4 (not r1 at 10:05, nor r5 at 12:10); within hours
    # (10:10-11:00 and 11:00-11:45 from the rows: no whole hour).
    inside = journey_stats(mixed, "j", version="v1", start=_at(10), end=_at(105))
    assert inside.entries == 3
    assert inside.steps["entry"].reached == 3
    assert inside.steps["nudge"].reached == 2
    # 10:10 to 12:30: whole hour 11 from the rollup, the part-hours from the rows.
    wider = journey_stats(mixed, "j", version="v1", start=_at(10), end=_at(150))
    assert wider.entries == 4
    assert wider.steps["entry"].reached == 4
    assert wider.steps["holdout"].reached == 1
    assert {e.source + ">" + e.target: e.count for e in wider.edges}["ab>nudge"] == 2
    # Whole hours only: 10:00 to 12:00.
    hours = journey_stats(mixed, "j", version="v1", start=_at(0), end=_at(120))
    assert (hours.entries, hours.steps["entry"].reached) == (4, 4)
    empty = journey_stats(mixed, "j", start=_at(500), end=_at(600))
    assert (empty.entries, empty.steps, empty.edges) == (0, {}, [])


def _rollup(db: Engine) -> Counter[Key]:
    with db.connect() as connection:
        rows = connection.execute(
            select(StepRollup.step, StepRollup.metric, StepRollup.bucket, StepRollup.count)
        ).all()
    counts: Counter[Key] = Counter()
    for step, metric, bucket, count in rows:
        counts[(step, metric, bucket)] += count
    return +counts


def test_the_rollup_counts_what_the_rows_count_and_the_backfill_agrees(mixed: Engine) -> None:
    kept = _rollup(mixed)
    with mixed.connect() as connection:
        counted = path_counts(
            connection, journey_id="j", version=None, start=_at(-600), end=_at(600)
        )
    assert kept == +counted
    with mixed.begin() as connection:
        connection.execute(delete(StepRollup))
        assert backfill(connection) == 6
    assert _rollup(mixed) == kept


def test_a_retried_write_is_counted_once_and_a_replaced_entry_swaps_its_counts(
    tmp_path: Path,
) -> None:
    db = fresh_engine(tmp_path)
    path = [
        _e("entry", "entry", _at(0)),
        _e("nudge", "send", _at(0, 5), "sent", channel="sms"),
        _e("end", "completed", _at(0, 5), "done"),
    ]
    _run(db, "r", _at(0), path, status="completed", step="nudge", outcome="done")
    before = _rollup(db)
    with db.begin() as connection:  # the same record again, and its tail again
        write_path(connection, run_id="r", start=0, entries=path)
        write_path(connection, run_id="r", start=1, entries=path[1:])
    assert _rollup(db) == before
    with db.begin() as connection:  # the run records its own end over the send's
        write_path(
            connection,
            run_id="r",
            start=1,
            entries=[
                path[1],
                _e("bye", "exit", _at(0, 9), "left"),
                _e("end", "exited", _at(0, 9), "left"),
            ],
        )
    after = _rollup(db)
    assert after[("bye", "reached", "")] == 1
    assert after[("nudge", "edge", "bye")] == 1
    assert after[("nudge", "send", "sms|sent")] == 1
    assert after[("entry", "reached", "")] == 1
    assert after[("nudge", "time", str(time_bucket(0)))] == 0  # the old 0 s to the end
    assert after[("nudge", "time", str(time_bucket(4)))] == 1
    with db.connect() as connection:
        assert after == +path_counts(
            connection, journey_id="j", version=None, start=_at(-1), end=_at(1)
        )
        assert connection.execute(select(func.count()).select_from(StepRollup)).scalar_one()


def test_a_step_reached_again_is_one_run_and_taken_back_when_replaced(tmp_path: Path) -> None:
    db = fresh_engine(tmp_path)
    _run(db, "r", _at(0), [_e("entry", "entry", _at(0)), _e("w", "wait", _at(0, 1))])
    with db.begin() as connection:
        write_path(connection, run_id="r", start=2, entries=[_e("x", "branch", _at(0, 2))])
        write_path(connection, run_id="r", start=3, entries=[_e("w", "wait", _at(0, 3))])
    counts = _rollup(db)
    assert (counts[("w", "reached", "")], counts[("x", "reached", "")]) == (1, 1)
    with db.begin() as connection:  # position 2 written with another step
        write_path(connection, run_id="r", start=2, entries=[_e("y", "branch", _at(0, 2))])
    counts = _rollup(db)
    assert (counts[("x", "reached", "")], counts[("y", "reached", "")]) == (0, 1)
    assert (counts[("w", "edge", "x")], counts[("w", "edge", "y")]) == (0, 1)


def test_an_exit_step_is_reached_through_the_end_entry_that_follows(tmp_path: Path) -> None:
    """The interpreter records no entry for an `exit:` step: the end entry follows the step
    before it, and the runs row names the exit step. Its move and its reach count, as
    the rows of a run written in two records, and as the backfill reads them."""
    db = fresh_engine(tmp_path)
    _run(db, "r", _at(0), [_e("entry", "entry", _at(0)), _e("ab", "split", _at(0, 1), arm="a")])
    with session_scope(db) as session:
        run = session.get(Run, "r")
        assert run is not None
        run.status, run.step, run.outcome = "completed", "done", "offered"
    with db.begin() as connection:
        write_path(connection, run_id="r", start=2, entries=[_e("end", "completed", _at(0, 2))])
    counts = _rollup(db)
    assert counts[("done", "reached", "")] == 1 and counts[("ab", "edge", "done")] == 1
    stats = journey_stats(db, "j")
    assert stats.steps["done"].reached == 1 and stats.steps["done"].left == 1
    assert {(e.source, e.target): e.count for e in stats.edges}[("ab", "done")] == 1
    with db.begin() as connection:  # the backfill counts the same from the rows
        connection.execute(StepRollup.__table__.delete())  # type: ignore[attr-defined]
        backfill(connection)
    assert _rollup(db) == counts


def test_the_funnel_counts_steps_in_path_order(mixed: Engine) -> None:
    result = funnel(mixed, "j", ["ab", "nudge", "done"], version="v1")
    assert result.entries == 5
    assert [(s.step, s.reached) for s in result.steps] == [("ab", 4), ("nudge", 3), ("done", 1)]
    assert result.steps[1].rate_from_entry == 0.6
    assert result.steps[2].rate_from_previous == round(1 / 3, 4)
    backwards = funnel(mixed, "j", ["nudge", "ab"], version="v1")
    assert [s.reached for s in backwards.steps] == [3, 0]


def test_quantiles_read_from_the_histogram_are_within_the_bucket_error() -> None:
    for seconds in (0.0005, 0.002, 1, 59, 3600, 86400 * 30):
        value = quantile({time_bucket(seconds): 1}, 0.5)
        assert value is not None
        assert value == 0 if seconds < 0.001 else abs(value - seconds) <= 0.0906 * seconds
    assert quantile({}, 0.5) is None
    histogram = {time_bucket(1): 9, time_bucket(100): 1}
    assert _near(quantile(histogram, 0.5), 1) and _near(quantile(histogram, 0.9), 1)
    assert _near(quantile(histogram, 0.95), 100)


def test_revision_0011_fills_the_rollup_from_the_rows_stored_before_it(tmp_path: Path) -> None:
    from alembic import command

    from engine.migrate import migration_config, upgrade

    db = fresh_engine(tmp_path)
    _mix(db)
    kept = _rollup(db)
    with db.connect() as connection:
        command.downgrade(migration_config(connection), "0010")
        connection.commit()
    upgrade(db)  # 0011 again: the table made anew, filled from run_path

    assert _rollup(db) == kept
    assert journey_stats(db, "j", version="v1").steps["nudge"].reached == 3
