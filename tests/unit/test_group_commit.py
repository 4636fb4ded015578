"""`EventRouter.store`: concurrent requests' events written in one shared transaction
(group commit), each request answered with its own outcome, and one request's bad event
failing that request only."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine

from engine.database import EventRecord, utcnow
from service.router import EventRouter


def _track(customer: str, *, message_id: str | None = None, **properties: Any) -> EventRecord:
    return EventRecord(
        message_id=message_id or uuid.uuid4().hex,
        type="track",
        name="page_viewed",
        customer_id=customer,
        properties=properties,
        timestamp=utcnow(),
    )


def _stored(db: Engine) -> dict[str, str]:
    table = EventRecord.__table__  # type: ignore[attr-defined]
    with db.connect() as connection:
        rows = connection.execute(select(table.c.message_id, table.c.customer_id)).all()
    return {message_id: customer for message_id, customer in rows}


def _commits(db: Engine) -> list[int]:
    counted: list[int] = []
    event.listen(db, "commit", lambda _connection: counted.append(1))
    return counted


async def test_concurrent_requests_share_one_commit(db: Engine) -> None:
    router = EventRouter(db=db, client=None, task_queue="q")
    commits = _commits(db)
    requests = [[_track(f"c{n}"), _track(f"c{n}")] for n in range(20)]

    outcomes = await asyncio.gather(*(router.store(records) for records in requests))

    # Every request was queued before the writer ran: one transaction wrote all 40.
    assert len(commits) == 1
    for records, outcome in zip(requests, outcomes, strict=True):
        assert [r.message_id for r in outcome.stored] == [r.message_id for r in records]
        assert outcome.duplicates == 0
    stored = _stored(db)
    assert len(stored) == 40
    assert stored[requests[7][1].message_id] == "c7"


async def test_a_repeat_across_requests_counts_in_the_later_one(db: Engine) -> None:
    router = EventRouter(db=db, client=None, task_queue="q")
    first, again = _track("a", message_id="m-1"), _track("a", message_id="m-1")

    one, two = await asyncio.gather(router.store([first]), router.store([again, _track("a")]))

    assert [r.message_id for r in one.stored] == ["m-1"]
    assert two.duplicates == 1 and len(two.stored) == 1
    assert len(_stored(db)) == 2


async def test_a_bad_request_fails_alone(db: Engine) -> None:
    router = EventRouter(db=db, client=None, task_queue="q")
    good = [[_track("g1")], [_track("g2")]]
    bad = [_track("b", nested={1, 2})]  # a set: no JSON for it, the insert fails

    outcomes = await asyncio.gather(
        router.store(good[0]), router.store(bad), router.store(good[1]), return_exceptions=True
    )

    assert not isinstance(outcomes[0], BaseException) and len(outcomes[0].stored) == 1
    assert isinstance(outcomes[1], Exception)
    assert not isinstance(outcomes[2], BaseException) and len(outcomes[2].stored) == 1
    # The good requests' events are stored, the bad one's is not.
    assert set(_stored(db)) == {good[0][0].message_id, good[1][0].message_id}


async def test_requests_after_a_write_go_in_the_next_one(db: Engine) -> None:
    router = EventRouter(db=db, client=None, task_queue="q")
    commits = _commits(db)

    first = await router.store([_track("x")])
    later = await asyncio.gather(*(router.store([_track("y")]) for _ in range(5)))

    assert len(first.stored) == 1 and all(len(o.stored) == 1 for o in later)
    assert len(commits) == 2
    table = EventRecord.__table__  # type: ignore[attr-defined]
    with db.connect() as connection:
        assert connection.execute(select(func.count()).select_from(table)).scalar_one() == 6


@pytest.mark.parametrize("size", [999, 1000, 1001])
async def test_a_shared_transaction_holds_at_most_a_thousand_events(db: Engine, size: int) -> None:
    router = EventRouter(db=db, client=None, task_queue="q")
    commits = _commits(db)
    requests = [[_track(f"c{n}") for n in range(size - 1)], [_track("last")]]

    outcomes = await asyncio.gather(*(router.store(records) for records in requests))

    assert [len(o.stored) for o in outcomes] == [size - 1, 1]
    assert len(commits) == (1 if size <= 1000 else 2)
