"""Personal data by declaration: which event properties and profile traits are personal,
and the one way such a value is shown anywhere outside the send that needs it.

A field is personal when the catalogue says so (`events:` and `profile:` schemas mark it
`email`, `phone`, `pii` or `secret`; `personal: none` unmarks one), or, when it does not,
when its name is a well-known one (`email`, `mobile`, `first_name`, `password`, ...). On
top of that, any text that *looks like* an email address or an international phone number
is masked wherever it is, declared or not.

Masking happens where a value enters a run (the router, `load_profile`, `begin_run`,
`load_events`): histories, the path, the state query, the runs table, the console and
logs only ever see the masked form. The send activity reads the real profile and the real
event (by message id) back from the database, so messages still carry real values.

Pure domain code: no database, no Temporal. Must not live here: where values are read.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from engine.payloads import EventMessage
    from engine.plan import PlanPersonal

__all__ = [
    "KINDS",
    "Kind",
    "Mark",
    "kind_by_name",
    "kind_of",
    "mask_found",
    "mask_properties",
    "mask_traits",
    "mask_value",
    "personal_key",
    "profile_marks",
    "run_event",
    "run_key",
    "scrubbed",
]

Kind = Literal["email", "phone", "pii", "secret"]
Mark = Literal["email", "phone", "pii", "secret", "none"]
KINDS: tuple[Kind, ...] = ("email", "phone", "pii", "secret")

_NAME_RULES: tuple[tuple[Kind, re.Pattern[str]], ...] = (
    ("email", re.compile(r"e_?mail")),
    (
        "phone",
        re.compile(r"phone|mobile|msisdn|^cell$|cell_?number|^tel$|telephone|whatsapp|^sms_to$"),
    ),
    (
        "secret",
        re.compile(
            r"password|passwd|passcode|secret|token|api_?key|^pin$|_pin$|cvv|cvc|card_?number"
            r"|^pan$|iban|account_?number|^ssn$|social_security|national_id|passport|tax_id"
        ),
    ),
    (
        "pii",
        re.compile(
            r"^name$|first_?name|last_?name|full_?name|middle_?name|surname|given_?name"
            r"|birth|^dob$|address|street|postcode|postal_?code|zip_?code|^zip$|^ip$|card_?holder"
        ),
    ),
)
"""Well-known names, tried in order on the lower-cased name (the first match wins)."""

_PUSH_NAMES = frozenset({"push_token", "device_token"})

_EMAIL_IN_TEXT = re.compile(r"[^\s@<>\"'(),;:]+@[^\s@<>\"'(),;:]+\.[A-Za-z]{2,}")
_PHONE_IN_TEXT = re.compile(r"\+\d[\d \-.()]{6,}\d")
_MAX_DEPTH = 16

SECRET_MASK = "[secret]"
PII_MASK = "***"


def kind_by_name(name: str) -> Kind | None:
    """The kind a field is by its name alone (None: not a well-known personal name)."""
    lowered = name.lower()
    for kind, rule in _NAME_RULES:
        if rule.search(lowered):
            return kind
    return None


def kind_of(name: str, declared: Mapping[str, str] | None) -> Kind | None:
    """The kind of field ``name``: its mark when declared with one (``""``: declared with
    none, so its name decides), else its name's."""
    mark = (declared or {}).get(name)
    if mark == "none":
        return None
    if mark in KINDS:
        return mark
    return kind_by_name(name)


def _mask_email(value: str) -> str:
    local, at, domain = value.strip().lower().partition("@")
    if at and local and "@" not in domain and "." in domain and not re.search(r"\s", domain):
        return f"{local[0]}***@{domain}"
    return PII_MASK


def _mask_phone(value: str) -> str:
    digits = re.sub(r"[\s\-.()]", "", value)
    if re.fullmatch(r"\+?\d{9,}", digits):
        return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]
    if re.fullmatch(r"\+?\d{3,8}", digits):
        return "*" * (len(digits) - 2) + digits[-2:]
    return PII_MASK


def mask_value(value: Any, kind: Kind, name: str | None = None) -> Any:
    """``value`` as it may be shown: an email ``a***@example.com``, a phone number
    ``+82******5678``, anything else personal ``***``, a secret ``[secret]``. None stays
    None (absent is not personal), and so does a flag (``email_opt_out: true``) unless
    secret; a push token keeps its first four characters."""
    if value is None or value == "" or (isinstance(value, bool) and kind != "secret"):
        return value
    if name is not None and name.lower() in _PUSH_NAMES and isinstance(value, str):
        return value[:4] + "***" if len(value) > 8 else "***"
    if kind == "secret":
        return SECRET_MASK
    if not isinstance(value, str):
        return PII_MASK
    if kind == "email":
        return _mask_email(value)
    if kind == "phone":
        return _mask_phone(value)
    return PII_MASK


def mask_found(value: Any, depth: int = 0) -> Any:
    """``value`` with every email address or international phone number in its text masked,
    and every well-known personal name in its mappings masked, at any depth."""
    if isinstance(value, str):
        if "@" in value:
            value = _EMAIL_IN_TEXT.sub(lambda m: _mask_email(m.group(0)), value)
        if "+" in value:
            value = _PHONE_IN_TEXT.sub(lambda m: _mask_phone(m.group(0)), value)
        return value
    if depth >= _MAX_DEPTH:
        return value if isinstance(value, int | float | bool) or value is None else PII_MASK
    if isinstance(value, Mapping):
        return {k: _masked_entry(str(k), v, None, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_found(item, depth + 1) for item in value]
    return value


def _masked_entry(name: str, value: Any, declared: Mapping[str, str] | None, depth: int) -> Any:
    kind = kind_of(name, declared)
    if kind is not None:
        return mask_value(value, kind, name)
    return mask_found(value, depth)


def mask_properties(
    properties: Mapping[str, Any],
    declared: Mapping[str, str] | None,
    reads: frozenset[str] | None,
) -> dict[str, Any]:
    """An event's properties as a run may hold them: only those declared (``declared``)
    or read by a step (``reads``; None: keep all), each personal one masked."""
    kept: dict[str, Any] = {}
    for name, value in properties.items():
        if reads is not None and name not in reads and name not in (declared or {}):
            continue
        kept[name] = _masked_entry(name, value, declared, 0)
    return kept


def mask_traits(traits: Mapping[str, Any], declared: Mapping[str, str] | None) -> dict[str, Any]:
    """A profile's traits as a run, the console or a log may show them."""
    return {name: _masked_entry(name, value, declared, 0) for name, value in traits.items()}


def personal_key(value: str) -> str:
    """A run key that came from personal data, as the run, its workflow id and the runs
    table hold it: a stable digest (the same value always gives the same key)."""
    return "pk-" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:24]


# ----------------------------------------------------------------------------- runs


def profile_marks(personal: PlanPersonal | None) -> dict[str, str]:
    """The `profile:` marks a plan carries (none in a plan compiled before them)."""
    return dict(personal.profile) if personal is not None else {}


def run_event(event: EventMessage, personal: PlanPersonal | None) -> EventMessage:
    """``event`` as a run of a plan with ``personal`` holds it: the properties its schema
    declares or the plan's expressions read, personal ones masked. A plan compiled before
    declarations (None) keeps every property, masked by name and form."""
    if personal is None:
        return event.model_copy(update={"properties": mask_properties(event.properties, {}, None)})
    declared = personal.event_fields(event.name) or {}
    reads = None if personal.reads is None else frozenset(personal.reads)
    properties = mask_properties(event.properties, declared, reads)
    return event.model_copy(update={"properties": properties})


def run_key(value: str, personal: PlanPersonal | None) -> str:
    """A run's key as runs hold it: its digest when the entry key reads a personal field or
    the value looks like an email address or a phone number, else the value itself."""
    if (personal is not None and personal.key_personal) or mask_found(value) != value:
        return personal_key(value)
    return value


def scrubbed(
    text: str,
    properties: Mapping[str, Any],
    traits: Mapping[str, Any],
    personal: PlanPersonal | None,
    event: str,
) -> str:
    """``text`` (an error message about real data) with every personal value of the event
    and the profile replaced by its mask, and any address-like text masked."""
    declared_event = (personal.event_fields(event) if personal else None) or {}
    declared_profile = dict(personal.profile) if personal else {}
    found: list[tuple[str, str]] = []
    for values, declared in ((properties, declared_event), (traits, declared_profile)):
        for name, value in values.items():
            kind = kind_of(name, declared)
            plain = isinstance(value, str | int | float) and not isinstance(value, bool)
            if kind is not None and plain and len(str(value)) >= 3:
                found.append((str(value), str(mask_value(value, kind, name))))
    for value, mask in sorted(found, key=lambda pair: -len(pair[0])):
        text = text.replace(value, mask)
    return str(mask_found(text))
