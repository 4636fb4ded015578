"""`journeys up` as a user runs it: everything comes up on loopback, Ctrl-C stops every
process it started, a second start on the same state directory keeps the API key, a
database of the release before migrations is upgraded in place, and one a newer release
migrated is refused before anything starts."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from alembic import command
from sqlalchemy import create_engine, text

from engine.migrate import FIRST_REVISION, head_revision, migration_config
from runtime.devserver import dev_server_ready

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
JOURNEYS = Path(sys.executable).parent / "journeys"
START_TIMEOUT = 120.0  # two cores shared with other test runs: the dev server can be slow
STOP_TIMEOUT = 45.0


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class _Up:
    """A running `journeys up` and everything it has printed so far."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, *, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output())
            if found:
                return found
            if self.process.poll() is not None:
                time.sleep(0.5)  # let the reader drain what is left
                found = re.search(pattern, self.output())
                if found:
                    return found
                pytest.fail(f"journeys up exited ({self.process.returncode}):\n{self.output()}")
            time.sleep(0.25)
        pytest.fail(f"no {pattern!r} within {timeout:.0f} s; output:\n{self.output()}")


def _start(state_dir: Path, ports: dict[str, int]) -> _Up:
    env = dict(os.environ)
    env.pop("JOURNEYS_API_KEY", None)
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [
            str(JOURNEYS),
            "up",
            "--state-dir",
            str(state_dir),
            "--port",
            str(ports["api"]),
            "--temporal-port",
            str(ports["temporal"]),
            "--ui-port",
            str(ports["ui"]),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    up = _Up(process)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            up.lines.append(line)

    up.reader = threading.Thread(target=read, daemon=True)
    up.reader.start()
    return up


def _stop(up: _Up, ports: dict[str, int]) -> float:
    """Ctrl-C; the seconds until `journeys up` and everything it started were gone."""
    started = time.monotonic()
    if up.process.poll() is None:
        up.process.send_signal(signal.SIGINT)
    try:
        up.process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        up.process.kill()
        pytest.fail(f"journeys up did not stop within {STOP_TIMEOUT:.0f} s:\n{up.output()}")
    deadline = time.monotonic() + 10
    while any(_listening(p) for p in ports.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return time.monotonic() - started


@pytest.fixture
def ports() -> dict[str, int]:
    api, temporal, ui = _free_ports(3)
    return {"api": api, "temporal": temporal, "ui": ui}


@pytest.fixture
def running() -> Iterator[list[_Up]]:
    """Every `journeys up` a test starts, interrupted at the end whatever happened."""
    started: list[_Up] = []
    yield started
    for up in started:
        if up.process.poll() is None:
            up.process.send_signal(signal.SIGINT)
            try:
                up.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                up.process.kill()


def test_up_runs_everything_stops_on_ctrl_c_and_keeps_its_state(
    tmp_path: Path, ports: dict[str, int], running: list[_Up]
) -> None:
    state = tmp_path / "state"

    first = _start(state, ports)
    running.append(first)
    api_url = first.wait_for(r"API\s+(http://127\.0\.0\.1:\d+)", timeout=START_TIMEOUT).group(1)
    key = first.wait_for(r"API key\s+(\S+)", timeout=5).group(1)
    first.wait_for(r"Ctrl-C stops everything", timeout=5)

    assert api_url == f"http://127.0.0.1:{ports['api']}"
    assert f"Temporal UI  http://127.0.0.1:{ports['ui']}" in first.output()
    assert "journeys emit payment_failed --customer c1" in first.output()
    assert f"database schema upgraded from empty to {head_revision()}" in first.output()
    assert (state / "api_key").read_text().strip() == key
    assert (state / "api_key").stat().st_mode & 0o777 == 0o600
    health = httpx.get(f"{api_url}/healthz", timeout=10)
    assert health.status_code == 200, health.text
    assert asyncio.run(dev_server_ready(f"127.0.0.1:{ports['temporal']}", timeout=10))
    runs = httpx.get(f"{api_url}/v1/runs", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert runs.status_code == 200, runs.text
    for name in ("temporal", "worker", "api"):
        assert (state / "logs" / f"{name}.log").exists()

    took = _stop(first, ports)
    assert first.process.returncode == 0, first.output()
    leftovers = [name for name, port in ports.items() if _listening(port)]
    assert leftovers == [], f"still listening after Ctrl-C: {leftovers}\n{first.output()}"
    assert took < STOP_TIMEOUT
    assert "stopped" in first.output()

    second = _start(state, ports)
    running.append(second)
    second.wait_for(r"Ctrl-C stops everything", timeout=START_TIMEOUT)
    assert second.wait_for(r"API key\s+(\S+)", timeout=5).group(1) == key
    assert "unchanged (version" in second.output()
    assert f"database schema at {head_revision()} (up to date)" in second.output()
    assert httpx.get(f"{api_url}/healthz", timeout=10).status_code == 200
    _stop(second, ports)
    assert second.process.returncode == 0, second.output()
    assert not any(_listening(port) for port in ports.values())


def _database_at_first_revision(state: Path, *, stamped: str | None) -> str:
    """``state``/journeys.db with the first revision's tables and one running run; without
    `alembic_version` (as the release before migrations left it) unless ``stamped``."""
    state.mkdir(parents=True)
    engine = create_engine(f"sqlite:///{state / 'journeys.db'}")
    try:
        with engine.connect() as connection:
            command.upgrade(migration_config(connection), FIRST_REVISION)
            connection.commit()
        with engine.begin() as connection:
            if stamped is None:
                connection.execute(text("DROP TABLE alembic_version"))
            else:
                connection.execute(
                    text("UPDATE alembic_version SET version_num = :v"), {"v": stamped}
                )
            connection.execute(
                text(
                    "INSERT INTO runs (run_id, workflow_id, journey_id, version, customer_id, "
                    "status, holdout, path, started_at, updated_at) VALUES ('r-before', "
                    "'journey/recover/c-before', 'recover', 'v0', 'c-before', 'running', 0, "
                    "'[]', '2025-01-02 03:04:05+00:00', '2025-01-02 03:04:05+00:00')"
                )
            )
    finally:
        engine.dispose()
    return "r-before"


def test_up_upgrades_a_database_of_the_previous_release_in_place(
    tmp_path: Path, ports: dict[str, int], running: list[_Up]
) -> None:
    state = tmp_path / "state"
    run_id = _database_at_first_revision(state, stamped=None)

    up = _start(state, ports)
    running.append(up)
    up.wait_for(r"Ctrl-C stops everything", timeout=START_TIMEOUT)
    key = up.wait_for(r"API key\s+(\S+)", timeout=5).group(1)

    assert f"stamped at {FIRST_REVISION}, upgraded to {head_revision()}" in up.output()
    runs = httpx.get(
        f"http://127.0.0.1:{ports['api']}/v1/runs",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert runs.status_code == 200, runs.text
    assert run_id in runs.text  # the run the old release stored is still there
    _stop(up, ports)
    assert up.process.returncode == 0, up.output()


def test_up_refuses_a_database_a_newer_release_migrated_before_starting_anything(
    tmp_path: Path, ports: dict[str, int], running: list[_Up]
) -> None:
    state = tmp_path / "state"
    _database_at_first_revision(state, stamped="9999_from_the_future")

    up = _start(state, ports)
    running.append(up)
    up.process.wait(timeout=60)
    up.wait_for(r"its newest is", timeout=5)

    assert up.process.returncode == 1, up.output()
    assert "9999_from_the_future" in up.output()
    assert f"its newest is {head_revision()}" in up.output()
    assert "Traceback" not in up.output()
    assert not (state / "logs" / "temporal.log").exists()  # nothing was started
    assert not any(_listening(port) for port in ports.values())
