"""The history codec (runtime/codec.py): sealed, compressed payloads and the key ring."""

from __future__ import annotations

import base64
import json
import logging
import stat
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter

from engine.settings import RuntimeSettings
from runtime.codec import (
    ENCODING,
    KEY_ID_METADATA,
    HistoryCodec,
    HistoryDecodeError,
    KeyRing,
    KeyRingError,
    UnknownKeyId,
    create_key_file,
    new_key_ring_text,
)
from runtime.devserver import dev_server_command
from runtime.temporal import data_converter
from service.cli.main import history_keys_env
from tests.history_keys import TEST_KEY_RING, TEST_KEYS

OLD_KEY = "k1:" + base64.b64encode(bytes(range(32))).decode()
NEW_KEY = "k2:" + base64.b64encode(bytes(range(32, 64))).decode()


def _json_payload(value: object) -> Payload:
    payloads = pydantic_data_converter.payload_converter.to_payloads([value])
    return payloads[0]


def _large_plan() -> dict[str, object]:
    """A plan-sized start input: repetitive JSON, as a compiled journey's is."""
    steps = [
        {
            "id": f"step_{i}",
            "type": "send",
            "channel": "email",
            "template": "payment_reminder",
            "when": "profile.tier == 'gold' and vars.due > 1000",
            "next": f"step_{i + 1}",
        }
        for i in range(200)
    ]
    return {"journey": "payment_recovery", "version": 3, "steps": steps}


async def test_a_payload_round_trips_sealed() -> None:
    codec = HistoryCodec(TEST_KEY_RING)
    original = _json_payload({"first_name": "Ann", "amount": 25000})
    [sealed] = await codec.encode([original])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID_METADATA] == b"test-2"
    assert b"Ann" not in sealed.data and b"json" not in sealed.data
    [opened] = await codec.decode([sealed])
    assert opened == original


async def test_every_seal_uses_a_fresh_nonce() -> None:
    codec = HistoryCodec(TEST_KEY_RING)
    original = _json_payload("same")
    first, second = await codec.encode([original, original])
    assert first.data[:12] != second.data[:12] and first.data != second.data


async def test_compression_shrinks_a_large_plan_payload() -> None:
    codec = HistoryCodec(TEST_KEY_RING)
    original = _json_payload(_large_plan())
    [sealed] = await codec.encode([original])
    assert sealed.ByteSize() < original.ByteSize() / 5, (sealed.ByteSize(), original.ByteSize())


async def test_rotation_old_key_id_still_decodes_and_new_payloads_use_the_new_id() -> None:
    old = HistoryCodec(KeyRing.parse(OLD_KEY))
    [sealed_before] = await old.encode([_json_payload({"n": 1})])
    rotated = HistoryCodec(KeyRing.parse(f"{NEW_KEY},{OLD_KEY}"))
    [opened] = await rotated.decode([sealed_before])
    assert json.loads(opened.data) == {"n": 1}
    [sealed_after] = await rotated.encode([_json_payload({"n": 2})])
    assert sealed_after.metadata[KEY_ID_METADATA] == b"k2"


async def test_an_unknown_key_id_fails_naming_it() -> None:
    [sealed] = await HistoryCodec(KeyRing.parse(OLD_KEY)).encode([_json_payload(1)])
    with pytest.raises(UnknownKeyId, match=r"key id 'k1'.*holds k2") as caught:
        await HistoryCodec(KeyRing.parse(NEW_KEY)).decode([sealed])
    assert base64.b64encode(bytes(range(32))).decode() not in str(caught.value)
    with pytest.raises(UnknownKeyId, match="no key ring is configured"):
        await HistoryCodec(None).decode([sealed])


async def test_tampered_ciphertext_fails() -> None:
    codec = HistoryCodec(TEST_KEY_RING)
    [sealed] = await codec.encode([_json_payload({"first_name": "Ann"})])
    altered = bytearray(sealed.data)
    altered[20] ^= 0x01
    tampered = Payload(metadata=dict(sealed.metadata), data=bytes(altered))
    with pytest.raises(HistoryDecodeError, match="failed authentication"):
        await codec.decode([tampered])


async def test_the_key_id_is_bound_to_the_ciphertext() -> None:
    """Relabelling a payload with another id of the ring (same key) fails: the id is AAD."""
    same_key = base64.b64encode(bytes(range(32))).decode()
    codec = HistoryCodec(KeyRing.parse(f"a:{same_key},b:{same_key}"))
    [sealed] = await codec.encode([_json_payload(1)])
    relabelled = Payload(
        metadata={**dict(sealed.metadata), KEY_ID_METADATA: b"b"}, data=sealed.data
    )
    with pytest.raises(HistoryDecodeError, match="'b' failed authentication"):
        await codec.decode([relabelled])


async def test_unsealed_payloads_pass_through() -> None:
    codec = HistoryCodec(TEST_KEY_RING)
    plain = [_json_payload({"recorded": "before the codec"}), Payload()]
    assert await codec.decode(plain) == plain
    assert await HistoryCodec(None).encode(plain) == plain


async def test_the_data_converter_seals_what_it_serializes() -> None:
    converter = data_converter(TEST_KEY_RING)
    [payload] = await converter.encode(["Ann"])
    assert payload.metadata["encoding"] == ENCODING
    assert await converter.decode([payload], [str]) == ["Ann"]


def test_the_data_converter_reads_the_ring_from_settings(tmp_path: Path) -> None:
    with_env = RuntimeSettings(history_keys=TEST_KEYS, history_keys_file=None)
    codec = data_converter(with_env).payload_codec
    assert isinstance(codec, HistoryCodec) and codec.keys == TEST_KEY_RING
    file = create_key_file(tmp_path / "history_keys")
    with_file = RuntimeSettings(history_keys=None, history_keys_file=file)
    codec = data_converter(with_file).payload_codec
    assert isinstance(codec, HistoryCodec) and codec.keys is not None
    assert codec.keys.ids == ("k1",)


def test_no_ring_stores_plaintext_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    import runtime.temporal

    runtime.temporal._warned_plaintext = False
    with caplog.at_level(logging.WARNING, logger="runtime.temporal"):
        codec = data_converter(RuntimeSettings(history_keys=None, history_keys_file=None))
    assert isinstance(codec.payload_codec, HistoryCodec) and codec.payload_codec.keys is None
    assert "stored unencrypted" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("justakey", "not 'id:base64key'"),
        ("k1:not base64!", "'k1' is not valid base64"),
        ("k1:" + base64.b64encode(b"short").decode(), "'k1' is 5 bytes"),
        (f"{OLD_KEY},{OLD_KEY}", "'k1' appears twice"),
        ("bad id:" + base64.b64encode(bytes(32)).decode(), "is not 1-64"),
    ],
)
def test_a_bad_key_ring_is_refused_without_showing_a_key(text: str, message: str) -> None:
    with pytest.raises(KeyRingError, match=message) as caught:
        KeyRing.parse(text)
    assert "justakey" not in str(caught.value)


def test_a_key_ring_never_shows_its_keys() -> None:
    assert repr(TEST_KEY_RING) == "KeyRing(ids=['test-2', 'test-1'])"
    assert "se6IgrwX" not in repr(HistoryCodec(TEST_KEY_RING))
    settings = RuntimeSettings(history_keys=TEST_KEYS)
    assert "se6IgrwX" not in repr(settings)


def test_the_key_file_is_made_once_and_private(tmp_path: Path) -> None:
    path = create_key_file(tmp_path / "history_keys")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    ring = KeyRing.parse(text)
    assert ring.ids == ("k1",) and len(ring.keys[0][1]) == 32
    path.chmod(0o644)
    assert create_key_file(path).read_text() == text  # kept, not replaced
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Rotation as the runbook does it: a new first line, the old key kept below.
    path.write_text(new_key_ring_text("k2") + text)
    assert KeyRing.load(None, path).ids == ("k2", "k1")  # type: ignore[union-attr]


def test_a_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="cannot read the history key file"):
        KeyRing.load(None, tmp_path / "absent")


def test_journeys_up_gives_the_dev_ui_the_codec_endpoint(tmp_path: Path) -> None:
    command = dev_server_command(
        state_dir=tmp_path, binary=Path("temporal"), codec_endpoint="http://127.0.0.1:8000/codec"
    )
    at = command.index("--ui-codec-endpoint")
    assert command[at + 1] == "http://127.0.0.1:8000/codec"
    assert "--ui-codec-endpoint" not in dev_server_command(state_dir=tmp_path, binary=Path("t"))


def test_journeys_up_makes_a_key_file_unless_a_ring_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNEYS_HISTORY_KEYS", raising=False)
    monkeypatch.delenv("JOURNEYS_HISTORY_KEYS_FILE", raising=False)
    env = history_keys_env(tmp_path)
    assert env == {"JOURNEYS_HISTORY_KEYS_FILE": str(tmp_path / "history_keys")}
    assert stat.S_IMODE((tmp_path / "history_keys").stat().st_mode) == 0o600
    monkeypatch.setenv("JOURNEYS_HISTORY_KEYS", TEST_KEYS)
    assert history_keys_env(tmp_path / "elsewhere") == {}
    assert not (tmp_path / "elsewhere" / "history_keys").exists()


def test_the_allowed_codec_origins() -> None:
    assert RuntimeSettings(temporal_ui="http://127.0.0.1:8233").allowed_codec_origins == (
        "http://127.0.0.1:8233",
        "http://localhost:8233",
    )
    given = RuntimeSettings(codec_origins="https://ui.example/, https://ui2.example")
    assert given.allowed_codec_origins == ("https://ui.example", "https://ui2.example")
