"""`journeys up` heals: with events posted all along, the worker, then the API, then the
Temporal dev server are killed with SIGKILL, one at a time. Each is restarted (the dev
server on its port and its state file), /healthz says 503 while one is down and 200 once
it is back, the console names each restart and its cause, and nothing is lost: every
event the API accepted is stored and routed, and every run it started completes,
including runs that were waiting in their timer while the worker or Temporal was dead.

The poster retries a connection error only while the API itself is down (the same
message id: a request the dying API had stored counts once). Every wait is bounded.

The worker's restart is docs/operations.md's example (issue #16): the lines it shows under
"Restarts" are printed, in order, with the README test's ``...`` and whitespace
convention (tests/e2e/test_readme.py). What the test replaces in them, and nothing else:
``state/`` is the tmp state directory, the dev server's port 7233 this test's, and the
log line's time and the new pid any time and any pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import free_ports
from tests.e2e.test_readme import mismatch, plain_block_after
from tests.e2e.test_up import START_TIMEOUT, STOP_TIMEOUT, _listening, _stop, _Up

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
JOURNEYS = Path(sys.executable).parent / "journeys"
RECOVERY_TIMEOUT = 60.0  # one child back and healthy
SETTLE_TIMEOUT = 90.0  # every run completed after the last restart
POST_EVERY = 0.3

HEAL_JOURNEYS = """\
version: 1

settings:
  timezone: UTC

events:
  heal_started:
    n: number

journeys:
  - id: heal
    name: Survives its processes being killed
    entry:
      event: heal_started
      reentry: always
    steps:
      - id: pause
        wait: 5s
      - id: mark
        set:
          vars.marked: "event.n"
      - id: done
        exit: finished
"""


class _Poster(threading.Thread):
    """Posts one `heal_started` event (a new customer each) every `POST_EVERY` seconds."""

    def __init__(self, api_url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.api_url = api_url
        self.key = key
        self.accepted: dict[str, str] = {}  # message id -> what was down when accepted
        self.problems: list[str] = []
        self.retried = 0
        self.down = "nothing"  # set by the test: which child it has killed
        self.api_down = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=30.0) as http:
            number = 0
            while not self.stop.is_set():
                number += 1
                self._post(http, number)
                self.stop.wait(POST_EVERY)

    def _post(self, http: httpx.Client, number: int) -> None:
        message_id = f"heal-{number}"
        body = {
            "type": "track",
            "event": "heal_started",
            "userId": f"heal-customer-{number}",
            "properties": {"n": number},
            "messageId": message_id,
        }
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while True:
            down = self.down
            try:
                answer = http.post("/v1/track", json=body)
            except httpx.TransportError as error:
                # Only while the API itself is restarting; the same message id again.
                if self.api_down.is_set() and time.monotonic() < deadline:
                    self.retried += 1
                    time.sleep(0.2)
                    continue
                self.problems.append(f"{message_id} ({down} down): {error!r}")
                return
            if answer.is_success:
                self.accepted[message_id] = down
            else:
                self.problems.append(f"{message_id}: {answer.status_code} {answer.text}")
            return


def _start(state: Path, ports: dict[str, int], journeys_file: Path) -> _Up:
    env = dict(os.environ)
    for name in ("JOURNEYS_API_KEY", "JOURNEYS_UP_MAX_CRASHES", "JOURNEYS_UP_CRASH_WINDOW"):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    argv = [str(JOURNEYS), "up", "--state-dir", str(state), "--file", str(journeys_file)]
    argv += ["--port", str(ports["api"]), "--temporal-port", str(ports["temporal"])]
    argv += ["--ui-port", str(ports["ui"])]
    process = subprocess.Popen(
        argv,
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


def _children(state: Path) -> dict[str, dict[str, Any]]:
    status = json.loads((state / "supervisor.json").read_text(encoding="utf-8"))
    children: dict[str, dict[str, Any]] = status["children"]
    return children


def _health(api_url: str) -> tuple[int, dict[str, Any]]:
    """(status code, body) of /healthz; (0, {}) when the API does not answer."""
    try:
        answer = httpx.get(f"{api_url}/healthz", timeout=5.0)
    except httpx.TransportError:
        return 0, {}
    return answer.status_code, dict(answer.json())


def _kill_and_watch(up: _Up, state: Path, api_url: str, name: str) -> list[tuple[int, str]]:
    """SIGKILL child ``name``; poll /healthz until it is back: 200 with a new pid, every
    child running. Returns what /healthz said meanwhile: (code, down or status)."""
    before = _children(state)[name]
    os.kill(int(before["pid"]), signal.SIGKILL)
    seen: list[tuple[int, str]] = []
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while time.monotonic() < deadline:
        code, body = _health(api_url)
        seen.append((code, ", ".join(body.get("down", [])) or str(body.get("status"))))
        now = _children(state)[name]
        if code == 200 and now["pid"] != before["pid"] and now["state"] == "running":
            assert body["status"] == "ok", body
            assert body["children"][name]["restarts"] == before["restarts"] + 1, body
            assert body["children"][name]["last_exit"] == "killed by SIGKILL", body
            return seen
        if up.process.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(
        f"{name} not back within {RECOVERY_TIMEOUT:.0f} s; /healthz: {seen[-5:]}\n{up.output()}"
    )


def _routed(database: Path) -> dict[str, int]:
    """message id -> routed (0/1) of every stored `heal_started` event."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as connection:
        rows = connection.execute(
            "SELECT message_id, routed FROM events WHERE name = 'heal_started'"
        ).fetchall()
    return {str(message_id): int(routed) for message_id, routed in rows}


def _heal_runs(api_url: str, key: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{api_url}/v1/runs",
        params={"journey": "heal", "limit": 500},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30.0,
    )
    assert answer.status_code == 200, answer.text
    runs: list[dict[str, Any]] = answer.json()["runs"]
    return runs


def restart_example(state: Path, temporal_port: int) -> list[str]:
    """docs/operations.md's restart lines, moved to this test's state directory and port."""
    text = OPERATIONS.read_text(encoding="utf-8")
    shown = plain_block_after(text, "On the console and in `state/logs/supervisor.log`:")
    moved: list[str] = []
    for line in shown:
        line = line.replace("state/", f"{state.resolve()}/").replace(":7233", f":{temporal_port}")
        line = re.sub(r"^  \| \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "  | ... ", line)
        moved.append(re.sub(r"\(pid \d+\)$", "(pid ...)", line))
    return moved


def test_the_restart_example_is_parsed_as_this_test_expects() -> None:
    """The parse, so an edit of docs/operations.md cannot make the e2e test check nothing."""
    moved = restart_example(Path("/s"), 1)
    assert moved[0].startswith("journeys up: worker killed by SIGKILL; restarting in 1 s")
    assert moved[0].endswith("last lines of /s/logs/worker.log:")
    assert moved[1].startswith("  | ... INFO journeys.worker: worker polling task queue")
    assert moved[1].endswith("on 127.0.0.1:1")
    assert moved[2:] == [
        "journeys up: worker restarted (pid ...)",
        "journeys up: worker is running again",
    ]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_up_restarts_each_killed_process_and_loses_no_event_or_run(tmp_path: Path) -> None:
    state = tmp_path / "state"
    journeys_file = tmp_path / "journeys.yaml"
    journeys_file.write_text(HEAL_JOURNEYS, encoding="utf-8")
    api, temporal, ui = free_ports(3)
    ports = {"api": api, "temporal": temporal, "ui": ui}
    started = time.monotonic()
    up = _start(state, ports, journeys_file)
    poster: _Poster | None = None
    try:
        up.wait_for(r"Ctrl-C stops everything", timeout=START_TIMEOUT)
        key = up.wait_for(r"API key\s+(\S+)", timeout=5).group(1)
        api_url = f"http://127.0.0.1:{api}"
        poster = _Poster(api_url, key)
        poster.start()

        health: dict[str, list[tuple[int, str]]] = {}
        killed_at: dict[str, datetime] = {}
        back_after: dict[str, float] = {}
        for name in ("worker", "api", "temporal"):
            # A few events first: runs waiting in their 5 s timer when the child dies.
            wanted = len(poster.accepted) + 4
            deadline = time.monotonic() + 30
            while len(poster.accepted) < wanted and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(poster.accepted) >= wanted, poster.problems
            poster.down = name
            if name == "api":
                poster.api_down.set()
            killed_at[name] = datetime.now(UTC)
            killed = time.monotonic()
            health[name] = _kill_and_watch(up, state, api_url, name)
            back_after[name] = time.monotonic() - killed
            poster.api_down.clear()
            poster.down = "nothing"
        time.sleep(2)  # some events after the last restart too
        poster.stop.set()
        poster.join(timeout=60)
        assert not poster.is_alive()

        # The console said each restart and its cause; nobody gave up.
        output = up.output()
        for name in ("worker", "api", "temporal"):
            assert re.search(
                rf"journeys up: {name} killed by SIGKILL(?: after \w+ went down "
                rf"\(not counted as a crash\))?; restarting in 1 s \(restart 1\); "
                rf"last lines of \S+{name}\.log:",
                output,
            ), output
            assert f"journeys up: {name} is running again" in output
        assert "giving up" not in output
        shown = restart_example(state, temporal)
        assert (problem := mismatch(shown, output)) is None, f"docs/operations.md: {problem}"
        assert "killed by SIGKILL" in (state / "logs" / "supervisor.log").read_text()

        # /healthz: 503 naming the child while the worker or the dev server was down,
        # no answer while the API was, and 200 once each was back.
        for name in ("worker", "temporal"):
            assert any(code == 503 and f"{name} is" in why for code, why in health[name]), health[
                name
            ]
            assert health[name][-1] == (200, "ok")
        assert any(code == 0 for code, _ in health["api"]), health["api"]
        assert health["api"][-1] == (200, "ok")

        # Nothing lost: every accepted event stored and routed, every run completed.
        assert poster.problems == []
        accepted = set(poster.accepted)
        assert len(accepted) >= 12
        assert {"worker", "temporal"} <= set(poster.accepted.values())  # posted while down
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            routed = _routed(state / "journeys.db")
            runs = _heal_runs(api_url, key)
            done = [run for run in runs if run["status"] == "completed"]
            if accepted <= {m for m, r in routed.items() if r} and len(done) == len(runs) >= len(
                accepted
            ):
                break
            time.sleep(1)
        unrouted = sorted(accepted - {m for m, r in routed.items() if r})
        assert unrouted == [], f"accepted but not routed: {unrouted}\n{up.output()}"
        triggers = [run["trigger_message_id"] for run in runs]
        assert sorted(triggers) == sorted(set(triggers)), "an event started two runs"
        assert accepted <= set(triggers)
        assert [r for r in runs if (r["status"], r["outcome"]) != ("completed", "finished")] == []
        # Runs were in their timer while the worker, and while the dev server, were dead:
        # their timers (in temporal.db) survived the restart.
        for name in ("worker", "temporal"):
            assert any(
                _at(run["started_at"]) < killed_at[name] < _at(run["ended_at"]) for run in runs
            ), f"no run was waiting when {name} was killed"

        took = _stop(up, ports)
        assert up.process.returncode == 0, up.output()
        assert took < STOP_TIMEOUT
        assert not any(_listening(port) for port in ports.values())
        assert not (state / "supervisor.json").exists()
        print(
            f"\n{len(accepted)} events accepted ({poster.retried} retries while the API was "
            f"down), {len(runs)} runs completed, {time.monotonic() - started:.0f} s in all; "
            "healthy again after "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in back_after.items())
        )
    finally:
        if poster is not None:
            poster.stop.set()
        if up.process.poll() is None:
            up.process.send_signal(signal.SIGINT)
            try:
                up.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                up.process.kill()
