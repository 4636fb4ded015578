"""Sending from journeys, end to end: a real SMTP server on loopback, the real interpreter on
the time-skipping server, the real API for the unsubscribe link."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from engine.database import Delivery, Suppression
from engine.settings import RuntimeSettings
from service.api.app import create_app
from tests.database import database_url
from tests.history_text import history_text
from tests.smtp_server import SMTP_PASSWORD, SmtpServer, free_port
from tests.workflows.conftest import (
    SECRET_KEY,
    StartRun,
    compile_plan,
    run_to_end,
    set_profile,
    steps_of,
)
from tests.workflows.test_journey_run import doc

RECIPIENT = "ann.lee@example.com"

RECOVERY = doc(
    """
- id: j
  entry: {event: payment_failed}
  steps:
    - {id: first_notice, send: notice, channel: email}
    - {id: pause, wait: 1d}
    - {id: second_notice, send: notice, channel: email, on_failure: gave_up}
    - {id: done, exit: done}
    - {id: gave_up, exit: email_failed}
"""
).replace(
    "templates:\n",
    "templates:\n"
    "  notice:\n"
    "    email:\n"
    "      subject: \"Your payment of {{ trigger.properties.amount | money('KRW') }} failed\"\n"
    '      html: "<p>Hi {{ profile.first_name }},</p><p>please pay.</p>"\n'
    '      text: "Hi {{ profile.first_name }}, please pay."\n',
)


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    server = SmtpServer(port=free_port())
    server.start()
    monkeypatch.setenv("JOURNEYS_EMAIL_URL", server.url())
    yield server
    server.stop()


def deliveries(db: Engine) -> list[Delivery]:
    with Session(db) as session:
        return list(session.exec(select(Delivery).order_by(Delivery.id)).all())  # type: ignore[arg-type]


async def test_an_email_arrives_once_with_subject_both_parts_and_unsubscribe_headers(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine, smtp: SmtpServer
) -> None:
    set_profile(db, "c1", first_name="Ann & Co", email=RECIPIENT)
    handle = await start_run(compile_plan(RECOVERY), properties={"amount": 25000})
    state = await run_to_end(env, handle)
    assert state.outcome == "done"
    assert len(smtp.mailbox.messages) == 2  # one per send step
    mail = smtp.mailbox.messages[0]
    assert mail["Subject"] == "Your payment of ₩25,000 failed"
    assert mail["To"] == RECIPIENT
    parts = {
        part.get_content_type(): part.get_content()
        for part in mail.walk()
        if not part.is_multipart()
    }
    # The text part is the template's text form, unescaped; the HTML part escapes the name.
    assert parts["text/plain"].strip() == "Hi Ann & Co, please pay."
    assert "<p>Hi Ann &amp; Co,</p>" in parts["text/html"]
    assert re.fullmatch(r"<http://journeys\.test/v1/unsubscribe/[\w.-]+>", mail["List-Unsubscribe"])
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert [d.status for d in deliveries(db)] == ["sent", "sent"]
    # Neither the SMTP password nor the customer's address is in the recorded history.
    history = history_text(await handle.fetch_history())
    assert SMTP_PASSWORD not in history
    assert RECIPIENT not in history
    assert "a***@example.com" in history


async def test_following_the_unsubscribe_link_stops_the_next_email(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine, smtp: SmtpServer, tmp_path: Path
) -> None:
    set_profile(db, "c1", first_name="Ann", email=RECIPIENT)
    handle = await start_run(compile_plan(RECOVERY), properties={"amount": 25000})
    for _ in range(100):
        if smtp.mailbox.messages:
            break
        await asyncio.sleep(0.1)
    link = smtp.mailbox.messages[0]["List-Unsubscribe"].strip("<>")
    settings = RuntimeSettings.from_env().model_copy(
        update={"database_url": database_url(tmp_path), "secret_key": SECRET_KEY, "api_key": None}
    )
    app = create_app(settings, client=env.client)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://journeys.test"
        ) as client,
    ):
        page = await client.get(link)
        assert page.status_code == 200 and "<form" in page.text  # GET changes nothing
        answer = await client.post(link, data={"List-Unsubscribe": "One-Click"})
        assert answer.status_code == 200
    state = await run_to_end(env, handle)
    assert len(smtp.mailbox.messages) == 1
    assert [(s, o) for s, o in steps_of(state) if s == "second_notice"] == [
        ("second_notice", "no_consent")
    ]
    assert state.outcome == "email_failed"


@pytest.mark.slow  # in `make test`; over 2 s, out of `make test-fast`
async def test_smtp_down_for_a_while_delivers_after_recovery_exactly_once(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine, smtp: SmtpServer
) -> None:
    set_profile(db, "c1", first_name="Ann", email=RECIPIENT)
    smtp.stop()
    handle = await start_run(compile_plan(RECOVERY), properties={"amount": 25000})
    for _ in range(200):  # the first attempt fails and is recorded for retry
        rows = deliveries(db)
        if rows and rows[0].status == "retrying":
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the send was never attempted")
    smtp.start()
    state = await run_to_end(env, handle)
    assert state.outcome == "done"
    assert [m["To"] for m in smtp.mailbox.messages] == [RECIPIENT, RECIPIENT]
    first = deliveries(db)[0]
    assert first.status == "sent" and first.attempts >= 2


async def test_smtp_550_is_not_retried_and_suppresses_the_address(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine, smtp: SmtpServer
) -> None:
    set_profile(db, "c1", first_name="Ann", email=RECIPIENT)
    smtp.mailbox.refuse = "rcpt"
    handle = await start_run(compile_plan(RECOVERY), properties={"amount": 25000})
    state = await run_to_end(env, handle)
    assert smtp.mailbox.transactions == 1  # the 550 was not retried; the second send never tried
    assert [(s, o) for s, o in steps_of(state) if s.endswith("_notice")] == [
        ("first_notice", "failed"),
        ("second_notice", "suppressed"),
    ]
    assert state.outcome == "email_failed"
    with Session(db) as session:
        [suppression] = session.exec(select(Suppression)).all()
    assert suppression.channel == "email" and "550" in suppression.reason
    assert RECIPIENT not in suppression.address_hash


CAPPED = doc(
    """
- id: first_journey
  entry: {event: payment_failed}
  settings: {frequency_cap: {max: 1, per: 1d}}
  steps:
    - {id: notify, send: notice, channel: email, on_capped: skip}
- id: second_journey
  entry: {event: payment_failed}
  settings: {frequency_cap: {max: 1, per: 1d}}
  steps:
    - {id: notify, send: notice, channel: email, on_capped: skip}
"""
).replace(
    "templates:\n",
    'templates:\n  notice:\n    email: {subject: "Notice", text: "Hi {{ profile.first_name }}"}\n',
)


async def test_two_journeys_racing_for_the_last_cap_slot_send_exactly_one_message(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine, smtp: SmtpServer
) -> None:
    set_profile(db, "c1", first_name="Ann", email=RECIPIENT)
    first = compile_plan(CAPPED, "first_journey")
    second = compile_plan(CAPPED, "second_journey")
    runs = await asyncio.gather(start_run(first, "c1"), start_run(second, "c1"))
    states = await asyncio.gather(*(run_to_end(env, run) for run in runs))
    outcomes = sorted(str(o) for state in states for s, o in steps_of(state) if s == "notify")
    assert outcomes == ["capped", "sent"]
    assert len(smtp.mailbox.messages) == 1


async def test_quiet_hours_and_cap_delay_wait_on_timers_not_retries(
    env: WorkflowEnvironment, start_run: StartRun, db: Engine, smtp: SmtpServer
) -> None:
    set_profile(db, "c1", first_name="Ann", email=RECIPIENT)
    text = CAPPED.replace("on_capped: skip", "on_capped: delay")
    first = await run_to_end(env, await start_run(compile_plan(text, "first_journey"), "c1"))
    second = await run_to_end(env, await start_run(compile_plan(text, "second_journey"), "c1"))
    assert [o for s, o in steps_of(first) if s == "notify"] == ["sent"]
    deferred, sent = (e for e in second.path if e.step == "notify")
    assert deferred.outcome == "deferred" and "frequency cap" in deferred.detail["reason"]
    assert sent.outcome == "sent"
    assert sent.at - deferred.at > timedelta(hours=20)
    assert len(smtp.mailbox.messages) == 2
