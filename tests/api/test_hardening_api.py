"""The HTTP surface's small guarantees, as a caller meets them: security headers on every
answer (and a console with no inline script), docs that can be closed, access logs that
never show a query string's values, an ingest answer that names the events nothing
listens to (and refuses them when asked), says when a messageId was already used by
another customer, and refuses timestamps outside a sane window."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from engine.database import EventRecord, session_scope
from engine.settings import RuntimeSettings, SettingsError
from service.api.app import create_app
from service.api.middleware import redact_request_target
from service.users import add_user, change_password, check_password
from tests.api.conftest import API_KEY, AUTH, RunningApi, api_settings, running_api
from tests.database import deploy

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "a-good-long-password"

JOURNEYS = """\
version: 1
events:
  payment_failed: {amount: number}
  payment_received: {amount: number}
  stop: {}
  page_viewed: {}
journeys:
  - id: recovery
    entry: {event: payment_failed, reentry: always}
    exit_on:
      - {event: stop, outcome: stopped}
    steps:
      - id: wait_for_payment
        wait: {event: payment_received, within: 3d}
"""


@pytest.fixture
def customer() -> str:
    return f"cust-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def journeys_api(api: RunningApi, db: Engine) -> AsyncIterator[RunningApi]:
    deploy(db, JOURNEYS)
    yield api


def track(
    customer: str, event: str, message_id: str | None = None, **fields: Any
) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": customer,
        "event": event,
        "messageId": message_id or uuid.uuid4().hex,
        **fields,
    }


async def post(http: httpx.AsyncClient, path: str, body: Any) -> httpx.Response:
    return await http.post(path, json=body, headers=AUTH)


def stored_ids(db: Engine) -> set[str]:
    with session_scope(db) as session:
        return set(session.exec(select(EventRecord.message_id)).all())


# ----------------------------------------------------------------------------- headers


def assert_hardened(answer: httpx.Response) -> None:
    headers = answer.headers
    policy = headers.get("content-security-policy", "")
    directives = {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}
    where = f"{answer.request.method} {answer.request.url.path} ({answer.status_code})"
    assert directives.get("frame-ancestors") == ["'none'"], (where, policy)
    script = directives.get("script-src", directives.get("default-src"))
    assert script is not None and "'unsafe-inline'" not in script, (where, policy)
    assert headers.get("x-content-type-options") == "nosniff", where
    assert headers.get("x-frame-options") == "DENY", where
    assert headers.get("referrer-policy") in ("no-referrer", "same-origin"), where
    assert len(headers.get_list("x-frame-options")) == 1, where


def assert_no_inline_script_or_style(page: httpx.Response) -> None:
    text = page.text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), "an inline <script>"
    assert not re.search(r"\son[a-z]+\s*=", text), "an inline event handler"
    assert "<style" not in text and " style=" not in text, "inline style"


@pytest.fixture
async def console(api: RunningApi, db: Engine) -> AsyncIterator[RunningApi]:
    first = add_user(db, name="ana", role="ops")
    user = check_password(db, name="ana", password=first)
    assert user is not None and user.id is not None
    change_password(db, user_id=user.id, current=first, new=PASSWORD)
    page = await api.http.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    signed_in = await api.http.post(
        "/console/login", data={"name": "ana", "password": PASSWORD, "csrf": csrf.group(1)}
    )
    assert signed_in.status_code == 303
    yield api


async def test_every_answer_carries_the_security_headers(console: RunningApi) -> None:
    http = console.http
    answers = [
        await http.get("/console/login"),
        await http.get("/console/reviews"),
        await http.get("/console/outbox"),
        await http.get("/console/runs/no-such-run"),
        await http.get("/healthz"),
        await http.get("/v1/runs", headers=AUTH),
        await http.get("/v1/runs"),  # 401
        await http.get("/no/such/page"),  # 404
        await http.post("/v1/track", json={"type": "track"}, headers=AUTH),  # 422
        await http.get("/v1/unsubscribe/not-a-token"),  # the customer's page, 400
        await http.get("/openapi.json"),
        await http.get("/docs"),
        await http.get("/redoc"),
    ]
    for answer in answers:
        assert_hardened(answer)


async def test_console_pages_run_no_inline_script_and_load_their_own_assets(
    console: RunningApi,
) -> None:
    http = console.http
    for path in ("/console/login", "/console/reviews", "/console/outbox"):
        page = await http.get(path)
        assert page.status_code == 200, (path, page.status_code)
        assert_no_inline_script_or_style(page)
    page = await http.get("/console/reviews")
    assets = re.findall(r'(?:src|href)="(/console/static/[^"]+)"', page.text)
    assert {Path(asset).suffix for asset in assets} == {".js", ".css"}, assets
    for asset in assets:
        answer = await http.get(asset)
        assert answer.status_code == 200, asset
        assert_hardened(answer)
        kind = answer.headers["content-type"]
        assert ("javascript" in kind) if asset.endswith(".js") else kind.startswith("text/css")
    script = (await http.get(next(a for a in assets if a.endswith(".js")))).text
    assert "needsNote" in script  # the note check and the double-click guard


async def test_the_docs_pages_allow_only_their_own_nonced_script(api: RunningApi) -> None:
    for path in ("/docs", "/redoc"):
        page = await api.http.get(path)
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        nonce = re.search(r"'nonce-([^']+)'", policy)
        assert nonce is not None, policy
        for tag in re.findall(r"<script[^>]*>", page.text):
            assert f'nonce="{nonce.group(1)}"' in tag, tag
    policies = {(await api.http.get("/docs")).headers["content-security-policy"] for _ in "ab"}
    assert len(policies) == 2  # a new nonce each time


# ----------------------------------------------------------------------------- docs


async def test_public_docs_can_be_closed(database_url: str, task_queue: str) -> None:
    settings = api_settings(database_url=database_url, task_queue=task_queue).model_copy(
        update={"public_docs": False}
    )
    async with running_api(create_app(settings)) as closed:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            answer = await closed.http.get(path)
            assert answer.status_code == 404, path
        assert (await closed.http.get("/healthz")).status_code == 200


async def test_an_internal_error_answers_500_with_the_security_headers(
    database_url: str, task_queue: str
) -> None:
    """An unhandled error's 500 comes from outside every middleware in Starlette: it
    carries the headers too, and says nothing of the error."""
    app = create_app(api_settings(database_url=database_url, task_queue=task_queue))

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail of the failure")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        answer = await http.get("/v1/boom", headers=AUTH)
    assert answer.status_code == 500
    assert "secret detail" not in answer.text
    assert answer.json()["detail"] == "internal server error"
    assert_hardened(answer)


def test_public_docs_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNEYS_PUBLIC_DOCS", raising=False)
    assert RuntimeSettings.from_env().public_docs is True
    monkeypatch.setenv("JOURNEYS_PUBLIC_DOCS", "0")
    assert RuntimeSettings.from_env().public_docs is False
    monkeypatch.setenv("JOURNEYS_PUBLIC_DOCS", "maybe")
    with pytest.raises(SettingsError, match="JOURNEYS_PUBLIC_DOCS"):
        RuntimeSettings.from_env()


# ----------------------------------------------------------------------------- access log


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("/v1/runs", "/v1/runs"),
        ("/v1/runs?api_key=sk_live_1", "/v1/runs?api_key=[redacted]"),
        ("/x?token=a&customer=c-1&strict", "/x?token=[redacted]&customer=[redacted]&[redacted]"),
        ("/x?", "/x?"),
    ],
)
def test_a_request_target_is_shown_without_its_query_values(target: str, shown: str) -> None:
    assert redact_request_target(target) == shown


def test_the_access_log_filter_is_on_uvicorn_access_once_the_app_exists(
    caplog: pytest.LogCaptureFixture, database_url: str, task_queue: str
) -> None:
    create_app(api_settings(database_url=database_url, task_queue=task_queue))
    create_app(api_settings(database_url=database_url, task_queue=task_queue))
    access = logging.getLogger("uvicorn.access")
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:5000",
            "GET",
            "/v1/runs?api_key=sk_live_secret&x=Bearer%20abc",
            "1.1",
            200,
        )
    [record] = [r for r in caplog.records if r.name == "uvicorn.access"]
    assert "sk_live_secret" not in record.getMessage()
    assert "/v1/runs?api_key=[redacted]&x=[redacted]" in record.getMessage()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def uvicorn_api(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The API as `journeys up` starts it (`python -m uvicorn --factory ...`), Temporal
    unreachable; its URL and the file its output goes to."""
    port = free_port()
    output = tmp_path / "api.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": database_url,
        "JOURNEYS_API_KEY": API_KEY,
        "TEMPORAL_ADDRESS": "127.0.0.1:1",
        "JOURNEYS_SECRET_KEY": "access-log-test-secret",
    }
    argv = [sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    with output.open("wb") as sink:
        child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{url}/healthz", timeout=1.0)
                    break
                except httpx.TransportError:
                    assert child.poll() is None, output.read_text()
                    assert time.monotonic() < deadline, output.read_text()
                    time.sleep(0.2)
            yield url, output
        finally:
            child.terminate()
            child.wait(timeout=30)


def test_uvicorns_access_log_never_shows_a_query_strings_values(
    uvicorn_api: tuple[str, Path],
) -> None:
    url, output = uvicorn_api
    answer = httpx.get(
        f"{url}/v1/runs?api_key=sk_live_in_the_url&limit=5",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    assert answer.status_code in (200, 401)
    deadline = time.monotonic() + 10
    while "/v1/runs" not in output.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = output.read_text()
    assert "GET /v1/runs?api_key=[redacted]&limit=[redacted] HTTP/1.1" in log, log
    assert "sk_live_in_the_url" not in log and API_KEY not in log


# ----------------------------------------------------------------------------- unrouted


async def test_the_answer_names_the_events_no_journey_listens_to(
    journeys_api: RunningApi, db: Engine, customer: str
) -> None:
    batch = [
        track(customer, "payment_failed", amount=5),
        track(customer, "page_viewed"),
        track(customer, "payment_recieved", amount=5),  # a typo
        track(customer, "page_viewed"),
        track(customer, "stop"),
        {"type": "identify", "userId": customer, "traits": {"first_name": "Mina"}},
    ]
    answer = await post(journeys_api.http, "/v1/batch", {"batch": batch})

    assert answer.status_code == 202, answer.text
    assert answer.json()["unrouted"] == ["page_viewed", "payment_recieved"]
    assert answer.json()["accepted"] == 6
    listened = await post(
        journeys_api.http, "/v1/track", track(customer, "payment_received", amount=5)
    )
    assert "unrouted" not in listened.json()


async def test_strict_refuses_unrouted_events_naming_them_and_stores_nothing(
    journeys_api: RunningApi, db: Engine, customer: str
) -> None:
    batch = [track(customer, "payment_failed", amount=5), track(customer, "page_viewed")]
    before = stored_ids(db)
    for path, body, field in (
        ("/v1/batch?strict=true", {"batch": batch}, "batch[1].event"),
        ("/v1/events?strict=true", {"batch": batch}, "batch[1].event"),
        ("/v1/events?strict=true", track(customer, "page_viewed"), "event"),
        ("/v1/track?strict=true", track(customer, "page_viewed"), "event"),
    ):
        answer = await post(journeys_api.http, path, body)
        assert answer.status_code == 422, (path, answer.text)
        assert "page_viewed" in answer.json()["detail"]
        assert [e["field"] for e in answer.json()["errors"]] == [field], path
    assert stored_ids(db) == before

    accepted = await post(
        journeys_api.http, "/v1/track?strict=true", track(customer, "payment_failed", amount=5)
    )
    assert accepted.status_code == 202, accepted.text


async def test_an_event_only_an_older_versions_runs_wait_for_is_not_unrouted(
    journeys_api: RunningApi, db: Engine, customer: str
) -> None:
    deploy(db, JOURNEYS.replace("payment_received, within", "stop, within"))
    answer = await post(
        journeys_api.http, "/v1/track?strict=true", track(customer, "payment_received", amount=1)
    )
    assert answer.status_code == 202, answer.text


# ----------------------------------------------------------------------------- messageId


async def test_a_message_id_reused_by_another_customer_is_reported_as_a_conflict(
    journeys_api: RunningApi, db: Engine, customer: str
) -> None:
    first = await post(journeys_api.http, "/v1/track", track(customer, "stop", "shared-id"))
    assert first.status_code == 202 and "conflicts" not in first.json()

    same = await post(journeys_api.http, "/v1/track", track(customer, "stop", "shared-id"))
    other = await post(journeys_api.http, "/v1/track", track("someone-else", "stop", "shared-id"))

    assert same.json()["duplicates"] == 1 and "conflicts" not in same.json()
    assert other.status_code == 202
    assert (other.json()["accepted"], other.json()["duplicates"]) == (0, 1)
    assert other.json()["conflicts"] == [
        {"message_id": "shared-id", "reason": "messageId already used by another customer"}
    ]
    with session_scope(db) as session:
        stored = session.get(EventRecord, "shared-id")
    assert stored is not None and stored.customer_id == customer


async def test_message_ids_can_be_scoped_per_customer(
    database_url: str, task_queue: str, temporal_client: Any, recording_worker: Any, db: Engine
) -> None:
    """`JOURNEYS_MESSAGE_ID_SCOPE=customer`: another customer's event with a used id is
    accepted (stored under a scoped id) and routed; its retry is a duplicate."""
    deploy(db, JOURNEYS)
    settings = api_settings(database_url=database_url, task_queue=task_queue).model_copy(
        update={"message_id_scope": "customer"}
    )
    first_customer, second_customer = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    shared = f"shared-{uuid.uuid4().hex[:8]}"
    async with running_api(create_app(settings, client=temporal_client)) as api:
        first = await post(
            api.http, "/v1/track", track(first_customer, "payment_failed", shared, amount=1)
        )
        other = await post(
            api.http, "/v1/track", track(second_customer, "payment_failed", shared, amount=2)
        )
        retry = await post(
            api.http, "/v1/track", track(second_customer, "payment_failed", shared, amount=2)
        )
        again = await post(
            api.http, "/v1/track", track(first_customer, "payment_failed", shared, amount=1)
        )

    assert (first.json()["accepted"], first.json()["duplicates"]) == (1, 0)
    answer = other.json()
    assert (answer["accepted"], answer["duplicates"]) == (1, 0), answer
    assert "conflicts" not in answer
    assert len(answer["started"]) == 1 and "recovery" in answer["started"][0], answer
    assert (retry.json()["accepted"], retry.json()["duplicates"]) == (0, 1), retry.json()
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 1), again.json()
    with session_scope(db) as session:
        rows = session.exec(
            select(EventRecord).where(col(EventRecord.message_id).startswith(shared))
        ).all()
    owners = {row.customer_id: row.message_id for row in rows}
    assert owners[first_customer] == shared
    assert owners[second_customer].startswith(f"{shared}~") and len(rows) == 2


def test_the_message_id_scope_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOURNEYS_MESSAGE_ID_SCOPE", "customer")
    assert RuntimeSettings.from_env().message_id_scope == "customer"
    monkeypatch.setenv("JOURNEYS_MESSAGE_ID_SCOPE", "tenant")
    with pytest.raises(SettingsError, match="JOURNEYS_MESSAGE_ID_SCOPE"):
        RuntimeSettings.from_env()


# ----------------------------------------------------------------------------- timestamps


async def test_timestamps_outside_the_window_are_refused_naming_the_message(
    journeys_api: RunningApi, db: Engine, customer: str
) -> None:
    now = datetime.now(UTC)
    fine = track(customer, "stop", timestamp=(now + timedelta(hours=23)).isoformat())
    future = track(customer, "stop", timestamp=(now + timedelta(days=2)).isoformat())
    ancient = track(customer, "stop", timestamp="1999-12-31T23:59:59Z")
    before = stored_ids(db)

    for path, body, field in (
        ("/v1/batch", {"batch": [fine, future]}, "batch[1].timestamp"),
        ("/v1/events", {"batch": [fine, fine | {"messageId": "x"}, ancient]}, "batch[2].timestamp"),
        ("/v1/track", future, "timestamp"),
        ("/v1/track", ancient, "timestamp"),
        ("/v1/identify", {"userId": customer, "timestamp": "0001-01-01T00:00:00Z"}, "timestamp"),
    ):
        answer = await post(journeys_api.http, path, body)
        assert answer.status_code == 422, (path, answer.text)
        assert [e["field"] for e in answer.json()["errors"]] == [field], (path, answer.text)
        assert field in answer.json()["detail"]
    assert stored_ids(db) == before

    assert (await post(journeys_api.http, "/v1/track", fine)).status_code == 202


async def test_the_future_window_is_configurable(
    database_url: str, task_queue: str, customer: str
) -> None:
    settings = api_settings(database_url=database_url, task_queue=task_queue).model_copy(
        update={"max_future_skew": timedelta(minutes=5)}
    )
    ten_minutes = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    async with running_api(create_app(settings)) as app:
        answer = await post(app.http, "/v1/track", track(customer, "stop", timestamp=ten_minutes))
    assert answer.status_code == 422, answer.text
    assert "5m" in answer.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    ("value", "seconds"), [("86400", 86400), ("2h", 7200), ("1d12h", 129600), ("0", 0)]
)
def test_max_future_skew_takes_seconds_or_a_duration(
    monkeypatch: pytest.MonkeyPatch, value: str, seconds: int
) -> None:
    monkeypatch.setenv("JOURNEYS_MAX_FUTURE_SKEW", value)
    assert RuntimeSettings.from_env().max_future_skew == timedelta(seconds=seconds)


def test_max_future_skew_defaults_to_a_day_and_a_bad_value_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JOURNEYS_MAX_FUTURE_SKEW", raising=False)
    assert RuntimeSettings.from_env().max_future_skew == timedelta(days=1)
    monkeypatch.setenv("JOURNEYS_MAX_FUTURE_SKEW", "soon")
    with pytest.raises(SettingsError, match="JOURNEYS_MAX_FUTURE_SKEW"):
        RuntimeSettings.from_env()


# ----------------------------------------------------------------------------- personal data


async def test_an_entry_rule_failing_on_personal_data_does_not_echo_it(
    api: RunningApi, db: Engine, customer: str
) -> None:
    """The router evaluates entry rules on the real event; a failure's reason, in the
    answer and the log, names the value only masked."""
    deploy(
        db,
        """\
version: 1
events:
  signed_up: {holder: pii, contact: email}
journeys:
  - id: welcome
    entry: {event: signed_up, when: "days_since(event.holder) > 1 or days_since(event.contact) > 1"}
    steps:
      - {id: pause, wait: 1d}
""",
    )
    body = track(
        customer,
        "signed_up",
        properties={"holder": "Ann Quillby", "contact": "ann.q@example.com"},
    )
    answer = await post(api.http, "/v1/track", body)
    assert answer.status_code == 202, answer.text
    [skipped] = answer.json()["skipped"]
    assert "entry expression failed" in skipped["reason"], skipped
    assert "Quillby" not in answer.text and "ann.q@" not in answer.text
    assert "'***'" in skipped["reason"], skipped
