"""The runtime settings as an operator sets them: the same variable names as ever, the
defaults `journeys up` relies on, and a bad value named by its variable, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.settings import RuntimeSettings, SettingsError
from service.cli.main import app

VARIABLES = (
    "JOURNEYS_STATE_DIR",
    "DATABASE_URL",
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_TLS_CERT",
    "TEMPORAL_TLS_KEY",
    "TEMPORAL_TLS_CA",
    "TEMPORAL_API_KEY",
    "TEMPORAL_TASK_QUEUE",
    "JOURNEYS_FILE",
    "JOURNEYS_API_URL",
    "JOURNEYS_API_KEY",
    "JOURNEYS_TEMPORAL_UI",
    "JOURNEYS_SECRET_KEY",
    "JOURNEYS_PUBLIC_URL",
    "JOURNEYS_WORKFLOW_SANDBOX",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_the_embedded_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = RuntimeSettings.from_env()

    assert settings.state_dir == Path("state")
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'state' / 'journeys.db'}"
    assert settings.temporal_address == "127.0.0.1:7233"
    assert settings.temporal_namespace == "default"
    assert settings.task_queue == "journeys"
    assert settings.journeys_file == Path("journeys.yaml")
    assert settings.api_url == settings.public_url == "http://127.0.0.1:8000"
    assert settings.temporal_ui == "http://127.0.0.1:8233"
    assert settings.api_key is settings.secret_key is settings.temporal_api_key is None
    assert settings.workflow_sandbox is False


def test_every_variable_is_read_by_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    given = {
        "JOURNEYS_STATE_DIR": "/srv/journeys",
        "DATABASE_URL": "postgresql://db/journeys",
        "TEMPORAL_ADDRESS": "temporal:7233",
        "TEMPORAL_NAMESPACE": "prod",
        "TEMPORAL_TLS_CERT": "/tls/cert.pem",
        "TEMPORAL_TLS_KEY": "/tls/key.pem",
        "TEMPORAL_TLS_CA": "/tls/ca.pem",
        "TEMPORAL_API_KEY": "temporal-key",
        "TEMPORAL_TASK_QUEUE": "q1",
        "JOURNEYS_FILE": "/etc/journeys.yaml",
        "JOURNEYS_API_URL": "https://api.example/",
        "JOURNEYS_API_KEY": "jk_key",
        "JOURNEYS_TEMPORAL_UI": "https://ui.example/",
        "JOURNEYS_SECRET_KEY": "signing",
        "JOURNEYS_PUBLIC_URL": "https://public.example/",
        "JOURNEYS_WORKFLOW_SANDBOX": "1",
    }
    for name, value in given.items():
        monkeypatch.setenv(name, value)

    settings = RuntimeSettings.from_env()

    assert (settings.state_dir, settings.database_url) == (
        Path("/srv/journeys"),
        "postgresql://db/journeys",
    )
    assert (settings.temporal_address, settings.temporal_namespace) == ("temporal:7233", "prod")
    assert (settings.temporal_tls_cert, settings.temporal_tls_key, settings.temporal_tls_ca) == (
        "/tls/cert.pem",
        "/tls/key.pem",
        "/tls/ca.pem",
    )
    assert (settings.temporal_api_key, settings.api_key, settings.secret_key) == (
        "temporal-key",
        "jk_key",
        "signing",
    )
    assert (settings.task_queue, settings.journeys_file) == ("q1", Path("/etc/journeys.yaml"))
    # Trailing slashes go: the code appends paths to these.
    assert settings.api_url == "https://api.example"
    assert settings.temporal_ui == "https://ui.example"
    assert settings.public_url == "https://public.example"
    assert settings.workflow_sandbox is True


def test_derived_settings_follow_what_they_derive_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNEYS_STATE_DIR", "/srv/state")
    monkeypatch.setenv("JOURNEYS_API_URL", "http://10.0.0.5:9000/")

    settings = RuntimeSettings.from_env()

    assert settings.database_url == "sqlite:////srv/state/journeys.db"
    assert settings.public_url == "http://10.0.0.5:9000"


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "TEMPORAL_ADDRESS",
        "JOURNEYS_API_KEY",
        "JOURNEYS_WORKFLOW_SANDBOX",
        "DATABASE_URL",
    ):
        monkeypatch.setenv(name, "")

    settings = RuntimeSettings.from_env()

    assert settings.temporal_address == "127.0.0.1:7233"
    assert settings.api_key is None
    assert settings.workflow_sandbox is False
    assert settings.database_url.startswith("sqlite:///")


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("yes", True), ("on", True), ("0", False)]
)
def test_the_sandbox_switch_takes_the_usual_spellings(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    monkeypatch.setenv("JOURNEYS_WORKFLOW_SANDBOX", value)
    assert RuntimeSettings.from_env().workflow_sandbox is expected


def test_a_bad_value_is_named_by_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNEYS_WORKFLOW_SANDBOX", "maybe")

    with pytest.raises(SettingsError) as raised:
        RuntimeSettings.from_env()

    assert "JOURNEYS_WORKFLOW_SANDBOX" in str(raised.value)
    assert "'maybe'" in str(raised.value)


def test_secrets_stay_out_of_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_API_KEY", "temporal-secret-1")
    monkeypatch.setenv("JOURNEYS_API_KEY", "jk_secret-2")
    monkeypatch.setenv("JOURNEYS_SECRET_KEY", "signing-secret-3")

    settings = RuntimeSettings.from_env()

    shown = repr(settings) + str(settings)
    assert "temporal-secret-1" not in shown
    assert "jk_secret-2" not in shown
    assert "signing-secret-3" not in shown
    assert "temporal_address" in shown  # the rest is there


def test_fields_given_by_name_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_TASK_QUEUE", "from-env")
    settings = RuntimeSettings(task_queue="given", database_url="sqlite://")
    assert (settings.task_queue, settings.database_url) == ("given", "sqlite://")


def test_the_cli_prints_a_bad_setting_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNEYS_WORKFLOW_SANDBOX", "maybe")
    monkeypatch.setenv("JOURNEYS_STATE_DIR", str(tmp_path))

    result = CliRunner().invoke(app, ["db", "current"])

    assert result.exit_code == 2, result.output
    assert "JOURNEYS_WORKFLOW_SANDBOX" in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, SettingsError)
