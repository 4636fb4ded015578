"""Customer profiles as runs see them: the `customer` view of a profile's traits, which
traits are addresses, and the one address masker.

Pure domain code, below the service (the router masks the profile it hands a run, the
console shows masked traits), the channels (delivery rows keep a masked recipient) and the
activities (`begin_run` and `load_profile` give a run masked addresses). One masker, one
set of rules: workflow histories, the console, the API and delivery rows all show an
address the same way. Must not live here: database access, Temporal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from engine.payloads import CustomerContext
from engine.personal import mask_traits, mask_value

__all__ = [
    "ADDRESS_TRAITS",
    "customer_from_traits",
    "mask_address",
    "masked_customer",
    "normalise_address",
]

ADDRESS_TRAITS = ("email", "phone", "push_token", "timezone")
"""The traits `customer` reads its fields from (`timezone` too, though not an address)."""

_PHONE_CHANNELS = frozenset({"sms", "phone", "whatsapp"})
_PHONE_FORMATTING = re.compile(r"[\s\-.()]")
_PHONE_NUMBER = re.compile(r"^\+?\d{6,}$")


def customer_from_traits(customer_id: str, traits: dict[str, Any]) -> CustomerContext:
    """The `customer` an expression sees: id and channel addresses, from profile traits."""
    fields = {
        name: str(traits[name]) for name in ADDRESS_TRAITS if traits.get(name) not in (None, "")
    }
    return CustomerContext(id=customer_id, traits=dict(traits), **fields)


def normalise_address(channel: str, address: str) -> str:
    """The form of an address that look-ups compare: emails trimmed and lower-cased, phone
    numbers without spaces, dashes, dots or parentheses, anything else trimmed."""
    channel = channel.strip().lower()
    if channel == "email":
        return address.strip().lower()
    if channel in _PHONE_CHANNELS:
        return _PHONE_FORMATTING.sub("", address)
    return address.strip()


def _channel_of(address: str) -> str:
    """The kind of an address found in a trait: an email, a phone number, or a token."""
    if "@" in address:
        return "email"
    return "sms" if _PHONE_NUMBER.match(_PHONE_FORMATTING.sub("", address)) else "push"


def mask_address(value: Any, channel: str | None = None) -> Any:
    """An address as anything outside the send activity shows it: ``a***@example.com``,
    ``+82******5678``; other addresses (push tokens) keep their first four characters.
    ``channel`` says what the address is; without it, the address's form does. A value
    that is not text (or is empty) is returned as it is."""
    if not isinstance(value, str) or not value:
        return value
    kind = (channel or _channel_of(value)).strip().lower()
    address = normalise_address(kind, value)
    if kind == "email":
        return mask_value(address, "email")
    if kind in _PHONE_CHANNELS:
        if len(address) >= 9:
            return address[:3] + "*" * (len(address) - 7) + address[-4:]
        return "*" * max(len(address) - 2, 1) + address[-2:]
    return address[:4] + "***" if len(address) > 8 else "***"


def masked_customer(
    customer: CustomerContext, declared: Mapping[str, str] | None = None
) -> CustomerContext:
    """The customer as a workflow holds it: every personal trait masked (``declared``: the
    catalogue's `profile:` marks; well-known names and address-like text besides). Activities
    that need the real values (sending) read them from the database by customer id, so no
    history carries them."""
    return customer.model_copy(
        update={
            "traits": mask_traits(customer.traits, declared),
            "email": mask_address(customer.email, "email"),
            "phone": mask_address(customer.phone, "sms"),
            "push_token": mask_address(customer.push_token, "push"),
        }
    )
