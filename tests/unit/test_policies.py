"""The sending policies without Temporal: consent from preferences and profile traits, the
suppression list, signed unsubscribe tokens, and the frequency cap, including two
reservations racing for a customer's last slot from separate connections.

The database is SQLite in tmp_path; the cap's race runs on PostgreSQL too when
``JOURNEYS_TEST_DATABASE_URL`` is set.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import select

from channels import policies
from channels.policies import CapDecision
from channels.unsubscribe import make_unsubscribe_token, read_unsubscribe_token, unsubscribe_url
from engine.database import CapReservation, Preference, make_engine, session_scope
from tests.database import database_url, fresh_engine

DAY = 24 * 3600
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SECRET = "test-secret-not-a-secret"


# ----------------------------------------------------------------------------- addresses


def test_address_hash_ignores_case_spaces_and_phone_formatting() -> None:
    assert policies.address_hash("email", " Ana@Example.COM ") == policies.address_hash(
        "email", "ana@example.com"
    )
    assert policies.address_hash("sms", "+82 10-1234-5678") == policies.address_hash(
        "sms", "+821012345678"
    )
    assert policies.address_hash("sms", "+821012345678") != policies.address_hash(
        "push", "+821012345678"
    )


def test_mask_keeps_just_enough_to_recognise_an_address() -> None:
    assert policies.mask("email", "ana@example.com") == "a***@example.com"
    assert policies.mask("sms", "+82 10-1234-5678") == "+82******5678"
    assert "abcdef0123456789" not in policies.mask("push", "abcdef0123456789")


# ----------------------------------------------------------------------------- consent


def _consent(db: Engine, *, channel: str = "email", traits: dict[str, Any] | None = None) -> Any:
    with session_scope(db) as session:
        return policies.consent(session, customer_id="c1", channel=channel, traits=traits or {})


def test_a_customer_with_no_choice_recorded_is_opted_in(db: Engine) -> None:
    assert _consent(db) == (True, None)


def test_an_opt_out_preference_refuses_that_channel_only(db: Engine) -> None:
    with session_scope(db) as session:
        policies.set_preference(
            session, customer_id="c1", channel="email", opted_in=False, source="unsubscribe link"
        )
    assert _consent(db) == (False, "opted out of email (unsubscribe link)")
    assert _consent(db, channel="sms") == (True, None)


@pytest.mark.parametrize(
    ("traits", "reason"),
    [
        ({"unsubscribed": True}, "profile trait unsubscribed is true"),
        ({"email_opt_out": True}, "profile trait email_opt_out is true"),
        ({"email_opt_out": "yes"}, "profile trait email_opt_out is true"),
        ({"email_opt_in": False}, "profile trait email_opt_in is false"),
        ({"email_opt_in": "false"}, "profile trait email_opt_in is false"),
    ],
)
def test_profile_traits_opt_a_customer_out(db: Engine, traits: dict[str, Any], reason: str) -> None:
    assert _consent(db, traits=traits) == (False, reason)


@pytest.mark.parametrize(
    "traits",
    [
        {"sms_opt_out": True},
        {"email_opt_in": True},
        {"email_opt_out": False},
        {"unsubscribed": "maybe"},
        {"email_opt_in": None},
    ],
)
def test_other_traits_leave_consent_alone(db: Engine, traits: dict[str, Any]) -> None:
    assert _consent(db, traits=traits) == (True, None)


def test_an_opt_out_trait_wins_over_an_opt_in_preference(db: Engine) -> None:
    with session_scope(db) as session:
        policies.set_preference(
            session, customer_id="c1", channel="email", opted_in=True, source="api"
        )
    assert _consent(db, traits={"email_opt_out": True})[0] is False


def test_setting_a_preference_twice_keeps_one_row_with_the_latest_choice(db: Engine) -> None:
    with session_scope(db) as session:
        policies.set_preference(
            session, customer_id="c1", channel="sms", opted_in=False, source="sms STOP"
        )
        policies.set_preference(
            session, customer_id="c1", channel="sms", opted_in=True, source="sms START"
        )
    with session_scope(db) as session:
        rows = session.exec(select(Preference)).all()
        shown = policies.preferences(session, customer_id="c1")
    assert [(r.channel, r.opted_in, r.source) for r in rows] == [("sms", True, "sms START")]
    assert shown["sms"].source == "sms START"
    assert shown["email"] == policies.ChannelPreference(
        opted_in=True, source="default", updated_at=None
    )


# ----------------------------------------------------------------------------- suppression


def test_a_suppressed_address_is_found_however_it_is_written(db: Engine) -> None:
    with session_scope(db) as session:
        assert policies.suppress(
            session, channel="email", address="Ana@Example.com", reason="hard bounce"
        )
    with session_scope(db) as session:
        assert policies.is_suppressed(session, channel="email", address=" ana@example.com") == (
            "hard bounce"
        )
        assert policies.is_suppressed(session, channel="sms", address="ana@example.com") is None


def test_suppressing_twice_keeps_the_first_reason(db: Engine) -> None:
    with session_scope(db) as session:
        assert policies.suppress(session, channel="sms", address="+8210", reason="sms STOP")
        assert not policies.suppress(session, channel="sms", address="+8210", reason="bounce")
    with session_scope(db) as session:
        assert policies.is_suppressed(session, channel="sms", address="+8210") == "sms STOP"


def test_unsuppress_with_a_reason_lifts_only_that_reason(db: Engine) -> None:
    with session_scope(db) as session:
        policies.suppress(session, channel="sms", address="+8210", reason="invalid number")
        assert not policies.unsuppress(session, channel="sms", address="+8210", reason="sms STOP")
        assert policies.is_suppressed(session, channel="sms", address="+8210") == "invalid number"
        assert policies.unsuppress(session, channel="sms", address="+8210")
        assert policies.is_suppressed(session, channel="sms", address="+8210") is None


# ----------------------------------------------------------------------------- unsubscribe tokens


def test_an_unsubscribe_token_reads_back_its_customer_and_channel() -> None:
    token = make_unsubscribe_token(customer_id="cust/ü 1", channel="email", secret=SECRET)
    assert read_unsubscribe_token(token, secret=SECRET) == ("cust/ü 1", "email")
    assert all(c.isalnum() or c in "-_." for c in token)
    assert unsubscribe_url("https://x.test/", token) == f"https://x.test/v1/unsubscribe/{token}"


def test_a_token_for_another_customer_with_the_old_signature_is_refused() -> None:
    token = make_unsubscribe_token(customer_id="c1", channel="email", secret=SECRET)
    forged_payload = base64.urlsafe_b64encode(json.dumps(["c2", "email"]).encode()).rstrip(b"=")
    forged = forged_payload.decode() + "." + token.split(".")[1]
    with pytest.raises(ValueError, match="altered"):
        read_unsubscribe_token(forged, secret=SECRET)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
        lambda t: t.replace(".", ""),
        lambda t: t + "!",
        lambda t: "",
        lambda t: "é" + t,
    ],
    ids=["signature-changed", "no-dot", "bad-character", "empty", "not-ascii"],
)
def test_a_tampered_token_is_refused_with_a_clear_message(mangle: Any) -> None:
    token = make_unsubscribe_token(customer_id="c1", channel="email", secret=SECRET)
    with pytest.raises(ValueError, match="unsubscribe link"):
        read_unsubscribe_token(mangle(token), secret=SECRET)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = make_unsubscribe_token(customer_id="c1", channel="email", secret="other")
    with pytest.raises(ValueError, match="not issued by this service"):
        read_unsubscribe_token(token, secret=SECRET)


def test_tokens_cannot_be_made_without_a_secret() -> None:
    with pytest.raises(ValueError, match="JOURNEYS_SECRET_KEY"):
        make_unsubscribe_token(customer_id="c1", channel="email", secret="")


# ----------------------------------------------------------------------------- frequency cap


def _reserve(
    db: Engine, *, visit: int, at: datetime, customer: str = "c1", step: str = "send"
) -> CapDecision:
    return policies.reserve_cap_slot(
        db,
        customer_id=customer,
        run_id=f"run-{customer}",
        step_id=step,
        visit=visit,
        max_count=3,
        per_seconds=DAY,
        now=at,
    )


def test_the_fourth_message_in_a_day_is_refused_until_the_first_expires(db: Engine) -> None:
    for visit in range(3):
        decision = _reserve(db, visit=visit, at=T0 + timedelta(hours=visit))
        assert decision == CapDecision(granted=True, retry_at=None, used=visit + 1)
    refused = _reserve(db, visit=3, at=T0 + timedelta(hours=5))
    assert refused == CapDecision(granted=False, retry_at=T0 + timedelta(days=1), used=3)
    assert refused.retry_at is not None
    assert _reserve(db, visit=3, at=refused.retry_at - timedelta(seconds=1)).granted is False
    assert _reserve(db, visit=3, at=refused.retry_at).granted is True


def test_the_cap_counts_a_customer_across_journeys_but_not_other_customers(db: Engine) -> None:
    for visit, step in enumerate(["a", "b", "c"]):
        assert _reserve(db, visit=visit, at=T0, step=step).granted
    assert not _reserve(db, visit=9, at=T0, step="d").granted
    assert _reserve(db, visit=0, at=T0, customer="c2").granted


def test_a_retried_reservation_for_the_same_visit_takes_no_second_slot(db: Engine) -> None:
    assert _reserve(db, visit=0, at=T0).granted
    again = _reserve(db, visit=0, at=T0 + timedelta(minutes=1))
    assert again == CapDecision(granted=True, retry_at=None, used=1)
    with session_scope(db) as session:
        assert len(session.exec(select(CapReservation)).all()) == 1


def test_a_released_slot_can_be_taken_again(db: Engine) -> None:
    for visit in range(3):
        _reserve(db, visit=visit, at=T0)
    assert policies.release_cap_slot(db, run_id="run-c1", step_id="send", visit=2)
    assert not policies.release_cap_slot(db, run_id="run-c1", step_id="send", visit=2)
    assert _reserve(db, visit=7, at=T0).granted


@pytest.fixture(params=["sqlite", "postgresql"])
def two_connections(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Engine]]:
    """Two engines on one database, as two worker processes would have."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'race.db'}"
        engines = [make_engine(url), make_engine(url)]
    else:
        if not os.environ.get("JOURNEYS_TEST_DATABASE_URL"):
            pytest.skip("set JOURNEYS_TEST_DATABASE_URL to race on PostgreSQL")
        engines = [fresh_engine(tmp_path), make_engine(database_url(tmp_path))]
    try:
        yield engines
    finally:
        for engine in engines:
            engine.dispose()


def _slow_down_counting(engine: Engine) -> None:
    """Sleep after every read of the reservations, so that without the lock both
    reservations would count the same free slot before either inserts."""

    @event.listens_for(engine, "after_cursor_execute")
    def _pause(*args: Any) -> None:
        statement = str(args[2])
        if statement.lstrip().upper().startswith("SELECT") and "cap_reservations" in statement:
            time.sleep(0.05)


def test_two_racing_reservations_for_the_last_slot_grant_exactly_one(
    two_connections: list[Engine],
) -> None:
    first, second = two_connections
    for visit in range(2):
        assert _reserve(first, visit=visit, at=T0).granted
    for engine in two_connections:
        _slow_down_counting(engine)
    start = threading.Barrier(2)
    decisions: dict[str, CapDecision] = {}
    errors: list[BaseException] = []

    def race(engine: Engine, step: str) -> None:
        start.wait()
        try:
            decisions[step] = _reserve(engine, visit=0, at=T0, step=step)
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=race, args=(first, "journey_a")),
        threading.Thread(target=race, args=(second, "journey_b")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sorted(d.granted for d in decisions.values()) == [False, True]
    refused = next(d for d in decisions.values() if not d.granted)
    assert refused.used == 3 and refused.retry_at == T0 + timedelta(days=1)
    with session_scope(first) as session:
        assert len(session.exec(select(CapReservation)).all()) == 3
