"""The supervisor `journeys up` runs its processes under: a child that dies is reported
with its last log lines, and a child that ignores SIGTERM is killed."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import pytest

from service.cli.supervisor import ChildExited, Supervisor


def test_supervisor_reports_a_dead_child_with_its_last_log_lines(tmp_path: Path) -> None:
    (tmp_path / "crasher.log").write_text("a line from an earlier start\n")
    out = io.StringIO()
    with Supervisor(log_dir=tmp_path, stop_timeout=5, out=out) as supervisor:
        sleeper = supervisor.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
        supervisor.start(
            "crasher",
            [sys.executable, "-c", "print('boom: no database'); raise SystemExit(3)"],
        )
        with pytest.raises(ChildExited) as raised:
            supervisor.run(interval=0.1)
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
