"""How many SMS segments a text costs: GSM-7 when every character allows it, else UCS-2.

Pure functions, no I/O. Used by `channels.delivery` to refuse an SMS longer than
`MAX_SEGMENTS` before a provider is called. The alphabet is the GSM 03.38 default alphabet
and its extension table; extension characters (``€ [ ] { } ^ ~ | \\`` and form feed) take
two septets (escape + character). A long message is sent as a concatenated SMS whose
segments each lose room to the user-data header: 153 septets (GSM-7) or 67 UTF-16 units
(UCS-2) instead of 160 or 70. A two-septet character or a surrogate pair is never split
across segments, which is how handsets and gateways pack them too.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_SEGMENTS", "encoding", "segments"]

MAX_SEGMENTS: Final = 10
"""The most segments one journey message may cost (a longer text is a template error)."""

_GSM_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION: Final = frozenset("\f^{}\\[~]|€")

_SINGLE: Final = {"gsm-7": 160, "ucs-2": 70}
_CONCATENATED: Final = {"gsm-7": 153, "ucs-2": 67}


def encoding(text: str) -> str:
    """``"gsm-7"`` when every character is in the GSM 03.38 alphabet, else ``"ucs-2"``."""
    allowed = _GSM_BASIC | _GSM_EXTENSION
    return "gsm-7" if all(char in allowed for char in text) else "ucs-2"


def _units(text: str, coding: str) -> list[int]:
    """Each character's size: septets in GSM-7, UTF-16 code units in UCS-2."""
    if coding == "gsm-7":
        return [2 if char in _GSM_EXTENSION else 1 for char in text]
    return [2 if ord(char) > 0xFFFF else 1 for char in text]


def segments(text: str) -> int:
    """The number of SMS segments ``text`` costs (0 for the empty text: nothing to send)."""
    coding = encoding(text)
    units = _units(text, coding)
    if sum(units) <= _SINGLE[coding]:
        return 1 if units else 0
    room = _CONCATENATED[coding]
    count, used = 1, 0
    for size in units:
        if used + size > room:
            count, used = count + 1, 0
        used += size
    return count
