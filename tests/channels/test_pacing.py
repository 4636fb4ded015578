"""A channel's token bucket as workers share it: two engines on one SQLite file, taking
tokens from many threads at once, never let out more than the rate allows."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from channels.pacing import take_token
from engine.database import ChannelRate, make_engine
from tests.database import database_url, deploy, fresh_engine

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def set_rate(
    db: Engine, channel: str, per_second: float, burst: int, updated_at: datetime = T0
) -> None:
    with Session(db) as session:
        session.add(
            ChannelRate(
                channel=channel,
                per_second=per_second,
                burst=burst,
                tokens=burst,
                updated_at=updated_at,
            )
        )
        session.commit()


def most_in_a_window(moments: list[float], width: float) -> int:
    ordered = sorted(moments)
    start, most = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= width:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_a_full_bucket_lets_out_its_burst_then_promises_one_moment_per_token(
    tmp_path: Path,
) -> None:
    db = fresh_engine(tmp_path)
    set_rate(db, "email", per_second=4.0, burst=2)
    answers = [take_token(db, channel="email", now=T0) for _ in range(7)]
    assert [a.granted for a in answers] == [True] * 6 + [False]
    # Two at once, then one every 1/4 s up to a second ahead; the seventh must come back.
    assert [a.wait for a in answers[:6]] == pytest.approx([0, 0, 0.25, 0.5, 0.75, 1.0])
    assert answers[6].wait == pytest.approx(0.25)
    # A quarter of a second later, exactly one more moment can be promised.
    later = [take_token(db, channel="email", now=at(0.25)) for _ in range(2)]
    assert [(a.granted, a.wait) for a in later] == [(True, pytest.approx(1.0)), (False, 0.25)]
    db.dispose()


def test_an_idle_bucket_refills_to_its_burst_and_no_further(tmp_path: Path) -> None:
    db = fresh_engine(tmp_path)
    set_rate(db, "sms", per_second=1.0, burst=3)
    for _ in range(3):
        take_token(db, channel="sms", now=T0, max_wait=0)
    waits = [take_token(db, channel="sms", now=at(3600), max_wait=0) for _ in range(4)]
    assert [w.granted for w in waits] == [True, True, True, False]
    db.dispose()


def test_a_channel_nobody_deployed_gets_its_default_rate_and_deploy_sets_the_catalogues(
    tmp_path: Path,
) -> None:
    db = fresh_engine(tmp_path)
    assert take_token(db, channel="push", now=T0).per_second == 50.0
    assert take_token(db, channel="ops", now=T0).per_second == 10.0
    deploy(
        db,
        "version: 1\n"
        "channels:\n"
        "  push: {url: 'ntfy://push.example', rate: 600/m}\n"
        "templates:\n"
        "  hi: {push: 'Hi'}\n"
        "journeys:\n"
        "  - id: j\n"
        "    entry: {event: e}\n"
        "    steps:\n"
        "      - {id: s, send: hi, channel: push}\n",
    )
    with Session(db) as session:
        row = session.get(ChannelRate, "push")
        assert row is not None
        assert (row.per_second, row.burst) == (10.0, 10)
    db.dispose()


@pytest.mark.slow  # in `make test`; over 2 s, out of `make test-fast`
def test_two_engines_taking_tokens_concurrently_never_exceed_the_rate(tmp_path: Path) -> None:
    """Two workers (two engines, each its own connection pool), four threads each, take
    tokens for about two seconds; every promised moment is recorded. In any one second
    at most rate + burst moments fall, and the promised moments after the burst are at
    least 1/rate apart."""
    rate, burst = 20.0, 5
    first = fresh_engine(tmp_path)
    second = make_engine(database_url(tmp_path))
    start = time.time()
    set_rate(
        first, "email", per_second=rate, burst=burst, updated_at=datetime.fromtimestamp(start, UTC)
    )
    promised: list[float] = []
    lock = threading.Lock()
    deadline = time.time() + 2.0

    def worker(db: Engine) -> None:
        while (now := time.time()) < deadline:
            pace = take_token(db, channel="email", now=datetime.fromtimestamp(now, UTC))
            if pace.granted:
                with lock:
                    promised.append(now + pace.wait)
            else:
                time.sleep(pace.wait)

    threads = [threading.Thread(target=worker, args=(db,)) for db in (first, second) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first.dispose()
    second.dispose()

    span = max(promised) - min(promised)
    assert len(promised) >= 30  # the bucket was busy: the two engines really contended
    assert len(promised) <= burst + rate * span + 1
    assert most_in_a_window(promised, 1.0) <= rate + burst
    # The bucket's law: by any moment t, at most burst + rate * (t - start) tokens were
    # promised (a full bucket at `start`, refilling at the rate). Under load the threads
    # start late, so more than `burst` may go at once: what had refilled meanwhile.
    ordered = sorted(promised)
    for count, moment in enumerate(ordered, start=1):
        assert count <= burst + rate * (moment - start) + 1e-6, (count, moment - start)
    # And the same law in every window, however short: between any two promised moments
    # a and b (both counted) at most burst + rate * (b - a) were promised. A stall (a busy
    # machine) lets the bucket refill, so two moments may be closer than 1/rate; but no
    # run of them ever beats the rate by more than the bucket holds.
    assert worst_window_excess(ordered, rate) <= burst + 1e-3  # clocks kept to the microsecond


def worst_window_excess(ordered: list[float], rate: float) -> float:
    """The most, over every window [ordered[i], ordered[j]], of the moments in it less
    what the rate alone allows in it: never more than the burst for a token bucket."""
    return max(
        (j - i + 1) - rate * (ordered[j] - ordered[i])
        for i in range(len(ordered))
        for j in range(i, len(ordered))
    )
