"""Signed unsubscribe tokens: the capability in a message's unsubscribe link.

A token names a customer and a channel and is signed with HMAC-SHA256 under the
deployment's secret, ``JOURNEYS_SECRET_KEY`` (the same value in every worker, which signs,
and every API process, which verifies; `journeys up` generates one and keeps it in its
state directory). Tokens do not expire: a link in a years-old email must still work.
Changing the secret invalidates every link already sent.

Format (URL-safe, no padding): ``base64url(json([customer_id, channel])) "." base64url(mac)``.
Lives here: making, reading and linking tokens. Not here: what an unsubscribe changes
(`channels.policies`, `service.api.routes.unsubscribe`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from urllib.parse import quote

__all__ = [
    "SECRET_KEY_ENV",
    "make_unsubscribe_token",
    "read_parts",
    "read_unsubscribe_token",
    "sign_parts",
    "unsubscribe_url",
]

SECRET_KEY_ENV = "JOURNEYS_SECRET_KEY"
"""The environment variable that holds the signing secret."""

# Separates these MACs from any other use of the same secret.
_PURPOSE = b"journeys-unsubscribe-v1:"
_MAX_TOKEN_LENGTH = 2048
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(data: str) -> bytes:
    padded = data + "=" * (-len(data) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii"))


def _mac(payload: str, secret: str, purpose: bytes) -> bytes:
    if not secret:
        raise ValueError(f"no secret key to sign links: set {SECRET_KEY_ENV}")
    return hmac.new(
        secret.encode("utf-8"), purpose + payload.encode("ascii"), hashlib.sha256
    ).digest()


def sign_parts(parts: list[str], *, secret: str, purpose: bytes) -> str:
    """A URL-safe token carrying ``parts``, signed for ``purpose`` (which keeps one kind of
    link from being used as another)."""
    body = json.dumps(parts, separators=(",", ":"), ensure_ascii=False)
    payload = _b64encode(body.encode("utf-8"))
    return f"{payload}.{_b64encode(_mac(payload, secret, purpose))}"


def read_parts(token: str, *, secret: str, purpose: bytes, count: int, link: str) -> list[str]:
    """The ``count`` parts of a token signed for ``purpose``.

    Raises `ValueError` with a message fit for the person who clicked (``link`` names the
    link: "this unsubscribe link") when the token is malformed, altered, or signed with
    another secret. The signature is compared in constant time before anything in the
    token is trusted.
    """
    if len(token) > _MAX_TOKEN_LENGTH or not token.isascii():
        raise ValueError(f"{link} is malformed")
    payload, dot, signature = token.partition(".")
    if not dot or not _BASE64URL.fullmatch(payload) or not _BASE64URL.fullmatch(signature):
        raise ValueError(f"{link} is malformed")
    try:
        given = _b64decode(signature)
    except (binascii.Error, ValueError):
        raise ValueError(f"{link} is malformed") from None
    if not hmac.compare_digest(given, _mac(payload, secret, purpose)):
        raise ValueError(
            f"{link} was altered or was not issued by this service (its signature does not match)"
        )
    try:
        data = json.loads(_b64decode(payload).decode("utf-8"))
    except (binascii.Error, ValueError):
        raise ValueError(f"{link} is malformed") from None
    if (
        not isinstance(data, list)
        or len(data) != count
        or not all(isinstance(part, str) and part for part in data)
    ):
        raise ValueError(f"{link} is malformed")
    return data


def make_unsubscribe_token(*, customer_id: str, channel: str, secret: str) -> str:
    """A URL-safe token that lets its holder opt ``customer_id`` out of ``channel``."""
    return sign_parts([customer_id, channel], secret=secret, purpose=_PURPOSE)


def read_unsubscribe_token(token: str, *, secret: str) -> tuple[str, str]:
    """``(customer_id, channel)`` from a token this deployment signed (`read_parts`)."""
    customer_id, channel = read_parts(
        token, secret=secret, purpose=_PURPOSE, count=2, link="this unsubscribe link"
    )
    return customer_id, channel


def unsubscribe_url(base_url: str, token: str) -> str:
    """The one-click unsubscribe address for ``token`` on the API at ``base_url``
    (``List-Unsubscribe`` and the link in the message both point here)."""
    return f"{base_url.rstrip('/')}/v1/unsubscribe/{quote(token, safe='')}"
