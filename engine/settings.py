"""Runtime settings, read from the environment (the twelve-factor way) by pydantic-settings,
with the defaults of the embedded single-machine setup that `journeys up` runs.

An empty variable counts as unset. A value that does not validate raises `SettingsError`,
whose message names the variable (and never shows a secret's value). Only settings live
here; what reads them (the CLI, the worker, the API) decides what to do with them.

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
| `JOURNEYS_WORKFLOW_SANDBOX` | `0` | `1` (or `true`, `yes`, `on`) runs the interpreter in Temporal's workflow sandbox (slower; the tests always do) |
| `JOURNEYS_PUBLIC_DOCS` | `1` | `0` closes the API's `/docs`, `/redoc` and `/openapi.json` (404) |
| `JOURNEYS_HISTORY_KEYS` | unset | the key ring sealing workflow histories: `k2:<base64>,k1:<base64>`, the first encrypts (runtime/codec.py) |
| `JOURNEYS_HISTORY_KEYS_FILE` | unset (`journeys up` generates `<state>/history_keys`) | the same ring in a file, read when `JOURNEYS_HISTORY_KEYS` is unset |
| `JOURNEYS_CODEC_ORIGINS` | `JOURNEYS_TEMPORAL_UI` | comma-separated origins (Temporal Web UIs) allowed to call `/codec/decode` |
| `JOURNEYS_MAX_FUTURE_SKEW` | `1d` | how far in the future an event's timestamp may be: seconds (`3600`) or a duration (`1h`, `1d12h`) |
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.durations import DurationError, parse_duration

__all__ = ["RuntimeSettings", "SettingsError"]

_SECRETS = (
    "TEMPORAL_API_KEY",
    "JOURNEYS_API_KEY",
    "JOURNEYS_SECRET_KEY",
    "JOURNEYS_HISTORY_KEYS",
)


class SettingsError(ValueError):
    """The environment holds a value a setting cannot take; the message names each variable."""


def _variable(name: str, default: Any = None, *, secret: bool = False) -> Any:
    return Field(default, validation_alias=name, repr=not secret, validate_default=True)


class RuntimeSettings(BaseSettings):
    """Where everything is; build with `RuntimeSettings.from_env()` (or by field name in
    tests: given fields win over the environment)."""

    model_config = SettingsConfigDict(
        frozen=True,
        populate_by_name=True,
        case_sensitive=True,
        env_ignore_empty=True,
        extra="ignore",
    )

    state_dir: Path = _variable("JOURNEYS_STATE_DIR", Path("state"))
    database_url: str = _variable("DATABASE_URL", "")
    temporal_address: str = _variable("TEMPORAL_ADDRESS", "127.0.0.1:7233")
    temporal_namespace: str = _variable("TEMPORAL_NAMESPACE", "default")
    temporal_tls_cert: str | None = _variable("TEMPORAL_TLS_CERT")
    temporal_tls_key: str | None = _variable("TEMPORAL_TLS_KEY")
    temporal_tls_ca: str | None = _variable("TEMPORAL_TLS_CA")
    temporal_api_key: str | None = _variable("TEMPORAL_API_KEY", secret=True)
    task_queue: str = _variable("TEMPORAL_TASK_QUEUE", "journeys")
    journeys_file: Path = _variable("JOURNEYS_FILE", Path("journeys.yaml"))
    api_url: str = _variable("JOURNEYS_API_URL", "http://127.0.0.1:8000")
    api_key: str | None = _variable("JOURNEYS_API_KEY", secret=True)
    temporal_ui: str = _variable("JOURNEYS_TEMPORAL_UI", "http://127.0.0.1:8233")
    secret_key: str | None = _variable("JOURNEYS_SECRET_KEY", secret=True)
    public_url: str = _variable("JOURNEYS_PUBLIC_URL", "")
    workflow_sandbox: bool = _variable("JOURNEYS_WORKFLOW_SANDBOX", False)
    public_docs: bool = _variable("JOURNEYS_PUBLIC_DOCS", True)
    max_future_skew: timedelta = _variable("JOURNEYS_MAX_FUTURE_SKEW", timedelta(days=1))
    history_keys: str | None = _variable("JOURNEYS_HISTORY_KEYS", secret=True)
    """The key ring sealing histories (`runtime.codec.KeyRing`): ``id:base64key,...``."""
    history_keys_file: Path | None = _variable("JOURNEYS_HISTORY_KEYS_FILE")
    audit_checkpoint_every: timedelta | None = _variable("JOURNEYS_AUDIT_CHECKPOINT_EVERY")
    """How often the worker signs the audit log's head (seconds, or HH:MM:SS); unset: never
    (run `journeys audit checkpoint` from cron instead)."""
    codec_origins: str = _variable("JOURNEYS_CODEC_ORIGINS", "")
    """Comma-separated origins allowed to call the codec server (`allowed_codec_origins`)."""
    message_id_scope: Literal["global", "customer"] = _variable(
        "JOURNEYS_MESSAGE_ID_SCOPE", "global"
    )
    """`global` (Segment's): a messageId seen before is a duplicate whoever it names.
    `customer`: a duplicate only for the same customer; another customer's event with a
    used id is stored under a scoped id (``<id>~<digest>``)."""

    @property
    def allowed_codec_origins(self) -> tuple[str, ...]:
        """``JOURNEYS_CODEC_ORIGINS``, or else the Web UI's origin (`temporal_ui`; with its
        ``localhost`` twin when it is ``127.0.0.1``, as browsers tell the two apart)."""
        given = [part.strip().rstrip("/") for part in self.codec_origins.split(",")]
        if any(given):
            return tuple(origin for origin in given if origin)
        origins = [self.temporal_ui]
        if "://127.0.0.1" in self.temporal_ui:
            origins.append(self.temporal_ui.replace("://127.0.0.1", "://localhost", 1))
        return tuple(origins)

    @classmethod
    def from_env(cls) -> RuntimeSettings:
        """The settings the environment gives; `SettingsError` naming each bad variable."""
        try:
            return cls()
        except ValidationError as error:
            raise SettingsError(_describe(error)) from None

    @field_validator("database_url")
    @classmethod
    def _database_in_state_dir(cls, value: str, info: ValidationInfo) -> str:
        if value:
            return value
        state = info.data.get("state_dir", Path("state"))
        return f"sqlite:///{(Path(state) / 'journeys.db').resolve()}"

    @field_validator("api_url", "temporal_ui")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("max_future_skew", mode="before")
    @classmethod
    def _seconds_or_duration(cls, value: Any) -> Any:
        """``3600`` (seconds, ``0`` included) or a duration as journeys write them (``1h``)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.isdigit():
            return timedelta(seconds=int(text))
        try:
            return timedelta(seconds=parse_duration(text))
        except DurationError:
            raise ValueError("give seconds (3600) or a duration (1h, 1d12h)") from None

    @field_validator("public_url")
    @classmethod
    def _public_url_defaults_to_api_url(cls, value: str, info: ValidationInfo) -> str:
        return (value or str(info.data.get("api_url", ""))).rstrip("/")


def _describe(error: ValidationError) -> str:
    """One line per bad variable: its name, what was wrong, and its value unless secret."""
    lines = []
    for problem in error.errors():
        name = ".".join(str(part) for part in problem["loc"]) or "settings"
        shown = "" if name in _SECRETS else f" (got {problem.get('input')!r})"
        lines.append(f"{name}: {problem['msg']}{shown}")
    return "invalid settings in the environment:\n  " + "\n  ".join(lines)
