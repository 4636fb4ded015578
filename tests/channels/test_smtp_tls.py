"""channels.smtp_tls: Apprise's SMTP sessions get lazily made, shared TLS contexts with
exactly the verification Apprise asked for."""

from __future__ import annotations

import socket
import ssl

import pytest
from apprise.plugins.email import smtp as apprise_smtp

import channels.delivery  # noqa: F401  (installs the shim)
from channels import smtp_tls


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
