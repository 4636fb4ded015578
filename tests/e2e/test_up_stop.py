"""A clean stop of `journeys up`, 20 tries of each way a stop arrives: SIGTERM or SIGINT
straight to it; under `make up`, SIGINT to the foreground process group (a terminal's
Ctrl-C: `make` and `up` both get it), SIGTERM to `make` alone (`kill`: `make` forwards it)
and SIGTERM to `make`'s whole group (`kill -- -PGID`, docker, CI: `up` gets it twice, once
forwarded by `make`). Every try: nothing hangs (every wait is bounded), no child is
killed (each stops by its SIGTERM: a duplicate signal is not a second signal), nothing is
left running or listening, and `up` exits 0.

A full `journeys up` cycle (start, runs posted, stop) takes about 6 s here when the
machine is quiet and 15-20 s under load, so 100 real stops take 10 minutes or more: too
much of `make test`'s 20. There each way is therefore tried 20 times as:

- once with the real `journeys up` (the Makefile's own `up` recipe for the `make` ways),
  healthy, with runs waiting in their timer and an event just posted (in flight), all on
  one state directory; one more try signals it while Temporal is starting; at the end it
  starts once more on that directory and every run started before is still there. SIGINT
  straight to `up` is left out here (the Ctrl-C under `make` is a real SIGINT to it);
- the other 19 (20 for SIGINT to `up`) with the same signal path (`Supervisor` and its
  handlers, run by the same `make up` recipe) supervising three small shell children
  named like `up`'s, the signal landing while they start, once they all run, and while
  one is being restarted.

Measured here (two cores shared with other runs): 98 to 128 s for the 96 small tries
(about 0.5 s a stop), 86 to 172 s for the real `journeys up` (seven starts of 10-20 s,
stops of 2 to 6 s): 3 to 5 minutes for the file, depending on the load.

`make test-long` (marker ``long``) also tries every way, SIGINT straight to `up` included,
20 times with the real `journeys up`, runs in flight each time: 100 real stops.

`make up` runs with ``BIN`` pointing at a directory whose `journeys` execs the real one
with free ports and a tmp state directory (or the small supervisor), and ``STAMP`` at a
fresh file, so nothing is installed and the repository's own `state/` is not touched.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import free_ports
from tests.e2e.test_up import START_TIMEOUT, STOP_TIMEOUT, _listening, _Up

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
JOURNEYS = Path(sys.executable).parent / "journeys"
TRIES = 20
SMALL_STOP_TIMEOUT = 30.0  # the small supervisor's children stop in well under a second
GONE_TIMEOUT = 10.0  # `make` and every descendant gone after `up` exited
# Runs its arguments with SIGINT at its default, as a terminal's shell starts a job: a
# pytest started in the background (`cmd &`) has SIGINT ignored, and so would `make`.
AS_A_JOB = [
    sys.executable,
    "-I",
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])",
]


@dataclass(frozen=True)
class Way:
    """How a stop reaches `journeys up`."""

    name: str
    signum: int
    make: bool  # `make up` runs it; else it is started directly
    group: bool  # the signal goes to the process group (a terminal, `kill -- -PGID`)


WAYS = [
    Way("sigterm-to-up", signal.SIGTERM, make=False, group=False),
    Way("sigint-to-up", signal.SIGINT, make=False, group=False),
    Way("ctrl-c-under-make", signal.SIGINT, make=True, group=True),
    Way("sigterm-to-make", signal.SIGTERM, make=True, group=False),
    Way("sigterm-to-make-group", signal.SIGTERM, make=True, group=True),
]
# The ways tried once with the real `journeys up` (its SIGINT is the Ctrl-C under `make`);
# every way is tried 20 times in all.
REAL_WAYS = [way for way in WAYS if way.name != "sigint-to-up"]

STOP_JOURNEYS = """\
version: 1

settings:
  timezone: UTC

events:
  stop_started:
    n: number

journeys:
  - id: stopper
    name: Waits long enough to be running whenever `up` is stopped
    entry:
      event: stop_started
      reentry: always
    steps:
      - id: pause
        wait: 1h
      - id: done
        exit: finished
"""

# The small supervisor: `journeys up`'s signal path with three shell children that say
# "serving" and, on SIGTERM, take 0.1 s, write a marker and exit 0.
SMALL_UP = """\
import signal, sys, time
from pathlib import Path

from service.cli.supervisor import RestartPolicy, ShutdownRequested, Supervisor

state, phase = Path(sys.argv[1]), sys.argv[2]  # then "up", as `make up` says
CHILD = 'trap "sleep 0.1; echo clean > $1; exit 0" TERM; echo serving; sleep 600 & wait'


def serving(child):
    return "serving" in child.log_path.read_text()[child.log_start :]


policy = RestartPolicy(first_delay=1.0)
with Supervisor(
    log_dir=state / "logs", status_path=state / "supervisor.json", policy=policy
) as supervisor:
    try:
        for name, after in (("temporal", ()), ("worker", ("temporal",)), ("api", ())):
            argv = ["sh", "-c", CHILD, name, str(state / f"{name}.clean")]
            supervisor.start(name, argv, after=after, ready=serving)
        print("starting", flush=True)
        for child in supervisor.children:
            ready = lambda child=child: serving(child)  # noqa: E731
            supervisor.wait_until(child.name, ready, timeout=30, interval=0.05)
            supervisor.wait_ready(child, child.name, timeout=30)
        if phase == "restarting":
            worker = supervisor.child("worker")
            worker.signal(signal.SIGKILL)
            deadline = time.monotonic() + 10
            while worker.state == "running" and time.monotonic() < deadline:
                supervisor.tick()
                time.sleep(0.02)
        print(f"up {phase}", flush=True)
        supervisor.run(interval=0.1)
    except ShutdownRequested:
        pass
for child in supervisor.children:
    print(f"exit {child.name} {child.returncode}", flush=True)
code = 128 + supervisor.forced if supervisor.forced else 0
(state / "exit").write_text(str(code))
print("stopped", flush=True)
sys.exit(code)
"""


# ----------------------------------------------------------------------------- helpers


def _ours(token: str) -> list[int]:
    """Live (not zombie) processes whose environment holds ``token``."""
    needle = token.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes():
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def _wait_gone(token: str) -> list[int]:
    deadline = time.monotonic() + GONE_TIMEOUT
    while (left := _ours(token)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _environment(token: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("JOURNEYS_API_KEY", "JOURNEYS_UP_MAX_CRASHES", "JOURNEYS_UP_CRASH_WINDOW"):
        env.pop(name, None)
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        env.pop(name, None)  # under `make test`: the inner make is a make of its own
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["JOURNEYS_STOP_TEST"] = token  # inherited by every descendant: found in /proc
    return env


def _make_bin(directory: Path, command: list[str], options: list[str]) -> dict[str, str]:
    """A ``BIN`` for `make up` whose `journeys` execs ``command``, the recipe's arguments
    (`up`) and ``options``; the overrides to pass to `make`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "python").unlink(missing_ok=True)
    (directory / "python").symlink_to(sys.executable)  # the recipe's order-only need
    script = directory / "journeys"
    script.write_text(f'#!/bin/sh\nexec {shlex.join(command)} "$@" {shlex.join(options)}\n')
    script.chmod(0o755)
    stamp = directory / "installed"
    stamp.touch()  # newer than pyproject.toml: the recipe installs nothing
    schema = directory / "journeys.schema.json"
    schema.touch()  # newer than the stamp and engine/: `make up` writes no schema
    return {"BIN": str(directory), "STAMP": str(stamp), "SCHEMA": str(schema)}


def _launch(way: Way, command: list[str], options: list[str], *, bin_dir: Path, token: str) -> _Up:
    """Start ``command`` `up` ``options`` directly, or by `make up` (whose recipe says
    `$(BIN)/journeys up`)."""
    if way.make:
        overrides = _make_bin(bin_dir, command, options)
        argv = ["make", "--no-print-directory", "-C", str(ROOT), "up"]
        argv += [f"{name}={value}" for name, value in overrides.items()]
    else:
        argv = [*command, "up", *options]
    process = subprocess.Popen(
        [*AS_A_JOB, *argv],
        cwd=ROOT,
        env=_environment(token),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        process_group=0,  # as a shell's job: its own group, which a terminal signals
    )
    up = _Up(process)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            up.lines.append(line)

    up.reader = threading.Thread(target=read, daemon=True)
    up.reader.start()
    return up


def _signal(up: _Up, way: Way) -> None:
    if way.group:
        os.killpg(up.process.pid, way.signum)
    else:
        os.kill(up.process.pid, way.signum)


def _wait_stopped(up: _Up, *, timeout: float, token: str) -> float:
    """Seconds until the process exited; fails (killing everything) if it hangs."""
    started = time.monotonic()
    try:
        up.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in _ours(token):
            os.kill(pid, signal.SIGKILL)
        pytest.fail(f"not stopped within {timeout:.0f} s (hung):\n{up.output()}")
    assert up.reader is not None
    up.reader.join(timeout=5)
    return time.monotonic() - started


def _check_clean(output: str, way: Way) -> None:
    assert "killing" not in output, output
    assert "second signal" not in output, output
    assert "did not stop" not in output, output
    assert "Traceback" not in output, output
    assert re.search(r"^stopped$", output, re.M), output
    received = signal.Signals(way.signum).name
    if "stopping" in output:
        assert f"journeys up: {received} received; stopping" in output, output


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    """Tokens of the tries: whatever a failed test left running is killed."""
    tokens: list[str] = []
    yield tokens
    for token in tokens:
        for pid in _ours(token):
            os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- the small up


@pytest.mark.parametrize("way", WAYS, ids=[way.name for way in WAYS])
def test_the_signal_path_stops_cleanly_every_try(
    way: Way, tmp_path: Path, cleanup: list[str]
) -> None:
    driver = tmp_path / "small_up.py"
    driver.write_text(SMALL_UP)
    timings: list[float] = []
    tries = TRIES - 1 if way in REAL_WAYS else TRIES
    for attempt in range(tries):
        phase = ("starting", "running", "restarting")[attempt % 3]
        state = tmp_path / f"try-{attempt}"
        state.mkdir()
        token = uuid.uuid4().hex
        cleanup.append(token)
        command = [sys.executable, str(driver), str(state), phase]
        up = _launch(way, command, [], bin_dir=tmp_path / "bin", token=token)
        up.wait_for("starting" if phase == "starting" else f"up {phase}", timeout=60)
        _signal(up, way)
        timings.append(_wait_stopped(up, timeout=SMALL_STOP_TIMEOUT, token=token))
        output = up.output()
        left = _wait_gone(token)
        assert left == [], f"try {attempt} ({phase}): left running: {left}\n{output}"
        _check_clean(output, way)
        assert (state / "exit").read_text() == "0", output
        stopping = re.search(r"stopping ([a-z, ]+) \(", output)
        for name in stopping.group(1).split(", ") if stopping else []:
            # Every child running when the stop came ended by its SIGTERM, not a SIGKILL.
            assert re.search(rf"^exit {name} (0|-15)$", output, re.M), output
        if stopping and phase != "starting":
            assert stopping.group(1).startswith("api"), output
        assert not (state / "supervisor.json").exists()
    assert len(timings) == tries
    print(f"\n{way.name}: {tries} stops, {max(timings):.1f} s at most, {sum(timings):.1f} s in all")


# ----------------------------------------------------------------------------- the real up


def _post(api_url: str, key: str, customer: str, number: int) -> None:
    answer = httpx.post(
        f"{api_url}/v1/track",
        json={
            "type": "track",
            "event": "stop_started",
            "userId": customer,
            "properties": {"n": number},
            "messageId": f"stop-{customer}",
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert answer.is_success, answer.text


def _runs(api_url: str, key: str, customer: str) -> list[dict[str, object]]:
    answer = httpx.get(
        f"{api_url}/v1/runs",
        params={"customer": customer},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    runs: list[dict[str, object]] = answer.json()["runs"]
    return runs


def _wait_runs(api_url: str, key: str, customers: list[str], *, timeout: float) -> None:
    """Every customer has its one run, running (in its 1 h wait)."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [
            c for c in customers if [r["status"] for r in _runs(api_url, key, c)] != ["running"]
        ]
        if not missing:
            return
        if time.monotonic() > deadline:
            found = {c: _runs(api_url, key, c) for c in missing}
            pytest.fail(f"runs missing or not running after {timeout:.0f} s: {found}")
        time.sleep(0.5)


@pytest.mark.parametrize(
    ("ways", "rounds"),
    [
        pytest.param(REAL_WAYS, 1, id="once-each"),
        # Every way 20 times with the real `journeys up`: 100 starts, 10 minutes here
        # (`make test-long`).
        pytest.param(WAYS, TRIES, id="20-times-each", marks=pytest.mark.long),
    ],
)
def test_journeys_up_stops_cleanly_every_way_and_keeps_its_runs(
    ways: list[Way], rounds: int, tmp_path: Path, cleanup: list[str]
) -> None:
    state = tmp_path / "state"
    journeys_file = tmp_path / "journeys.yaml"
    journeys_file.write_text(STOP_JOURNEYS)
    api, temporal, ui = free_ports(3)
    ports = {"api": api, "temporal": temporal, "ui": ui}
    api_url = f"http://127.0.0.1:{api}"
    command = [str(JOURNEYS)]
    options = ["--state-dir", str(state), "--file", str(journeys_file), "--port", str(api)]
    options += ["--temporal-port", str(temporal), "--ui-port", str(ui)]
    customers: list[str] = []
    timings: list[str] = []

    def launch(way: Way) -> tuple[_Up, str]:
        token = uuid.uuid4().hex
        cleanup.append(token)
        return _launch(way, command, options, bin_dir=tmp_path / "bin", token=token), token

    def stopped(up: _Up, token: str, way: Way, what: str) -> None:
        took = _wait_stopped(up, timeout=STOP_TIMEOUT + 15, token=token)
        output = up.output()
        left = _wait_gone(token)
        assert left == [], f"{way.name} ({what}): left running: {left}\n{output}"
        listening = [name for name, port in ports.items() if _listening(port)]
        assert listening == [], f"{way.name}: still listening: {listening}\n{output}"
        _check_clean(output, way)
        if not way.make:
            assert up.process.returncode == 0, output
        timings.append(f"{way.name} {what}: stopped in {took:.1f} s")

    # A signal while the Temporal dev server starts: nothing half-started is left.
    early = WAYS[0]
    up, token = launch(early)
    up.wait_for(r"starting Temporal dev server", timeout=START_TIMEOUT)
    time.sleep(1.0)
    _signal(up, early)
    stopped(up, token, early, "while starting")

    for number, way in enumerate(way for _ in range(rounds) for way in ways):
        up, token = launch(way)
        up.wait_for(r"Ctrl-C stops everything", timeout=START_TIMEOUT)
        key = (state / "api_key").read_text().strip()
        waiting = [f"{way.name}-{number}-{n}" for n in range(3)]
        for n, customer in enumerate(waiting):
            _post(api_url, key, customer, n)
        _wait_runs(api_url, key, waiting, timeout=60)
        in_flight = f"{way.name}-{number}-in-flight"
        _post(api_url, key, in_flight, 99)  # accepted; its run may be starting right now
        customers += [*waiting, in_flight]
        _signal(up, way)
        stopped(up, token, way, "with runs in flight")
        assert "api stopped" in up.output() and "temporal stopped" in up.output()
        order = [m.group(1) for m in re.finditer(r"journeys up: (\w+) stopped", up.output())]
        assert order == ["api", "worker", "temporal"], up.output()

    # Once more on the same state: every run started before any of the stops is there.
    last = WAYS[0]
    up, token = launch(last)
    up.wait_for(r"Ctrl-C stops everything", timeout=START_TIMEOUT)
    key = (state / "api_key").read_text().strip()
    _wait_runs(api_url, key, customers, timeout=60)
    _signal(up, last)
    stopped(up, token, last, "after the check")
    print("\n" + "\n".join(timings))
