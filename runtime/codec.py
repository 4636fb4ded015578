"""Encrypted, compressed workflow histories: the payload codec every client and worker uses.

Every payload the SDK sends to Temporal (workflow inputs such as the start event and its
plan, activity arguments and results holding profiles, signals, query answers) is
serialized as usual, then compressed with zlib and sealed with AES-256-GCM under the first
key of a key ring. Temporal stores only the sealed bytes; search attributes are not
payloads and stay readable (they hold ids, the journey, the status and the step: see
`engine.payloads.SEARCH_ATTRIBUTES`).

A sealed payload's metadata says how to open it: ``encoding: binary/encrypted`` and
``encryption-key-id: <id>``. Its data is a random 96-bit nonce followed by the
ciphertext and tag; the associated data binds the key id, so a payload cannot be passed
off as sealed under another id. Rotation: new payloads use the ring's first key, older
ones open with the key their id names for as long as that key stays in the ring. A payload
without the encrypted encoding (histories recorded before, a deployment that had no key
ring) is decoded as it is, so those histories keep replaying.

The key ring: ``JOURNEYS_HISTORY_KEYS`` (``k2:<base64 key>,k1:<base64 key>``, the first
encrypts) or the file ``JOURNEYS_HISTORY_KEYS_FILE`` (the same entries, one a line or
comma-separated); `journeys up` creates ``<state>/history_keys`` (mode 0600) when neither
is set. Keys are 32 bytes (AES-256), base64. No key is ever logged, printed or put in an
error message; errors name key ids only.

**Per-customer keys (crypto-shredding).** A codec given a `CustomerKeyStore` and bound
to a workflow (the SDK calls `HistoryCodec.with_context` with the workflow id of every
payload it converts) seals the payloads of a run whose id names a customer
(``journey/<journey>/<customer>[/<key>]``, `engine.payloads.customer_of_workflow_id`)
under that customer's own key: HKDF-SHA256 of the ring's current key, salted with the
customer's seed (`runtime.customer_keys`), for that key id and the customer's pseudonym.
Such a payload also carries ``encryption-customer: <pseudonym>`` (never the customer id),
and its associated data binds the key id and the pseudonym. Deleting the customer's seed
(erasure) leaves every one of those payloads sealed for good: opening one raises
`CustomerKeyErased`, naming the pseudonym. Payloads sealed without a customer (no store,
no workflow, an id of another form) use the ring's key as above; rotation works alike
for both (a customer key is derived from whichever ring key its id names). Decoding needs
no context: a payload says which customer it belongs to.

Not here: the data converter that uses this codec (`runtime.temporal.data_converter`),
the codec server for the Web UI (`service.api.routes.codec`), the seeds' table and cache
(`runtime.customer_keys`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import functools
import os
import re
import secrets
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
)

from engine.payloads import customer_of_workflow_id
from engine.pseudonyms import is_ref
from engine.settings import RuntimeSettings
from runtime.customer_keys import CustomerKeyStore

__all__ = [
    "CUSTOMER_METADATA",
    "ENCODING",
    "KEY_ID_METADATA",
    "CustomerKeyErased",
    "HistoryCodec",
    "HistoryDecodeError",
    "KeyRing",
    "KeyRingError",
    "UnknownKeyId",
    "create_key_file",
    "new_key_ring_text",
]

ENCODING = b"binary/encrypted"
"""The ``encoding`` metadata of a sealed payload (the Temporal samples' name)."""

KEY_ID_METADATA = "encryption-key-id"
CUSTOMER_METADATA = "encryption-customer"
"""The metadata naming, by pseudonym, the customer whose key sealed a payload."""
_NONCE_BYTES = 12  # 96 bits, GCM's native nonce size; random per payload
_KEY_BYTES = 32  # AES-256
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_AAD_PREFIX = b"journeys-history/v1:"
_CUSTOMER_PREFIX = b"journeys-customer/v1:"  # HKDF info and AAD of customer-keyed payloads
_DERIVED_CACHE_SIZE = 10_000


class KeyRingError(ValueError):
    """The key ring's text or file is not usable; the message names ids, never keys."""


class HistoryDecodeError(ValueError):
    """A sealed payload that cannot be opened (unknown key id, tampered, or corrupt)."""


class UnknownKeyId(HistoryDecodeError):
    """A payload sealed under a key id the ring does not hold."""


class CustomerKeyErased(HistoryDecodeError):
    """A payload sealed under a customer's key whose seed was deleted (the customer was
    erased): it can never be opened again. The message names the pseudonym only."""


@dataclass(frozen=True, repr=False)
class KeyRing:
    """Key ids and their AES-256 keys, in order: the first seals new payloads."""

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyRingError("the history key ring is empty")
        seen: set[str] = set()
        for key_id, key in self.keys:
            if not _KEY_ID.fullmatch(key_id):
                raise KeyRingError(
                    f"history key id {key_id[:64]!r} is not 1-64 letters, digits, '.', '_', '-'"
                )
            if key_id in seen:
                raise KeyRingError(f"history key id {key_id!r} appears twice")
            if len(key) != _KEY_BYTES:
                raise KeyRingError(
                    f"history key {key_id!r} is {len(key)} bytes; AES-256 needs {_KEY_BYTES}"
                )
            seen.add(key_id)

    def __repr__(self) -> str:  # never the keys
        return f"KeyRing(ids={list(self.ids)!r})"

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(key_id for key_id, _ in self.keys)

    @property
    def current(self) -> str:
        """The id new payloads are sealed under."""
        return self.keys[0][0]

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """``id:base64key`` entries separated by commas or new lines; ``#`` starts a comment."""
        entries: list[tuple[str, bytes]] = []
        for line in text.splitlines():
            for entry in line.split("#", 1)[0].split(","):
                entry = entry.strip()
                if not entry:
                    continue
                key_id, colon, encoded = entry.partition(":")
                key_id = key_id.strip()
                if not colon:  # the entry may be a bare key: never shown
                    raise KeyRingError("a history key entry is not 'id:base64key'")
                try:
                    key = base64.b64decode(encoded.strip(), validate=True)
                except (binascii.Error, ValueError):
                    raise KeyRingError(f"history key {key_id!r} is not valid base64") from None
                entries.append((key_id, key))
        return cls(tuple(entries))

    @classmethod
    def from_settings(cls, settings: RuntimeSettings) -> KeyRing | None:
        """The ring ``JOURNEYS_HISTORY_KEYS`` gives, else the one in
        ``JOURNEYS_HISTORY_KEYS_FILE``; None when neither is set."""
        return cls.load(settings.history_keys, settings.history_keys_file)

    @classmethod
    def load(cls, text: str | None, file: Path | None) -> KeyRing | None:
        """The ring in ``text``, else in ``file``; None when neither is given."""
        if text:
            return cls.parse(text)
        if file is None:
            return None
        try:
            return cls.parse(file.read_text(encoding="utf-8"))
        except OSError as error:
            raise KeyRingError(
                f"cannot read the history key file {file} (JOURNEYS_HISTORY_KEYS_FILE): "
                f"{error.strerror}"
            ) from None


def new_key_ring_text(key_id: str = "k1") -> str:
    """A new ring of one random key, as the key file holds it."""
    encoded = base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode("ascii")
    KeyRing.parse(f"{key_id}:{encoded}")  # validates the id
    return f"{key_id}:{encoded}\n"


def create_key_file(path: Path) -> Path:
    """``path`` holding a key ring (mode 0600): the one there, or a new one of one key.

    What `journeys up` does on its first start (as it does for ``secret_key``). An
    existing file is read and checked, never rewritten; a file readable by others is made
    0600.
    """
    with contextlib.suppress(FileNotFoundError):
        text = path.read_text(encoding="utf-8")
        if text.strip():
            KeyRing.parse(text)
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
            return path
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(new_key_ring_text())
    path.chmod(0o600)
    return path


def _aad(key_id: str) -> bytes:
    return _AAD_PREFIX + key_id.encode("ascii")


@functools.lru_cache(maxsize=_DERIVED_CACHE_SIZE)
def _is_ref(text: str) -> bool:
    """`engine.pseudonyms.is_ref`, remembered: every customer-keyed payload asks."""
    return is_ref(text)


def _customer_label(key_id: str, ref: str) -> bytes:
    """The HKDF info and associated data of a customer-keyed payload: key id and pseudonym."""
    return _CUSTOMER_PREFIX + key_id.encode("ascii") + b":" + ref.encode("ascii")


class _DerivedKeys:
    """Customer keys derived from (ring key id, pseudonym), each kept with the seed it was
    derived from: used only while the store still gives that seed, so the store's expiry
    and ``forget`` govern them too. Bounded; shared by a codec and its bound copies."""

    def __init__(self, size: int = _DERIVED_CACHE_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, str], tuple[bytes, AESGCM]] = OrderedDict()
        self._lock = threading.Lock()

    def cipher(self, key_id: str, ring_key: bytes, ref: str, seed: bytes) -> AESGCM:
        index = (key_id, ref)
        with self._lock:
            entry = self._entries.get(index)
            if entry is not None and secrets.compare_digest(entry[0], seed):
                self._entries.move_to_end(index)
                return entry[1]
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=_KEY_BYTES,
            salt=seed,
            info=_customer_label(key_id, ref),
        ).derive(ring_key)
        cipher = AESGCM(derived)
        with self._lock:
            self._entries[index] = (seed, cipher)
            self._entries.move_to_end(index)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return cipher

    def forget(self, ref: str) -> None:
        with self._lock:
            for index in [index for index in self._entries if index[1] == ref]:
                del self._entries[index]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class HistoryCodec(PayloadCodec, WithSerializationContext):
    """zlib, then AES-256-GCM under the ring's first key; opens any payload whose key id
    the ring holds and passes unsealed payloads through. With no ring (``keys=None``) it
    seals nothing and opens nothing: unsealed payloads pass, sealed ones fail naming
    their key id.

    With ``customer_keys`` (a `CustomerKeyStore`), a copy bound to a workflow whose id
    names a customer (`with_context`) seals under that customer's key, and every copy
    opens customer-keyed payloads while their seed exists (module docstring)."""

    def __init__(
        self,
        keys: KeyRing | None,
        *,
        customer_keys: CustomerKeyStore | None = None,
        compress_level: int = 6,
    ) -> None:
        self.keys = keys
        self.customer_keys = customer_keys
        self._compress_level = compress_level
        self._ring = dict(keys.keys) if keys else {}
        self._ciphers = {key_id: AESGCM(key) for key_id, key in self._ring.items()}
        self._derived = _DerivedKeys()
        self._customer: str | None = None  # the bound workflow's customer id
        self._ref: str | None = None  # its pseudonym, once looked up
        if customer_keys is not None:
            customer_keys.follow(self._derived)

    def __repr__(self) -> str:
        return f"HistoryCodec({self.keys!r})"

    def with_context(self, context: SerializationContext) -> Self:
        """A copy sealing for the customer ``context``'s workflow id names (what the SDK
        calls for each workflow, activity, signal, query or update it converts for); this
        codec itself when it would seal nothing differently. No database work here."""
        if self.customer_keys is None or self.keys is None:
            return self
        workflow_id = getattr(context, "workflow_id", None)
        customer = customer_of_workflow_id(workflow_id) if workflow_id else None
        if customer == self._customer:
            return self
        bound = copy.copy(self)
        bound._customer = customer
        bound._ref = None
        return bound

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        unbound = self._customer is None or self.customer_keys is None or self.keys is None
        if unbound or not payloads:
            return [self.seal(payload) for payload in payloads]
        assert self._customer is not None and self.customer_keys is not None
        ref = self._ref
        if ref is None:
            ref = self._ref = await self.customer_keys.ref_for_customer(self._customer)
        seed = await self.customer_keys.seed(ref, create=True)
        assert seed is not None  # create=True makes it, or raises CustomerErased
        return [self.seal_for_customer(payload, ref, seed) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        seeds: dict[str, bytes] = {}
        opened = []
        for payload in payloads:
            ref = self._customer_ref_of(payload)
            if ref is not None and ref not in seeds:
                seeds[ref] = await self._seed_to_open(ref)
            opened.append(self._open(payload, ref, seeds.get(ref) if ref else None))
        return opened

    def seal(self, payload: Payload) -> Payload:
        """``payload`` sealed under the current key (as it is with no key ring)."""
        if self.keys is None:
            return payload
        key_id = self.keys.current
        return self._sealed(payload, key_id, self._ciphers[key_id], _aad(key_id), {})

    def seal_for_customer(self, payload: Payload, ref: str, seed: bytes) -> Payload:
        """``payload`` sealed under the key of the customer whose pseudonym is ``ref``
        (derived from the current ring key and the customer's ``seed``)."""
        if self.keys is None:
            return payload
        key_id = self.keys.current
        cipher = self._derived.cipher(key_id, self._ring[key_id], ref, seed)
        extra = {CUSTOMER_METADATA: ref.encode("ascii")}
        return self._sealed(payload, key_id, cipher, _customer_label(key_id, ref), extra)

    def _sealed(
        self, payload: Payload, key_id: str, cipher: AESGCM, aad: bytes, extra: dict[str, bytes]
    ) -> Payload:
        plain = zlib.compress(payload.SerializeToString(), self._compress_level)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = cipher.encrypt(nonce, plain, aad)
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode("ascii"), **extra},
            data=nonce + sealed,
        )

    def open(self, payload: Payload, *, seed: bytes | None = None) -> Payload:
        """The payload ``seal`` made this from; an unsealed one as it is. A customer-keyed
        payload needs its customer's ``seed`` (`decode` looks it up)."""
        return self._open(payload, self._customer_ref_of(payload), seed)

    def _open(self, payload: Payload, ref: str | None, seed: bytes | None) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        raw_id = payload.metadata.get(KEY_ID_METADATA, b"")
        key_id = raw_id.decode("utf-8", errors="replace")[:64]
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            held = ", ".join(self.keys.ids) if self.keys else "none: no key ring is configured"
            raise UnknownKeyId(
                f"history payload is encrypted with key id {key_id!r}, which is not in the "
                f"key ring (JOURNEYS_HISTORY_KEYS or JOURNEYS_HISTORY_KEYS_FILE holds {held})"
            )
        aad = _aad(key_id)
        if ref is not None:
            if seed is None:
                raise HistoryDecodeError(
                    f"history payload of customer {ref} is sealed under that customer's key, "
                    "and this codec was given no seed to open it with"
                )
            cipher = self._derived.cipher(key_id, self._ring[key_id], ref, seed)
            aad = _customer_label(key_id, ref)
        data = payload.data
        try:
            plain = cipher.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], aad)
        except InvalidTag:
            raise HistoryDecodeError(
                f"history payload with key id {key_id!r} failed authentication: it was "
                "altered, or the key under that id is not the one that sealed it"
            ) from None
        try:
            inner = Payload.FromString(zlib.decompress(plain))
        except (zlib.error, ValueError) as error:
            raise HistoryDecodeError(
                f"history payload with key id {key_id!r} is corrupt ({type(error).__name__})"
            ) from None
        return inner

    @staticmethod
    def _customer_ref_of(payload: Payload) -> str | None:
        """The pseudonym a sealed payload names in ``encryption-customer``, if any."""
        if payload.metadata.get("encoding") != ENCODING:
            return None
        raw = payload.metadata.get(CUSTOMER_METADATA)
        if raw is None:
            return None
        ref = raw.decode("utf-8", errors="replace")
        if not _is_ref(ref):
            raise HistoryDecodeError(
                f"history payload names a customer key that is not a pseudonym "
                f"({CUSTOMER_METADATA} is {ref[:40]!r}): it was altered"
            )
        return ref

    async def _seed_to_open(self, ref: str) -> bytes:
        if self.customer_keys is None:
            raise HistoryDecodeError(
                f"history payload of customer {ref} is sealed under that customer's key, "
                "and this process has no customer key store (the database) to open it with"
            )
        seed = await self.customer_keys.seed(ref, create=False)
        if seed is None:
            self._derived.forget(ref)
            raise CustomerKeyErased(
                f"history payload of customer {ref} cannot be opened: the customer's "
                "history key was erased"
            )
        return seed
