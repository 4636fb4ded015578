"""Connecting to Temporal the same way everywhere (API, CLI, worker): address, namespace,
TLS or API key from the environment, and one data converter: pydantic's, with the history
codec (`runtime.codec`) sealing every payload under the configured key ring, and a run's
payloads under its customer's key (`runtime.customer_keys`, on the app database)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter

from engine.settings import RuntimeSettings
from runtime.codec import HistoryCodec, KeyRing
from runtime.customer_keys import CustomerKeyStore, shared_store

__all__ = ["connect", "data_converter"]

log = logging.getLogger(__name__)
_warned_plaintext = False


def data_converter(
    source: RuntimeSettings | KeyRing | None, *, customer_keys: CustomerKeyStore | None = None
) -> DataConverter:
    """The converter of every client, worker, test environment and replayer: pydantic's,
    its payloads sealed by `HistoryCodec` under ``source``'s key ring.

    Given settings, the codec also has the process's `CustomerKeyStore` on
    ``settings.database_url`` (`runtime.customer_keys.shared_store`): the payloads of a
    run whose workflow id names a customer are sealed under that customer's key. The
    store makes its engine on first use, so building a converter touches no database.
    Given a ring or None, there is no store unless ``customer_keys`` is passed (payloads
    are sealed under the ring's key; customer-keyed ones cannot be opened).

    With no ring (settings that set neither ``JOURNEYS_HISTORY_KEYS`` nor
    ``JOURNEYS_HISTORY_KEYS_FILE``, or None) payloads are stored as they are, with a
    warning; sealed payloads then fail to decode, naming their key id. Raises
    `runtime.codec.KeyRingError` for a ring that is set but unusable.
    """
    if isinstance(source, RuntimeSettings):
        keys = KeyRing.from_settings(source)
        if customer_keys is None:
            customer_keys = shared_store(source.database_url)
    else:
        keys = source
    if keys is None:
        _warn_plaintext()
    codec = HistoryCodec(keys, customer_keys=customer_keys)
    return dataclasses.replace(pydantic_data_converter, payload_codec=codec)


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
