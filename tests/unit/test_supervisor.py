"""The supervisor `journeys up` runs its processes under: a child that dies while starting
is reported with its last log lines; once up, a child that dies is restarted with a
doubling delay and its cause logged, a client waits for its server, too many crashes
stop everything; a child that ignores SIGTERM is killed; /healthz reads its status file.
Stopping: a signal stops the children one at a time (API, worker, server), each by
SIGTERM; the same signal delivered twice at once changes nothing; a second one a moment
later kills what is left at once; the handler only sets flags.

The children are small `python -c` scripts; the delays are shrunk to tenths of seconds.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from fastapi import Response
from sqlalchemy import create_engine

from service.api.routes import health
from service.cli.supervisor import (
    FORCE_AFTER,
    STATUS_FILE,
    Child,
    ChildExited,
    GaveUp,
    RestartPolicy,
    Supervisor,
    read_status,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
QUICK = RestartPolicy(first_delay=0.1, max_delay=0.4, stable_after=30, max_crashes=10)


def _once_then(marker: Path, first: str) -> list[str]:
    """A child that runs ``first`` (code) on its first start only, then serves forever."""
    script = (
        "import os, sys, time, pathlib\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.write_text('x')\n"
        "    print('first run', flush=True)\n"
        f"    {first}\n"
        "print('serving', flush=True)\n"
        "time.sleep(60)\n"
    )
    return [sys.executable, "-c", script]


def _serving(child: Child) -> bool:
    """Ready when the current process has said "serving" in its log."""
    return "serving" in child.log_path.read_text()[child.log_start :]


def _heal_until(supervisor: Supervisor, done: Callable[[], bool], *, timeout: float = 20.0) -> None:
    """`Supervisor.run`, one tick at a time on this thread, until ``done`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        supervisor.tick()
        if done():
            return
        assert time.monotonic() < deadline, "not done in time"
        time.sleep(0.02)


# ----------------------------------------------------------------------------- starting


def test_a_child_that_dies_while_starting_is_reported_with_its_last_log_lines(
    tmp_path: Path,
) -> None:
    (tmp_path / "crasher.log").write_text("a line from an earlier start\n")
    out = io.StringIO()
    with Supervisor(log_dir=tmp_path, stop_timeout=5, out=out) as supervisor:
        sleeper = supervisor.start("sleeper", SLEEPER)
        supervisor.start(
            "crasher",
            [sys.executable, "-c", "print('boom: no database'); raise SystemExit(3)"],
        )
        with pytest.raises(ChildExited) as raised:
            supervisor.wait_until("never", lambda: False, timeout=30, interval=0.1)
        supervisor.report(raised.value.child)
    assert sleeper.returncode is not None
    text = out.getvalue()
    assert "crasher exited unexpectedly (exit code 3)" in text
    assert "  | boom: no database" in text
    assert "earlier start" not in text
    assert "stopping sleeper" in text


def test_supervisor_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    with Supervisor(log_dir=tmp_path, stop_timeout=1, out=io.StringIO()) as supervisor:
        child = supervisor.start("stubborn", [sys.executable, "-c", stubborn])
        supervisor.wait_until("stubborn", lambda: "ready" in child.log_path.read_text(), timeout=30)
    assert child.returncode is not None
    assert time.monotonic() - started < 30


# ----------------------------------------------------------------------------- healing


def test_a_child_killed_once_up_is_restarted_and_its_cause_logged(tmp_path: Path) -> None:
    out = io.StringIO()
    status_path = tmp_path / STATUS_FILE
    logs = tmp_path / "logs"
    argv = _once_then(tmp_path / "marker", "os.kill(os.getpid(), 9)")
    with Supervisor(log_dir=logs, out=out, policy=QUICK, status_path=status_path) as supervisor:
        flaky = supervisor.start("flaky", argv, ready=_serving)
        first_pid = flaky.pid
        _heal_until(supervisor, lambda: flaky.state == "running" and flaky.pid != first_pid)
        status = read_status(status_path)
        assert flaky.returncode is None
    assert status is not None
    assert status["pid"] == os.getpid()
    assert status["children"]["flaky"] | {"since": "-"} == {
        "state": "running",
        "pid": flaky.pid,
        "restarts": 1,
        "last_exit": "killed by SIGKILL",
        "since": "-",
    }
    text = out.getvalue()
    assert (
        f"journeys up: flaky killed by SIGKILL; restarting in 0.1 s (restart 1); "
        f"last lines of {logs / 'flaky.log'}:\n  | first run\n"
    ) in text
    assert "journeys up: flaky is running again" in text
    assert (
        "flaky killed by SIGKILL; restarting in 0.1 s (restart 1)"
        in (logs / "supervisor.log").read_text()
    )
    log = (logs / "flaky.log").read_text()
    assert re.search(r"=== \S+ restart 1 \(killed by SIGKILL\)\n=== \S+ starting: ", log), log
    assert not status_path.exists()  # gone with the supervisor


def test_the_delay_doubles_to_its_cap_and_exit_codes_are_named(tmp_path: Path) -> None:
    out = io.StringIO()
    crasher = [sys.executable, "-c", "raise SystemExit(3)"]
    with Supervisor(log_dir=tmp_path, out=out, policy=QUICK) as supervisor:
        child = supervisor.start("crasher", crasher)
        supervisor.wait_ready(child, "crasher", timeout=5)
        _heal_until(supervisor, lambda: child.restarts >= 4 and child.state == "restarting")
    delays = re.findall(r"crasher exited with code 3; restarting in (\S+) s", out.getvalue())
    assert delays == ["0.1", "0.2", "0.4", "0.4"]
    assert [RestartPolicy().delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.slow  # ~1-2 s: real child processes (test-fast stays under 2 min)
def test_a_child_that_stayed_up_restarts_after_the_shortest_delay(tmp_path: Path) -> None:
    out = io.StringIO()
    policy = RestartPolicy(first_delay=0.1, stable_after=0.3, max_crashes=3, window=60)
    lives_a_while = [sys.executable, "-c", "import time; time.sleep(0.5); raise SystemExit(4)"]
    with Supervisor(log_dir=tmp_path, out=out, policy=policy) as supervisor:
        child = supervisor.start("steady", lives_a_while)
        supervisor.wait_ready(child, "steady", timeout=5)
        # Three exits, each after 0.5 s up: never a longer delay. The third is the third
        # crash within the window all the same, and the supervisor gives up.
        with pytest.raises(GaveUp):
            _heal_until(supervisor, lambda: False)
    delays = re.findall(r"steady exited with code 4; restarting in (\S+) s", out.getvalue())
    assert delays == ["0.1", "0.1"]


def test_too_many_crashes_in_the_window_stop_everything(tmp_path: Path) -> None:
    out = io.StringIO()
    status_path = tmp_path / STATUS_FILE
    policy = RestartPolicy(first_delay=0.05, max_crashes=3, window=60)
    crasher = [sys.executable, "-c", "print('boom: bad setting'); raise SystemExit(2)"]
    started = time.monotonic()
    with Supervisor(log_dir=tmp_path, out=out, policy=policy, status_path=status_path) as sup:
        sleeper = sup.start("sleeper", SLEEPER)
        child = sup.start("crasher", crasher)
        sup.wait_ready(sleeper, "sleeper", timeout=5)
        sup.wait_ready(child, "crasher", timeout=5)
        with pytest.raises(GaveUp) as raised:
            sup.run(interval=0.02)
        written = read_status(status_path)
        assert written is not None
        assert written["children"]["crasher"]["state"] == "failed"
    assert raised.value.child is child
    assert str(raised.value) == (
        "crasher exited with code 2; it crashed 3 times within 60 s: giving up"
    )
    assert child.restarts == 2
    assert sleeper.returncode is not None  # stopped with the rest
    assert not status_path.exists()
    text = out.getvalue()
    assert "giving up; last lines of" in text
    assert "  | boom: bad setting" in text
    assert "stopping sleeper" in text
    assert time.monotonic() - started < 20


def test_a_client_waits_for_its_server_and_its_exit_is_blamed_on_the_server(
    tmp_path: Path,
) -> None:
    out = io.StringIO()
    # One crash would give up: the client's exit must not count, the server's must not
    # reach the limit either (it crashes once).
    policy = RestartPolicy(first_delay=0.1, max_crashes=2, window=60)
    server_argv = _once_then(tmp_path / "server-marker", "pass")
    with Supervisor(log_dir=tmp_path, out=out, policy=policy) as supervisor:
        server = supervisor.start("server", server_argv, ready=_serving)
        client = supervisor.start("client", SLEEPER, after=["server"])
        supervisor.wait_ready(server, "server", timeout=10)
        supervisor.wait_ready(client, "client", timeout=10)
        # The server dies and takes its client down with it.
        server.signal(signal.SIGKILL)
        client.signal(signal.SIGKILL)
        server.process.wait(5)
        client.process.wait(5)
        _heal_until(
            supervisor,
            lambda: server.state == "running" and client.state == "running",
        )
    assert server.restarts == client.restarts == 1
    assert len(client.crashes) == 0
    assert client.started_at >= server.ready_at  # restarted only once the server served
    text = out.getvalue()
    assert "server killed by SIGKILL; restarting in 0.1 s (restart 1)" in text
    assert (
        "client killed by SIGKILL after server went down (not counted as a crash); "
        "restarting in 0.1 s (restart 1)"
    ) in text
    assert "client waits for server to be running" in text


def test_a_restarted_child_that_never_gets_ready_is_killed_and_counted(tmp_path: Path) -> None:
    out = io.StringIO()
    policy = RestartPolicy(first_delay=0.05, max_crashes=2, start_timeout=0.5)
    argv = _once_then(tmp_path / "marker", "raise SystemExit(1)")
    # Once up, its first run exits; the second never says it is ready.
    with Supervisor(log_dir=tmp_path, out=out, policy=policy) as supervisor:
        child = supervisor.start("hung", argv, ready=lambda c: c.restarts == 0)
        supervisor.wait_ready(child, "hung", timeout=5)
        with pytest.raises(GaveUp) as gave_up:
            _heal_until(supervisor, lambda: False)
    assert "hung was not ready in time (killed); it crashed 2 times" in str(gave_up.value)
    assert "hung was not ready within 0.5 s; killing it" in out.getvalue()


@pytest.mark.slow  # ~1-2 s: real child processes (test-fast stays under 2 min)
def test_up_stops_everything_and_exits_1_when_it_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    started: list[Child] = []

    def start_all(supervisor: Supervisor, *_args: object, **_kwargs: object) -> None:
        started.append(supervisor.start("temporal", SLEEPER))
        crasher = [sys.executable, "-c", "print('no database'); raise SystemExit(5)"]
        started.append(supervisor.start("worker", crasher, after=["temporal"]))
        for child in started:
            supervisor.wait_ready(child, child.name, timeout=5)

    monkeypatch.setattr(main, "_start_all", start_all)
    embedded = main._Embedded(tmp_path, tmp_path / "journeys.yaml", 8000, 7233, 8233)
    policy = RestartPolicy(first_delay=0.05, max_crashes=2)
    code = main._supervise(embedded, server_argv=[], env={"JOURNEYS_API_KEY": "k"}, policy=policy)

    assert code == 1
    assert all(child.returncode is not None for child in started)
    assert not (tmp_path / STATUS_FILE).exists()
    err = capsys.readouterr().err
    assert "worker exited with code 5; restarting in 0.05 s (restart 1)" in err
    assert "worker exited with code 5; it crashed 2 times within 60 s: giving up" in err
    assert "  | no database" in err
    assert "stopping temporal" in err


# ----------------------------------------------------------------------------- stopping


def _draining(marker: Path, *, drain: float = 0.3) -> list[str]:
    """A child that, on SIGTERM, takes ``drain`` seconds, then writes when it finished."""
    script = (
        "import signal, sys, time, pathlib\n"
        "def stop(*_):\n"
        f"    time.sleep({drain})\n"
        f"    pathlib.Path({str(marker)!r}).write_text(repr(time.time()))\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('serving', flush=True)\n"
        "while True: time.sleep(0.05)\n"
    )
    return [sys.executable, "-c", script]


def _signal_later(delays: list[tuple[float, int]]) -> threading.Thread:
    """Send ourselves each signal after its delay (seconds from now), from a thread."""

    def send() -> None:
        started = time.monotonic()
        for delay, signum in delays:
            time.sleep(max(0.0, started + delay - time.monotonic()))
            os.kill(os.getpid(), signum)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _three(supervisor: Supervisor, tmp_path: Path, **drains: float) -> list[Child]:
    """`temporal`, `worker` and `api` as `journeys up` starts them, each serving."""
    children = [
        supervisor.start(name, _draining(tmp_path / f"{name}.clean", drain=drains.get(name, 0.3)))
        for name in ("temporal", "worker", "api")
    ]
    for child in children:
        supervisor.wait_until(child.name, partial(_serving, child), timeout=30, interval=0.05)
    return children


@pytest.mark.slow  # ~1-2 s: real child processes (test-fast stays under 2 min)
def test_a_signal_stops_api_then_worker_then_server_each_by_sigterm(tmp_path: Path) -> None:
    out = io.StringIO()
    with Supervisor(log_dir=tmp_path / "logs", stop_timeout=10, out=out) as supervisor:
        children = _three(supervisor, tmp_path)
        _signal_later([(0.1, signal.SIGTERM)])
        woke = time.monotonic()
        supervisor.run(interval=30)  # only the signal can end this wait early
        woke = time.monotonic() - woke
    assert woke < 5, f"the signal took {woke:.1f} s to end the wait"
    assert supervisor.received == signal.SIGTERM
    assert supervisor.forced is None
    assert all(child.returncode == 0 for child in children)  # each ran its SIGTERM handler
    finished = {n: float((tmp_path / f"{n}.clean").read_text()) for n in ("api", "worker")}
    finished["temporal"] = float((tmp_path / "temporal.clean").read_text())
    assert finished["api"] < finished["worker"] < finished["temporal"]
    text = out.getvalue()
    assert (
        "journeys up: SIGTERM received; stopping api, worker, temporal (each within 10 s;" in text
    )
    assert re.search(r"api stopped .*\n.*worker stopped .*\n.*temporal stopped", text), text
    assert "killing" not in text


@pytest.mark.slow  # in `make test`; over 2 s, out of `make test-fast`
def test_the_same_signal_twice_at_once_is_one_clean_stop(tmp_path: Path) -> None:
    """As a terminal's Ctrl-C reaches `make` and us, and `make` forwards it: twice."""
    out = io.StringIO()
    with Supervisor(log_dir=tmp_path / "logs", stop_timeout=10, out=out) as supervisor:
        children = _three(supervisor, tmp_path, worker=1.5)
        _signal_later([(0.1, signal.SIGINT), (0.15, signal.SIGTERM), (0.2, signal.SIGINT)])
        supervisor.run(interval=30)
        time.sleep(0.3)  # every duplicate arrived before the stop begins
    assert supervisor.received == signal.SIGINT
    assert supervisor.forced is None
    assert all(child.returncode == 0 for child in children)
    assert all((tmp_path / f"{c.name}.clean").exists() for c in children)
    assert "killing" not in out.getvalue()


@pytest.mark.slow  # ~1-2 s: real child processes (test-fast stays under 2 min)
def test_a_second_signal_a_moment_later_kills_what_is_left_at_once(tmp_path: Path) -> None:
    out = io.StringIO()
    started = time.monotonic()
    with Supervisor(log_dir=tmp_path / "logs", stop_timeout=60, out=out) as supervisor:
        children = _three(supervisor, tmp_path, worker=60)  # the worker takes "forever"
        _signal_later([(0.1, signal.SIGINT), (0.1 + FORCE_AFTER + 0.5, signal.SIGINT)])
        supervisor.run(interval=30)
    took = time.monotonic() - started
    assert took < 30, f"took {took:.1f} s: the second signal did not cut the 60 s grace"
    assert supervisor.forced == signal.SIGINT
    api, worker, temporal = children[2], children[1], children[0]
    assert api.returncode == 0  # stopped cleanly before the second signal
    assert worker.returncode == -signal.SIGKILL
    assert temporal.returncode == -signal.SIGKILL  # never asked: killed with the rest
    assert "second signal (SIGINT): killing worker, temporal" in out.getvalue()

    from service.cli import main

    assert main._exit_code(supervisor, 0) == 128 + signal.SIGINT


def test_the_signal_handler_only_sets_flags(tmp_path: Path) -> None:
    """No lock, no I/O: the handler may run while the main thread holds any lock."""
    with Supervisor(log_dir=tmp_path, out=io.StringIO()) as supervisor:
        lock = threading.Lock()
        with lock:  # a handler that took a lock or logged could deadlock here
            supervisor._on_signal(signal.SIGTERM, None)
            supervisor._on_signal(signal.SIGTERM, None)
        assert supervisor.stop_requested
        assert supervisor.received == signal.SIGTERM
        assert supervisor.forced is None  # the second came at once: the same stop
        assert not (tmp_path / "supervisor.log").exists()
    from service.cli import main

    assert main._exit_code(supervisor, 0) == 0


def test_the_hints_name_a_journeys_that_runs(tmp_path: Path) -> None:
    from service.cli import main

    repo = tmp_path / "repo"
    assert main._journeys_command(".venv/bin/journeys", cwd=repo) == ".venv/bin/journeys"
    assert main._journeys_command(str(repo / ".venv/bin/journeys"), cwd=repo) == (
        ".venv/bin/journeys"
    )
    assert main._journeys_command("/opt/j v/bin/journeys", cwd=repo) == "'/opt/j v/bin/journeys'"
    assert main._journeys_command("/usr/bin/python3", cwd=repo).endswith("/journeys")
    embedded = main._Embedded(repo / "state", repo / "journeys.yaml", 8000, 7233, 8233)
    banner = main._banner(embedded, api_key="jk_x", journeys=".venv/bin/journeys")
    assert "(add a reviewer: .venv/bin/journeys user add NAME --role ops)" in banner
    assert "    JOURNEYS_STATE_DIR=" in banner
    assert " .venv/bin/journeys emit payment_failed --customer c1 " in banner
    assert not re.search(r"(^|[\s(])journeys (emit|user|runs)", banner), banner


def test_the_operations_guide_states_the_grace_time_and_the_second_signal() -> None:
    from service.cli import main

    guide = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    assert f"up to {main.STOP_GRACE:g} s to exit before" in guide
    assert f"A second signal**, {FORCE_AFTER:g} s or more after the first" in guide
    assert f"sooner than {FORCE_AFTER:g} s after the first" in guide
    assert "128 + the signal's number" in guide


# ----------------------------------------------------------------------------- policy


def test_the_policy_reads_its_limits_from_the_environment() -> None:
    assert RestartPolicy.from_env({}) == RestartPolicy()
    policy = RestartPolicy.from_env(
        {"JOURNEYS_UP_MAX_CRASHES": "3", "JOURNEYS_UP_CRASH_WINDOW": "120"}
    )
    assert (policy.max_crashes, policy.window) == (3, 120)
    for variable, value in (
        ("JOURNEYS_UP_MAX_CRASHES", "lots"),
        ("JOURNEYS_UP_MAX_CRASHES", "0"),
        ("JOURNEYS_UP_MAX_CRASHES", "2.5"),
        ("JOURNEYS_UP_CRASH_WINDOW", "-1"),
        ("JOURNEYS_UP_CRASH_WINDOW", "inf"),
    ):
        with pytest.raises(ValueError, match=variable):
            RestartPolicy.from_env({variable: value})


# ----------------------------------------------------------------------------- /healthz


def _healthz() -> tuple[int, dict[str, object]]:
    engine = create_engine("sqlite://")
    response = Response()
    try:
        answer = asyncio.run(health.healthz(engine, None, response))
    finally:
        engine.dispose()
    return response.status_code or 200, answer.model_dump(exclude_none=True)


@pytest.mark.slow  # ~1-2 s: real child processes (test-fast stays under 2 min)
def test_healthz_is_degraded_while_a_supervised_child_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNEYS_STATE_DIR", str(tmp_path))
    # As under `journeys up`: the status file's writer is the API's parent process.
    monkeypatch.setattr(os, "getppid", os.getpid)
    argv = [sys.executable, "-c", "import time; print('serving', flush=True); time.sleep(60)"]
    with Supervisor(
        log_dir=tmp_path / "logs",
        out=io.StringIO(),
        policy=RestartPolicy(first_delay=0.5),
        status_path=tmp_path / STATUS_FILE,
    ) as supervisor:
        child = supervisor.start("worker", argv, ready=_serving)
        supervisor.wait_ready(child, "worker", timeout=10)
        assert _healthz()[0] == 200
        child.signal(signal.SIGTERM)
        child.process.wait(5)
        _heal_until(supervisor, lambda: child.state == "restarting")
        code, body = _healthz()
        written = read_status(tmp_path / STATUS_FILE)
        assert written is not None
        assert code == 503
        assert body["status"] == "degraded"
        assert body["down"] == ["worker is restarting (killed by SIGTERM)"]
        assert body["children"] == {
            "worker": {
                "state": "restarting",
                "restarts": 1,
                "last_exit": "killed by SIGTERM",
                "since": written["children"]["worker"]["since"],
            }
        }
        _heal_until(supervisor, lambda: child.state == "running")
        code, body = _healthz()
        assert (code, body["status"]) == (200, "ok")
        assert "down" not in body
        # A file some other process wrote (a `journeys up` killed long ago) is ignored.
        monkeypatch.setattr(os, "getppid", lambda: 1)
        assert "children" not in _healthz()[1]
    assert "children" not in _healthz()[1]  # gone with the supervisor


def test_healthz_ignores_the_status_file_without_a_state_dir_or_when_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNEYS_STATE_DIR", raising=False)
    assert _healthz() == (200, {"status": "ok", "database": "ok", "temporal": "unreachable"})
    monkeypatch.setenv("JOURNEYS_STATE_DIR", str(tmp_path))
    (tmp_path / STATUS_FILE).write_text("{not json")
    assert _healthz()[1]["status"] == "ok"
    assert read_status(tmp_path / STATUS_FILE) is None
