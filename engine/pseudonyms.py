"""Keyed pseudonyms of customer ids: what the audit log, the codec's per-customer keys and
an erased customer's remaining rows hold instead of the id itself.

A customer's pseudonym (`customer_ref`) is ``cus_`` and the first 26 base32 letters (130
bits) of HMAC-SHA-256(pseudonym key, customer id). The same id always gives the same
pseudonym under one key, so entries about one customer can still be found together
(the console and `journeys audit export --customer` compute it from the id typed in), and
nobody can go back from a pseudonym to the id without the key.

**The key.** ``JOURNEYS_PSEUDONYM_KEY`` (base64 of at least 32 bytes) when it is set, the
same in every process; else a random key kept in the database's `pseudonym_key` row
(made by revision 0009, or on first use). Keeping it in the database is the embedded default: it needs
no setup, but someone holding a copy of the database and a customer id can compute that
id's pseudonym and find the customer's entries. Set the variable (and keep it as you keep
the history key ring) to keep pseudonyms apart from the data. Changing the key changes
every pseudonym from then on: entries made before are found only under the old key.

Workflow ids name their customer (``journey/<journey>/<customer>[/<key>]``):
`pseudonymize_text` puts the pseudonym in place of the customer's segment, for an audit
subject or detail that holds one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Table, insert, select
from sqlalchemy.engine import Connection, Engine

from engine.database import ErasedCustomer, PseudonymKey, dialect_insert
from engine.payloads import escape_customer_segment

__all__ = [
    "ENV_KEY",
    "PREFIX",
    "PSEUDONYM_KEY",
    "PseudonymKeyError",
    "customer_ref",
    "erased_among",
    "is_ref",
    "pseudonym_key",
    "pseudonymize",
    "pseudonymize_text",
]

ENV_KEY = "JOURNEYS_PSEUDONYM_KEY"
PREFIX = "cus_"
_REF_LETTERS = 26
_MIN_KEY_BYTES = 32

_ERASED: Table = ErasedCustomer.__table__  # type: ignore[attr-defined]
PSEUDONYM_KEY: Table = PseudonymKey.__table__  # type: ignore[attr-defined]
"""One row (``id`` ``"current"``): the key when ``JOURNEYS_PSEUDONYM_KEY`` is not set."""

_ROW_ID = "current"


class PseudonymKeyError(ValueError):
    """``JOURNEYS_PSEUDONYM_KEY`` is set but unusable (the message never shows it)."""


def _from_env() -> bytes | None:
    text = os.environ.get(ENV_KEY, "").strip()
    if not text:
        return None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PseudonymKeyError(f"{ENV_KEY} is not valid base64") from None
    if len(key) < _MIN_KEY_BYTES:
        raise PseudonymKeyError(f"{ENV_KEY} holds {len(key)} bytes; at least 32 are needed")
    return key


def pseudonym_key(bind: Engine | Connection) -> bytes:
    """The key pseudonyms are made with: the environment's, else the database's (made on
    first use). Read each time (one primary-key read): a cache would outlive a database
    recreated at the same address."""
    from_env = _from_env()
    if from_env is not None:
        return from_env
    return _read_or_make(bind)


# Built once: every audit append with a customer reads the key.
_READ_KEY = select(PSEUDONYM_KEY.c.key).where(PSEUDONYM_KEY.c.id == _ROW_ID)


def _read_or_make(bind: Engine | Connection) -> bytes:
    def read(connection: Connection) -> bytes | None:
        found = connection.execute(_READ_KEY).scalar()
        return bytes(found) if found is not None else None

    if isinstance(bind, Connection):
        # Inside the caller's transaction: the migration made the row, so it is there.
        # A schema made without it (tests' create_all) gets it here; two transactions
        # making it at once both go on, the second with the first's key.
        found = read(bind)
        if found is None:
            statement = dialect_insert(bind.dialect.name)(PSEUDONYM_KEY).on_conflict_do_nothing()
            bind.execute(statement.values(id=_ROW_ID, key=secrets.token_bytes(32)))
            found = read(bind)
        assert found is not None
        return found
    with bind.begin() as connection:
        found = read(connection)
        if found is not None:
            return found
    try:
        with bind.begin() as connection:
            connection.execute(
                insert(PSEUDONYM_KEY).values(id=_ROW_ID, key=secrets.token_bytes(32))
            )
    except Exception:  # another process made it first: read theirs
        pass
    with bind.begin() as connection:
        found = read(connection)
    if found is None:
        raise PseudonymKeyError("the pseudonym key row could not be made")
    return found


def customer_ref(customer_id: str, key: bytes) -> str:
    """The keyed pseudonym of ``customer_id``: ``cus_`` and 26 base32 letters."""
    digest = hmac.new(key, customer_id.encode("utf-8"), hashlib.sha256).digest()
    letters = base64.b32encode(digest).decode("ascii").lower()
    return PREFIX + letters[:_REF_LETTERS]


def is_ref(text: str) -> bool:
    """Whether ``text`` has a pseudonym's shape."""
    return (
        len(text) == len(PREFIX) + _REF_LETTERS
        and text.startswith(PREFIX)
        and all(c in "abcdefghijklmnopqrstuvwxyz234567" for c in text[len(PREFIX) :])
    )


def pseudonymize_text(text: str, customer_id: str, ref: str) -> str:
    """``text`` with ``customer_id`` replaced by ``ref`` where it stands for the customer:
    the whole text, a ``customer:<id>`` subject, or the customer's segment of a workflow
    id (``journey/<journey>/<id>`` alone, followed by ``/``, or after ``run:``)."""
    if not customer_id:
        return text
    if text == customer_id:
        return ref
    if text == f"customer:{customer_id}":
        return f"customer:{ref}"
    segment = escape_customer_segment(customer_id)  # as workflow ids write it
    for prefix in ("run:journey/", "journey/"):
        if not text.startswith(prefix):
            continue
        journey, slash, rest = text[len(prefix) :].partition("/")
        if not slash:
            return text
        if rest == segment:
            return f"{prefix}{journey}/{ref}"
        if rest.startswith(segment + "/"):
            return f"{prefix}{journey}/{ref}{rest[len(segment) :]}"
    return text


def pseudonymize(value: Any, customer_id: str, ref: str) -> Any:
    """``value`` (JSON: dicts, lists, strings, ...) with every string passed through
    `pseudonymize_text`."""
    if isinstance(value, str):
        return pseudonymize_text(value, customer_id, ref)
    if isinstance(value, dict):
        return {key: pseudonymize(item, customer_id, ref) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [pseudonymize(item, customer_id, ref) for item in value]
    return value


def erased_among(connection: Connection, customer_ids: Iterable[str]) -> set[str]:
    """Which of ``customer_ids`` were erased (or are being erased, `service.erasure`): one
    read while nobody ever was, two more after."""
    wanted = set(customer_ids)
    if not wanted or connection.execute(select(_ERASED.c.ref).limit(1)).first() is None:
        return set()
    key = pseudonym_key(connection)
    refs = {customer_ref(customer, key): customer for customer in wanted}
    found = connection.execute(select(_ERASED.c.ref).where(_ERASED.c.ref.in_(refs))).scalars()
    return {refs[ref] for ref in found}
