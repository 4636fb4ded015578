"""How the console's case page writes values (`service.review_desk`): one way for a
score, plain words, local relative times, the customer card, the restated title."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.review_desk import (
    customer_card,
    format_score,
    humanize,
    local_time,
    plain,
    restate_scores,
)

NOW = datetime(2026, 12, 4, 5, 35, tzinfo=UTC)  # 14:35 in Seoul


def test_a_score_has_three_decimals_cut_never_rounded_up() -> None:
    assert format_score(0.998) == "0.998"
    assert format_score(0.9999) == "0.999"
    assert format_score(0.7650700807571411) == "0.765"
    assert format_score("0.76507") == "0.765"
    assert format_score(0.7) == "0.700"
    assert format_score(1) == "1.000"


def test_values_read_as_words_never_as_python() -> None:
    assert plain(False) == "no" and plain(True) == "yes" and plain(None) == "not known"
    assert plain(900000.0) == "900000" and plain(0.76507) == "0.765"
    assert plain({"a": False, "b": None}) == "a = no, b = not known"
    assert plain([]) == "none"


def test_a_rounded_score_in_the_title_is_restated() -> None:
    scores = {"default_risk": {"score": 0.9986}}
    assert restate_scores("Offer for Mina: risk 1.0", scores) == "Offer for Mina: risk 0.998"
    assert restate_scores("Score 1.0.", scores) == "Score 0.998."
    assert restate_scores("Amount 12.5, 3 days", scores) == "Amount 12.5, 3 days"
    assert restate_scores("risk 1.0", None) == "risk 1.0"


def test_times_are_relative_and_on_the_given_clock() -> None:
    assert local_time(NOW - timedelta(minutes=2), "Asia/Seoul", NOW) == "2 min ago, 14:33 KST"
    assert local_time(NOW + timedelta(hours=3), "Asia/Seoul", NOW) == "in 3 h, 17:35 KST"
    assert local_time("2026-12-01T05:35:00Z", "Asia/Seoul", NOW) == "3 days ago, Dec 1 14:35 KST"
    assert local_time(None, "UTC", NOW) == ""


def test_the_customer_card_names_them_and_leaves_personal_traits_out() -> None:
    card = customer_card(
        {
            "first_name": "Mina",
            "last_name": "Park",
            "date_of_birth": "1990-04-01",
            "national_id": "x",
            "contact": "mina@example.test",
            "tenure_months": 18,
        },
        {"contact": "email", "national_id": "secret"},
        "Asia/Seoul",
    )
    assert card.name == "Mina Park"
    assert card.facts == [("Contact", "m***@example.test"), ("Tenure months", "18")]
    assert card.hidden == 2 and card.timezone == "Asia/Seoul"
    assert humanize("failed_payments_90d") == "Failed payments 90d"
