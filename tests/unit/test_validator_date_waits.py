"""Waits on dates and weekdays at design time: the YAML forms, what the validator says
about each mistake (and where), what they compile to, and how the map draws them."""

from __future__ import annotations

from engine import plan as p
from engine.graph import to_mermaid
from tests.unit.journey_docs import check, errors, journey_doc, line_of, only_error

RENEWAL = journey_doc(
    """
    - id: before_renewal
      wait: {until: {date: profile.renewal_date, offset: -3d, at: "09:00"}}
      on_missing: no_date
    - {id: monday, wait: {until: {weekday: mon, at: "10:00"}}}
    - {id: morning, wait: {until: "09:00"}}
    - {id: offer, send: offer, channel: sms}
    - {id: done, exit: done}
    - {id: no_date, exit: no_date}
    """
)


def test_the_three_until_forms_compile_and_the_old_one_stays_as_it_was() -> None:
    catalog = check(RENEWAL)
    assert errors(catalog) == []
    steps = catalog.plans["j"].steps
    assert steps["before_renewal"] == p.DateWaitPlan(
        id="before_renewal",
        date="profile.renewal_date",
        offset_seconds=-3 * 86400,
        at="09:00",
        on_missing="no_date",
        next="monday",
    )
    assert steps["monday"] == p.DateWaitPlan(id="monday", weekday="mon", at="10:00", next="morning")
    assert steps["morning"] == p.UntilWaitPlan(id="morning", until="09:00", next="offer")


def test_the_map_labels_date_waits_and_draws_on_missing() -> None:
    chart = to_mermaid(check(RENEWAL).plans["j"])
    assert "before_renewal: wait until profile.renewal_date - 3d at 09:00 local" in chart
    assert "monday: wait until mon at 10:00 local" in chart
    assert 'before_renewal -->|"missing or past"| no_date' in chart


def test_an_offset_that_is_not_a_duration_is_refused_where_written() -> None:
    text = journey_doc(
        """
        - id: w
          wait: {until: {date: profile.renewal_date, offset: -3x}}
        """
    )
    violation = only_error(check(text))
    assert violation.code == "duration"
    assert violation.message.startswith("'-3x' is not an offset")
    assert violation.line == line_of(text, "offset: -3x")


def test_at_must_be_hh_mm() -> None:
    text = journey_doc(
        """
        - id: w
          wait: {until: {date: profile.renewal_date, at: "9am"}}
        """
    )
    violation = only_error(check(text))
    assert violation.message == "'9am' is not a time of day: use 24-hour 'HH:MM', like '09:00'"
    assert violation.line == line_of(text, '"9am"')


def test_a_weekday_is_mon_to_sun() -> None:
    text = journey_doc("""- {id: w, wait: {until: {weekday: monday, at: "10:00"}}}""")
    violation = only_error(check(text))
    assert "'mon', 'tue', 'wed', 'thu', 'fri', 'sat' or 'sun'" in violation.message
    assert violation.step == "w"


def test_an_until_mapping_without_date_or_weekday_says_which_forms_exist() -> None:
    text = journey_doc("""- {id: w, wait: {until: {day: 3}}}""")
    violation = only_error(check(text))
    assert violation.code == "type"
    assert violation.message.startswith("until: must be a time like '09:00', {date: <expression>")


def test_the_date_expression_is_checked_like_any_other() -> None:
    text = journey_doc(
        """
        - id: w
          wait: {until: {date: event.renewl_date, at: "09:00"}}
        """
    )
    violation = only_error(check(text))
    assert violation.code == "event-property"
    assert "event 'payment_failed' has no property 'renewl_date'" in violation.message
    assert violation.line == line_of(text, "renewl_date")


def test_a_date_expression_that_does_not_parse_is_refused() -> None:
    text = journey_doc("""- {id: w, wait: {until: {date: "profile.renewal_date +"}}}""")
    violation = only_error(check(text))
    assert violation.code == "expression"


def test_on_missing_must_name_a_step() -> None:
    text = journey_doc(
        """
        - id: w
          wait: {until: {date: profile.renewal_date}}
          on_missing: no_dat
        - {id: no_date, exit: no_date}
        """
    )
    violation = only_error(check(text))
    assert violation.code == "unknown-step"
    assert violation.message == "on_missing names step 'no_dat', which journey 'j' does not have"
    assert violation.line == line_of(text, "on_missing: no_dat")


def test_on_missing_on_a_wait_that_cannot_miss_is_one_error_not_also_unreachable() -> None:
    text = journey_doc(
        """
        - id: w
          wait: {until: {weekday: fri}}
          on_missing: no_date
        - {id: offer, send: offer, channel: sms}
        - {id: done, exit: done}
        - {id: no_date, exit: no_date}
        """
    )
    violation = only_error(check(text))
    assert violation.message == "on_missing: only applies to a wait until a date"
    assert violation.line == line_of(text, "on_missing: no_date")
