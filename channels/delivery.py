"""Delivery of one rendered message to one recipient through one Apprise service.

What lives here: addressing a channel URL to a recipient (`target_url`), sending
(`deliver`), telling a permanent failure from a transient one (`DeliveryError`), and keeping
secrets out of reasons and logs (`url_secrets`, `redact`). What must not: rendering
(`channels.rendering`), retrying (Temporal retries the activity, so Apprise's own retry is
forced off), suppression lists and outbox rows (the send activity owns those), and any
import of Temporal.

Addressing (`target_url`). A channel URL from the `channels:` section, `${VAR}`-resolved,
is addressed to exactly one recipient by the first rule that applies:

1. it contains ``{to}``: that is replaced by the URL-quoted recipient
   (``json://gw.example/sms/{to}?:text=message``);
2. it is an email URL (``mailto://``, ``mailtos://``): its ``to=`` query parameter is set
   to the recipient (replacing any ``to=`` already there);
3. otherwise the quoted recipient is appended to the path as one more target segment, which
   is how most Apprise SMS and push services take targets
   (``smseagle://token@gw:8080`` -> ``smseagle://token@gw:8080/%2B15551234567``,
   ``ntfy://push.example`` -> ``ntfy://push.example/<topic>``).

A URL that still names its own recipients (``mailto://…/ops@example.com``) is rejected as
bad configuration: one call, one service, one recipient.

Email. Apprise's email plugin sends HTML as multipart/alternative and derives the
text/plain part from the HTML itself (`convert_between(HTML, TEXT)`); no public argument
takes a separate text part. The template's own `email.text` form is what a designer wrote
for text-only mail clients, so `_pin_text_part` wraps that one conversion in the email
plugin's module: while a delivery with both forms runs (a context variable, which Apprise
copies into its worker threads), converting exactly that HTML body returns the template's
text; every other conversion is Apprise's own. A template with HTML and no text form gets
Apprise's derived text; a text-only template is sent as escaped ``<pre>`` HTML, whose
derived text part is the original text, character for character. Extra headers (`List-Unsubscribe`,
`List-Unsubscribe-Post`) travel as the plugin's ``+Header=value`` URL arguments, quoted
twice because Apprise unquotes query values twice on that path.

Logging. Importing this module configures the ``apprise`` logger: a filter rewrites every
record without the secrets of the delivery running in that context (the same filter sits
on ``urllib3.connectionpool``), the level is DEBUG because the SMTP reply and the HTTP
status of a failure are only logged at DEBUG, and propagation is off, so Apprise's records
(which name recipients) land in each call's `AppriseResult` and reach the application's
logs only as this module's one-line summary.

Failures. SMTP 5xx (550 unknown mailbox, 535
bad credentials), HTTP 4xx other than 408/429, an invalid recipient and a bad URL are
permanent; connection errors, timeouts, SMTP 4xx and HTTP 5xx/408/429 are transient.
"""

from __future__ import annotations

import contextlib
import functools
import html
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import quote, unquote

import apprise
from apprise import AppriseResult, AppriseResultStatus, NotifyFormat
from apprise.logger import LOGGER_NAME as APPRISE_LOGGER
from apprise.plugins.email import base as apprise_email_base

from channels import smtp_tls
from channels.rendering import PUSH_MAX, RenderedMessage
from channels.sms import MAX_SEGMENTS, segments

smtp_tls.install()  # no new TLS context (~21 ms of CPU) per email: see channels.smtp_tls

__all__ = [
    "DELIVERY_TIMEOUT",
    "Delivered",
    "DeliveryError",
    "DeliveryKind",
    "deliver",
    "redact",
    "target_url",
    "url_secrets",
]

DeliveryKind = Literal["email", "sms", "push", "text"]

DELIVERY_TIMEOUT: Final = 30.0
"""Seconds one delivery may take before it counts as a transient failure."""

REDACTED: Final = "***"

_log = logging.getLogger(__name__)

_EMAIL_SCHEMES: Final = frozenset({"mailto", "mailtos"})
_EMAIL_ADDRESS: Final = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")
_PHONE_SEPARATORS: Final = re.compile(r"[\s().-]")
_HEADER_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_URL_USERINFO: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#]+@")
# smtplib errors as Apprise logs them: "(550, b'5.1.1 …')", "{'a@b': (550, b'…')}".
_SMTP_REPLY: Final = re.compile(r"\((?P<code>[2-5]\d\d), b?['\"](?P<text>[^'\"]*)")
# Apprise's HTTP plugins end a failure with "error=<status>." (ntfy: a 5-digit ntfy code
# whose first three digits are the HTTP status).
_HTTP_STATUS: Final = re.compile(r"error=(?P<code>[1-5]\d\d)\d{0,2}\b")
_TRANSIENT_HTTP: Final = frozenset({408, 429})
_MAX_REASON: Final = 400


class DeliveryError(Exception):
    """A message was not delivered; ``permanent`` failures must not be retried.

    ``reason`` is already redacted: no secret from the channel URL, no recipient.
    """

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent

    def __str__(self) -> str:
        return self.reason

    def __reduce__(self) -> tuple[object, tuple[str]]:
        # The keyword-only flag would be lost by Exception's default pickling.
        return functools.partial(DeliveryError, permanent=self.permanent), (self.reason,)


@dataclass(frozen=True)
class Delivered:
    """A message a service accepted: its channel, the Apprise service, a redacted note."""

    channel: str
    service: str
    detail: str | None = None


# --- addressing -------------------------------------------------------------------------


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def target_url(channel_url: str, recipient: str, *, kind: str) -> str:
    """``channel_url`` addressed to ``recipient`` (the rule is in the module docstring)."""
    quoted = quote(recipient, safe="")
    if "{to}" in channel_url:
        return channel_url.replace("{to}", quoted)
    base, separator, query = channel_url.partition("?")
    if kind == "email" and _scheme(base) in _EMAIL_SCHEMES:
        kept = [p for p in query.split("&") if p and p.split("=", 1)[0].lower() != "to"]
        return f"{base}?{'&'.join([*kept, f'to={quoted}'])}"
    return f"{base.rstrip('/')}/{quoted}{separator}{query}"


def _with_email_headers(url: str, headers: Mapping[str, str]) -> str:
    """``url`` with each header as a ``+Name=value`` argument of Apprise's email plugin."""
    arguments = []
    for name, value in headers.items():
        if not _HEADER_NAME.match(name) or "\r" in value or "\n" in value:
            raise DeliveryError(f"email header {name!r} is not a valid header", permanent=True)
        # Apprise unquotes query values once while parsing and the email plugin again.
        arguments.append(f"+{name}={quote(quote(value, safe=''), safe='')}")
    if not arguments:
        return url
    return f"{url}{'&' if '?' in url else '?'}{'&'.join(arguments)}"


# --- secrets ----------------------------------------------------------------------------


def _is_token_like(host: str) -> bool:
    """A host that is really a credential (``tgram://<bot token>/…``, ``ntfy://<topic>``)."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return len(name) > 8 and name != "localhost" and "." not in name and "[" not in name


def url_secrets(url: str) -> list[str]:
    """The parts of an Apprise URL to treat as secret, longest first.

    User and password always; a host that looks like a token; every path segment and
    query value longer than 8 characters. Each in the form written and unquoted.
    """
    found: set[str] = set()

    def add(part: str, *, always: bool = False) -> None:
        for form in (part, unquote(part), unquote(unquote(part))):
            if form and (always or len(form) > 8):
                found.add(form)

    rest = url.split("://", 1)[1] if "://" in url else url
    rest, _, query = rest.partition("?")
    authority, _, path = rest.partition("/")
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, _, password = userinfo.partition(":")
        add(user, always=True)
        add(password, always=True)
    else:
        host = authority
    if _is_token_like(host):
        add(host)
    for segment in path.split("/"):
        add(segment)
    for pair in query.split("&"):
        add(pair.partition("=")[2])
    return sorted(found, key=lambda secret: (-len(secret), secret))


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret, and any credentials written into a URL, as ``***``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _URL_USERINFO.sub(rf"\1{REDACTED}@", text)


# --- Apprise's logger -------------------------------------------------------------------

# The secrets of the delivery running in this context. Apprise runs each send in a copy of
# the caller's context, so records logged in its worker threads see the right secrets.
_call_secrets: ContextVar[tuple[str, ...]] = ContextVar("delivery_secrets", default=())
_setup_records: ContextVar[list[str] | None] = ContextVar("delivery_setup_records", default=None)

# Apprise logs payloads at DEBUG (SMSEagle's includes its access token, ntfy's its bearer
# header); the HTTP client under it logs request paths, where some services put tokens.
_REDACTED_LOGGERS: Final = (APPRISE_LOGGER, "urllib3.connectionpool")


class _RedactSecrets(logging.Filter):
    """Rewrites a record's message without the current delivery's secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as usual
            return True
        record.msg, record.args = redact(message, _call_secrets.get()), None
        return True


class _SetupRecords(logging.Handler):
    """Keeps the warnings Apprise logs while parsing a URL, for the call that parses it."""

    def emit(self, record: logging.LogRecord) -> None:
        records = _setup_records.get()
        if records is not None and record.levelno >= logging.WARNING:
            try:
                records.append(record.getMessage())
            except Exception:
                self.handleError(record)


def _own_apprise_logger() -> None:
    """Redact Apprise's records, capture them per call at DEBUG, keep them out of app logs.

    The SMTP reply and the HTTP status of a failure are only logged at DEBUG, so the
    ``apprise`` logger runs at DEBUG and stops propagating: its records reach each call's
    `AppriseResult` (and this module's own summary), not the application's handlers.
    """
    for name in _REDACTED_LOGGERS:
        logging.getLogger(name).addFilter(_RedactSecrets())
    apprise_logger = logging.getLogger(APPRISE_LOGGER)
    apprise_logger.setLevel(logging.DEBUG)
    apprise_logger.propagate = False
    apprise_logger.addHandler(_SetupRecords(level=logging.WARNING))


_own_apprise_logger()


@contextlib.contextmanager
def _redacting(secrets: Iterable[str]) -> Iterator[None]:
    token = _call_secrets.set(tuple(secrets))
    try:
        yield
    finally:
        _call_secrets.reset(token)


@contextlib.contextmanager
def _setup_capture() -> Iterator[list[str]]:
    records: list[str] = []
    token = _setup_records.set(records)
    try:
        yield records
    finally:
        _setup_records.reset(token)


# --- content ----------------------------------------------------------------------------

# (HTML body, text part) of the email delivery running in this context.
_text_part: ContextVar[tuple[str, str] | None] = ContextVar("email_text_part", default=None)


def _pin_text_part() -> None:
    """Make Apprise's email plugin use the template's text form as the text/plain part of
    the delivery running in this context (see the module docstring)."""
    original = getattr(apprise_email_base, "convert_between", None)
    if original is None or getattr(original, "_journeys_pinned", False):
        return

    def convert_between(
        from_format: Any, to_format: Any, content: Any, *args: Any, **kwargs: Any
    ) -> Any:
        pinned = _text_part.get()
        if (
            pinned is not None
            and from_format == NotifyFormat.HTML
            and to_format == NotifyFormat.TEXT
            and content == pinned[0]
        ):
            return pinned[1]
        return original(from_format, to_format, content, *args, **kwargs)

    convert_between._journeys_pinned = True  # type: ignore[attr-defined]
    apprise_email_base.convert_between = convert_between  # type: ignore[attr-defined]


_pin_text_part()


@contextlib.contextmanager
def _email_text_part(kind: DeliveryKind, message: RenderedMessage) -> Iterator[None]:
    pinned = (
        (message.html, message.body) if kind == "email" and message.html and message.body else None
    )
    token = _text_part.set(pinned)
    try:
        yield
    finally:
        _text_part.reset(token)


def _html_from_text(text: str) -> str:
    # <pre> is the one HTML form Apprise's HTML-to-text conversion returns unchanged.
    return (
        '<pre style="white-space: pre-wrap; font-family: inherit">'
        f"{html.escape(text, quote=False)}</pre>"
    )


def _content(kind: DeliveryKind, message: RenderedMessage) -> tuple[str, str, NotifyFormat]:
    """(title, body, body format) for Apprise, or DeliveryError when it cannot be sent."""
    if kind == "email":
        if not message.subject:
            raise DeliveryError("the email has no subject", permanent=True)
        if message.html:
            return message.subject, message.html, NotifyFormat.HTML
        if not message.body:
            raise DeliveryError("the email has no body", permanent=True)
        return message.subject, _html_from_text(message.body), NotifyFormat.HTML
    if not message.body:
        raise DeliveryError(f"the {kind} message is empty", permanent=True)
    if kind == "sms":
        count = segments(message.body)
        if count > MAX_SEGMENTS:
            raise DeliveryError(
                f"SMS would be {count} segments (max {MAX_SEGMENTS})", permanent=True
            )
        return "", message.body, NotifyFormat.TEXT
    if kind == "push" and len(message.body) > PUSH_MAX:
        raise DeliveryError(
            f"push body is {len(message.body)} characters (max {PUSH_MAX})", permanent=True
        )
    return message.title or message.subject or "", message.body, NotifyFormat.TEXT


def _check_recipient(kind: DeliveryKind, recipient: str) -> None:
    if not recipient.strip():
        raise DeliveryError("no recipient", permanent=True)
    if kind == "email" and not _EMAIL_ADDRESS.match(recipient):
        raise DeliveryError("invalid email address", permanent=True)
    if kind == "sms":
        digits = _PHONE_SEPARATORS.sub("", recipient).removeprefix("+")
        if not digits.isdigit() or not 9 <= len(digits) <= 15:
            raise DeliveryError("invalid phone number", permanent=True)


# --- classification ---------------------------------------------------------------------


def _failure(result: AppriseResult, service: str) -> tuple[str, bool]:
    """(reason, permanent) for a result that is not a success."""
    if result.status == AppriseResultStatus.TIMEOUT or result.timeout_count:
        return f"{service}: no answer within {DELIVERY_TIMEOUT:g}s", False
    entries = list(result.logs())
    if not result.results:
        messages = [e.message for e in entries if e.level in ("WARNING", "ERROR")]
        return f"{service}: {messages[-1] if messages else 'nothing was sent'}", True
    warning = next((e.message for e in reversed(entries) if e.level in ("WARNING", "ERROR")), None)
    for entry in reversed(entries):
        smtp = _SMTP_REPLY.search(entry.message)
        if smtp:
            code = int(smtp["code"])
            return f"{service}: SMTP {code} {smtp['text']}".rstrip(), code >= 500
    for entry in reversed(entries):
        http = _HTTP_STATUS.search(entry.message)
        if http:
            code = int(http["code"])
            permanent = 400 <= code < 500 and code not in _TRANSIENT_HTTP
            return f"{service}: HTTP {code}" + (f" ({warning})" if warning else ""), permanent
    cause = next(
        (
            e.message.split("Exception: ", 1)[1]
            for e in reversed(entries)
            if "Exception: " in e.message
        ),
        None,
    )
    return f"{service}: {warning or 'delivery failed'}" + (f" ({cause})" if cause else ""), False


# --- delivery ---------------------------------------------------------------------------


async def deliver(
    *,
    channel: str,
    kind: DeliveryKind,
    url: str,
    recipient: str,
    message: RenderedMessage,
    headers: Mapping[str, str] | None = None,
) -> Delivered:
    """Send ``message`` to ``recipient`` through the one service of ``url``, once.

    ``url`` is the channel URL with its `${VAR}` references already resolved; ``headers``
    are extra email headers (ignored for other kinds). Raises DeliveryError: permanent
    for what a retry cannot fix, transient for what it may.
    """
    # The recipient is personal data: kept out of reasons too (a 1-3 character one would
    # turn every occurrence of those letters into ***).
    secrets = [*url_secrets(url), *([recipient] if len(recipient) > 3 else [])]
    try:
        return await _deliver(
            channel=channel,
            kind=kind,
            url=url,
            recipient=recipient,
            message=message,
            headers=headers,
            secrets=secrets,
        )
    except DeliveryError as error:
        reason = redact(error.reason, secrets)[:_MAX_REASON]
        _log.warning(
            "delivery on channel %s failed (%s): %s",
            channel,
            "permanent" if error.permanent else "transient",
            reason,
        )
        raise DeliveryError(reason, permanent=error.permanent) from None


async def _deliver(
    *,
    channel: str,
    kind: DeliveryKind,
    url: str,
    recipient: str,
    message: RenderedMessage,
    headers: Mapping[str, str] | None,
    secrets: list[str],
) -> Delivered:
    if "${" in url:
        raise DeliveryError(
            f"the URL of channel {channel} has an unresolved ${{VAR}}", permanent=True
        )
    title, body, body_format = _content(kind, message)
    _check_recipient(kind, recipient)
    address = target_url(url, recipient, kind=kind)
    if kind == "email" and headers:
        address = _with_email_headers(address, headers)
    secrets.extend(url_secrets(address))

    with _redacting(secrets), _email_text_part(kind, message):
        return await _send(
            channel=channel,
            kind=kind,
            address=address,
            title=title,
            body=body,
            body_format=body_format,
            secrets=secrets,
        )


async def _send(
    *,
    channel: str,
    kind: DeliveryKind,
    address: str,
    title: str,
    body: str,
    body_format: NotifyFormat,
    secrets: list[str],
) -> Delivered:
    asset = apprise.AppriseAsset(
        service_timeout=DELIVERY_TIMEOUT,
        storage_mode="memory",
        result_log_disk_size=0,
    )
    with _setup_capture() as setup:
        plugin = apprise.Apprise.instantiate(address, asset=asset)
    if plugin is None:
        why = f": {setup[-1]}" if setup else ""
        raise DeliveryError(
            f"the URL of channel {channel} is not a usable Apprise URL{why}", permanent=True
        )
    # Temporal retries the activity; a retry inside Apprise would resend behind its back.
    plugin.retry = 0
    plugin.optional = False
    if len(plugin) != 1 or (kind == "email" and len(getattr(plugin, "targets", [])) != 1):
        raise DeliveryError(
            f"the URL of channel {channel} must leave the recipient to the journey "
            "(it names recipients of its own, or the recipient was refused)",
            permanent=True,
        )

    notifier = apprise.Apprise(asset=asset)
    notifier.add(plugin)
    result = await notifier.async_notify(
        body=body,
        title=title,
        body_format=body_format,
        timeout=DELIVERY_TIMEOUT,
        log_level=logging.DEBUG,
    )
    with result:
        service = str(result.results[0].name if result.results else plugin.service_name)
        if not result:
            reason, permanent = _failure(result, service)
            raise DeliveryError(reason, permanent=permanent)
        sent = [e.message for e in result.logs() if e.level == "INFO" and "Sent" in e.message]
    detail = redact(sent[-1], secrets) if sent else None
    _log.info("delivered on channel %s through %s", channel, service)
    return Delivered(channel=channel, service=service, detail=detail)
