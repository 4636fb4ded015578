"""Rendering a template's form for a channel: email (subject, text, HTML), SMS, push, text.

Templates come from the plan as source text; each is compiled once per process (cached by
source) in the sandbox of `rules.templates`. HTML is escaped in email HTML parts only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rules import MESSAGE_NAMES, cached_template

__all__ = ["MissingFormError", "RenderedMessage", "form_for", "render_message"]

SMS_MAX = 1600
PUSH_MAX = 1000


class MissingFormError(ValueError):
    """The template has no form for the channel."""


@dataclass(frozen=True)
class RenderedMessage:
    """A message ready for a provider."""

    channel: str
    body: str
    subject: str | None = None
    html: str | None = None
    title: str | None = None


def form_for(forms: dict[str, str], channel: str) -> str:
    """Which form of a template a channel uses: email, sms, push, else text."""
    if channel == "email":
        if "email.subject" in forms:
            return "email"
    elif channel == "sms":
        if "sms" in forms:
            return "sms"
    elif channel == "push":
        if "push" in forms or "push.body" in forms:
            return "push"
    elif "sms" in forms and "text" not in forms:
        return "sms"
    if "text" in forms:
        return "text"
    raise MissingFormError(f"the template has no form for channel '{channel}'")


def _render(
    source: str | None,
    context: dict[str, Any],
    timezone: str,
    *,
    html: bool = False,
    limit: int = 100_000,
) -> str | None:
    if source is None:
        return None
    compiled = cached_template(source, html=html, names=MESSAGE_NAMES)
    return compiled.render(context, timezone=timezone, max_length=limit)


def render_message(
    forms: dict[str, str], channel: str, context: dict[str, Any], *, timezone: str
) -> RenderedMessage:
    """Render the channel's form (RenderError when a value is missing, never "Hi ,")."""
    form = form_for(forms, channel)
    if form == "email":
        subject = _render(forms["email.subject"], context, timezone, limit=998) or ""
        text = _render(forms.get("email.text"), context, timezone)
        html = _render(forms.get("email.html"), context, timezone, html=True)
        return RenderedMessage(channel=channel, subject=subject.strip(), body=text or "", html=html)
    if form == "push":
        title = _render(forms.get("push.title"), context, timezone, limit=200)
        body = (
            _render(forms.get("push") or forms.get("push.body"), context, timezone, limit=PUSH_MAX)
            or ""
        )
        return RenderedMessage(channel=channel, title=title, body=body)
    if form == "sms":
        return RenderedMessage(
            channel=channel, body=_render(forms["sms"], context, timezone, limit=SMS_MAX) or ""
        )
    return RenderedMessage(channel=channel, body=_render(forms["text"], context, timezone) or "")
