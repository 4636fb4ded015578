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

Not here: the data converter that uses this codec (`runtime.temporal.data_converter`),
the codec server for the Web UI (`service.api.routes.codec`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import secrets
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from engine.settings import RuntimeSettings

__all__ = [
    "ENCODING",
    "KEY_ID_METADATA",
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
_NONCE_BYTES = 12  # 96 bits, GCM's native nonce size; random per payload
_KEY_BYTES = 32  # AES-256
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_AAD_PREFIX = b"journeys-history/v1:"


class KeyRingError(ValueError):
    """The key ring's text or file is not usable; the message names ids, never keys."""


class HistoryDecodeError(ValueError):
    """A sealed payload that cannot be opened (unknown key id, tampered, or corrupt)."""


class UnknownKeyId(HistoryDecodeError):
    """A payload sealed under a key id the ring does not hold."""


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


class HistoryCodec(PayloadCodec):
    """zlib, then AES-256-GCM under the ring's first key; opens any payload whose key id
    the ring holds and passes unsealed payloads through. With no ring (``keys=None``) it
    seals nothing and opens nothing: unsealed payloads pass, sealed ones fail naming
    their key id."""

    def __init__(self, keys: KeyRing | None, *, compress_level: int = 6) -> None:
        self.keys = keys
        self._compress_level = compress_level
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.keys} if keys else {}

    def __repr__(self) -> str:
        return f"HistoryCodec({self.keys!r})"

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.seal(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.open(payload) for payload in payloads]

    def seal(self, payload: Payload) -> Payload:
        """``payload`` sealed under the current key (as it is with no key ring)."""
        if self.keys is None:
            return payload
        key_id = self.keys.current
        plain = zlib.compress(payload.SerializeToString(), self._compress_level)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, plain, _aad(key_id))
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode("ascii")},
            data=nonce + sealed,
        )

    def open(self, payload: Payload) -> Payload:
        """The payload ``seal`` made this from; an unsealed one as it is."""
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
        data = payload.data
        try:
            plain = cipher.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], _aad(key_id))
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
