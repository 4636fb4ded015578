"""`journeys user ...` and `journeys apikey ...` as an admin runs them: what they print,
what they refuse, and what lands in the database (hashes only)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlmodel import col, select
from typer.testing import CliRunner

from engine.audit import verify_chain
from engine.database import (
    ApiKey,
    AuditEntry,
    User,
    check_api_key,
    make_engine,
    session_scope,
)
from service.cli.main import app
from service.users import change_password, check_password

runner = CliRunner()


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'journeys.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    return url


def test_user_add_prints_a_one_time_password_that_signs_in_once_changed(database: str) -> None:
    result = runner.invoke(app, ["user", "add", "Ana", "--role", "ops"])
    assert result.exit_code == 0, result.output
    assert "user ana (ops) created" in result.output
    password = re.search(r"one-time password: (\S+)", result.output)
    assert password is not None
    db = make_engine(database)
    try:
        user = check_password(db, name="ana", password=password.group(1))
        assert user is not None and user.must_change_password and user.role == "ops"
        with session_scope(db) as session:
            [row] = session.exec(select(User)).all()
        assert password.group(1) not in row.password_hash and row.password_hash.startswith(
            "$argon2"
        )
    finally:
        db.dispose()
    listed = runner.invoke(app, ["user", "list"])
    assert re.search(r"^ana\s+ops\s+must set password$", listed.output, re.M)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["user", "add", "ana", "--role", "boss"],
            "role 'boss' is not one of admin, designer, ops, supervisor, auditor",
        ),
        (["user", "add", "a b", "--role", "ops"], "user name 'a b' must be 1-100 characters"),
        (["user", "reset", "ghost"], "no user 'ghost'"),
    ],
)
def test_bad_user_commands_say_what_is_wrong_and_change_nothing(
    database: str, argv: list[str], message: str
) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 1
    assert message in result.output
    db = make_engine(database)
    try:
        with session_scope(db) as session:
            assert session.exec(select(User)).all() == []
    finally:
        db.dispose()


def test_adding_a_user_twice_is_refused(database: str) -> None:
    assert runner.invoke(app, ["user", "add", "ana", "--role", "ops"]).exit_code == 0
    again = runner.invoke(app, ["user", "add", "ana", "--role", "auditor"])
    assert again.exit_code == 1 and "exists already" in again.output


def test_reset_gives_a_new_one_time_password_and_the_old_one_stops_working(database: str) -> None:
    first = re.search(
        r"one-time password: (\S+)",
        runner.invoke(app, ["user", "add", "bo", "--role", "auditor"]).output,
    )
    second = re.search(
        r"one-time password: (\S+)", runner.invoke(app, ["user", "reset", "bo"]).output
    )
    assert first and second and first.group(1) != second.group(1)
    db = make_engine(database)
    try:
        assert check_password(db, name="bo", password=first.group(1)) is None
        assert check_password(db, name="bo", password=second.group(1)) is not None
    finally:
        db.dispose()


def test_apikey_add_prints_a_key_stored_only_as_a_hash(database: str) -> None:
    result = runner.invoke(app, ["apikey", "add", "payments"])
    assert result.exit_code == 0
    key = re.search(r"API key for payments: (jk_\S+)", result.output)
    assert key is not None
    db = make_engine(database)
    try:
        with session_scope(db) as session:
            [row] = session.exec(select(ApiKey)).all()
            assert row.name == "payments" and key.group(1) not in row.key_hash
            assert check_api_key(session, key.group(1)) is not None
    finally:
        db.dispose()


def test_every_user_and_key_change_is_in_the_audit_log_and_the_chain_holds(
    database: str,
) -> None:
    """Who did what to which account, never a password, a key or a hash (issue #18)."""
    added = runner.invoke(app, ["user", "add", "ana", "--role", "ops"])
    reset = runner.invoke(app, ["user", "reset", "ana"])
    key = runner.invoke(app, ["apikey", "add", "payments", "--scope", "ingest"])
    revoked = runner.invoke(app, ["apikey", "revoke", "payments"])
    assert [r.exit_code for r in (added, reset, key, revoked)] == [0, 0, 0, 0]
    db = make_engine(database)
    try:
        password = re.search(r"one-time password: (\S+)", reset.output)
        user = check_password(db, name="ana", password=password.group(1) if password else "")
        assert user is not None and user.id is not None
        change_password(db, user_id=user.id, current=password.group(1), new="a-fresh-password")
        with session_scope(db) as session:
            entries = session.exec(select(AuditEntry).order_by(col(AuditEntry.seq))).all()
            [stored] = session.exec(select(ApiKey)).all()
        report = verify_chain(db)
    finally:
        db.dispose()
    changes = [(e.kind, e.subject, e.actor.split(":")[0]) for e in entries]
    assert changes == [
        ("user.added", "user:ana", "cli"),
        ("user.password_reset", "user:ana", "cli"),
        ("apikey.added", f"apikey:{stored.id}", "cli"),
        ("apikey.revoked", f"apikey:{stored.id}", "cli"),
        ("user.password_changed", "user:ana", "user"),
    ]
    assert entries[2].details == {"name": "payments", "scopes": "ingest"}
    logged = " ".join(f"{e.details} {e.subject}" for e in entries)
    secret = re.search(r"API key for payments: (\S+)", key.output)
    assert secret is not None and secret.group(1) not in logged
    assert stored.key_hash not in logged and "$argon2" not in logged
    assert report.ok, report
