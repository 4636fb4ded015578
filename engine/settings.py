"""Runtime settings, read from the environment (the twelve-factor way), with the defaults
of the embedded single-machine setup that `journeys up` runs.

| variable | default | what |
|---|---|---|
| `JOURNEYS_STATE_DIR` | `./state` | where the embedded setup keeps its files |
| `DATABASE_URL` | `sqlite:///<state>/journeys.db` | the app database (PostgreSQL for scale-out) |
| `TEMPORAL_ADDRESS` | `127.0.0.1:7233` | the Temporal frontend |
| `TEMPORAL_NAMESPACE` | `default` | |
| `TEMPORAL_TLS_CERT`, `TEMPORAL_TLS_KEY`, `TEMPORAL_TLS_CA` | unset | mTLS (paths to PEM files) |
| `TEMPORAL_API_KEY` | unset | Temporal Cloud API key |
| `TEMPORAL_TASK_QUEUE` | `journeys` | |
| `JOURNEYS_FILE` | `./journeys.yaml` | the catalogue `deploy` and `up` read |
| `JOURNEYS_API_URL` | `http://127.0.0.1:8000` | where the CLI's client commands send requests |
| `JOURNEYS_API_KEY` | unset | seeds an API key (dev); the client commands send it |
| `JOURNEYS_TEMPORAL_UI` | `http://127.0.0.1:8233` | links to runs in Temporal's Web UI |
| `JOURNEYS_SECRET_KEY` | unset (`journeys up` generates one) | signs unsubscribe links; the same in every worker and API |
| `JOURNEYS_PUBLIC_URL` | `JOURNEYS_API_URL` | the API's address as customers' mail clients reach it (unsubscribe links) |
| `JOURNEYS_WORKFLOW_SANDBOX` | `0` | `1` runs the interpreter in Temporal's workflow sandbox (slower; the tests always do) |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RuntimeSettings"]


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class RuntimeSettings:
    """Where everything is; build with `RuntimeSettings.from_env()`."""

    state_dir: Path = Path("state")
    database_url: str = ""
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_tls_cert: str | None = None
    temporal_tls_key: str | None = None
    temporal_tls_ca: str | None = None
    temporal_api_key: str | None = field(default=None, repr=False)
    task_queue: str = "journeys"
    journeys_file: Path = Path("journeys.yaml")
    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = field(default=None, repr=False)
    temporal_ui: str = "http://127.0.0.1:8233"
    secret_key: str | None = field(default=None, repr=False)
    public_url: str = "http://127.0.0.1:8000"
    workflow_sandbox: bool = False

    @classmethod
    def from_env(cls) -> RuntimeSettings:
        state = Path(_env("JOURNEYS_STATE_DIR", "state") or "state")
        return cls(
            state_dir=state,
            database_url=_env("DATABASE_URL") or f"sqlite:///{(state / 'journeys.db').resolve()}",
            temporal_address=_env("TEMPORAL_ADDRESS", "127.0.0.1:7233") or "",
            temporal_namespace=_env("TEMPORAL_NAMESPACE", "default") or "",
            temporal_tls_cert=_env("TEMPORAL_TLS_CERT"),
            temporal_tls_key=_env("TEMPORAL_TLS_KEY"),
            temporal_tls_ca=_env("TEMPORAL_TLS_CA"),
            temporal_api_key=_env("TEMPORAL_API_KEY"),
            task_queue=_env("TEMPORAL_TASK_QUEUE", "journeys") or "journeys",
            journeys_file=Path(_env("JOURNEYS_FILE", "journeys.yaml") or "journeys.yaml"),
            api_url=(_env("JOURNEYS_API_URL", "http://127.0.0.1:8000") or "").rstrip("/"),
            api_key=_env("JOURNEYS_API_KEY"),
            temporal_ui=(_env("JOURNEYS_TEMPORAL_UI", "http://127.0.0.1:8233") or "").rstrip("/"),
            secret_key=_env("JOURNEYS_SECRET_KEY"),
            public_url=(
                _env("JOURNEYS_PUBLIC_URL")
                or _env("JOURNEYS_API_URL", "http://127.0.0.1:8000")
                or ""
            ).rstrip("/"),
            workflow_sandbox=(_env("JOURNEYS_WORKFLOW_SANDBOX", "0") or "0").lower()
            in ("1", "true", "yes", "on"),
        )
