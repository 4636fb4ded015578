"""Apprise's SMTP sessions without a new TLS context per message.

Apprise's SMTP controller (`apprise.plugins.email.smtp`) calls `ssl.create_default_context()`
at the start of every session, TLS or not, and then turns verification off when the URL
says so. Loading the system's CA certificates takes ~21 ms of CPU on this machine: most of
an email send's own work, on the path from an event to its first message, and thrown away
for a plain (``mode=insecure``) session.

`install` gives that module, and only it, an `ssl` whose `create_default_context` returns a
`_LazyContext`: it records what Apprise sets (``check_hostname``, ``verify_mode``) and, when
a session actually wraps a socket, hands over a real context with exactly those settings,
made once per setting and shared (an `ssl.SSLContext` is safe to share between threads;
it is never changed after it is made). A plain session makes none. Verification is as
Apprise asked for: the default context verifies the certificate and the host name, and
only a URL with ``verify=no`` turns them off, as before.

Lives here: the shim. Not here: the delivery itself (`channels.delivery`).
"""

from __future__ import annotations

import ssl
import threading
import types
from typing import Any

__all__ = ["install"]

_CONTEXTS: dict[tuple[bool, ssl.VerifyMode], ssl.SSLContext] = {}
_LOCK = threading.Lock()


def _context(check_hostname: bool, verify_mode: ssl.VerifyMode) -> ssl.SSLContext:
    key = (check_hostname, verify_mode)
    with _LOCK:
        context = _CONTEXTS.get(key)
        if context is None:
            context = ssl.create_default_context()
            context.check_hostname = check_hostname  # before CERT_NONE, which needs it off
            context.verify_mode = verify_mode
            _CONTEXTS[key] = context
        return context


class _LazyContext:
    """What `ssl.create_default_context()` returns to Apprise: settings recorded, the real
    (shared) context made on first real use."""

    def __init__(self) -> None:
        object.__setattr__(self, "_settings", {"check_hostname": True})
        object.__setattr__(self, "_verify_mode", ssl.CERT_REQUIRED)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "check_hostname":
            self._settings["check_hostname"] = bool(value)
        elif name == "verify_mode":
            object.__setattr__(self, "_verify_mode", ssl.VerifyMode(value))
        else:  # anything else Apprise might set one day: refuse rather than ignore
            raise AttributeError(f"the shared SMTP TLS context cannot set {name!r}")

    def _real(self) -> ssl.SSLContext:
        return _context(self._settings["check_hostname"], self._verify_mode)

    @property
    def check_hostname(self) -> bool:
        return bool(self._settings["check_hostname"])

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        mode: ssl.VerifyMode = self._verify_mode
        return mode

    def __getattr__(self, name: str) -> Any:  # wrap_socket, protocol, ...: the real one's
        return getattr(self._real(), name)


def _module_with_lazy_contexts() -> types.ModuleType:
    shim = types.ModuleType("ssl")
    shim.__dict__.update(ssl.__dict__)
    shim.create_default_context = lambda *args, **kwargs: (  # type: ignore[attr-defined]
        _LazyContext() if not args and not kwargs else ssl.create_default_context(*args, **kwargs)
    )
    return shim


def install() -> None:
    """Give Apprise's SMTP controller the lazy, shared contexts (idempotent)."""
    from apprise.plugins.email import smtp as apprise_smtp

    if getattr(apprise_smtp, "_journeys_lazy_tls", False):
        return
    apprise_smtp.ssl = _module_with_lazy_contexts()  # type: ignore[attr-defined]
    apprise_smtp._journeys_lazy_tls = True  # type: ignore[attr-defined]
