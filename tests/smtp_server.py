"""A real SMTP server on loopback (aiosmtpd) for tests: stores what it receives, counts
transactions, can answer 550, and can be stopped and started again on the same port."""

from __future__ import annotations

import email
import email.policy
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

SMTP_USER = "journeys"
SMTP_PASSWORD = "s3cret-smtp-Passw0rd"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Mailbox:
    """An aiosmtpd handler: stores messages, counts transactions, can answer 550."""

    refuse: str | None = None  # "rcpt" or "data"
    transactions: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    # Where a test kills the sending worker: called when a recipient is given (with the
    # address), or after a message is stored and before it is acknowledged (with the
    # message); cleared once it answers True ("done").
    on_rcpt: Callable[[str], bool] | None = None
    on_data: Callable[[EmailMessage], bool] | None = None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.transactions += 1
        if self.on_rcpt is not None and self.on_rcpt(address):
            self.on_rcpt = None
        if self.refuse == "rcpt":
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse == "data":
            return "550 5.1.1 mailbox unavailable"
        message = email.message_from_bytes(
            envelope.original_content or b"", policy=email.policy.default
        )
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        if self.on_data is not None and self.on_data(message):
            self.on_data = None
        return "250 Message accepted"


class _LegacyLoginNotice(logging.Filter):
    """aiosmtpd logs a warning about its own deprecated `Session.login_data` on every
    login it handles itself (``handled=False`` below): one line per mail, nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Session.login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_LegacyLoginNotice())


def authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    accepted = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=accepted, handled=False)  # aiosmtpd answers 535 when wrong


@dataclass
class SmtpServer:
    port: int
    mailbox: Mailbox = field(default_factory=Mailbox)
    controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(
            self.mailbox,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=authenticate,
            auth_require_tls=False,
            ready_timeout=5,
        )
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def url(self, password: str = SMTP_PASSWORD) -> str:
        """The Apprise URL of this server (plain SMTP with AUTH, no TLS)."""
        return f"mailto://{SMTP_USER}:{password}@127.0.0.1:{self.port}?from=journeys@example.com&mode=insecure"
