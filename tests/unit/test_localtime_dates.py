"""The date arithmetic of waits on dates and weekdays (engine.localtime): the instant a
customer's message goes out, in their zone, across DST changes."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from engine.durations import DurationError, parse_offset
from engine.localtime import date_fire_at, date_wait_fire_at, next_weekday, read_date

SEOUL = ZoneInfo("Asia/Seoul")
NEW_YORK = ZoneInfo("America/New_York")
DAY = 86400


def test_offsets_are_signed_durations() -> None:
    assert parse_offset("-3d") == -3 * DAY
    assert parse_offset("+12h") == parse_offset("12h") == 12 * 3600
    with pytest.raises(DurationError):
        parse_offset("-")
    with pytest.raises(DurationError):
        parse_offset("--3d")


def test_renewal_minus_3_days_at_0900_seoul() -> None:
    fire = date_fire_at(date(2027, 3, 17), SEOUL, offset_seconds=-3 * DAY, at="09:00")
    assert fire == datetime(2027, 3, 14, 0, 0, tzinfo=UTC)  # 09:00 KST, UTC+9


def test_minus_3_days_keeps_0900_local_across_spring_forward() -> None:
    # Clocks in New York go 02:00 -> 03:00 on 14 March 2027: the renewal is on EDT, so is
    # the reminder, and so would a date still on EST be: 09:00 local either side.
    fire = date_fire_at(date(2027, 3, 17), NEW_YORK, offset_seconds=-3 * DAY, at="09:00")
    assert fire == datetime(2027, 3, 14, 13, 0, tzinfo=UTC)  # 09:00 EDT
    before = date_fire_at(date(2027, 3, 16), NEW_YORK, offset_seconds=-3 * DAY, at="09:00")
    assert before == datetime(2027, 3, 13, 14, 0, tzinfo=UTC)  # 09:00 EST


def test_an_aware_datetime_keeps_its_instant_and_moves_on_the_local_clock() -> None:
    renewal = datetime(2027, 3, 17, 18, 30, tzinfo=UTC)  # 14:30 EDT
    assert date_fire_at(renewal, NEW_YORK) == renewal
    # 3 days before on the New York clock is 14:30 EST, an hour later in UTC than -72h
    assert date_fire_at(renewal, NEW_YORK, offset_seconds=-3 * DAY) == datetime(
        2027, 3, 14, 18, 30, tzinfo=UTC
    )
    # `at` replaces the local time of day of the customer's date (17 March in New York)
    assert date_fire_at(renewal, NEW_YORK, at="09:00") == datetime(2027, 3, 17, 13, 0, tzinfo=UTC)


def test_a_date_only_value_without_at_is_local_midnight() -> None:
    assert date_fire_at(date(2027, 1, 10), SEOUL) == datetime(2027, 1, 9, 15, 0, tzinfo=UTC)


def test_a_naive_datetime_is_the_customer_wall_clock() -> None:
    fire = date_fire_at(datetime(2027, 1, 10, 9, 0), NEW_YORK)
    assert fire == datetime(2027, 1, 10, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "read"),
    [
        ("2027-03-17", date(2027, 3, 17)),
        ("2027-03-17T09:00:00+09:00", datetime(2027, 3, 17, 0, 0, tzinfo=UTC)),
        ("2027-03-17T00:00:00Z", datetime(2027, 3, 17, tzinfo=UTC)),
        (1_805_241_600, datetime(2027, 3, 17, tzinfo=UTC)),
        (None, None),
        ("", None),
        ("next tuesday", None),
        (True, None),
        ({"y": 2027}, None),
    ],
)
def test_read_date(value: object, read: date | None) -> None:
    assert read_date(value) == read


def test_missing_and_past_dates_say_which() -> None:
    now = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)
    assert date_wait_fire_at(now, SEOUL, None) == (None, "missing")
    assert date_wait_fire_at(now, SEOUL, "soon") == (None, "missing")
    fire, outcome = date_wait_fire_at(now, SEOUL, "2027-03-12", offset_seconds=-3 * DAY)
    assert (fire, outcome) == (datetime(2027, 3, 8, 15, 0, tzinfo=UTC), "past")
    fire, outcome = date_wait_fire_at(now, SEOUL, "2027-03-17", offset_seconds=-3 * DAY, at="09:00")
    assert (fire, outcome) == (datetime(2027, 3, 14, 0, 0, tzinfo=UTC), "waiting")


def test_next_weekday_is_today_while_the_time_is_ahead_else_next_week() -> None:
    # Monday 8 March 2027, 09:30 in Seoul
    monday_0930 = datetime(2027, 3, 8, 0, 30, tzinfo=UTC)
    assert next_weekday(monday_0930, SEOUL, "mon", "10:00") == datetime(
        2027, 3, 8, 1, 0, tzinfo=UTC
    )
    assert next_weekday(monday_0930, SEOUL, "mon", "09:00") == datetime(
        2027, 3, 15, 0, 0, tzinfo=UTC
    )
    assert next_weekday(monday_0930, SEOUL, "wed", "10:00") == datetime(
        2027, 3, 10, 1, 0, tzinfo=UTC
    )


def test_next_weekday_keeps_local_time_across_spring_forward() -> None:
    friday = datetime(2027, 3, 12, 17, 0, tzinfo=UTC)  # 12:00 EST
    assert next_weekday(friday, NEW_YORK, "mon", "10:00") == datetime(
        2027, 3, 15, 14, 0, tzinfo=UTC
    )  # 10:00 EDT
