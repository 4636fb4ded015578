"""`{{ run.status_url }}` in a message (issue #18, item 4): the send renders the run's own
status link, and the page it opens shows that run's public steps. Through the real
interpreter and send activity on the time-skipping server."""

from __future__ import annotations

import re
from urllib.parse import unquote

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from channels.status_links import read_status_token
from engine.database import OutboxMessage
from service.api.routes.status import public_status
from tests.database import deploy
from tests.workflows.conftest import SECRET_KEY, StartRun, set_profile

CATALOGUE = """\
version: 1
channels:
  sms: "${JOURNEYS_SMS_URL}"
events:
  loan_applied: {amount: number}
templates:
  received:
    sms: "We got your application. Follow it here: {{ run.status_url }}"
journeys:
  - id: credit
    entry: {event: loan_applied}
    steps:
      - id: tell
        send: received
        channel: sms
        public: We received your application
      - id: think
        wait: 2d
        public: We are looking at your application
      - id: done
        exit: decided
"""


async def test_the_message_links_the_runs_own_status_page(db: Engine, start_run: StartRun) -> None:
    plans = deploy(db, CATALOGUE)
    set_profile(db, "c-status", phone="+15555550100", timezone="Europe/Paris")
    handle = await start_run(plans["credit"], "c-status", properties={"amount": 900})
    await handle.result()
    with Session(db) as session:
        [message] = session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))).all()

    link = re.search(r"http://journeys\.test/v1/status/(\S+)", message.body)
    assert link is not None, message.body
    run_id = read_status_token(unquote(link.group(1)), secret=SECRET_KEY)
    assert run_id == (await handle.describe()).run_id
    status = public_status(db, run_id)
    assert status is not None and status.state == "finished"
    assert [text for text, _ in status.passed] == [
        "We received your application",
        "We are looking at your application",
    ]
    assert status.zone == "Europe/Paris"
