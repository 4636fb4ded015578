"""Paced sends as an operator meets them (issue #15, item 5): the SMTP server is down while
50 emails queue on a channel with `rate: 5/s`; when it comes back they all arrive, each
once, at the channel's rate, not as a burst.

Each send is the real send activity, retried the way Temporal retries it: after a
retryable error, wait its `next_retry_delay` and run the same input again (attempt + 1)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.messaging import RATE_LIMITED, MessagingActivities
from engine.database import Delivery, session_scope, upsert_profile
from engine.errors import ErrorType
from engine.payloads import SendMessageInput, SendMessageResult
from tests.channels.test_pacing import worst_window_excess
from tests.database import deploy, fresh_engine
from tests.smtp_server import SmtpServer, free_port

SENDS = 50
RATE, BURST = 5, 5
JITTER = 1.0  # seconds an arrival may lag its promised moment
CATALOGUE = f"""\
version: 1
channels:
  email: {{url: "${{JOURNEYS_EMAIL_URL}}", rate: {RATE}/s, retry: {{initial: 1s, maximum_interval: 2s}}}}
templates:
  notice:
    email: {{subject: "Your notice", text: "Hi {{{{ profile.first_name }}}}"}}
journeys:
  - id: statements
    entry: {{event: statement_ready}}
    steps:
      - {{id: notice, send: notice, channel: email}}
"""
# What the interpreter builds from `retry:` (initial 1s, maximum 2s), shortened for the test.
RETRY = RetryPolicy(initial_interval=timedelta(seconds=0.5), maximum_interval=timedelta(seconds=2))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Engine]:
    engine = fresh_engine(tmp_path)
    deploy(engine, CATALOGUE)
    with session_scope(engine) as session:
        for i in range(SENDS):
            upsert_profile(
                session,
                customer_id=f"c{i}",
                traits={"first_name": f"Customer {i}", "email": f"customer{i}@example.com"},
            )
    yield engine
    engine.dispose()


def request(smtp: SmtpServer, i: int) -> SendMessageInput:
    return SendMessageInput(
        workflow_id=f"journey/statements/c{i}",
        run_id=f"run-{i}",
        journey_id="statements",
        step_id="notice",
        visit=1,
        template="notice",
        forms={"email.subject": "Your notice", "email.text": "Hi {{ profile.first_name }}"},
        context={"customer": {"id": f"c{i}"}, "profile": {}},
        timezone="UTC",
        channel="email",
        channel_url=smtp.url(),
    )


@dataclasses.dataclass
class Retries:
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def run(self, activities: MessagingActivities, send: SendMessageInput) -> SendMessageResult:
        """The activity until it completes, retried as Temporal would."""
        environment = ActivityEnvironment()
        for attempt in range(1, 200):
            environment.info = dataclasses.replace(
                environment.info, attempt=attempt, retry_policy=RETRY
            )
            try:
                result: SendMessageResult = environment.run(activities.send_message, send)
                return result
            except ApplicationError as error:
                assert not error.non_retryable, error
                assert error.next_retry_delay is not None, error
                with self.lock:
                    self.errors[str(error.type)] += 1
                time.sleep(error.next_retry_delay.total_seconds())
        raise AssertionError("never sent")


@pytest.mark.slow  # a real outage and a drain at 5/s: about 12 s
def test_a_backlog_after_an_smtp_outage_drains_at_the_channel_rate_exactly_once(
    db: Engine,
) -> None:
    smtp = SmtpServer(port=free_port())  # down: nothing listens on its port yet
    arrivals: list[float] = []

    def arrived(_message: EmailMessage) -> bool:
        arrivals.append(time.monotonic())
        return False  # keep being called

    smtp.mailbox.on_data = arrived
    activities = MessagingActivities(db=db)
    retries = Retries()
    with ThreadPoolExecutor(max_workers=SENDS) as pool:
        futures = [pool.submit(retries.run, activities, request(smtp, i)) for i in range(SENDS)]
        time.sleep(2.0)  # the outage
        outage = dict(retries.errors)
        smtp.start()
        try:
            results = [future.result(timeout=40) for future in futures]
        finally:
            smtp.stop()

    # Everything arrived, each message once.
    assert [r.status for r in results] == ["sent"] * SENDS
    assert smtp.mailbox.transactions == SENDS
    assert sorted(str(m["To"]) for m in smtp.mailbox.messages) == sorted(
        f"customer{i}@example.com" for i in range(SENDS)
    )
    # At the channel's rate. The bucket promises each send a moment; the mail reaches the
    # server a little after it (an SMTP conversation, a busy machine), and late ones can
    # bunch up with the next. So: in any window of w seconds at most burst + rate * (w +
    # JITTER) arrive (a burst with no pacing puts all 50 within about a second: 5 + 5 * 2
    # is 15), and the backlog is spread over at least (sends - 2 * burst) / rate seconds.
    assert worst_window_excess(sorted(arrivals), RATE) <= BURST + RATE * JITTER
    assert max(arrivals) - min(arrivals) >= (SENDS - 2 * BURST) / RATE
    # Even the failing calls of the outage were paced (2 s, tokens promised up to 1 s
    # ahead), and the backlog waited on the bucket rather than on the provider.
    assert 0 < outage.get(ErrorType.PROVIDER_UNAVAILABLE, 0) <= BURST + RATE * 3
    assert outage.get(RATE_LIMITED, 0) > 0
    # A wait for the rate is no delivery attempt: a row counts its provider calls only.
    with Session(db) as session:
        rows = session.exec(select(Delivery)).all()
    assert {row.status for row in rows} == {"sent"}
    assert (
        sum(row.attempts for row in rows) == SENDS + retries.errors[ErrorType.PROVIDER_UNAVAILABLE]
    )
