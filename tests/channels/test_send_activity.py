"""The send activity as Temporal retries it: the same input twice (a worker that died after
marking the delivery, or a retry after a lost completion) sends once and answers the same."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from temporalio.testing import ActivityEnvironment

from activities.messaging import MessagingActivities
from engine.database import Delivery, session_scope, upsert_profile
from engine.payloads import SendMessageInput
from tests.database import fresh_engine
from tests.smtp_server import SmtpServer, free_port

RECIPIENT = "dana@example.com"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Engine]:
    engine = fresh_engine(tmp_path)
    with session_scope(engine) as session:
        upsert_profile(session, customer_id="c9", traits={"first_name": "Dana", "email": RECIPIENT})
    yield engine
    engine.dispose()


def request(smtp: SmtpServer, *, visit: int = 1) -> SendMessageInput:
    return SendMessageInput(
        workflow_id="journey/statements/c9",
        run_id="run-1",
        journey_id="statements",
        step_id="notice",
        visit=visit,
        template="notice",
        forms={"email.subject": "Hello {{ profile.first_name }}", "email.text": "Your notice."},
        context={"customer": {"id": "c9"}, "profile": {}},
        timezone="UTC",
        channel="email",
        channel_url=smtp.url(),
    )


def test_a_retried_send_after_the_mark_returns_the_earlier_delivery(
    smtp: SmtpServer, db: Engine
) -> None:
    activities = MessagingActivities(db=db)
    environment = ActivityEnvironment()
    first = environment.run(activities.send_message, request(smtp))
    again = environment.run(activities.send_message, request(smtp))
    assert first.status == again.status == "sent"
    assert again.delivery_id == first.delivery_id
    assert [mail["Subject"] for mail in smtp.mailbox.messages] == ["Hello Dana"]
    assert smtp.mailbox.transactions == 1
    with Session(db) as session:
        [row] = session.exec(select(Delivery)).all()
    assert (row.status, row.attempts, row.recipient_masked) == ("sent", 1, "d***@example.com")


def test_a_later_visit_of_the_same_step_is_a_new_message(smtp: SmtpServer, db: Engine) -> None:
    activities = MessagingActivities(db=db)
    environment = ActivityEnvironment()
    environment.run(activities.send_message, request(smtp, visit=1))
    environment.run(activities.send_message, request(smtp, visit=2))
    assert len(smtp.mailbox.messages) == 2
