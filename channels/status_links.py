"""Signed status links: the capability in a message's `{{ run.status_url }}`.

A token names one run (its id across generations) and is signed with HMAC-SHA256 under
the deployment's secret, ``JOURNEYS_SECRET_KEY``, for this purpose only (an unsubscribe
token is not a status token, nor the reverse). It lets its holder see that run's status
page (`service.api.routes.status`): the `public:` texts of the steps it passed, where it
is now and when it expects to move on. Nothing else: no other run, no score, no step id.
Like unsubscribe links, tokens do not expire; changing the secret invalidates them all.

Lives here: making and reading tokens, and the link. Not here: what the page shows.
"""

from __future__ import annotations

from urllib.parse import quote

from channels.unsubscribe import read_parts, sign_parts

__all__ = ["make_status_token", "read_status_token", "status_url"]

_PURPOSE = b"journeys-status-v1:"


def make_status_token(*, run_id: str, secret: str) -> str:
    """A URL-safe token that shows ``run_id``'s status to whoever holds it."""
    return sign_parts([run_id], secret=secret, purpose=_PURPOSE)


def read_status_token(token: str, *, secret: str) -> str:
    """The run id of a token this deployment signed; `ValueError` (a message fit for the
    customer) when it is malformed, altered or signed with another secret."""
    [run_id] = read_parts(token, secret=secret, purpose=_PURPOSE, count=1, link="this status link")
    return run_id


def status_url(base_url: str, token: str) -> str:
    """The status page for ``token`` on the API at ``base_url``."""
    return f"{base_url.rstrip('/')}/v1/status/{quote(token, safe='')}"
