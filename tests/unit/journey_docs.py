"""Builders of small journeys documents for the design-time tests."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from engine.catalog import Catalog, build_catalog_from_text
from engine.violations import Violation

HEAD = """\
version: 1
events:
  payment_failed: {amount: number, currency: string, invoice_id: string}
  payment_received: {amount: number}
channels:
  sms: "${JOURNEYS_SMS_URL}"
  email: "${JOURNEYS_EMAIL_URL}"
models:
  default_risk: {kind: python, function: "risk_models.default_risk:predict", fallback: 0.5}
templates:
  offer:
    sms: "Hi {{ profile.first_name }}, {{ event.amount }}"
    email: {subject: "An offer", text: "Hi {{ profile.first_name }}"}
"""


def journey_doc(
    steps: str, *, head: str = HEAD, entry: str = "payment_failed", extra: str = ""
) -> str:
    """A document with one journey `j` whose steps are ``steps`` (YAML, at list level)."""
    body = textwrap.indent(textwrap.dedent(steps).strip("\n"), "      ")
    return (
        head
        + "journeys:\n"
        + "  - id: j\n"
        + f"    entry: {{event: {entry}}}\n"
        + (textwrap.indent(textwrap.dedent(extra).strip("\n"), "    ") + "\n" if extra else "")
        + "    steps:\n"
        + body
        + "\n"
    )


def check(text: str) -> Catalog:
    return build_catalog_from_text(text, file="j.yaml")


def line_of(text: str, marker: str) -> int:
    """1-based line of the first line containing ``marker``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not in document")


def errors(catalog: Catalog) -> list[Violation]:
    return [v for v in catalog.violations if v.severity == "error"]


def only_error(catalog: Catalog) -> Violation:
    found = errors(catalog)
    assert len(found) == 1, "\n".join(v.format() for v in catalog.violations)
    return found[0]


@dataclass(frozen=True)
class Refusal:
    """A document the validator must refuse with exactly one error, and that error as
    `journeys validate` shows it: code, message, hint, and the line holding ``at``."""

    text: str
    code: str
    message: str
    at: str
    hint: str | None = None
    journey: str | None = "j"
    step: str | None = None
    column: int | None = None  # checked when given


def assert_refused(case: Refusal) -> None:
    catalog = check(case.text)
    violation = only_error(catalog)
    assert (violation.code, violation.message, violation.hint) == (
        case.code,
        case.message,
        case.hint,
    )
    assert violation.line == line_of(case.text, case.at)
    assert (violation.journey, violation.step) == (case.journey, case.step)
    if case.column is not None:
        assert violation.column == case.column
    assert catalog.plans == {}
