"""The validator never raises: arbitrary YAML gives violations, not exceptions."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.catalog import build_catalog_from_text
from tests.unit.journey_docs import journey_doc

KEYS = st.sampled_from(
    [
        "version",
        "journeys",
        "steps",
        "id",
        "send",
        "wait",
        "branch",
        "when",
        "goto",
        "entry",
        "event",
        "channel",
        "split",
        "paths",
        "exit",
        "review",
        "decisions",
        "templates",
        "models",
        "kind",
        "x",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["1d", "09:00", "event.amount > 1", "{{ x }}", "__import__('os')", "${VAR}"]),
)
VALUES: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(VALUES)
def test_validator_never_raises_on_arbitrary_structures(value: Any) -> None:
    text = yaml.safe_dump(
        {"version": 1, "journeys": value} if not isinstance(value, dict) else value
    )
    catalog = build_catalog_from_text(text)
    assert all(v.line >= 1 and v.message for v in catalog.violations)
    assert not any(v.code == "internal" for v in catalog.violations)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_validator_never_raises_on_arbitrary_text(text: str) -> None:
    catalog = build_catalog_from_text(text)
    assert not any(v.code == "internal" for v in catalog.violations)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.dictionaries(KEYS, SCALARS, max_size=5), min_size=1, max_size=5))
def test_validator_never_raises_on_arbitrary_steps(steps: list[dict[str, Any]]) -> None:
    text = journey_doc(yaml.safe_dump(steps))
    catalog = build_catalog_from_text(text)
    assert not any(v.code == "internal" for v in catalog.violations)
