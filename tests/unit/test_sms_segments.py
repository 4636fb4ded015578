"""What an SMS costs: GSM-7 160/153 septets per segment, UCS-2 70/67 units, and the cap."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.sms import MAX_SEGMENTS, encoding, segments

GSM_PLAIN = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?@£$¥èéÄÖÑÜ"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("Your code is 123456", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("a" * 153 * MAX_SEGMENTS, MAX_SEGMENTS),
        ("a" * (153 * MAX_SEGMENTS + 1), MAX_SEGMENTS + 1),
    ],
)
def test_gsm_text_costs_160_then_153_septets_per_segment(text: str, expected: int) -> None:
    assert encoding(text) == "gsm-7"
    assert segments(text) == expected


def test_extension_characters_count_as_two_septets() -> None:
    assert encoding("€[]{}^~|\\") == "gsm-7"
    assert segments("€" * 80) == 1  # 160 septets
    assert segments("€" * 79 + "ab") == 1  # 160 septets
    assert segments("€" * 79 + "abc") == 2  # 161 septets


def test_an_escape_pair_is_never_split_across_segments() -> None:
    # 152 septets of 'a', then a euro sign: it does not fit in the one septet left.
    assert segments("a" * 152 + "€" + "a" * 152) == 3
    assert segments("a" * 151 + "€" + "a" * 153) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Привет", 1),
        ("ж" * 70, 1),
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
        ("a" * 69 + "ж", 1),
        ("a" * 70 + "ж", 2),
    ],
)
def test_any_character_outside_gsm_makes_the_whole_text_ucs2(text: str, expected: int) -> None:
    assert encoding(text) == "ucs-2"
    assert segments(text) == expected


def test_emoji_take_two_ucs2_units_and_stay_whole() -> None:
    assert segments("😀" * 35) == 1  # 70 units
    assert segments("😀" * 36) == 2  # 72 units: 33 emoji (66 units) per segment
    assert segments("😀" * 66) == 2
    assert segments("😀" * 67) == 3


def test_accented_letters_outside_gsm_switch_to_ucs2() -> None:
    assert encoding("café") == "gsm-7"  # é is in the GSM alphabet
    assert encoding("ça") == "ucs-2"  # ç (lower case) is not, only Ç is
    assert segments("ç" + "a" * 100) == 2


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=GSM_PLAIN, max_size=2000))
def test_plain_gsm_text_matches_the_arithmetic(text: str) -> None:
    expected = 0 if not text else 1 if len(text) <= 160 else math.ceil(len(text) / 153)
    assert segments(text) == expected


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=800))
def test_adding_a_character_never_makes_a_text_cheaper_in_its_encoding(text: str) -> None:
    coding = encoding(text)
    extra = "a" if coding == "gsm-7" else "ж"
    assert segments(text + extra) >= segments(text)
