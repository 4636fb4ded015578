"""Type-checked templates (issue #17, item 2): a filter given a value of a type it cannot
take is refused, at the template's line; and nothing the example catalogue or the docs
rightly write is refused."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.catalog import build_catalog, build_catalog_from_text
from tests.unit.journey_docs import HEAD, Refusal, assert_refused, check, journey_doc

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
PROFILE_HEAD = HEAD.replace("templates:", "profile:\n  vip: boolean\ntemplates:")


def review_doc(title: str, *, head: str = PROFILE_HEAD) -> str:
    return journey_doc(
        f"""
- id: s
  score: default_risk
  features: {{amount: event.amount}}
- id: r
  review: ops
  title: "{title}"
  decisions: {{ok: done}}
- id: done
  exit: done
""",
        head=head,
    )


def review_refusal(title: str, message: str, hint: str) -> Refusal:
    text = review_doc(title)
    line = next(line for line in text.splitlines() if "title:" in line)
    return Refusal(
        text=text,
        code="type-mismatch",
        message=f"template, line 1: {message}",
        hint=hint,
        at="title:",
        step="r",
        column=line.index('"') + 1,
    )


def test_money_given_a_boolean_is_refused() -> None:
    assert_refused(
        review_refusal(
            "{{ profile.vip | money }}",
            "filter 'money' needs a number; profile.vip is a boolean",
            "apply 'money' to a number, or check the declared type",
        )
    )


def test_round_given_a_model_result_says_which_field() -> None:
    assert_refused(
        review_refusal(
            "Risk {{ scores.default_risk | round(2) }}",
            "filter 'round' needs a number; scores.default_risk is a model result",
            "did you mean `scores.default_risk.score`?",
        )
    )


def test_date_given_a_boolean_is_refused() -> None:
    assert_refused(
        review_refusal(
            "{{ profile.vip | date('%d %b') }}",
            "filter 'date' needs a timestamp, ISO-8601 text or epoch seconds; "
            "profile.vip is a boolean",
            "apply 'date' to a timestamp, ISO-8601 text or epoch seconds, or check the "
            "declared type",
        )
    )


def test_a_send_template_is_checked_with_the_sending_steps_types() -> None:
    head = HEAD.replace(
        'sms: "Hi {{ profile.first_name }}, {{ event.amount }}"',
        'sms: "Hi {{ profile.first_name }},\\n{{ event.currency | abs }}"',
    )
    text = journey_doc(
        """
- id: hello
  send: offer
  channel: sms
""",
        head=head,
    )
    assert_refused(
        Refusal(
            text=text,
            code="type-mismatch",
            message="template 'offer' (sms), line 2: filter 'abs' needs a number; "
            "event.currency is a string",
            hint="apply 'abs' to a number, or check the declared type",
            at="send: offer",
            step="hello",
        )
    )


@pytest.mark.parametrize(
    "title",
    [
        "{{ event.amount | money }}",
        "{{ event.currency | upper }}",
        "{{ trigger.timestamp | date('%d %b') }}",
        "{{ now | datetime }}",
        "{{ scores.default_risk.score | round(2) }}",
        "{{ profile.other | round }}",  # an undeclared trait is any
        "{{ event.amount | default(0) | money }}",
        "{% for t in [1, 2] %}{{ t | money }}{% endfor %}",
        "{% set vip = 3 %}{{ vip | money }}",  # a template's own name is any
        "{{ event.invoice_id | length }}",
    ],
)
def test_what_can_render_is_not_refused(title: str) -> None:
    violations = check(review_doc(title)).violations
    assert [v.format() for v in violations if v.code == "type-mismatch"] == []


# ----------------------------------------------------------------------------- the docs


def _type_mismatches(text: str, *, file: str) -> list[str]:
    catalog = build_catalog_from_text(text, file=file, root=ROOT / "docs")
    return [v.format() for v in catalog.violations if v.code == "type-mismatch"]


def test_the_example_catalogue_has_no_type_mismatch() -> None:
    catalog = build_catalog(ROOT / "journeys.yaml")
    assert [v.format() for v in catalog.violations if v.code == "type-mismatch"] == []
    assert catalog.ok


def _yaml_blocks(doc: str) -> list[Any]:
    """The doc's yaml blocks, but for the Types section's example of a mistake."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    start = text.find("## Types")
    end = text.find("\n## ", start + 1) if start >= 0 else -1
    return [
        yaml.safe_load(found.group(2))
        for found in FENCE.finditer(text)
        if found.group(1) == "yaml" and not start <= found.start() < end
    ]


DOCUMENT_KEYS = {"version", "settings", "events", "profile", "channels", "models", "templates"}


def _in_the_example_catalogue(block: Any) -> dict[str, Any] | None:
    """``block`` (a complete document, catalogue sections, a step list or models) set into
    the example catalogue, or None for what is no journeys YAML."""
    base: dict[str, Any] = yaml.safe_load((ROOT / "journeys.yaml").read_text(encoding="utf-8"))
    if isinstance(block, list) and all(isinstance(s, dict) and "id" in s for s in block):
        base["journeys"] = [{"id": "docs", "entry": {"event": "payment_failed"}, "steps": block}]
        return base
    if not isinstance(block, dict):
        return None
    if "version" in block:
        return block
    if set(block) <= DOCUMENT_KEYS | {"journeys"}:
        for key, value in block.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return base
    if all(isinstance(model, dict) and "kind" in model for model in block.values()):
        base["models"] = {**base["models"], **block}
        return base
    return None


@pytest.mark.parametrize("doc", ["docs/journeys.md", "docs/models.md"])
def test_every_yaml_block_in_the_docs_has_no_type_mismatch(doc: str) -> None:
    checked = 0
    for block in _yaml_blocks(doc):
        document = _in_the_example_catalogue(block)
        if document is None:
            continue
        checked += 1
        assert _type_mismatches(yaml.safe_dump(document, sort_keys=False), file=doc) == [], block
    assert checked >= 4


def test_the_complete_documents_in_the_docs_have_no_type_mismatch() -> None:
    complete = [
        block
        for doc in ("docs/journeys.md", "docs/models.md")
        for block in _yaml_blocks(doc)
        if isinstance(block, dict) and "version" in block
    ]
    assert complete
    for block in complete:
        assert _type_mismatches(yaml.safe_dump(block), file="docs") == []


def test_the_types_section_shows_a_real_error_line() -> None:
    """The line in docs/journeys.md's Types section is what `journeys validate` prints."""
    text = (ROOT / "docs/journeys.md").read_text(encoding="utf-8")
    section = text[text.index("## Types") :]
    yaml_block, shown = (body for _, body in FENCE.findall(section)[:2])
    document = yaml.safe_load((ROOT / "journeys.yaml").read_text(encoding="utf-8"))
    document["journeys"] = [
        {"id": "types", "entry": {"event": "payment_failed"}, "steps": yaml.safe_load(yaml_block)}
    ]
    printed = _type_mismatches(yaml.safe_dump(document, sort_keys=False), file="journeys.yaml")
    wanted = [re.sub(r"^journeys\.yaml:\d+:\d+: ", "", line) for line in shown.splitlines()]
    assert [re.sub(r"^journeys\.yaml:\d+:\d+: ", "", line) for line in printed] == wanted
