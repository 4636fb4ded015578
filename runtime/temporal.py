"""Connecting to Temporal the same way everywhere (API, CLI, worker): address, namespace,
TLS or API key from the environment, and the pydantic data converter."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter

from engine.settings import RuntimeSettings

__all__ = ["connect"]


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
        data_converter=pydantic_data_converter,
    )
