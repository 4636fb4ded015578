"""The full `journeys` command: the design-time commands of `service.cli.design` plus the runtime
ones: `up` (the whole system on this machine), `deploy` (`engine.deploy` does the work),
`db` (`service.cli.db`), `user`/`apikey`, `models`, and the API's thin clients `emit`,
`identify` and `runs`.

Exit codes follow `service.cli.design`: 0 fine, 1 the journeys file has errors or the API refused
the request, 2 bad usage or the API cannot be reached. Secrets (the API key) travel in the
environment and the key file, never on a command line or in a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import socket
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from sqlalchemy.exc import SQLAlchemyError

from engine.catalog import Catalog, build_catalog
from engine.database import create_api_key, engine_for, session_scope
from engine.deploy import DeployLine, deploy_catalog
from engine.diff import JourneyDiff, diff_catalog
from runtime.codec import KeyRingError, create_key_file
from runtime.devserver import DevServerNotFound, dev_server_command, dev_server_ready
from service.cli.audit import app as audit_app
from service.cli.db import app as db_app
from service.cli.db import upgrade_database
from service.cli.design import OutputFormat, app
from service.cli.environment import open_database, runtime_settings
from service.cli.risk_models import app as models_app
from service.cli.scenarios import test_command
from service.cli.stats import stats_command
from service.cli.supervisor import (
    STATUS_FILE,
    Child,
    ChildExited,
    GaveUp,
    RestartPolicy,
    ShutdownRequested,
    Supervisor,
    tail,
)
from service.cli.users import apikey_app, user_app

__all__ = ["app", "load_or_create_api_key", "main"]

CODE_ROOT = Path(__file__).resolve().parents[2]  # the repo (or install) root: worker.py
API_KEY_FILE = "api_key"
DEFAULT_STATE_DIR = Path("state")
STOP_GRACE = 15.0  # seconds each child of `journeys up` gets to stop (docs/operations.md)


# ----------------------------------------------------------------------------- deploy


def _echo_violations(catalog: Catalog, file: Path) -> None:
    """The same lines `journeys validate` prints."""
    for violation in catalog.violations:
        typer.echo(violation.format())
    if not catalog.ok:
        count = len(catalog.checked.errors)
        typer.echo(f"{file}: {count} error{'s' if count != 1 else ''}")


def _valid_catalog(file: Path, *, shown_as: Path | None = None) -> Catalog:
    """The catalogue of ``file``; its violations printed, exit 1 when it has errors."""
    catalog = build_catalog(file)
    _echo_violations(catalog, shown_as or file)
    if not catalog.ok:
        raise typer.Exit(1)
    return catalog


def _deploy_file(file: Path, *, database_url: str) -> list[DeployLine]:
    catalog = _valid_catalog(file)
    engine = open_database(database_url)
    try:
        return deploy_catalog(catalog, engine=engine, source_text=file.read_text(encoding="utf-8"))
    finally:
        engine.dispose()


def _diff_file(file: Path, *, database_url: str, as_json: bool) -> list[JourneyDiff]:
    """What deploying ``file`` would change; reads the database, writes nothing."""
    catalog = build_catalog(file)
    for violation in catalog.violations:  # JSON on stdout: the file's problems on stderr
        typer.echo(violation.format(), err=as_json)
    if not catalog.ok:
        count = len(catalog.checked.errors)
        typer.echo(f"{file}: {count} error{'s' if count != 1 else ''}", err=as_json)
        raise typer.Exit(1)
    engine = engine_for(database_url)  # not `open_database`: no schema created or migrated
    try:
        return diff_catalog(catalog, engine=engine)
    except SQLAlchemyError as error:
        typer.echo(
            f"journeys: cannot read the deployed versions ({type(error).__name__}): is the "
            "database at this release's schema? `journeys db current` says",
            err=True,
        )
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


def _echo_diff(file: Path, format: OutputFormat) -> None:
    settings = runtime_settings()
    as_json = format is OutputFormat.json
    lines = _diff_file(file, database_url=settings.database_url, as_json=as_json)
    if as_json:
        typer.echo(
            json.dumps({"file": str(file), "journeys": [d.as_dict() for d in lines]}, indent=2)
        )
        return
    for line in lines:
        typer.echo(line.format())


FormatOption = Annotated[OutputFormat, typer.Option("--format", help="text or json")]


@app.command()
def deploy(
    file: Annotated[Path, typer.Argument(help="The journeys file.")] = Path("journeys.yaml"),
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Store nothing: say per journey which steps a deploy would add, remove and "
            "change, and how many open runs wait at the removed or changed ones.",
        ),
    ] = False,
    format: FormatOption = OutputFormat.text,
) -> None:
    """Validate, then store and activate new journey versions (runs in flight keep theirs)."""
    if dry_run:
        _echo_diff(file, format)
        return
    settings = runtime_settings()
    lines = _deploy_file(file, database_url=settings.database_url)
    if format is OutputFormat.json:
        payload: list[dict[str, object]] = [
            {
                "journey": line.journey_id,
                "status": line.status,
                "version": line.version,
                "previous": line.previous,
                "runs_staying": line.runs_staying,
            }
            for line in lines
        ]
        typer.echo(json.dumps({"file": str(file), "journeys": payload}, indent=2))
        return
    for line in lines:
        typer.echo(line.format())


@app.command()
def diff(
    file: Annotated[Path, typer.Argument(help="The journeys file.")] = Path("journeys.yaml"),
    format: FormatOption = OutputFormat.text,
) -> None:
    """What `journeys deploy` would change (the same as `deploy --dry-run`): per journey,
    steps added, removed and changed, and open runs at the removed or changed ones."""
    _echo_diff(file, format)


# ----------------------------------------------------------------------------- up


def load_or_create_api_key(state_dir: Path) -> str:
    """The key in ``<state>/api_key``, created (mode 0600) on the first start."""
    return _load_or_create_secret(state_dir / API_KEY_FILE, prefix="jk_")


def load_or_create_secret_key(state_dir: Path) -> str:
    """The key that signs unsubscribe links, in ``<state>/secret_key`` (mode 0600)."""
    return _load_or_create_secret(state_dir / "secret_key", prefix="")


def _load_or_create_secret(path: Path, *, prefix: str) -> str:
    with contextlib.suppress(FileNotFoundError):
        key = path.read_text(encoding="utf-8").strip()
        if key:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
            return key
    key = prefix + secrets.token_urlsafe(24 if prefix else 32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    path.chmod(0o600)
    return key


def history_keys_env(state_dir: Path) -> dict[str, str]:
    """Where the children find the history key ring: as given in the environment, or else
    ``<state>/history_keys``, created (mode 0600, one new key) on the first start."""
    if os.environ.get("JOURNEYS_HISTORY_KEYS") or os.environ.get("JOURNEYS_HISTORY_KEYS_FILE"):
        return {}
    try:
        path = create_key_file(state_dir / "history_keys")
    except KeyRingError as exc:
        typer.echo(f"journeys up: {exc}", err=True)
        raise typer.Exit(2) from exc
    return {"JOURNEYS_HISTORY_KEYS_FILE": str(path)}


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a port in TIME_WAIT from our last stop is free for our servers too.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@dataclass(frozen=True)
class _Embedded:
    """Where the pieces of `journeys up` live on this machine."""

    state: Path
    journeys_file: Path
    port: int
    temporal_port: int
    ui_port: int

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.state / 'journeys.db'}"

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    @property
    def logs(self) -> Path:
        return self.state / "logs"


def _child_env(embedded: _Embedded, *, api_key: str, secret_key: str) -> dict[str, str]:
    env = dict(os.environ)
    # The embedded server speaks plain gRPC on loopback: drop any cluster credentials.
    for name in ("TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY", "TEMPORAL_TLS_CA", "TEMPORAL_API_KEY"):
        env.pop(name, None)
    env.update(
        JOURNEYS_STATE_DIR=str(embedded.state),
        DATABASE_URL=embedded.database_url,
        TEMPORAL_ADDRESS=embedded.temporal_address,
        TEMPORAL_NAMESPACE="default",
        JOURNEYS_API_URL=embedded.api_url,
        JOURNEYS_TEMPORAL_UI=embedded.ui_url,
        JOURNEYS_API_KEY=api_key,
        JOURNEYS_SECRET_KEY=secret_key,
        JOURNEYS_PUBLIC_URL=os.environ.get("JOURNEYS_PUBLIC_URL") or embedded.api_url,
        JOURNEYS_FILE=str(embedded.journeys_file),
        PYTHONUNBUFFERED="1",
    )
    return env


def _api_serving(url: str) -> bool:
    """The API answers /healthz and its database is fine. A 503 that only says another
    child is restarting (the supervisor's status, see `Supervisor`) counts as serving."""
    try:
        answer = httpx.get(f"{url}/healthz", timeout=2.0)
    except httpx.HTTPError:
        return False
    if answer.status_code == 200:
        return True
    try:
        body = answer.json()
    except ValueError:
        return False
    return answer.status_code == 503 and isinstance(body, dict) and body.get("database") == "ok"


def _worker_polling(child: Child) -> bool:
    """The worker's log, since its last start, says it polls its task queue."""
    lines = tail(child.log_path, lines=400, since=child.log_start)
    return any("worker polling task queue" in line for line in lines)


def _journeys_command(argv0: str | None = None, *, cwd: Path | None = None) -> str:
    """This `journeys` as a user can type it in the directory `up` runs in.

    `make up` runs `.venv/bin/journeys`, which is not on the PATH: a bare `journeys` in a
    hint would not work. The path is the script we were started as (the shell passes the
    path it found on the PATH, too), relative when it is under ``cwd``
    (`.venv/bin/journeys`), else absolute.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    here = Path.cwd() if cwd is None else cwd
    script = Path(argv0) if Path(argv0).name == "journeys" else None
    if script is None:  # `python -m service.cli.main`, a test: the venv's script
        script = Path(sys.executable).parent / "journeys"
    absolute = Path(os.path.normpath(here / script))  # not resolved: keep the venv's path
    try:
        relative = absolute.relative_to(here)
    except ValueError:
        return shlex.quote(str(absolute))
    shown = str(relative) if len(relative.parts) > 1 else f"./{relative}"
    return shlex.quote(shown)


def _example(*, api_url: str, state_dir: Path, journeys: str = "journeys") -> str:
    prefix = []
    if api_url != "http://127.0.0.1:8000":
        prefix.append(f"JOURNEYS_API_URL={api_url}")
    if state_dir != DEFAULT_STATE_DIR.resolve():
        prefix.append(f"JOURNEYS_STATE_DIR={shlex.quote(str(state_dir))}")
    return " ".join(
        [
            *prefix,
            f"{journeys} emit payment_failed --customer c1 --prop amount=25000 --prop currency=KRW",
            "--prop days_past_due=3 --prop invoice_id=inv-1",
        ]
    )


def _banner(embedded: _Embedded, *, api_key: str, journeys: str | None = None) -> str:
    journeys = journeys or _journeys_command()
    reviewer = f"add a reviewer: {journeys} user add NAME --role ops"
    return "\n".join(
        [
            "",
            "journeys is up",
            f"  API          {embedded.api_url}",
            f"  API key      {api_key}",
            f"  console      {embedded.api_url}/console  ({reviewer})",
            f"  Temporal UI  {embedded.ui_url}",
            f"  logs         {embedded.logs}",
            "  try:",
            f"    {_example(api_url=embedded.api_url, state_dir=embedded.state, journeys=journeys)}",
            "",
            "Ctrl-C stops everything.",
        ]
    )


def _check_ports(embedded: _Embedded) -> None:
    ports = (embedded.port, embedded.temporal_port, embedded.ui_port)
    busy = [p for p in dict.fromkeys(ports) if _port_in_use(p)]
    if busy:
        typer.echo(
            f"port{'s' if len(busy) > 1 else ''} {', '.join(map(str, busy))} already in use "
            "on 127.0.0.1 (is another `journeys up` running?): choose others with --port, "
            "--temporal-port, --ui-port",
            err=True,
        )
        raise typer.Exit(2)


def _server_argv(embedded: _Embedded) -> list[str]:
    try:
        return dev_server_command(
            state_dir=embedded.state,
            port=embedded.temporal_port,
            ui_port=embedded.ui_port,
            codec_endpoint=f"{embedded.api_url}/codec",
        )
    except DevServerNotFound as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc


def _seed_api_key(database_url: str, api_key: str) -> None:
    engine = open_database(database_url)
    try:
        with session_scope(engine) as session:
            create_api_key(session, name="journeys up", key=api_key, scopes=["admin"])
    finally:
        engine.dispose()


def _start_all(
    supervisor: Supervisor, embedded: _Embedded, *, server_argv: list[str], env: dict[str, str]
) -> None:
    """Temporal, then the catalogue deployed, then the worker and the API; wait for each.

    The worker is started after Temporal (it exits when it cannot connect, so it is only
    restarted once Temporal runs again); the API is not (it reconnects by itself).
    """
    address = embedded.temporal_address
    typer.echo(f"starting Temporal dev server on {address} (state in {embedded.state})")
    temporal = supervisor.start(
        "temporal",
        server_argv,
        env=env,
        ready=lambda _child: asyncio.run(dev_server_ready(address, timeout=3.0)),
    )
    supervisor.wait_ready(temporal, "the Temporal dev server", timeout=120)
    for line in _deploy_file(embedded.journeys_file, database_url=embedded.database_url):
        typer.echo(f"deploy  {line.format()}")
    _seed_api_key(embedded.database_url, env["JOURNEYS_API_KEY"])
    supervisor.check()
    worker_argv = [sys.executable, str(CODE_ROOT / "worker.py")]
    worker = supervisor.start(
        "worker", worker_argv, env=env, after=["temporal"], ready=_worker_polling
    )
    api_argv = ["-m", "uvicorn", "--factory", "service.api.app:create_app"]
    api_argv += ["--host", "127.0.0.1", "--port", str(embedded.port)]
    api = supervisor.start(
        "api", [sys.executable, *api_argv], env=env, ready=lambda _c: _api_serving(embedded.api_url)
    )
    supervisor.wait_ready(api, "the API", timeout=120)
    supervisor.wait_ready(worker, "the worker", timeout=120)


def _supervise(
    embedded: _Embedded,
    *,
    server_argv: list[str],
    env: dict[str, str],
    policy: RestartPolicy,
    supervisor: Supervisor | None = None,
) -> int:
    """Run everything until a signal, restarting what dies; every child stopped on return.

    0 after a signal stopped everything cleanly (each child within its grace time), 128 +
    the signal's number when a second signal killed them at once (see `Supervisor`); 1 when
    a child dies or does not come up while starting, or crashes too often once up (see
    `RestartPolicy`). With ``supervisor`` (entered by the caller) it is used and left
    entered; the caller's exit stops the children, and `_exit_code` says how that went.
    """
    if supervisor is None:
        with _supervisor(embedded, policy) as owned:
            code = _run(owned, embedded, server_argv=server_argv, env=env)
        return _exit_code(owned, code)
    return _run(supervisor, embedded, server_argv=server_argv, env=env)


def _supervisor(embedded: _Embedded, policy: RestartPolicy) -> Supervisor:
    return Supervisor(
        log_dir=embedded.logs,
        stop_timeout=STOP_GRACE,
        policy=policy,
        status_path=embedded.state / STATUS_FILE,
    )


def _exit_code(supervisor: Supervisor, code: int) -> int:
    """``code``, or 128 + the second signal's number when one killed the children."""
    forced = supervisor.forced
    return 128 + forced if forced is not None else code


def _run(
    supervisor: Supervisor, embedded: _Embedded, *, server_argv: list[str], env: dict[str, str]
) -> int:
    try:
        _start_all(supervisor, embedded, server_argv=server_argv, env=env)
        typer.echo(_banner(embedded, api_key=env["JOURNEYS_API_KEY"]))
        supervisor.run()
    except ShutdownRequested:
        pass
    except GaveUp:
        return 1  # the supervisor said why, with the end of the child's log
    except ChildExited as exc:
        supervisor.report(exc.child)
        return 1
    except TimeoutError as exc:
        typer.echo(f"journeys up: {exc}; see the logs in {embedded.logs}", err=True)
        return 1
    return 0


@app.command()
def up(
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Where the databases, key and logs live.")
    ] = DEFAULT_STATE_DIR,
    port: Annotated[int, typer.Option("--port", help="The API's port.")] = 8000,
    temporal_port: Annotated[
        int, typer.Option("--temporal-port", help="The Temporal dev server's gRPC port.")
    ] = 7233,
    ui_port: Annotated[int, typer.Option("--ui-port", help="Temporal's Web UI port.")] = 8233,
    file: Annotated[Path, typer.Option("--file", "-f", help="The journeys file.")] = Path(
        "journeys.yaml"
    ),
) -> None:
    """Run everything on this machine: Temporal dev server, worker, API. Ctrl-C or SIGTERM
    stops it cleanly (exit 0); a second one kills at once (exit 128 + the signal)."""
    embedded = _Embedded(state_dir.resolve(), file.resolve(), port, temporal_port, ui_port)
    try:
        policy = RestartPolicy.from_env(os.environ)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    _valid_catalog(embedded.journeys_file, shown_as=file)
    _check_ports(embedded)
    server_argv = _server_argv(embedded)
    embedded.logs.mkdir(parents=True, exist_ok=True)
    exit_code = 0
    # The signal handlers from here on: a signal before the first child starts only stops.
    with _supervisor(embedded, policy) as supervisor:
        # Once, before any child starts: the worker and the API then find the schema at head.
        typer.echo(f"database  {upgrade_database(embedded.database_url).format()}")
        api_key = os.environ.get("JOURNEYS_API_KEY") or load_or_create_api_key(embedded.state)
        secret_key = os.environ.get("JOURNEYS_SECRET_KEY") or load_or_create_secret_key(
            embedded.state
        )
        env = _child_env(embedded, api_key=api_key, secret_key=secret_key)
        env.update(history_keys_env(embedded.state))
        if not supervisor.stop_requested:
            exit_code = _supervise(
                embedded, server_argv=server_argv, env=env, policy=policy, supervisor=supervisor
            )
    typer.echo("stopped")
    raise typer.Exit(_exit_code(supervisor, exit_code))


# ----------------------------------------------------------------------------- API clients


def _parse_pairs(pairs: Sequence[str], *, option: str) -> dict[str, Any]:
    """``k=v`` pairs; a value that parses as JSON (25000, true, null, [1]) is that value."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            typer.echo(f"{option} {pair!r}: expected NAME=VALUE", err=True)
            raise typer.Exit(2)
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        parsed[name.strip()] = value
    return parsed


def _client_settings() -> tuple[str, str | None]:
    settings = runtime_settings()
    key = settings.api_key
    if not key:
        with contextlib.suppress(OSError):
            key = (settings.state_dir / API_KEY_FILE).read_text(encoding="utf-8").strip() or None
    return settings.api_url, key


@contextlib.contextmanager
def _api() -> Iterator[httpx.Client]:
    url, key = _client_settings()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=15.0) as client:
        try:
            yield client
        except httpx.ConnectError as exc:
            typer.echo(f"cannot reach the API at {url}: is `journeys up` running?", err=True)
            raise typer.Exit(2) from exc
        except httpx.TimeoutException as exc:
            typer.echo(f"the API at {url} did not answer in time", err=True)
            raise typer.Exit(2) from exc


def _answer(response: httpx.Response) -> Any:
    """The JSON of a successful answer; a clear message and exit 1 otherwise."""
    if response.status_code == 401:
        typer.echo(
            f"the API at {response.url.copy_with(path='/', query=None)} refused the key "
            "(401): set JOURNEYS_API_KEY to the key `journeys up` printed (it is also in "
            "<state>/api_key)",
            err=True,
        )
        raise typer.Exit(1)
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if response.is_error:
        detail = body.get("detail", body) if isinstance(body, Mapping) else body
        typer.echo(f"the API answered {response.status_code}: {_flat(detail)}", err=True)
        problems = body.get("errors") if isinstance(body, Mapping) else None
        lines = [
            f"{problem.get('field')}: {problem.get('message')}"
            for problem in (problems if isinstance(problems, list) else [])
            if isinstance(problem, Mapping)
        ]
        if lines != [detail]:
            for line in lines:
                typer.echo(f"  {line}", err=True)
        raise typer.Exit(1)
    return body


def _flat(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _readable(value: Any) -> str:
    """A value of an answer on one line: lists joined, skipped entries with their reason."""
    if value is None or value == []:
        return "-"
    if isinstance(value, list):
        return ", ".join(_readable(item) for item in value)
    if isinstance(value, Mapping) and "journey_id" in value and "reason" in value:
        return f"{value['journey_id']} ({value['reason']})"
    return _flat(value)


def _echo_answer(body: Any) -> None:
    if not isinstance(body, Mapping):
        typer.echo(_flat(body))
        return
    for name, value in body.items():
        typer.echo(f"{name}: {_readable(value)}")


@app.command()
def emit(
    event: Annotated[str, typer.Argument(help="The event name, e.g. payment_failed.")],
    customer: Annotated[str, typer.Option("--customer", help="The customer id.")],
    prop: Annotated[
        list[str] | None,
        typer.Option("--prop", help="A property NAME=VALUE (JSON values parse); repeatable."),
    ] = None,
    message_id: Annotated[
        str | None,
        typer.Option("--message-id", help="Deduplication id (default: a new one)."),
    ] = None,
) -> None:
    """Send an event to the API (POST /v1/events), as an event source would."""
    # The API speaks Segment's wire format (camelCase), like the CDPs that feed it.
    body = {
        "type": "track",
        "event": event,
        "userId": customer,
        "properties": _parse_pairs(prop or [], option="--prop"),
        "messageId": message_id or f"cli-{uuid.uuid4()}",
    }
    with _api() as client:
        answer = _answer(client.post("/v1/events", json=body))
    typer.echo(f"message id: {body['messageId']}")
    _echo_answer(answer)


def noon_zone(now: Any = None) -> tuple[str, Any]:
    """A fixed-offset zone (``Etc/GMT-9`` is UTC+9) where it is now 12:00-12:59, and the
    local time there: quiet hours (evening to morning) and waits for a morning hour are
    then many hours away, whatever the time here."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    now = now or datetime.now(UTC)
    offset = 12 - now.astimezone(UTC).hour  # -11 .. +12, all Etc/GMT zones
    # POSIX signs: Etc/GMT-9 is nine hours ahead of UTC.
    zone = "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"
    return zone, now.astimezone(ZoneInfo(zone))


@app.command()
def identify(
    customer: Annotated[str, typer.Argument(help="The customer id.")],
    trait: Annotated[
        list[str] | None,
        typer.Option("--trait", help="A trait NAME=VALUE (JSON values parse; null removes)."),
    ] = None,
    noon: Annotated[
        bool,
        typer.Option(
            "--timezone-at-noon",
            help="Set the timezone trait to a zone where it is now noon (a demo's sends are "
            "then not held for quiet hours, whatever the time here).",
        ),
    ] = False,
) -> None:
    """Set a customer's traits (POST /v1/identify): email, phone, timezone, anything."""
    traits = _parse_pairs(trait or [], option="--trait")
    if noon:
        zone, local = noon_zone()
        traits["timezone"] = zone
        typer.echo(f"timezone: {zone} (it is {local:%H:%M} there now)")
    body = {
        "type": "identify",
        "userId": customer,
        "traits": traits,
        "messageId": f"cli-{uuid.uuid4()}",
    }
    with _api() as client:
        answer = _answer(client.post("/v1/identify", json=body))
    typer.echo(f"message id: {body['messageId']}")
    _echo_answer(answer)


_RUN_COLUMNS = (
    ("RUN ID", ("run_id", "id")),
    ("JOURNEY", ("journey_id", "journey")),
    ("CUSTOMER", ("customer_id", "customer")),
    ("STATUS", ("status",)),
    ("STEP", ("step", "current_step")),
    ("OUTCOME", ("outcome",)),
    ("STARTED", ("started_at", "started")),
)


def _cell(row: Mapping[str, Any], names: Sequence[str]) -> str:
    for name in names:
        value = row.get(name)
        if value is not None:
            text = str(value)
            # Timestamps: to the second, without the zone noise.
            if name.startswith("started") and "T" in text:
                text = text.replace("T", " ")[:19]
            return text
    return "-"


def format_runs_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """Runs as an aligned text table, one line per run."""
    rows = [[header for header, _ in _RUN_COLUMNS]]
    rows += [[_cell(run, names) for _, names in _RUN_COLUMNS] for run in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_RUN_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@app.command()
def runs(
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer.")] = None,
    journey: Annotated[str | None, typer.Option("--journey", help="Only this journey.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="running, completed, exited, ...")
    ] = None,
) -> None:
    """List runs (GET /v1/runs) as a table."""
    params = {
        name: value
        for name, value in (("customer", customer), ("journey", journey), ("status", status))
        if value
    }
    with _api() as client:
        body = _answer(client.get("/v1/runs", params=params))
    found = body.get("runs", body.get("items", [])) if isinstance(body, Mapping) else body
    if not isinstance(found, list):
        typer.echo(_flat(body))
        return
    if not found:
        typer.echo("no runs")
        return
    typer.echo(format_runs_table([r for r in found if isinstance(r, Mapping)]))


@app.command()
def explain(
    customer: Annotated[
        str | None, typer.Option("--customer", help="Every run of this customer.")
    ] = None,
    run: Annotated[str | None, typer.Option("--run", help="One run, by its id.")] = None,
    message: Annotated[
        str | None,
        typer.Option(
            "--message", help="One message: a delivery id (12) or a captured one's (outbox:12)."
        ),
    ] = None,
    output: Annotated[str, typer.Option("--format", help="text (the default) or json.")] = "text",
) -> None:
    """Why a customer got a message, or did not (GET /v1/explain): the entry, every
    decision with its rule and the values it read, scores, reviews, waits, and each send
    with its policy checks and content."""
    from service.explain import Explanation, render_text

    given = {n: v for n, v in (("customer", customer), ("run", run), ("message", message)) if v}
    if len(given) != 1:
        typer.echo("give exactly one of --customer, --run or --message", err=True)
        raise typer.Exit(2)
    if output not in ("text", "json"):
        typer.echo(f"--format {output!r}: expected text or json", err=True)
        raise typer.Exit(2)
    with _api() as client:
        body = _answer(client.get("/v1/explain", params=given))
    if output == "json":
        typer.echo(json.dumps(body, indent=2, ensure_ascii=False))
        return
    explanation = Explanation.model_validate(body)
    if not explanation.runs:
        typer.echo(f"no runs of customer {customer}" if customer else "no runs")
        return
    typer.echo(render_text(explanation))


@app.command()
def erase(
    customer: Annotated[str, typer.Argument(help="The customer id to erase.")],
    yes: Annotated[
        bool, typer.Option("--yes", help="Do not ask for confirmation (for scripts).")
    ] = False,
) -> None:
    """Erase a customer (DELETE /v1/customers/{id}): end their open runs, delete their
    runs from Temporal, their history key, profile, events, preferences and messages,
    and keep counts under a pseudonym. Their later events start nothing. Cannot be undone."""
    if not yes and not typer.confirm(
        f"Erase customer {customer!r}? This cannot be undone", default=False
    ):
        typer.echo("not erased")
        raise typer.Exit(1)
    with _api() as client:
        client.timeout = httpx.Timeout(120.0)  # many runs to end and delete
        body = _answer(client.delete(f"/v1/customers/{quote(customer, safe='')}"))
    typer.echo(f"erased: {body['customer']} (the pseudonym the audit log keeps)")
    typer.echo(f"runs ended: {body['runs_ended']}")
    typer.echo(f"Temporal executions deleted: {body['histories_deleted']}")
    rows = body.get("rows") or {}
    typer.echo(
        "rows: " + (", ".join(f"{table} {count}" for table, count in rows.items()) or "none")
    )


app.add_typer(models_app, name="models")
app.add_typer(user_app, name="user")
app.add_typer(apikey_app, name="apikey")
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")
app.command(name="test")(test_command)
app.command(name="stats")(stats_command)


def main() -> None:
    """Entry point of the `journeys` command."""
    app()
