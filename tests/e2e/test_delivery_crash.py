"""A message is sent at most once per step visit, even when the worker dies mid-send, except
in the one documented window; and no secret or raw address reaches a log or a history.

The real system runs as processes (dev server, `python worker.py`, the API), email goes to a
real SMTP server on loopback (aiosmtpd) and SMS to a real HTTP gateway endpoint (Apprise's
SMSEagle service). The SMTP server kills the worker (SIGKILL) at the two points that matter:

- while the recipient is given, before the provider accepted anything: the retry on a new
  worker delivers the message once;
- after the provider stored the message and before the worker heard "250" and marked the
  delivery `sent`: the documented at-least-once window, where the retry sends it again.

A worker that dies after the mark is covered by the retry reading the `sent` row back
(`test_a_retried_send_after_the_mark_returns_the_earlier_delivery`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

from tests.e2e.conftest import (
    JourneysStack,
    TemporalServer,
    customer_id,
    eventually,
    path_steps,
    start_stack,
)
from tests.history_text import history_text
from tests.http_endpoint import HttpEndpoint, running_endpoint
from tests.smtp_server import SMTP_PASSWORD, SmtpServer, free_port

pytestmark = pytest.mark.e2e

SMS_TOKEN = "sms-gateway-token-Zq81x0example"
PHONE = "+821098765432"

# Sends fail over to a retry only after start_to_close (60 s) once their worker is gone.
RETRY_TIMEOUT = 150.0

JOURNEYS = """\
version: 1
settings:
  timezone: UTC
events:
  statement_ready:
    period: string
channels:
  email: "${JOURNEYS_EMAIL_URL}"
  sms: "${JOURNEYS_SMS_URL}"
templates:
  statement:
    email:
      subject: "Statement {{ journey.step }} for {{ event.period }}"
      text: "Hi {{ profile.first_name }}, your statement for {{ event.period }} is ready."
    sms: "Hi {{ profile.first_name }}, your statement is ready."
journeys:
  - id: statements
    name: Statement notices
    entry:
      event: statement_ready
      reentry: always
    steps:
      - {id: first_email, send: statement, channel: email}
      - {id: second_email, send: statement, channel: email}
      - {id: text, send: statement, channel: sms}
      - {id: done, exit: notified}
"""


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway() -> Iterator[HttpEndpoint]:
    with running_endpoint() as endpoint:
        endpoint.reply = {"result": {"message_id": "748", "status": "ok"}}
        yield endpoint


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    temporal_server: TemporalServer,
    smtp: SmtpServer,
    gateway: HttpEndpoint,
) -> Iterator[JourneysStack]:
    directory = tmp_path_factory.mktemp("delivery-crash")
    journeys = directory / "journeys.yaml"
    journeys.write_text(JOURNEYS, encoding="utf-8")
    env = {
        "JOURNEYS_EMAIL_URL": smtp.url(),
        "JOURNEYS_SMS_URL": f"smseagle://{SMS_TOKEN}@127.0.0.1:{gateway.port}",
        "JOURNEYS_SECRET_KEY": "e2e-unsubscribe-signing-key",
    }
    with start_stack(directory, temporal_server, journeys, env=env) as running:
        yield running


async def history_json(stack: JourneysStack, workflow_id: str) -> str:
    client = await Client.connect(stack.temporal.address)
    return history_text(await client.get_workflow_handle(workflow_id).fetch_history())


def test_a_worker_killed_mid_send_duplicates_only_inside_the_documented_window(
    stack: JourneysStack, smtp: SmtpServer, gateway: HttpEndpoint
) -> None:
    customer = customer_id("crash-send")
    address = f"{customer}@example.test"
    stack.identify(customer, first_name="Mina", email=address, phone=PHONE, timezone="UTC")

    # Worker 1 dies while giving the first email's recipient: nothing was accepted yet.
    def kill_worker(*_: object) -> bool:
        stack.workers[-1].kill()
        return True

    smtp.mailbox.on_rcpt = kill_worker
    started = stack.track(customer, "statement_ready", period="2026-11")
    workflow_id = f"journey/statements/{customer}"
    assert started["started"] == [workflow_id]
    first_worker = stack.worker
    eventually(
        first_worker.running, check=lambda alive: not alive, timeout=60, what="worker 1 killed"
    )
    assert smtp.mailbox.messages == []

    # Worker 2 retries the first email (once), then dies after the server stored the second
    # email and before it could mark it sent.
    smtp.mailbox.on_data = lambda mail: "second_email" in mail["Subject"] and kill_worker()
    second_worker = stack.start_worker()
    eventually(
        second_worker.running,
        check=lambda alive: not alive,
        timeout=RETRY_TIMEOUT,
        what="worker 2 killed after the second email was stored",
    )
    rows = {row.step_id: row for row in stack.deliveries(customer)}
    assert rows["second_email"].status == "sending"  # accepted by the server, never marked

    stack.start_worker()
    run = stack.only_run(customer, "statements")
    detail = stack.wait_until_ended(str(run["run_id"]), timeout=RETRY_TIMEOUT)

    assert (detail["status"], detail["outcome"]) == ("completed", "notified"), detail
    assert path_steps(detail) == ["entry", "first_email", "second_email", "text", "end"]
    subjects = [mail["Subject"] for mail in smtp.mailbox.messages]
    assert subjects == [
        "Statement first_email for 2026-11",  # killed before acceptance: sent once
        "Statement second_email for 2026-11",  # killed inside the window ...
        "Statement second_email for 2026-11",  # ... so the retry sent it again
    ]
    assert all(mail["To"] == address for mail in smtp.mailbox.messages)
    [sms] = [r.json()["params"] for r in gateway.requests if r.json()["params"]["to"] == PHONE]
    assert sms["message"] == "Hi Mina, your statement is ready."
    rows = {row.step_id: row for row in stack.deliveries(customer)}
    assert {step: (row.status, row.attempts) for step, row in rows.items()} == {
        "first_email": ("sent", 2),
        "second_email": ("sent", 2),
        "text": ("sent", 1),
    }

    # Secrets and raw addresses: in no log of any process, in no recorded history.
    history = asyncio.run(history_json(stack, workflow_id))
    logs = {path.name: path.read_text(errors="replace") for path in _logs(stack)}
    assert {"api.log", "worker-1.log", "worker-2.log", "worker-3.log"} <= set(logs)
    for secret in (SMTP_PASSWORD, SMS_TOKEN, address, PHONE, PHONE.lstrip("+")):
        assert secret not in history, f"{secret!r} is in the recorded history"
        for name, text in logs.items():
            assert secret not in text, f"{secret!r} is in {name}"
    for row in rows.values():
        assert row.recipient_masked is not None and address not in row.recipient_masked


def _logs(stack: JourneysStack) -> list[Path]:
    return sorted((stack.directory / "logs").glob("*.log"))
