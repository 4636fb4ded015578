"""Connecting to Temporal the same way everywhere (API, CLI, worker): address, namespace,
TLS or API key from the environment, and one data converter: pydantic's, with the history
codec (`runtime.codec`) sealing every payload under the configured key ring."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter

from engine.settings import RuntimeSettings
from runtime.codec import HistoryCodec, KeyRing

__all__ = ["connect", "data_converter"]

log = logging.getLogger(__name__)
_warned_plaintext = False


def data_converter(source: RuntimeSettings | KeyRing | None) -> DataConverter:
    """The converter of every client, worker, test environment and replayer: pydantic's,
    its payloads sealed by `HistoryCodec` under ``source``'s key ring.

    With no ring (settings that set neither ``JOURNEYS_HISTORY_KEYS`` nor
    ``JOURNEYS_HISTORY_KEYS_FILE``, or None) payloads are stored as they are, with a
    warning; sealed payloads then fail to decode, naming their key id. Raises
    `runtime.codec.KeyRingError` for a ring that is set but unusable.
    """
    keys = KeyRing.from_settings(source) if isinstance(source, RuntimeSettings) else source
    if keys is None:
        _warn_plaintext()
    return dataclasses.replace(pydantic_data_converter, payload_codec=HistoryCodec(keys))


def _warn_plaintext() -> None:
    global _warned_plaintext
    if not _warned_plaintext:
        _warned_plaintext = True
        log.warning(
            "no history key ring (JOURNEYS_HISTORY_KEYS or JOURNEYS_HISTORY_KEYS_FILE): "
            "workflow histories are stored unencrypted"
        )


async def connect(settings: RuntimeSettings) -> Client:
    """A client for the configured Temporal (TLS when cert/key or an API key are set)."""
    tls: TLSConfig | bool = False
    if settings.temporal_tls_cert and settings.temporal_tls_key:
        tls = TLSConfig(
            client_cert=Path(settings.temporal_tls_cert).read_bytes(),
            client_private_key=Path(settings.temporal_tls_key).read_bytes(),
            server_root_ca_cert=Path(settings.temporal_tls_ca).read_bytes()
            if settings.temporal_tls_ca
            else None,
        )
    elif settings.temporal_api_key:
        tls = True
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        tls=tls,
        api_key=settings.temporal_api_key,
        data_converter=data_converter(settings),
    )
