"""The API clients of the `journeys` command (`emit`, `identify`, `runs`) against a small
HTTP server on loopback: what they send, what they print, where the API key comes from,
and what they say when the key is refused or the API is not there; and the API key file."""

from __future__ import annotations

import json
import socket
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from service.cli.main import app, load_or_create_api_key

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


def test_the_api_key_file_is_private_and_stable(tmp_path: Path) -> None:
    key = load_or_create_api_key(tmp_path)
    path = tmp_path / "api_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key.startswith("jk_") and len(key) > 20
    assert load_or_create_api_key(tmp_path) == key
