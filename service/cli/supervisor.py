"""Child processes of `journeys up`: start them, watch them, restart the ones that die, and
stop them all cleanly.

Each child runs in its own session (so a Ctrl-C in the terminal reaches only us, and we
stop the children in order: the API, then the worker, the Temporal server last) with its
output appended to `<state>/logs/<name>.log`. On Linux each child also gets SIGTERM if
we die without cleaning up.

While starting (`wait_until`, `check`), a child that exits is fatal: the caller reports it
(`report`) and everything stops, because a child that cannot start once will not start
the second time either. Once everything is up, `run` heals: a child that exits is started
again with the same command line (same ports, same state files) after a delay that
doubles from `RestartPolicy.first_delay` up to `max_delay`, and starts from `first_delay`
again once the child had stayed up `stable_after` seconds. A child started ``after``
others is restarted only once they are running; its exit while one of them is down, or
within `RestartPolicy.blame_window` seconds of one coming back, is blamed on that one and
not counted as a crash. The ``max_crashes``-th crash of one child within ``window``
seconds makes `run` give up (`GaveUp`): the caller stops everything and exits non-zero.
Each restart is said on the console and in `<log_dir>/supervisor.log` with its cause
(exit code or signal name) and the end of the child's log, and marked in the child's own
log.

The children's states are kept in a small JSON file (``status_path``), replaced atomically
at every change, which the API's /healthz reads (`read_status`) to answer 503 while a
child is down. It holds names, pids, states, counts and exit causes: never a command line,
an environment or a key.

Stopping: SIGINT, SIGTERM or SIGHUP only sets a flag (the handler takes no lock, logs
nothing and sets no `threading.Event`: a handler runs between two bytecodes of the main
thread, which may hold that very lock); `signal.set_wakeup_fd` wakes the wait it
interrupts, and every wait here is a bounded `select` on that pipe, so the main loop sees
the flag at once and does the rest. `stop_all` then stops the children one at a time in
reverse start order (API, worker, Temporal server): SIGTERM to its process group, up to
``stop_timeout`` seconds, then SIGKILL. A second signal at least `FORCE_AFTER` seconds
after the first kills every child left at once (`forced` names it); one sooner is the same
stop delivered twice (a terminal's Ctrl-C reaches `make` and us, and `make` forwards a
SIGTERM to us) and changes nothing.

Every wait here is bounded. Children are started (and restarted) only on the thread that
made the `Supervisor`: Linux's parent-death signal fires when the *thread* that forked
exits. Nothing here knows what the children are; `service.cli.main` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any, TextIO

__all__ = [
    "FORCE_AFTER",
    "STATUS_FILE",
    "Child",
    "ChildExited",
    "GaveUp",
    "RestartPolicy",
    "ShutdownRequested",
    "Supervisor",
    "read_status",
    "tail",
]

STATUS_FILE = "supervisor.json"
"""The status file's name in the state directory (`journeys up` puts it there)."""

FORCE_AFTER = 1.0
"""A second signal this many seconds after the first kills at once; a sooner one is the
first delivered twice (to the process group and forwarded by `make`) and is ignored."""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_SLICE = 0.25  # the longest a wait sleeps without looking at the flags (belt and braces)

# A child's states, as the status file and /healthz show them.
STARTING = "starting"  # started, not ready yet
RUNNING = "running"  # ready (its probe said so)
RESTARTING = "restarting"  # exited; waiting out its backoff delay
WAITING = "waiting"  # exited; waiting for a child it depends on to be running again
FAILED = "failed"  # crashed too often: the supervisor gave up

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


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime | None = None) -> str:
    return (moment or _now()).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RestartPolicy:
    """When `Supervisor.run` restarts a child, and when it gives up.

    The defaults: 1 s, 2 s, 4 s ... up to 30 s between restarts of one child, back to 1 s
    once it has stayed up 60 s; the 5th crash of one child within 60 s stops everything.
    A child that exits at once is thus restarted 4 times over about 15 s before `up` gives
    up. ``JOURNEYS_UP_MAX_CRASHES`` and ``JOURNEYS_UP_CRASH_WINDOW`` (seconds) change the
    last two (`from_env`).
    """

    first_delay: float = 1.0
    max_delay: float = 30.0
    stable_after: float = 60.0
    max_crashes: int = 5
    window: float = 60.0
    start_timeout: float = 120.0
    """A restarted child not ready within this is killed (and that counts as a crash)."""
    blame_window: float = 10.0
    """A child that exits this soon after one it needs ran again is not counted a crash."""

    def delay(self, streak: int) -> float:
        """The wait before the restart that follows ``streak`` earlier quick restarts."""
        return min(self.first_delay * 2.0 ** min(streak, 30), self.max_delay)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RestartPolicy:
        """The defaults, with ``JOURNEYS_UP_MAX_CRASHES`` and ``JOURNEYS_UP_CRASH_WINDOW``
        when set; `ValueError` (naming the variable) when one is not a positive number."""
        crashes = _positive(environ, "JOURNEYS_UP_MAX_CRASHES", cls.max_crashes)
        if crashes != int(crashes):
            raise ValueError(f"JOURNEYS_UP_MAX_CRASHES must be a whole number, not {crashes:g}")
        window = _positive(environ, "JOURNEYS_UP_CRASH_WINDOW", cls.window)
        return cls(max_crashes=int(crashes), window=window)


def _positive(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive number, not {text!r}")
    return value


class ShutdownRequested(Exception):
    """Ctrl-C, SIGTERM or SIGHUP arrived while we were waiting."""


class ChildExited(Exception):
    """A child exited while it should have been running."""

    def __init__(self, child: Child, message: str | None = None) -> None:
        super().__init__(message or f"{child.name} exited ({child.describe_exit()})")
        self.child = child


class GaveUp(ChildExited):
    """A child crashed `RestartPolicy.max_crashes` times within `RestartPolicy.window`."""


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
    """One supervised process (the current one, after restarts), where its output goes,
    and what the supervisor knows of its history."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path
    log_start: int = 0
    env: dict[str, str] | None = None
    cwd: Path | None = None
    after: tuple[str, ...] = ()
    """The children this one needs running: it is restarted only once they are."""
    ready: Callable[[Child], bool] | None = None
    """A bounded probe: is the (re)started process serving? None: as soon as it runs."""
    state: str = STARTING
    since: datetime = field(default_factory=_now)
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    last_exit: str | None = None
    exited_at: float | None = None
    ready_at: float = 0.0
    streak: int = 0
    next_start: float = 0.0
    crashes: deque[float] = field(default_factory=deque)
    timed_out: bool = False

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

    def exit_cause(self) -> str:
        """How the process ended, as a phrase: "killed by SIGKILL", "exited with code 3"."""
        if self.timed_out:
            return "was not ready in time (killed)"
        code = self.returncode
        if code is not None and code < 0:
            return self.describe_exit()
        return f"exited with code {code}"

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child's whole process group (it leads its own session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)


class Supervisor:
    """Starts children, restarts the ones that die, and stops them all (in reverse order).

    Use as a context manager: it installs the SIGINT/SIGTERM/SIGHUP handlers on entry and
    always stops every child on exit (`stop_all`). A second signal, `FORCE_AFTER` seconds
    or more after the first, kills at once; `received` and `forced` name the signals.
    """

    def __init__(
        self,
        *,
        log_dir: Path,
        stop_timeout: float = 15.0,
        out: TextIO | None = None,
        policy: RestartPolicy | None = None,
        status_path: Path | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.stop_timeout = stop_timeout
        self.policy = policy or RestartPolicy()
        self.status_path = status_path
        self.children: list[Child] = []
        self._out = out or sys.stderr
        # Written by the signal handler: plain attributes, nothing that takes a lock.
        self._signalled_at: float | None = None
        self._received: int | None = None
        self._forced: int | None = None
        self._asked = False
        self._stopping = False
        self._previous: dict[signal.Signals, _Handler] = {}
        self._wake: tuple[int, int] | None = None
        self._previous_wakeup = -1

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Supervisor:
        reader, writer = os.pipe()
        os.set_blocking(reader, False)
        os.set_blocking(writer, False)
        try:
            # Python's C-level handler writes a byte here: a `select` on ``reader`` wakes.
            self._previous_wakeup = signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
        except ValueError:  # not the main thread: the waits fall back to short slices
            os.close(reader)
            os.close(writer)
        else:
            self._wake = (reader, writer)
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop_all()
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            if self._wake is not None:
                with contextlib.suppress(ValueError):
                    signal.set_wakeup_fd(self._previous_wakeup)
                for fd in self._wake:
                    os.close(fd)
                self._wake = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Flags only: no lock, no I/O, no logging (see the module's docstring).
        now = time.monotonic()
        if self._signalled_at is None:
            self._signalled_at = now
            self._received = signum
        elif self._forced is None and now - self._signalled_at >= FORCE_AFTER:
            self._forced = signum

    @property
    def stop_requested(self) -> bool:
        return self._asked or self._signalled_at is not None

    @property
    def received(self) -> int | None:
        """The signal that asked us to stop, if one did."""
        return self._received

    @property
    def forced(self) -> int | None:
        """The second signal, if one came: the children left were killed at once."""
        return self._forced

    def request_stop(self) -> None:
        """Ask every wait to return (what a signal does)."""
        self._asked = True

    def _pause(self, seconds: float, done: Callable[[], bool], *, every: float = _SLICE) -> bool:
        """Wait until ``done()`` or ``seconds`` have passed, asking ``done`` at least
        ``every`` seconds; a signal wakes it at once. Returns ``done()``."""
        deadline = time.monotonic() + seconds
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._wake is None:
                time.sleep(min(remaining, 0.05))
                continue
            reader = self._wake[0]
            ready, _, _ = select.select([reader], [], [], min(remaining, every))
            if ready:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    while os.read(reader, 512):
                        pass
        return True

    # ------------------------------------------------------------------ children

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        after: Sequence[str] = (),
        ready: Callable[[Child], bool] | None = None,
    ) -> Child:
        """Start ``argv`` as child ``name``; output is appended to ``<log_dir>/<name>.log``.

        ``after``: names of children started before that this one needs (it is restarted
        only once they run again); ``ready``: a bounded probe telling when it serves.
        """
        known = {child.name for child in self.children}
        unknown = [n for n in after if n not in known]
        if unknown:
            raise ValueError(f"{name} is started after unknown children: {', '.join(unknown)}")
        env_copy = dict(env) if env is not None else None
        process, log_path, log_start = self._spawn(name, list(argv), env=env_copy, cwd=cwd)
        child = Child(
            name=name,
            argv=list(argv),
            process=process,
            log_path=log_path,
            log_start=log_start,
            env=env_copy,
            cwd=cwd,
            after=tuple(after),
            ready=ready,
        )
        self.children.append(child)
        self._write_status()
        return child

    def _spawn(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None,
        cwd: Path | None,
        note: str | None = None,
    ) -> tuple[subprocess.Popen[bytes], Path, int]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log: IO[bytes]
        with log_path.open("ab") as log:
            # The argv never holds a secret (keys travel in the environment).
            stamp = _stamp()
            if note:
                log.write(f"\n=== {stamp} {note}".encode())
            log.write(f"\n=== {stamp} starting: {' '.join(argv)}\n".encode())
            log.flush()
            log_start = log.tell()
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                # Only a prctl call, resolved beforehand: safe between fork and exec.
                preexec_fn=_PREEXEC,
            )
        return process, log_path, log_start

    def child(self, name: str) -> Child:
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)

    def exited(self) -> Child | None:
        """The first child that is no longer running, if any."""
        for child in self.children:
            if child.returncode is not None:
                return child
        return None

    def check(self) -> None:
        """Raise if a stop was requested or a child has exited."""
        if self.stop_requested:
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
            self._pause(min(interval, remaining), lambda: self.stop_requested)

    def wait_ready(self, child: Child, what: str, *, timeout: float) -> None:
        """`wait_until` ``child``'s own probe says it serves; then it counts as running."""
        probe = child.ready
        if probe is not None:
            self.wait_until(what, lambda: _probe(probe, child), timeout=timeout)
        self._set(child, RUNNING)

    # ------------------------------------------------------------------ healing

    def run(self, *, interval: float = 0.5) -> None:
        """Keep the children running until a signal arrives (returns).

        Raises `GaveUp` when one child crashed too often (see `RestartPolicy`).
        """
        while True:
            self.tick()
            if self._pause(interval, lambda: self.stop_requested):
                return

    def tick(self) -> None:
        """One round: notice exits, schedule and make restarts, promote ready children."""
        now = time.monotonic()
        for child in self.children:
            if child.state in (STARTING, RUNNING) and child.returncode is not None:
                self._on_exit(child, now)
        for child in self.children:
            if child.state == STARTING:
                self._check_starting(child, now)
            elif child.state in (RESTARTING, WAITING) and now >= child.next_start:
                blocker = self._blocker(child)
                if blocker is None:
                    self._restart(child)
                elif child.state != WAITING:
                    self._set(child, WAITING)
                    self._say(f"journeys up: {child.name} waits for {blocker.name} to be running")

    def _on_exit(self, child: Child, now: float) -> None:
        cause = child.exit_cause()
        child.last_exit = cause
        child.exited_at = now
        child.signal(signal.SIGKILL)  # anything it left in its process group
        lines = tail(child.log_path, lines=10, since=child.log_start)
        if now - child.started_at >= self.policy.stable_after:
            child.streak = 0  # it had stayed up: back to the shortest delay
        blamed = self._blamed(child, now)
        if blamed is None:
            child.crashes.append(now)
            while child.crashes and child.crashes[0] <= now - self.policy.window:
                child.crashes.popleft()
            if len(child.crashes) >= self.policy.max_crashes:
                message = (
                    f"{child.name} {cause}; it crashed {len(child.crashes)} times within "
                    f"{self.policy.window:g} s: giving up"
                )
                self._set(child, FAILED)
                self._say(f"journeys up: {message}; last lines of {child.log_path}:")
                self._say_lines(lines)
                raise GaveUp(child, message)
        delay = self.policy.delay(child.streak)
        child.streak += 1
        child.restarts += 1
        child.next_start = now + delay
        self._set(child, RESTARTING)
        because = f" after {blamed.name} went down (not counted as a crash)" if blamed else ""
        self._say(
            f"journeys up: {child.name} {cause}{because}; restarting in {delay:g} s "
            f"(restart {child.restarts}); last lines of {child.log_path}:"
        )
        self._say_lines(lines)

    def _blamed(self, child: Child, now: float) -> Child | None:
        """A child ``child`` needs that is down, or that went down while ``child`` ran and
        has been running again for less than `RestartPolicy.blame_window` seconds."""
        for name in child.after:
            needed = self.child(name)
            if needed.state != RUNNING:
                return needed
            if (
                needed.exited_at is not None
                and needed.exited_at >= child.started_at
                and now - needed.ready_at < self.policy.blame_window
            ):
                return needed
        return None

    def _blocker(self, child: Child) -> Child | None:
        for name in child.after:
            needed = self.child(name)
            if needed.state != RUNNING:
                return needed
        return None

    def _restart(self, child: Child) -> None:
        note = f"restart {child.restarts} ({child.last_exit})"
        child.process, child.log_path, child.log_start = self._spawn(
            child.name, child.argv, env=child.env, cwd=child.cwd, note=note
        )
        child.started_at = time.monotonic()
        child.timed_out = False
        self._set(child, STARTING)
        self._say(f"journeys up: {child.name} restarted (pid {child.pid})")

    def _check_starting(self, child: Child, now: float) -> None:
        if child.returncode is not None:
            return  # noticed at the next tick
        if child.ready is None or _probe(child.ready, child):
            self._set(child, RUNNING)
            if child.restarts:
                self._say(f"journeys up: {child.name} is running again")
        elif now - child.started_at > self.policy.start_timeout:
            self._say(
                f"journeys up: {child.name} was not ready within "
                f"{self.policy.start_timeout:g} s; killing it"
            )
            child.timed_out = True
            child.signal(signal.SIGKILL)

    # ------------------------------------------------------------------ reporting

    def report(self, child: Child, *, lines: int = 20) -> None:
        """Say which child died, with the end of its log."""
        self._say(
            f"journeys up: {child.name} exited unexpectedly ({child.describe_exit()}); "
            f"last lines of {child.log_path}:"
        )
        self._say_lines(tail(child.log_path, lines=lines, since=child.log_start))

    def status(self) -> dict[str, Any]:
        """What the status file holds: who supervises, and each child's state."""
        return {
            "pid": os.getpid(),
            "updated": _stamp(),
            "children": {
                child.name: {
                    "state": child.state,
                    "pid": child.pid,
                    "restarts": child.restarts,
                    "last_exit": child.last_exit,
                    "since": _stamp(child.since),
                }
                for child in self.children
            },
        }

    def _set(self, child: Child, state: str) -> None:
        if child.state != state:
            child.state = state
            child.since = _now()
            if state == RUNNING:
                child.ready_at = time.monotonic()
        self._write_status()

    def _write_status(self) -> None:
        """Replace the status file atomically (a reader sees the old or the new one)."""
        if self.status_path is None:
            return
        temporary = self.status_path.with_name(f".{self.status_path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(self.status()), encoding="utf-8")
            os.replace(temporary, self.status_path)
        except OSError as error:
            self._say(f"journeys up: cannot write {self.status_path}: {error}")

    def _remove_status(self) -> None:
        if self.status_path is not None:
            with contextlib.suppress(OSError):
                self.status_path.unlink()

    def _say(self, text: str) -> None:
        print(text, file=self._out, flush=True)
        with contextlib.suppress(OSError):
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with (self.log_dir / "supervisor.log").open("a", encoding="utf-8") as log:
                log.write(f"{_stamp()} {text}\n")

    def _say_lines(self, lines: Sequence[str]) -> None:
        for line in lines:
            self._say(f"  | {line}")

    # ------------------------------------------------------------------ stopping

    def stop_all(self) -> None:
        """Stop every child, one at a time in reverse start order (API, worker, server):
        SIGTERM to its process group, then SIGKILL after ``stop_timeout`` seconds.

        The clients go first so that nothing new comes in while the worker finishes its
        tasks against a live server, and the server last. A second signal (see `forced`)
        kills every child left at once. The status file goes.
        """
        if self._stopping:
            return
        self._stopping = True
        try:
            running = [c for c in reversed(self.children) if c.returncode is None]
            if not running:
                return
            names = ", ".join(c.name for c in running)
            if self._received is not None:
                cause = f"{signal.Signals(self._received).name} received; "
                force = "a second Ctrl-C or SIGTERM kills them at once"
            else:
                cause, force = "", "Ctrl-C twice kills them at once"
            self._say(
                f"journeys up: {cause}stopping {names} "
                f"(each within {self.stop_timeout:g} s; {force})"
            )
            for child in running:
                if self._forced is not None:
                    break
                self._stop_one(child)
            left = [c for c in running if c.returncode is None]
            if self._forced is not None and left:
                self._say(
                    f"journeys up: second signal ({signal.Signals(self._forced).name}): "
                    f"killing {', '.join(c.name for c in left)}"
                )
            for child in left:
                child.signal(signal.SIGKILL)
            for child in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(timeout=5)
                # Grandchildren share the group: make sure none outlives its parent.
                child.signal(signal.SIGKILL)
        finally:
            self._remove_status()

    def _stop_one(self, child: Child) -> None:
        started = time.monotonic()
        child.signal(signal.SIGTERM)
        stopped = self._pause(
            self.stop_timeout,
            lambda: child.returncode is not None or self._forced is not None,
            every=0.05,  # a child's exit wakes nothing: look often
        )
        if stopped and self._forced is not None and child.returncode is None:
            return  # stop_all kills it with the others
        if child.returncode is None:
            self._say(
                f"journeys up: {child.name} did not stop within {self.stop_timeout:g} s; killing it"
            )
            child.signal(signal.SIGKILL)
        else:
            took = time.monotonic() - started
            self._say(f"journeys up: {child.name} stopped ({took:.1f} s)")


def _probe(probe: Callable[[Child], bool], child: Child) -> bool:
    try:
        return bool(probe(child))
    except Exception:
        return False


def read_status(path: Path, *, supervisor: int | None = None) -> dict[str, Any] | None:
    """The children's states from the status file at ``path``: None when there is none,
    it cannot be read, or (``supervisor`` given) another process than that pid wrote it
    (a file a killed `journeys up` left behind)."""
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or not isinstance(status.get("children"), dict):
        return None
    if supervisor is not None and status.get("pid") != supervisor:
        return None
    return status
