"""API keys with scopes, as an operator and an event source meet them: every /v1 route that
takes a key asks for one scope (`ingest`, `read` or `admin`, which holds them all); a key
without it gets a 403 naming it, a missing or revoked key a 401. `journeys apikey add
--scope`, `list` and `revoke` against a SQLite database; a revoked key stops working
within `API_KEY_CACHE_SECONDS`; keys made before scopes existed become `admin`.

No Temporal here: the app runs without a client (events are stored and routed later), and
no route's answer past the key check matters, only that it was let through."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from typer.testing import CliRunner

from engine.database import ApiKey, check_api_key, create_api_key, make_engine, session_scope
from engine.migrate import migration_config
from service.api.app import create_app
from service.api.auth import API_KEY_CACHE_SECONDS, ApiKeys
from service.cli.main import app as cli
from tests.api.conftest import API_KEY, RunningApi, api_settings, running_api
from tests.unit.test_doc_examples import block_after, unprinted

runner = CliRunner()
SECURITY = Path(__file__).resolve().parents[2] / "docs" / "security.md"
WHEN = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"

INGEST_KEY = "jk_test_ingest_only"
READ_KEY = "jk_test_read_only"
ADMIN_KEY = "jk_test_admin"
KEYS = {"ingest": INGEST_KEY, "read": READ_KEY, "admin": ADMIN_KEY}


def _track() -> dict[str, Any]:
    return {"type": "track", "userId": "c1", "event": "signed_up", "messageId": uuid.uuid4().hex}


def _identify() -> dict[str, Any]:
    return {"type": "identify", "userId": "c1", "traits": {"plan": "pro"}}


# (method, path as the app declares it, the path called, the JSON body, the scope needed)
ROUTES: list[tuple[str, str, str, Any, str]] = [
    ("POST", "/v1/track", "/v1/track", _track(), "ingest"),
    ("POST", "/v1/identify", "/v1/identify", _identify(), "ingest"),
    ("POST", "/v1/batch", "/v1/batch", {"batch": [_track()]}, "ingest"),
    ("POST", "/v1/events", "/v1/events", _track(), "ingest"),
    ("POST", "/v1/inbound/sms", "/v1/inbound/sms", {"from": "+100", "text": "hi"}, "ingest"),
    ("GET", "/v1/runs", "/v1/runs", None, "read"),
    ("GET", "/v1/runs/{run_id}", "/v1/runs/nope", None, "read"),
    ("GET", "/v1/runs/{run_id}/explanation", "/v1/runs/nope/explanation", None, "read"),
    ("GET", "/v1/explain", "/v1/explain?customer=c1", None, "read"),
    ("GET", "/v1/journeys", "/v1/journeys", None, "read"),
    ("GET", "/v1/journeys/{journey_id}/stats", "/v1/journeys/nope/stats", None, "read"),
    (
        "GET",
        "/v1/journeys/{journey_id}/funnel",
        "/v1/journeys/nope/funnel?steps=a",
        None,
        "read",
    ),
    ("GET", "/v1/outbox", "/v1/outbox", None, "read"),
    ("GET", "/v1/deliveries", "/v1/deliveries", None, "read"),
    (
        "GET",
        "/v1/customers/{customer_id}/preferences",
        "/v1/customers/c1/preferences",
        None,
        "read",
    ),
    (
        "PUT",
        "/v1/customers/{customer_id}/preferences",
        "/v1/customers/c1/preferences",
        {"channels": {"sms": False}},
        "admin",
    ),
    ("DELETE", "/v1/customers/{customer_id}", "/v1/customers/c-erase", None, "admin"),
    ("GET", "/v1/reviews", "/v1/reviews", None, "read"),
    ("GET", "/v1/reviews/{task_id}", "/v1/reviews/nope", None, "read"),
]

# Worked by people only: an API key, whatever its scopes, gets a 403 saying so.
PEOPLE_ONLY = [
    ("POST", "/v1/reviews/{task_id}/claim"),
    ("POST", "/v1/reviews/{task_id}/release"),
    ("POST", "/v1/reviews/{task_id}/decision"),
]
# The unsubscribe and status links' tokens are their authority; health takes no key.
NO_KEY = [
    ("GET", "/v1/unsubscribe/{token}"),
    ("POST", "/v1/unsubscribe/{token}"),
    ("GET", "/v1/status/{token}"),
]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _call(http: httpx.AsyncClient, method: str, url: str, body: Any, key: str) -> Any:
    return await http.request(method, url, json=body, headers=_auth(key))


@pytest_asyncio.fixture
async def scoped_api(database_url: str, db: Engine) -> AsyncIterator[RunningApi]:
    """The app without Temporal, with one key per scope besides the settings' own."""
    with session_scope(db) as session:
        create_api_key(session, name="source", key=INGEST_KEY, scopes=["ingest"])
        create_api_key(session, name="dashboards", key=READ_KEY, scopes=["read"])
        create_api_key(session, name="operator", key=ADMIN_KEY, scopes=["admin"])
    settings = api_settings(database_url=database_url, task_queue="unused")
    async with running_api(create_app(settings)) as running:
        yield running


def test_the_table_names_every_v1_route_of_the_app() -> None:
    document = create_app(api_settings(database_url="sqlite://", task_queue="x")).openapi()
    declared = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        if path.startswith("/v1")
        for method in operations
    }
    tabled = {(method, path) for method, path, *_ in ROUTES} | set(PEOPLE_ONLY) | set(NO_KEY)
    assert declared == tabled


@pytest.mark.parametrize(
    ("method", "url", "body", "scope"),
    [pytest.param(m, url, b, s, id=f"{m} {path}") for m, path, url, b, s in ROUTES],
)
async def test_each_route_lets_its_scope_through_and_refuses_the_others_naming_it(
    scoped_api: RunningApi, method: str, url: str, body: Any, scope: str
) -> None:
    http = scoped_api.http
    for holder, key in KEYS.items():
        answer = await _call(http, method, url, body, key)
        if holder in (scope, "admin"):
            assert answer.status_code not in (401, 403), (holder, answer.text)
        else:
            assert answer.status_code == 403, (holder, answer.text)
            assert answer.json() == {
                "detail": f"this API key lacks the '{scope}' scope this route needs "
                f"(make one with: journeys apikey add NAME --scope {scope})",
                "errors": [],
            }
            assert key not in answer.text
    keyless = await http.request(method, url, json=body)
    unknown = await _call(http, method, url, body, "jk_nobody")
    assert keyless.status_code == unknown.status_code == 401
    assert unknown.headers["www-authenticate"] == "Bearer"


async def test_a_key_without_the_scope_learns_nothing_about_its_input(
    scoped_api: RunningApi,
) -> None:
    """The scope is checked before the body's fields: invalid ones are not described."""
    http = scoped_api.http
    invalid = {"type": "track", "userId": "c1"}  # no event
    refused = await _call(http, "POST", "/v1/track", invalid, READ_KEY)
    described = await _call(http, "POST", "/v1/track", invalid, INGEST_KEY)
    assert refused.status_code == 403 and "'ingest' scope" in refused.json()["detail"]
    assert described.status_code == 422


@pytest.mark.parametrize(("method", "path"), PEOPLE_ONLY)
async def test_review_actions_refuse_every_key_whatever_its_scopes(
    scoped_api: RunningApi, method: str, path: str
) -> None:
    url = path.replace("{task_id}", "nope")
    body = {"decision": "approve"} if url.endswith("decision") else None
    for key in KEYS.values():
        answer = await _call(scoped_api.http, method, url, body, key)
        assert answer.status_code == 403, answer.text
        assert "worked by people" in answer.json()["detail"]


async def test_the_settings_key_is_admin_so_the_quick_start_commands_work(
    scoped_api: RunningApi,
) -> None:
    for method, _path, url, body, _scope in ROUTES:
        answer = await _call(scoped_api.http, method, url, body, API_KEY)
        assert answer.status_code not in (401, 403), (url, answer.text)


async def test_openapi_documents_the_403_of_a_missing_scope(scoped_api: RunningApi) -> None:
    document = (await scoped_api.http.get("/openapi.json")).json()
    for method, path, *_ in ROUTES:
        assert "403" in document["paths"][path][method.lower()]["responses"], (method, path)


# ----------------------------------------------------------------------------- revocation


async def test_a_revoked_key_is_refused_once_the_cache_time_has_passed(
    scoped_api: RunningApi, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    keys = ApiKeys(scoped_api.app.state.db, clock=lambda: now[0])
    scoped_api.app.state.api_keys = keys
    assert keys.ttl == API_KEY_CACHE_SECONDS <= 5
    http = scoped_api.http
    assert (await _call(http, "GET", "/v1/runs", None, READ_KEY)).status_code == 200

    monkeypatch.setenv("DATABASE_URL", database_url)
    revoked = runner.invoke(cli, ["apikey", "revoke", "dashboards"])
    assert revoked.exit_code == 0, revoked.output
    assert re.search(
        r"revoked API key \d+ \(dashboards\): the API refuses it within 5 seconds",
        revoked.output,
    )

    now[0] += API_KEY_CACHE_SECONDS - 0.1  # still remembered as valid: the bound, not less
    assert (await _call(http, "GET", "/v1/runs", None, READ_KEY)).status_code == 200
    now[0] += 0.2
    after = await _call(http, "GET", "/v1/runs", None, READ_KEY)
    assert after.status_code == 401 and READ_KEY not in after.text
    # Unknown keys are not remembered: one not seen before revocation is refused at once.
    runner.invoke(cli, ["apikey", "revoke", "source"])
    assert (await _call(http, "POST", "/v1/track", _track(), INGEST_KEY)).status_code == 401
    assert (await _call(http, "POST", "/v1/track", _track(), ADMIN_KEY)).status_code == 202


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture
def cli_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    return url


def _key(output: str, name: str) -> str:
    found = re.search(rf"API key for {name}: (jk_\S+)", output)
    assert found is not None, output
    return found.group(1)


def test_apikey_add_defaults_to_ingest_and_takes_repeated_scopes(cli_database: str) -> None:
    plain = runner.invoke(cli, ["apikey", "add", "segment"])
    both = runner.invoke(cli, ["apikey", "add", "bi", "--scope", "read", "-s", "INGEST"])
    assert plain.exit_code == both.exit_code == 0, plain.output + both.output
    assert "scopes: ingest\n" in plain.output and "scopes: ingest, read\n" in both.output
    db = make_engine(cli_database)
    try:
        with session_scope(db) as session:
            record = check_api_key(session, _key(plain.output, "segment"))
            assert record is not None and record.scopes == "ingest"
            record = check_api_key(session, _key(both.output, "bi"))
            assert record is not None and record.scopes == "ingest,read"
    finally:
        db.dispose()


def test_apikey_add_refuses_an_unknown_scope_and_stores_nothing(cli_database: str) -> None:
    result = runner.invoke(cli, ["apikey", "add", "segment", "--scope", "write"])
    assert result.exit_code == 1
    assert "scope 'write' is not one of ingest, read, admin" in result.output
    assert "jk_" not in result.output
    db = make_engine(cli_database)
    try:
        with session_scope(db) as session:
            assert session.exec(select(ApiKey)).all() == []
    finally:
        db.dispose()


def test_apikey_list_shows_ids_names_scopes_and_revocations_never_a_key(
    cli_database: str,
) -> None:
    assert runner.invoke(cli, ["apikey", "list"]).output.startswith("no API keys")
    added = [
        runner.invoke(cli, ["apikey", "add", "segment"]),
        runner.invoke(cli, ["apikey", "add", "dashboards", "--scope", "read"]),
        runner.invoke(cli, ["apikey", "add", "ops", "--scope", "admin"]),
    ]
    assert runner.invoke(cli, ["apikey", "revoke", "2"]).exit_code == 0

    listed = runner.invoke(cli, ["apikey", "list"])

    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    assert re.match(r"^ID\s+NAME\s+SCOPES\s+CREATED\s+REVOKED$", lines[0])
    when = WHEN
    assert re.match(rf"^1\s+segment\s+ingest\s+{when}\s+-$", lines[1])
    assert re.match(rf"^2\s+dashboards\s+read\s+{when}\s+{when}$", lines[2])
    assert re.match(rf"^3\s+ops\s+admin\s+{when}\s+-$", lines[3])
    assert len(lines) == 4
    for result, name in zip(added, ["segment", "dashboards", "ops"], strict=True):
        assert _key(result.output, name) not in listed.output


def test_apikey_revoke_by_name_or_id_and_what_it_refuses(cli_database: str) -> None:
    first = _key(runner.invoke(cli, ["apikey", "add", "segment"]).output, "segment")
    second = _key(runner.invoke(cli, ["apikey", "add", "segment"]).output, "segment")

    ambiguous = runner.invoke(cli, ["apikey", "revoke", "segment"])
    assert ambiguous.exit_code == 1
    assert "2 keys are named 'segment' (ids 1, 2): revoke one by its id" in ambiguous.output
    by_id = runner.invoke(cli, ["apikey", "revoke", "1"])
    assert by_id.exit_code == 0 and "revoked API key 1 (segment)" in by_id.output
    by_name = runner.invoke(cli, ["apikey", "revoke", " segment "])  # the one still active
    assert by_name.exit_code == 0 and "revoked API key 2 (segment)" in by_name.output
    again = runner.invoke(cli, ["apikey", "revoke", "segment"])
    assert again.exit_code == 0 and "was revoked already" in again.output
    unknown = runner.invoke(cli, ["apikey", "revoke", "nobody"])
    assert unknown.exit_code == 1 and "no API key has the id or name 'nobody'" in unknown.output

    db = make_engine(cli_database)
    try:
        with session_scope(db) as session:
            assert check_api_key(session, first) is None
            assert check_api_key(session, second) is None
            assert all(k.revoked_at is not None for k in session.exec(select(ApiKey)).all())
    finally:
        db.dispose()


# ----------------------------------------------------------------------------- migration


def test_keys_made_before_scopes_become_admin_and_a_downgrade_drops_revoked_ones(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        with engine.connect() as connection:
            command.upgrade(migration_config(connection), "0006")
            connection.execute(
                text(
                    "INSERT INTO api_keys (name, key_hash, created_at) VALUES "
                    "('old', :digest, '2025-01-02 03:04:05+00:00'), "
                    "('gone', :other, '2025-01-02 03:04:05+00:00')"
                ),
                {"digest": "a" * 64, "other": "b" * 64},
            )
            connection.commit()
            command.upgrade(migration_config(connection), "head")
            connection.commit()
            rows = connection.execute(
                text("SELECT name, scopes, revoked_at FROM api_keys ORDER BY id")
            ).all()
            assert [tuple(row) for row in rows] == [("old", "admin", None), ("gone", "admin", None)]
            with pytest.raises(IntegrityError):
                connection.execute(
                    text(
                        "INSERT INTO api_keys (name, key_hash, created_at) "
                        "VALUES ('raw', :digest, '2025-01-02 03:04:05+00:00')"
                    ),
                    {"digest": "c" * 64},
                )
            connection.rollback()
            connection.execute(
                text(
                    "UPDATE api_keys SET revoked_at = '2026-01-01 00:00:00+00:00' "
                    "WHERE name = 'gone'"
                )
            )
            connection.commit()
            command.downgrade(migration_config(connection), "0006")
            connection.commit()
            names = connection.execute(text("SELECT name FROM api_keys")).scalars().all()
            assert names == ["old"]
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------- the docs


async def test_security_md_shows_the_403_the_api_answers(scoped_api: RunningApi) -> None:
    shown = json.loads("\n".join(block_after(SECURITY, "gets **403** naming it", lang="json")))
    answer = await _call(scoped_api.http, "GET", "/v1/runs", None, INGEST_KEY)
    assert answer.json() == shown, "update docs/security.md's example answer"


def test_security_md_apikey_list_is_what_the_cli_prints(cli_database: str) -> None:
    for argv in (
        ["journeys up", "--scope", "admin"],
        ["segment"],
        ["grafana", "--scope", "read"],
        ["ops", "-s", "read", "-s", "ingest"],
    ):
        assert runner.invoke(cli, ["apikey", "add", *argv]).exit_code == 0
    assert runner.invoke(cli, ["apikey", "revoke", "grafana"]).exit_code == 0
    printed = runner.invoke(cli, ["apikey", "list"]).output
    shown = block_after(SECURITY, "**Listing and revoking.**")
    assert unprinted(shown, printed, [WHEN]) == [], printed
    assert len(shown) == len(printed.splitlines())
