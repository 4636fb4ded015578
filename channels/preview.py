"""Previewing a template: every channel's rendering of it for a profile and an event, as a
send would render it.

Each form is compiled (`rules.compile_template`, for the line of a compile error) and then
rendered by `channels.rendering.render_message`, the function a send calls, with the
context a run gives its templates (`engine.payloads.run_context`'s names). So what a
preview shows is what a send would render, and a preview fails where a send would fail.
What it adds: an SMS's segment count and encoding (`channels.sms`, what delivery refuses
beyond `MAX_SEGMENTS`), a push title's and body's lengths against their limits, and for
an error the place of the line in the journeys file (or the `html_file`) it came from.

Used by `journeys preview` and the console's preview page. Nothing here prints or knows
the command line; the only I/O is reading the journeys file for the line of a form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from channels.rendering import PUSH_MAX, SMS_MAX, MissingFormError, render_message
from channels.sms import MAX_SEGMENTS, encoding, segments
from engine.catalog import Catalog
from rules import MESSAGE_NAMES, RenderError, TemplateError, compile_template

__all__ = [
    "PUSH_TITLE_MAX",
    "ChannelPreview",
    "FormPlace",
    "Length",
    "PairError",
    "TemplatePreview",
    "catalog_forms",
    "parse_pairs",
    "preview_template",
]

PUSH_TITLE_MAX = 200
"""A push title's render limit (`channels.rendering` renders it with this cap)."""
SUBJECT_MAX = 998

_CHANNEL_FORMS: dict[str, tuple[str, ...]] = {
    "email": ("email.subject", "email.text", "email.html"),
    "sms": ("sms",),
    "push": ("push", "push.title", "push.body"),
    "text": ("text",),
}
"""The channels a preview shows, each with the forms it renders ("text": any other
channel, e.g. ops or chat)."""


class PairError(ValueError):
    """A ``k=v`` line that is not one."""


@dataclass(frozen=True)
class FormPlace:
    """Where line 1 of a form's text is: a file and a line in it."""

    file: str
    line: int

    def at(self, line: int) -> str:
        """``file:line`` of the form's ``line`` (1-based within the form)."""
        return f"{self.file}:{self.line + line - 1}"


@dataclass(frozen=True)
class Length:
    """A rendered part's length against its limit."""

    part: str
    length: int
    limit: int

    @property
    def over(self) -> bool:
        return self.length > self.limit


@dataclass(frozen=True)
class ChannelPreview:
    """One channel's rendering of the template, or why it cannot be rendered."""

    channel: str
    subject: str | None = None
    title: str | None = None
    body: str | None = None
    html: str | None = None
    error: str | None = None
    where: str | None = None
    """``file:line`` (or ``form, line N`` without a file) of the error."""
    sms_segments: int | None = None
    sms_encoding: str | None = None
    lengths: tuple[Length, ...] = ()
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"channel": self.channel}
        for name in ("subject", "title", "body", "html", "error", "where"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        if self.sms_segments is not None:
            data["segments"] = self.sms_segments
            data["encoding"] = self.sms_encoding
        if self.lengths:
            data["lengths"] = {
                item.part: {"length": item.length, "limit": item.limit} for item in self.lengths
            }
        if self.warnings:
            data["warnings"] = list(self.warnings)
        return data


@dataclass(frozen=True)
class TemplatePreview:
    """Every channel's rendering of one template."""

    template: str
    timezone: str
    channels: tuple[ChannelPreview, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(c.error is None for c in self.channels)

    def as_dict(self) -> dict[str, Any]:
        return {
            "template": self.template,
            "timezone": self.timezone,
            "ok": self.ok,
            "channels": [c.as_dict() for c in self.channels],
        }


def parse_pairs(lines: Iterable[str], *, what: str) -> dict[str, Any]:
    """``k=v`` lines as a dict; a value that parses as JSON (25000, true, null, [1]) is
    that value, else the text. Blank lines and lines starting with ``#`` are skipped.
    ``what`` names the lines in an error (``--profile``, ``profile line 2``)."""
    parsed: dict[str, Any] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, text = line.partition("=")
        name = name.strip()
        if not sep or not name:
            raise PairError(f"{what} {number}: {raw.strip()!r} is not NAME=VALUE")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text.strip()
        parsed[name] = value
    return parsed


def catalog_forms(catalog: Catalog, name: str) -> tuple[dict[str, str], dict[str, FormPlace]]:
    """The forms of template ``name`` as the journeys file writes them (an ``html_file``
    read), and where each one's text starts. KeyError when there is no such template."""
    loaded = catalog.checked.loaded
    templates = loaded.data.get("templates")
    raw = templates.get(name) if isinstance(templates, dict) else None
    if not isinstance(raw, dict):
        raise KeyError(name)
    forms: dict[str, str] = {}
    places: dict[str, FormPlace] = {}
    for form, path in _raw_forms(raw):
        value = _dig(raw, path)
        location = loaded.source.locate(("templates", name, *path))
        if form == "email.html" and path[-1] == "html_file" and isinstance(value, str):
            target = loaded.root / value
            try:
                value = target.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue  # the validator says so
            places[form] = FormPlace(str(target), 1)
        else:
            places[form] = FormPlace(location.file, _first_line(location.file, location.line))
        if isinstance(value, str):
            forms[form] = value
    return forms, places


def _raw_forms(raw: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    found: list[tuple[str, tuple[str, ...]]] = []
    for form in ("sms", "text"):
        if form in raw:
            found.append((form, (form,)))
    push = raw.get("push")
    if isinstance(push, str):
        found.append(("push", ("push",)))
    elif isinstance(push, dict):
        found += [(f"push.{part}", ("push", part)) for part in ("title", "body") if part in push]
    email = raw.get("email")
    if isinstance(email, dict):
        found += [
            (f"email.{part}", ("email", part)) for part in ("subject", "text") if part in email
        ]
        if "html" in email:
            found.append(("email.html", ("email", "html")))
        elif "html_file" in email:
            found.append(("email.html", ("email", "html_file")))
    return found


def _dig(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = data
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _first_line(file: str, line: int) -> int:
    """The line of a form's first line: a block scalar (``|``, ``>``) starts on the next."""
    try:
        text = Path(file).read_text(encoding="utf-8").splitlines()[line - 1]
    except (OSError, IndexError):
        return line
    value = text.split(":", 1)[1].strip() if ":" in text else text.strip()
    return line + 1 if value[:1] in ("|", ">") else line


def _context(
    profile: Mapping[str, Any],
    event: Mapping[str, Any],
    variables: Mapping[str, Any],
    *,
    event_name: str,
    journey_id: str | None,
    version: str | None,
    now: datetime,
) -> dict[str, Any]:
    """The names `engine.payloads.run_context` gives a send's templates, from the values
    given (the customer's addresses are the profile's traits, as a profile holds them)."""
    return {
        "event": dict(event),
        "trigger": {
            "name": event_name,
            "timestamp": now.isoformat(),
            "message_id": "preview",
            "properties": dict(event),
        },
        "profile": dict(profile),
        "customer": {
            "id": str(profile.get("id", "preview")),
            "email": profile.get("email"),
            "phone": profile.get("phone"),
            "push_token": profile.get("push_token"),
        },
        "vars": dict(variables),
        "scores": {},
        "review": None,
        "journey": {"id": journey_id, "version": version, "run_id": "preview", "step": None},
        "run": {"status_url": "https://status.example/v1/status/preview-token"},
        "now": now.isoformat(),
    }


def preview_template(
    name: str,
    forms: Mapping[str, str],
    *,
    profile: Mapping[str, Any],
    event: Mapping[str, Any],
    variables: Mapping[str, Any] | None = None,
    timezone: str = "UTC",
    places: Mapping[str, FormPlace] | None = None,
    event_name: str = "preview",
    journey_id: str | None = None,
    version: str | None = None,
    now: datetime | None = None,
) -> TemplatePreview:
    """Every channel's rendering of template ``name`` (its ``forms``, as a plan holds
    them) for ``profile``, ``event`` and ``variables``. The customer's ``timezone`` trait
    wins over ``timezone``, as in a send."""
    zone = str(profile.get("timezone") or timezone)
    context = _context(
        profile,
        event,
        variables or {},
        event_name=event_name,
        journey_id=journey_id,
        version=version,
        now=now or datetime.now(UTC),
    )
    channels = [
        _preview_channel(channel, dict(forms), context, zone, places or {})
        for channel, parts in _CHANNEL_FORMS.items()
        if any(part in forms for part in parts)
    ]
    return TemplatePreview(template=name, timezone=zone, channels=tuple(channels))


def _preview_channel(
    channel: str,
    forms: dict[str, str],
    context: dict[str, Any],
    zone: str,
    places: Mapping[str, FormPlace],
) -> ChannelPreview:
    for form in _CHANNEL_FORMS[channel]:
        if form not in forms:
            continue
        try:
            compile_template(forms[form], html=form == "email.html", names=MESSAGE_NAMES)
        except TemplateError as error:
            problem = f"{form}: {error.message}" + (f" ({error.hint})" if error.hint else "")
            return ChannelPreview(channel, error=problem, where=_where(form, error.line, places))
    try:
        message = render_message(forms, channel, context, timezone=zone)
    except MissingFormError as error:  # e.g. an email without its subject
        return ChannelPreview(channel, error=str(error), where=_where(channel, 1, places))
    except RenderError as error:
        form, line = _culprit(channel, forms, context, zone, error.message)
        return ChannelPreview(
            channel, error=f"{form}: {error.message}", where=_where(form, line, places)
        )
    if channel == "email":
        return ChannelPreview(
            channel,
            subject=message.subject,
            body=message.body,
            html=message.html,
            lengths=(Length("subject", len(message.subject or ""), SUBJECT_MAX),),
        )
    if channel == "push":
        lengths: tuple[Length, ...] = (Length("body", len(message.body), PUSH_MAX),)
        if message.title is not None:
            lengths = (Length("title", len(message.title), PUSH_TITLE_MAX), *lengths)
        return ChannelPreview(channel, title=message.title, body=message.body, lengths=lengths)
    if channel == "sms":
        return _sms(message.body)
    return ChannelPreview(channel, body=message.body)


def _sms(body: str) -> ChannelPreview:
    count = segments(body)
    warnings: tuple[str, ...] = ()
    if count > MAX_SEGMENTS:
        warnings = (f"SMS would be {count} segments (max {MAX_SEGMENTS}): a send refuses it",)
    return ChannelPreview(
        "sms",
        body=body,
        sms_segments=count,
        sms_encoding=encoding(body).upper(),
        lengths=(Length("text", len(body), SMS_MAX),),
        warnings=warnings,
    )


def _culprit(
    channel: str, forms: dict[str, str], context: dict[str, Any], zone: str, message: str
) -> tuple[str, int]:
    """Which form of ``channel`` failed with ``message``, and the line within it."""
    parts = [p for p in _CHANNEL_FORMS[channel] if p in forms]
    failing = parts[0]
    for part in parts:
        try:
            compile_template(forms[part], html=part == "email.html", names=MESSAGE_NAMES).render(
                context, timezone=zone
            )
        except RenderError:
            failing = part
            break
    return failing, _line_of(forms[failing], message)


_NEEDS = re.compile(r"(?:needs|print None for) ([A-Za-z_][\w.]*)")


def _line_of(source: str, message: str) -> int:
    """The first line of ``source`` that reads what ``message`` names (else 1)."""
    found = _NEEDS.search(message)
    if found is None:
        return 1
    path = found.group(1)
    lines = source.splitlines()
    for probe in (path, path.rsplit(".", 1)[-1]):
        for number, line in enumerate(lines, start=1):
            if re.search(rf"\b{re.escape(probe)}\b", line):
                return number
    return 1


def _where(form: str, line: int, places: Mapping[str, FormPlace]) -> str:
    place = places.get(form)
    return place.at(line) if place is not None else f"{form}, line {line}"
