"""A channel's `rate:` as the catalogue's author meets it: written per second, minute or
hour, defaulted by channel, and refused with the line of the bad value."""

from __future__ import annotations

import pytest

from engine.spec import ChannelSpec, channel_rate, parse_rate, rate_burst
from tests.unit.journey_docs import check, errors, journey_doc, line_of

STEPS = "- {id: hello, send: offer, channel: email}"


def head(email: str) -> str:
    return (
        "version: 1\n"
        "channels:\n"
        f"  email:\n{email}"
        "templates:\n"
        "  offer:\n"
        '    email: {subject: "An offer", text: "Hi"}\n'
    )


@pytest.mark.parametrize(
    ("written", "per_second"),
    [("50/s", 50.0), ("600/m", 10.0), ("1800/h", 0.5), ("2.5/s", 2.5), (" 5 / s ", 5.0)],
)
def test_a_rate_is_a_count_per_second_minute_or_hour(written: str, per_second: float) -> None:
    assert parse_rate(written) == pytest.approx(per_second)


def test_defaults_by_channel_and_a_burst_of_one_seconds_worth() -> None:
    assert channel_rate("email", "${URL}") == 20.0
    assert channel_rate("sms", "${URL}") == 10.0
    assert channel_rate("push", "${URL}") == 50.0
    assert channel_rate("ops", "${URL}") == 10.0
    assert channel_rate("email", ChannelSpec(url="${URL}", rate="5/s")) == 5.0
    assert (rate_burst(50.0), rate_burst(0.5), rate_burst(2.5)) == (50, 1, 2)


def test_a_channel_with_a_rate_compiles() -> None:
    text = journey_doc(STEPS, head=head('    url: "${JOURNEYS_EMAIL_URL}"\n    rate: 50/s\n'))
    catalog = check(text)
    assert catalog.violations == []


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        (
            "50/sec",
            "rate '50/sec' is not a send rate: write a count per second, minute or hour, "
            "such as '50/s', '600/m' or '1000/h'",
        ),
        (
            "50",
            "rate '50' is not a send rate: write a count per second, minute or hour, "
            "such as '50/s', '600/m' or '1000/h'",
        ),
        ("0/s", "rate '0/s' must be more than 0 and at most 10,000/s"),
        ("20000/s", "rate '20000/s' must be more than 0 and at most 10,000/s"),
    ],
)
def test_a_bad_rate_is_refused_at_its_own_line(rate: str, message: str) -> None:
    text = journey_doc(STEPS, head=head(f'    url: "${{JOURNEYS_EMAIL_URL}}"\n    rate: {rate}\n'))
    [violation] = errors(check(text))
    assert violation.message == message
    assert violation.line == line_of(text, "rate:")


def test_a_bad_retry_is_refused_at_its_own_line_too() -> None:
    text = journey_doc(
        STEPS, head=head('    url: "${JOURNEYS_EMAIL_URL}"\n    retry: {initial: 5x}\n')
    )
    [violation] = errors(check(text))
    assert violation.code == "duration"
    assert violation.line == line_of(text, "retry:")


def test_a_channel_that_is_neither_url_nor_mapping_says_what_it_should_be() -> None:
    text = journey_doc(STEPS, head=head("").replace("  email:\n", "  email: 5\n"))
    [violation] = errors(check(text))
    assert violation.message == "a channel is an Apprise URL or {url: ..., retry: ..., rate: ...}"
    assert violation.line == line_of(text, "email: 5")
