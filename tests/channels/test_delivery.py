"""Delivery through Apprise to real servers on loopback.

Email goes to an aiosmtpd server (with AUTH, no TLS); push goes to a small HTTP server that
answers like ntfy (`ntfy://`); SMS goes to the same kind of server answering like an
SMSEagle gateway (`smseagle://`), a self-hosted SMS gateway Apprise addresses by host and
port. Each test asserts what the server received, or that nothing was sent.
"""

from __future__ import annotations

import logging
import pickle
import socket
from collections.abc import Iterator

import pytest

from channels.delivery import (
    Delivered,
    DeliveryError,
    deliver,
    redact,
    target_url,
    url_secrets,
)
from channels.rendering import RenderedMessage
from tests.http_endpoint import HttpEndpoint, running_endpoint
from tests.smtp_server import SMTP_PASSWORD, SmtpServer, free_port

PUSH_TOKEN = "tk_pushtokenvalue0123456789"
SMS_TOKEN = "sms-gateway-token-0123456789"
UNSUBSCRIBE = "<https://journeys.example.com/unsubscribe?c=cust-42&s=a%2Fb%2Bc>"

EMAIL = RenderedMessage(
    channel="email",
    subject="Your cart is waiting, Ann",
    body="Hi Ann,\n\nYou left 2 items in your cart.\nhttps://shop.example.com/cart",
    html='<p>Hi Ann,</p><p>You left <b>2 items</b> in your cart.</p><a href="https://shop.example.com/cart">Open your cart</a>',
)


def assert_secret_kept(secret: str, caplog: pytest.LogCaptureFixture, *texts: str) -> None:
    for text in texts:
        assert secret not in text
    for record in caplog.records:
        assert secret not in record.getMessage()


# --- SMTP on loopback -------------------------------------------------------------------


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(port=free_port())
    server.start()
    yield server
    server.stop()


async def send_email(url: str, recipient: str = "ann@example.com") -> Delivered:
    return await deliver(
        channel="email",
        kind="email",
        url=url,
        recipient=recipient,
        message=EMAIL,
        headers={
            "List-Unsubscribe": UNSUBSCRIBE,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )


# --- HTTP on loopback -------------------------------------------------------------------


@pytest.fixture
def endpoint() -> Iterator[HttpEndpoint]:
    with running_endpoint() as state:
        yield state


PUSH = RenderedMessage(channel="push", title="Back in stock", body="The blue kettle is back.")


async def send_push(endpoint: HttpEndpoint, topic: str = "cust-42-device") -> Delivered:
    return await deliver(
        channel="push",
        kind="push",
        url=f"ntfy://{PUSH_TOKEN}@127.0.0.1:{endpoint.port}",
        recipient=topic,
        message=PUSH,
    )


def sms_url(endpoint: HttpEndpoint) -> str:
    return f"smseagle://{SMS_TOKEN}@127.0.0.1:{endpoint.port}"


async def send_sms(endpoint: HttpEndpoint, text: str, to: str = "+15551234567") -> Delivered:
    return await deliver(
        channel="sms",
        kind="sms",
        url=sms_url(endpoint),
        recipient=to,
        message=RenderedMessage(channel="sms", body=text),
    )


# --- email ------------------------------------------------------------------------------


async def test_email_arrives_once_with_subject_both_parts_and_unsubscribe_headers(
    smtp: SmtpServer,
) -> None:
    delivered = await send_email(smtp.url())

    assert delivered.channel == "email"
    assert delivered.service == "E-Mail"
    [message] = smtp.mailbox.messages
    assert message["To"] == "ann@example.com"
    assert message["Subject"] == "Your cart is waiting, Ann"
    assert message["List-Unsubscribe"] == UNSUBSCRIBE
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message.get_content_type() == "multipart/alternative"
    html_part = message.get_body(preferencelist=("html",))
    text_part = message.get_body(preferencelist=("plain",))
    assert html_part is not None and text_part is not None
    assert "<b>2 items</b>" in html_part.get_content()
    # The template's own text form, not text derived from the HTML: the link stays.
    assert text_part.get_content().replace("\r\n", "\n").strip() == EMAIL.body


async def test_html_without_a_text_form_gets_a_text_part_derived_from_the_html(
    smtp: SmtpServer,
) -> None:
    await deliver(
        channel="email",
        kind="email",
        url=smtp.url(),
        recipient="ann@example.com",
        message=RenderedMessage(
            channel="email", subject="Hi", body="", html="<p>Hello <b>Ann</b></p>"
        ),
    )
    [message] = smtp.mailbox.messages
    text_part = message.get_body(preferencelist=("plain",))
    assert text_part is not None and text_part.get_content().strip() == "Hello Ann"


async def test_text_only_email_is_sent_as_both_parts_with_the_text_unchanged(
    smtp: SmtpServer,
) -> None:
    text = "Hi Ann,\n\nYour code is <1234> & expires soon.\n  - shop.example.com"
    await deliver(
        channel="email",
        kind="email",
        url=smtp.url(),
        recipient="ann@example.com",
        message=RenderedMessage(channel="email", subject="Your code", body=text),
    )

    [message] = smtp.mailbox.messages
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    assert text_part is not None and html_part is not None
    assert text_part.get_content().replace("\r\n", "\n").rstrip("\n") == text
    assert "&lt;1234&gt; &amp; expires" in html_part.get_content()


@pytest.mark.parametrize("refused_at", ["rcpt", "data"])
async def test_smtp_550_is_permanent_and_not_retried(
    smtp: SmtpServer, refused_at: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    smtp.mailbox.refuse = refused_at

    with pytest.raises(DeliveryError) as caught:
        await send_email(smtp.url())

    assert caught.value.permanent is True
    assert "550" in caught.value.reason
    assert smtp.mailbox.transactions == 1
    assert smtp.mailbox.messages == []
    assert_secret_kept(SMTP_PASSWORD, caplog, caught.value.reason, str(caught.value))
    assert "ann@example.com" not in caught.value.reason
    assert any("permanent" in r.getMessage() for r in caplog.records)


async def test_wrong_smtp_password_is_permanent(
    smtp: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-password-123456"

    with pytest.raises(DeliveryError) as caught:
        await send_email(smtp.url(password=wrong))

    assert caught.value.permanent is True
    assert "535" in caught.value.reason
    assert smtp.mailbox.transactions == 0
    assert_secret_kept(wrong, caplog, caught.value.reason)


async def test_stopped_smtp_server_is_transient_and_a_later_attempt_delivers_once(
    smtp: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    smtp.stop()

    with pytest.raises(DeliveryError) as caught:
        await send_email(smtp.url())

    assert caught.value.permanent is False
    assert "Connection refused" in caught.value.reason
    assert_secret_kept(SMTP_PASSWORD, caplog, caught.value.reason)

    smtp.start()
    await send_email(smtp.url())
    assert len(smtp.mailbox.messages) == 1
    assert smtp.mailbox.transactions == 1


async def test_invalid_email_address_is_permanent_and_nothing_is_sent(smtp: SmtpServer) -> None:
    with pytest.raises(DeliveryError) as caught:
        await send_email(smtp.url(), recipient="not-an-address")

    assert caught.value.permanent is True
    assert smtp.mailbox.transactions == 0


async def test_channel_url_naming_its_own_recipient_is_bad_configuration(
    smtp: SmtpServer,
) -> None:
    base, _, query = smtp.url().partition("?")
    with pytest.raises(DeliveryError) as caught:
        await send_email(f"{base}/ops@example.com?{query}")

    assert caught.value.permanent is True
    assert smtp.mailbox.transactions == 0


# --- push -------------------------------------------------------------------------------


async def test_push_reaches_the_ntfy_endpoint_with_title_and_message(
    endpoint: HttpEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint.reply = {"id": "m1", "event": "message", "topic": "cust-42-device"}

    delivered = await send_push(endpoint)

    assert delivered.service == "ntfy"
    [request] = endpoint.requests
    assert request.headers["Authorization"] == f"Bearer {PUSH_TOKEN}"
    assert request.json() == {
        "topic": "cust-42-device",
        "title": "Back in stock",
        "message": "The blue kettle is back.",
    }
    assert_secret_kept(PUSH_TOKEN, caplog, delivered.detail or "")


@pytest.mark.parametrize(
    ("status", "permanent"), [(400, True), (401, True), (403, True), (429, False), (503, False)]
)
async def test_push_endpoint_answer_decides_whether_a_retry_can_help(
    endpoint: HttpEndpoint, status: int, permanent: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint.status = status
    endpoint.reply = {"error": "nope"}

    with pytest.raises(DeliveryError) as caught:
        await send_push(endpoint)

    assert caught.value.permanent is permanent
    assert f"HTTP {status}" in caught.value.reason
    assert len(endpoint.requests) == 1
    assert_secret_kept(PUSH_TOKEN, caplog, caught.value.reason)


async def test_unreachable_push_endpoint_is_transient() -> None:
    with pytest.raises(DeliveryError) as caught:
        await deliver(
            channel="push",
            kind="push",
            url=f"ntfy://{PUSH_TOKEN}@127.0.0.1:{free_port()}",
            recipient="topic-1",
            message=PUSH,
        )

    assert caught.value.permanent is False
    assert PUSH_TOKEN not in caught.value.reason


async def test_push_endpoint_that_never_answers_is_transient() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(DeliveryError) as caught:
            await deliver(
                channel="push",
                kind="push",
                url=f"ntfy://{PUSH_TOKEN}@127.0.0.1:{port}?rto=0.5",
                recipient="topic-1",
                message=PUSH,
            )

    assert caught.value.permanent is False
    assert "timed out" in caught.value.reason
    assert PUSH_TOKEN not in caught.value.reason


async def test_overlong_push_is_refused_before_any_request(endpoint: HttpEndpoint) -> None:
    with pytest.raises(DeliveryError) as caught:
        await deliver(
            channel="push",
            kind="push",
            url=f"ntfy://127.0.0.1:{endpoint.port}",
            recipient="topic-1",
            message=RenderedMessage(channel="push", body="x" * 1001),
        )

    assert caught.value.permanent is True
    assert endpoint.requests == []


# --- SMS --------------------------------------------------------------------------------


async def test_sms_reaches_the_gateway_with_recipient_and_text(
    endpoint: HttpEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint.reply = {"result": {"message_id": "748", "status": "ok"}}

    delivered = await send_sms(endpoint, "Your code is 481516. It expires in 10 minutes.")

    assert delivered.service == "SMS Eagle"
    [request] = endpoint.requests
    assert request.path == "/jsonrpc/sms"
    body = request.json()
    assert body["method"] == "sms.send_sms"
    assert body["params"]["to"] == "+15551234567"
    assert body["params"]["message"] == "Your code is 481516. It expires in 10 minutes."
    assert body["params"]["access_token"] == SMS_TOKEN
    assert_secret_kept(SMS_TOKEN, caplog)


async def test_sms_over_ten_segments_is_refused_before_any_request(endpoint: HttpEndpoint) -> None:
    with pytest.raises(DeliveryError) as caught:
        await send_sms(endpoint, "a" * (153 * 10 + 1))

    assert caught.value.permanent is True
    assert caught.value.reason == "SMS would be 11 segments (max 10)"
    assert endpoint.requests == []


async def test_invalid_phone_number_is_permanent_and_nothing_is_sent(
    endpoint: HttpEndpoint,
) -> None:
    with pytest.raises(DeliveryError) as caught:
        await send_sms(endpoint, "Hello", to="call me maybe")

    assert caught.value.permanent is True
    assert endpoint.requests == []


async def test_gateway_refusing_the_sms_is_permanent(endpoint: HttpEndpoint) -> None:
    endpoint.status = 400
    endpoint.reply = {"result": {"error_text": "Invalid number", "status": "error"}}

    with pytest.raises(DeliveryError) as caught:
        await send_sms(endpoint, "Hello")

    assert caught.value.permanent is True
    assert len(endpoint.requests) == 1
    assert SMS_TOKEN not in caught.value.reason


# --- addressing and redaction -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "recipient", "kind", "expected"),
    [
        (
            "json://gw.example.com/sms/{to}?:text=message",
            "+1 555",
            "sms",
            "json://gw.example.com/sms/%2B1%20555?:text=message",
        ),
        (
            "mailto://u:p@smtp.example.com?from=a@example.com&to=old@example.com&mode=ssl",
            "ann+news@example.com",
            "email",
            "mailto://u:p@smtp.example.com?from=a@example.com&mode=ssl&to=ann%2Bnews%40example.com",
        ),
        (
            "mailtos://u:p@smtp.example.com",
            "ann@example.com",
            "email",
            "mailtos://u:p@smtp.example.com?to=ann%40example.com",
        ),
        (
            "smseagle://token@gw.example.com:8080?priority=high",
            "+15551234567",
            "sms",
            "smseagle://token@gw.example.com:8080/%2B15551234567?priority=high",
        ),
        ("ntfy://push.example.com/", "device/1", "push", "ntfy://push.example.com/device%2F1"),
    ],
)
def test_channel_url_is_addressed_to_exactly_one_recipient(
    url: str, recipient: str, kind: str, expected: str
) -> None:
    assert target_url(url, recipient, kind=kind) == expected


def test_url_secrets_cover_credentials_tokens_and_long_values_but_not_the_host() -> None:
    url = "ntfy://user:p%40ss@push.example.com:8080/verylongtopicname?token=abcdefghijkl&mode=x"

    secrets = url_secrets(url)

    assert {"user", "p%40ss", "p@ss", "verylongtopicname", "abcdefghijkl"} <= set(secrets)
    assert "push.example.com" not in secrets
    assert "x" not in secrets


def test_delivery_error_survives_pickling_with_its_permanence() -> None:
    error = pickle.loads(pickle.dumps(DeliveryError("SMTP 550", permanent=True)))

    assert (error.reason, error.permanent, str(error)) == ("SMTP 550", True, "SMTP 550")


def test_redact_hides_secrets_and_any_credentials_written_in_a_url() -> None:
    text = "failed: mailto://bob:hunter2@smtp.example.com token=abcdefghijkl"

    assert redact(text, ["abcdefghijkl"]) == "failed: mailto://***@smtp.example.com token=***"
