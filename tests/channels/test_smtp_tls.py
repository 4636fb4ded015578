"""channels.smtp_tls: Apprise's SMTP sessions get lazily made, shared TLS contexts with
exactly the verification Apprise asked for."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from apprise.plugins.email import smtp as apprise_smtp

from channels import smtp_tls
from channels.delivery import DeliveryError, deliver
from channels.rendering import RenderedMessage
from tests.smtp_server import SMTP_PASSWORD, SMTP_USER, Mailbox, authenticate, free_port

EMAIL = RenderedMessage(channel="email", subject="Hello", body="Hi Ann, this is a test.")


def test_installed_only_in_apprises_smtp_module() -> None:
    assert apprise_smtp.ssl is not ssl
    assert ssl.create_default_context is not apprise_smtp.ssl.create_default_context
    assert apprise_smtp.ssl.SSLError is ssl.SSLError
    smtp_tls.install()  # idempotent
    assert apprise_smtp._journeys_lazy_tls is True


def test_default_context_verifies_and_is_shared() -> None:
    first = apprise_smtp.ssl.create_default_context()
    second = apprise_smtp.ssl.create_default_context()
    assert first.check_hostname is True
    assert first.verify_mode == ssl.CERT_REQUIRED
    real = first._real()
    assert isinstance(real, ssl.SSLContext)
    assert real is second._real()
    assert real.verify_mode == ssl.CERT_REQUIRED and real.check_hostname is True


def test_verification_off_only_when_asked_and_apart_from_the_verifying_one() -> None:
    lax = apprise_smtp.ssl.create_default_context()
    lax.check_hostname = False
    lax.verify_mode = ssl.CERT_NONE
    strict = apprise_smtp.ssl.create_default_context()
    assert lax._real().verify_mode == ssl.CERT_NONE
    assert lax._real().check_hostname is False
    assert strict._real().verify_mode == ssl.CERT_REQUIRED
    assert lax._real() is not strict._real()


def test_other_settings_are_refused() -> None:
    context = apprise_smtp.ssl.create_default_context()
    with pytest.raises(AttributeError):
        context.minimum_version = ssl.TLSVersion.TLSv1_2


def test_wraps_a_socket_through_the_real_context() -> None:
    context = apprise_smtp.ssl.create_default_context()
    left, right = socket.socketpair()
    try:
        wrapped = context.wrap_socket(
            left, server_hostname="example.com", do_handshake_on_connect=False
        )
        assert isinstance(wrapped, ssl.SSLSocket)
        assert wrapped.context is context._real()
        wrapped.close()
    finally:
        right.close()


# --- STARTTLS to a real server (aiosmtpd, a self-signed certificate) ----------------------


@pytest.fixture
def tls_smtp(tmp_path: Path) -> Iterator[tuple[int, Mailbox]]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(cert), str(key))
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticate,
        auth_require_tls=True,
        tls_context=server_context,
        require_starttls=True,
        ready_timeout=5,
    )
    controller.start()
    yield port, mailbox
    controller.stop()


def _starttls_url(port: int, verify: str) -> str:
    return (
        f"mailto://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{port}"
        f"?from=journeys@example.com&mode=starttls&verify={verify}"
    )


async def test_starttls_without_verification_delivers(tls_smtp: tuple[int, Mailbox]) -> None:
    port, mailbox = tls_smtp
    for _ in range(2):  # the second session reuses the shared context
        await deliver(
            channel="email",
            kind="email",
            url=_starttls_url(port, "no"),
            recipient="ann@example.com",
            message=EMAIL,
        )
    assert len(mailbox.messages) == 2


async def test_starttls_verifies_the_certificate_by_default(
    tls_smtp: tuple[int, Mailbox],
) -> None:
    port, mailbox = tls_smtp
    with pytest.raises(DeliveryError) as caught:
        await deliver(
            channel="email",
            kind="email",
            url=_starttls_url(port, "yes"),
            recipient="ann@example.com",
            message=EMAIL,
        )
    assert mailbox.messages == []
    assert "certificate" in caught.value.reason.lower() or "ssl" in caught.value.reason.lower()
