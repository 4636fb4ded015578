"""Child processes of `journeys up`: start them, watch them, stop them all cleanly.

Each child runs in its own session (so a Ctrl-C in the terminal reaches only us, and we
stop the children in order: API and worker first, the Temporal server last) with its
output appended to `<state>/logs/<name>.log`. On Linux each child also gets SIGTERM if
we die without cleaning up. If a child exits while it should be running, the supervisor
says which, shows the end of its log and stops the rest.

Every wait here is bounded. Nothing here knows what the children are; `service.cli.main` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any, TextIO

__all__ = ["Child", "ChildExited", "ShutdownRequested", "Supervisor", "tail"]

_PR_SET_PDEATHSIG = 1
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child when we die (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    # Resolved here, in the parent: the child only makes the call, between fork and exec.
    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))

    return hook


_PREEXEC = _parent_death_signal()


class ShutdownRequested(Exception):
    """Ctrl-C, SIGTERM or SIGHUP arrived while we were waiting."""


class ChildExited(Exception):
    """A child exited while it should have been running."""

    def __init__(self, child: Child) -> None:
        super().__init__(f"{child.name} exited ({child.describe_exit()})")
        self.child = child


def tail(path: Path, *, lines: int = 20, since: int = 0, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``lines`` lines of the file at ``path`` after byte ``since`` (none if it
    cannot be read)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(since, size - max_bytes))
            data = handle.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]


@dataclass
class Child:
    """One started process and where its output goes."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path
    log_start: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def describe_exit(self) -> str:
        code = self.returncode
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child's whole process group (it leads its own session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)


class Supervisor:
    """Starts children, notices when one dies, and stops them all (in reverse order).

    Use as a context manager: it installs the SIGINT/SIGTERM/SIGHUP handlers on entry and
    always stops every child on exit. A second Ctrl-C while stopping kills at once.
    """

    def __init__(
        self,
        *,
        log_dir: Path,
        stop_timeout: float = 15.0,
        out: TextIO | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.stop_timeout = stop_timeout
        self.children: list[Child] = []
        self._out = out or sys.stderr
        self._stop_requested = threading.Event()
        self._force = threading.Event()
        self._stopping = False
        self._previous: dict[signal.Signals, _Handler] = {}

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Supervisor:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop_all()
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stop_requested.is_set():
            self._force.set()
        self._stop_requested.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    def request_stop(self) -> None:
        """Ask every wait to return (what a signal does)."""
        self._stop_requested.set()

    # ------------------------------------------------------------------ children

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        """Start ``argv`` as child ``name``; output is appended to ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log: IO[bytes]
        with log_path.open("ab") as log:
            # The argv never holds a secret (keys travel in the environment).
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(f"\n=== {stamp} starting: {' '.join(argv)}\n".encode())
            log.flush()
            log_start = log.tell()
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                # Only a prctl call, resolved beforehand: safe between fork and exec.
                preexec_fn=_PREEXEC,
            )
        child = Child(
            name=name, argv=list(argv), process=process, log_path=log_path, log_start=log_start
        )
        self.children.append(child)
        return child

    def exited(self) -> Child | None:
        """The first child that is no longer running, if any."""
        for child in self.children:
            if child.returncode is not None:
                return child
        return None

    def check(self) -> None:
        """Raise if a stop was requested or a child has exited."""
        if self._stop_requested.is_set():
            raise ShutdownRequested()
        child = self.exited()
        if child is not None:
            raise ChildExited(child)

    def wait_until(
        self,
        what: str,
        probe: Callable[[], bool],
        *,
        timeout: float,
        interval: float = 0.5,
    ) -> None:
        """Call ``probe`` until it is true, at most ``timeout`` seconds.

        Raises `ChildExited` as soon as any child dies, `ShutdownRequested` on a signal and
        `TimeoutError` when time runs out. ``probe`` must bound its own duration.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            if probe():
                return
            self.check()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{what} was not ready within {timeout:.0f} s")
            self._stop_requested.wait(min(interval, remaining))

    def run(self, *, interval: float = 0.5) -> None:
        """Block until a signal arrives (returns) or a child dies (raises `ChildExited`)."""
        while not self._stop_requested.wait(interval):
            child = self.exited()
            if child is not None:
                raise ChildExited(child)

    def report(self, child: Child, *, lines: int = 20) -> None:
        """Say which child died, with the end of its log."""
        self._say(
            f"journeys up: {child.name} exited unexpectedly ({child.describe_exit()}); "
            f"last lines of {child.log_path}:"
        )
        for line in tail(child.log_path, lines=lines, since=child.log_start):
            self._say(f"  | {line}")

    def stop_all(self) -> None:
        """Stop every child: API and worker first, then the server; SIGKILL after a bound.

        Children are stopped in reverse start order, in two groups: everything but the
        first child together (they are clients of it), then the first (the server), so
        the worker can finish its polls against a live server.
        """
        if self._stopping:
            return
        self._stopping = True
        running = [c for c in self.children if c.returncode is None]
        if not running:
            return
        self._say("journeys up: stopping " + ", ".join(c.name for c in reversed(running)))
        first = self.children[0] if self.children else None
        clients = [c for c in reversed(running) if c is not first]
        self._stop_group(clients)
        if first is not None and first in running:
            self._stop_group([first])

    def _stop_group(self, group: list[Child]) -> None:
        for child in group:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while any(c.returncode is None for c in group):
            if time.monotonic() >= deadline or self._force.is_set():
                break
            time.sleep(0.1)
        for child in group:
            if child.returncode is None:
                self._say(f"journeys up: {child.name} did not stop in time; killing it")
                child.signal(signal.SIGKILL)
        for child in group:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5)
            # Grandchildren share the group: make sure none outlives its parent.
            child.signal(signal.SIGKILL)

    def _say(self, text: str) -> None:
        print(text, file=self._out, flush=True)
