"""Workflow ids (engine/payloads.py): ``journey/<journey>/<customer>[/<key>]``, the customer
escaped so that the codec can read it back (`customer_of_workflow_id`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.payloads import customer_of_workflow_id, workflow_id_for

journeys = st.from_regex(r"[a-z][a-z0-9_]{0,30}", fullmatch=True)
keys = st.one_of(st.none(), st.text(min_size=1))


@pytest.mark.parametrize(
    ("journey", "customer", "key", "expected"),
    [
        ("recovery", "c-1", None, "journey/recovery/c-1"),
        ("orders", "c-1", "o-1", "journey/orders/c-1/o-1"),
        ("orders", "user@example.com", "a/b", "journey/orders/user@example.com/a/b"),
        ("orders", "a/b", None, "journey/orders/a%2Fb"),
        ("orders", "50%", "k", "journey/orders/50%25/k"),
        ("orders", "%2F", None, "journey/orders/%252F"),
    ],
)
def test_the_customer_segment_is_escaped(
    journey: str, customer: str, key: str | None, expected: str
) -> None:
    assert workflow_id_for(journey, customer, key) == expected
    assert customer_of_workflow_id(expected) == customer


def test_ids_without_slash_or_percent_are_unchanged() -> None:
    """Runs started before the escaping keep their ids (the router signals them by id)."""
    assert workflow_id_for("j", "Ann Smith+1", "k/1") == "journey/j/Ann Smith+1/k/1"


@pytest.mark.parametrize(
    "workflow_id",
    [
        "",
        "journey",
        "journey/",
        "journey/recovery",
        "journey//c-1",
        "other/recovery/c-1",
        "scenario-abc",
        "journey/recovery/50%",  # a bare % is never written
        "journey/recovery/50%2",
        "journey/recovery/a%2fb",  # the escapes are upper case
        "journey/recovery/a%41b",
    ],
)
def test_ids_not_of_the_form_name_no_customer(workflow_id: str) -> None:
    assert customer_of_workflow_id(workflow_id) is None


@given(journey=journeys, customer=st.text(), key=keys)
def test_the_customer_round_trips(journey: str, customer: str, key: str | None) -> None:
    workflow_id = workflow_id_for(journey, customer, key)
    assert customer_of_workflow_id(workflow_id) == customer


@given(
    journey=journeys,
    customer=st.text(alphabet=st.characters(exclude_characters="/%")),
    key=keys,
)
def test_plain_customers_are_written_as_they_are(
    journey: str, customer: str, key: str | None
) -> None:
    expected = f"journey/{journey}/{customer}" + (f"/{key}" if key else "")
    assert workflow_id_for(journey, customer, key) == expected


@given(journey=journeys, customers=st.lists(st.text(), min_size=2, max_size=2, unique=True))
def test_different_customers_never_share_an_id(journey: str, customers: list[str]) -> None:
    first, second = customers
    assert workflow_id_for(journey, first, "k") != workflow_id_for(journey, second, "k")
