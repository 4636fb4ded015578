"""A run's path as `run_path` rows: records carry only the tail not recorded yet, and
retried or overlapping tails change nothing; a review case reads the run's recent path
back; a send that ends the run adds its entries after the tail it carried.

On SQLite, or PostgreSQL when JOURNEYS_TEST_DATABASE_URL is set (tests/database.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import col

from activities.reviews import CASE_PATH_ENTRIES, ReviewActivities
from activities.runs import upsert_run
from engine.database import ReviewTask, Run, RunArm, RunPathEntry, session_scope
from engine.payloads import (
    OpenReviewInput,
    PathEntry,
    RecordRunInput,
    SendMessageResult,
    delivered_record,
    send_path_entry,
)
from engine.run_path import last_path, path_length, read_path, read_path_page

START = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def entries(first: int, count: int) -> list[PathEntry]:
    """Entries at positions ``first`` on, each naming its position (step ``s<n>``)."""
    return [
        PathEntry(
            step=f"s{n}",
            type="wait",
            at=START + timedelta(seconds=n),
            outcome="received",
            detail={"n": n},
        )
        for n in range(first, first + count)
    ]


def record(first: int, count: int, **fields: Any) -> RecordRunInput:
    return RecordRunInput(
        run_id="run-1",
        workflow_id="journey/recover/c1",
        journey_id="recover",
        version="v1",
        customer_id="c1",
        path=entries(first, count),
        path_start=first,
        **fields,
    )


def stored_steps(db: Engine, run_id: str = "run-1") -> list[str]:
    with session_scope(db) as session:
        return [entry["step"] for entry in read_path(session, run_id)]


def test_tails_recorded_one_after_another_make_the_whole_path(db: Engine) -> None:
    with session_scope(db) as session:
        upsert_run(session, record(0, 3))
    with session_scope(db) as session:
        upsert_run(session, record(3, 2))

    assert stored_steps(db) == ["s0", "s1", "s2", "s3", "s4"]
    with session_scope(db) as session:
        run = session.get(Run, "run-1")
        assert run is not None and run.path == []  # the JSON column is no longer written
        [entry] = read_path(session, "run-1", after=3)
    assert entry == {
        "step": "s4",
        "type": "wait",
        "at": "2025-01-02T03:04:09Z",
        "outcome": "received",
        "detail": {"n": 4},
    }


def test_a_retried_record_or_an_overlapping_tail_adds_no_entry_twice(db: Engine) -> None:
    with session_scope(db) as session:
        upsert_run(session, record(0, 4))
    with session_scope(db) as session:
        upsert_run(session, record(0, 4))  # the same record, retried
        upsert_run(session, record(2, 5))  # a tail that starts inside what is stored
        upsert_run(session, record(0, 7))  # the whole path, as an older worker sends it

    assert stored_steps(db) == [f"s{n}" for n in range(7)]
    with session_scope(db) as session:
        count = session.connection().execute(select(func.count()).select_from(RunPathEntry))
        assert count.scalar_one() == 7
        assert path_length(session, "run-1") == 7


def test_a_record_sets_the_generation_now_running(db: Engine) -> None:
    with session_scope(db) as session:
        upsert_run(session, record(0, 1))  # an older worker: no current_run_id
        first = session.get(Run, "run-1")
        assert first is not None and first.current_run_id == "run-1"
    with session_scope(db) as session:
        upsert_run(session, record(1, 1, current_run_id="run-1-gen-2"))
    with session_scope(db) as session:
        run = session.get(Run, "run-1")
        assert run is not None and run.current_run_id == "run-1-gen-2"


def test_split_arms_are_read_from_the_tail(db: Engine) -> None:
    split = PathEntry(step="ab", type="split", at=START, outcome="b", detail={"arm": "b"})
    with session_scope(db) as session:
        upsert_run(session, record(0, 2))
        upsert_run(session, record(2, 0).model_copy(update={"path": [split]}))
    with session_scope(db) as session:
        arms = session.connection().execute(select(col(RunArm.step_id), col(RunArm.arm))).all()
    assert [tuple(arm) for arm in arms] == [("ab", "b")]
    assert stored_steps(db) == ["s0", "s1", "ab"]


def test_a_send_that_ends_the_run_adds_the_send_and_the_end_after_its_tail(db: Engine) -> None:
    with session_scope(db) as session:
        upsert_run(session, record(0, 3))
    finish = record(3, 1, status="completed", outcome="reminded")
    sent = SendMessageResult(status="sent", channel="sms")
    at = START + timedelta(minutes=5)
    with session_scope(db) as session:
        upsert_run(
            session, delivered_record(finish, send_path_entry("nudge", "t", "sms", sent, at))
        )
        upsert_run(
            session, delivered_record(finish, send_path_entry("nudge", "t", "sms", sent, at))
        )

    with session_scope(db) as session:
        tail = [(e["step"], e["type"], e["outcome"]) for e in read_path(session, "run-1", after=2)]
        run = session.get(Run, "run-1")
    assert tail == [
        ("s3", "wait", "received"),
        ("nudge", "send", "sent"),
        ("end", "completed", "reminded"),
    ]
    assert run is not None and (run.status, run.outcome) == ("completed", "reminded")


def test_a_path_is_read_in_pages(db: Engine) -> None:
    with session_scope(db) as session:
        for first in range(0, 25, 10):
            upsert_run(session, record(first, 10 if first < 20 else 5))
    with session_scope(db) as session:
        first = read_path_page(session, "run-1", limit=10)
        middle = read_path_page(session, "run-1", after=first.next_after or 0, limit=10)
        last = read_path_page(session, "run-1", after=middle.next_after or 0, limit=10)
        recent = last_path(session, "run-1", 3)
        unknown = read_path_page(session, "no-such-run", limit=10)

    assert (first.first, first.next_after, len(first.entries)) == (0, 9, 10)
    assert (middle.first, middle.next_after) == (10, 19)
    assert (last.first, last.next_after, len(last.entries)) == (20, None, 5)
    assert [e["step"] for e in recent] == ["s22", "s23", "s24"]
    assert (unknown.entries, unknown.first, unknown.next_after) == ([], None, None)


def review_request(first: int, count: int) -> OpenReviewInput:
    return OpenReviewInput(
        workflow_id="journey/recover/c1",
        run_id="run-1",
        journey_id="recover",
        customer_id="c1",
        step_id="ops_review",
        visit=1,
        queue="collections",
        title="Review {{ customer.id }}",
        decisions=["approve", "reject"],
        context={"customer": {"id": "c1"}, "vars": {}, "scores": {}},
        path=entries(first, count),
        path_start=first,
    )


def test_a_review_case_holds_the_runs_last_entries_its_own_tail_included(db: Engine) -> None:
    with session_scope(db) as session:
        for first in range(0, 500, 100):
            upsert_run(session, record(first, 100))
    reviews = ReviewActivities(db=db)

    task_id = reviews.open_review_task(review_request(500, 3))
    again = reviews.open_review_task(review_request(500, 3))  # a retried attempt

    assert again == task_id
    with session_scope(db) as session:
        task = session.get(ReviewTask, task_id)
        assert task is not None
        assert path_length(session, "run-1") == 503
    path = task.case["path"]
    assert len(path) == CASE_PATH_ENTRIES == 200
    assert [path[0]["step"], path[-1]["step"]] == ["s303", "s502"]
    assert [int(e["step"][1:]) for e in path] == list(range(303, 503))


def test_a_run_that_ended_otherwise_records_its_end_over_the_sends(db: Engine) -> None:
    """The send wrote the run's end as if it delivered last; an exit event came while it
    was out, and the run records the path it really took over those positions."""
    finish = record(0, 2, status="completed", outcome="completed")
    sent = SendMessageResult(status="sent", channel="sms")
    send = send_path_entry("nudge", "t", "sms", sent, START + timedelta(minutes=1))
    with session_scope(db) as session:
        upsert_run(session, delivered_record(finish, send))
    exit_entry = PathEntry(step="nudge", type="exit", at=send.at, outcome="recovered")
    end = PathEntry(step="end", type="exited", at=send.at, outcome="recovered")
    exited = record(2, 0, status="exited", outcome="recovered")
    with session_scope(db) as session:
        upsert_run(session, exited.model_copy(update={"path": [send, exit_entry, end]}))

    with session_scope(db) as session:
        path = [(e["step"], e["type"], e["outcome"]) for e in read_path(session, "run-1")]
        run = session.get(Run, "run-1")
    assert path == [
        ("s0", "wait", "received"),
        ("s1", "wait", "received"),
        ("nudge", "send", "sent"),
        ("nudge", "exit", "recovered"),
        ("end", "exited", "recovered"),
    ]
    assert run is not None and (run.status, run.outcome) == ("exited", "recovered")
