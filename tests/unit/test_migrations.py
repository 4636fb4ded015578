"""Schema migrations as an operator meets them: a fresh database migrated to head has exactly
the models' schema; a database made by the release before migrations is adopted in place
with its rows; one migrated by a newer release is refused, naming both revisions; and
starts racing on one fresh database migrate it once.

Each test runs on SQLite and, when JOURNEYS_TEST_DATABASE_URL is set, on PostgreSQL too
(that database is emptied, `alembic_version` included)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel, select
from typer.testing import CliRunner

from engine.database import PlanVersion, Profile, Run, make_engine, session_scope
from engine.migrate import (
    FIRST_REVISION,
    DatabaseAhead,
    current_revision,
    head_revision,
    migration_config,
    upgrade,
)
from engine.run_path import read_path
from service.cli.main import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def _postgresql_url() -> str | None:
    url = os.environ.get("JOURNEYS_TEST_DATABASE_URL")
    if not url or not url.startswith("postgres"):
        return None
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


def _empty_postgresql(url: str) -> None:
    engine = create_engine(url)
    try:
        SQLModel.metadata.drop_all(engine)
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database (no tables, no `alembic_version`)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'journeys.db'}"
        return
    url = _postgresql_url()
    if url is None:
        pytest.skip("JOURNEYS_TEST_DATABASE_URL is not a PostgreSQL URL")
    _empty_postgresql(url)
    yield url
    _empty_postgresql(url)


@pytest.fixture
def plain(empty_url: str) -> Iterator[Engine]:
    """A plain engine on the empty database (nothing migrated by opening it)."""
    engine = create_engine(empty_url)
    yield engine
    engine.dispose()


def _schema_diff(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))


def _to(engine: Engine, revision: str) -> None:
    """Run Alembic's own upgrade to ``revision`` (no adoption, no lock)."""
    with engine.connect() as connection:
        command.upgrade(migration_config(connection), revision)
        connection.commit()


def test_migrations_at_head_give_exactly_the_models_schema(plain: Engine) -> None:
    result = upgrade(plain)

    assert (result.before, result.after) == (None, head_revision())
    assert _schema_diff(plain) == []
    assert current_revision(plain) == head_revision()


def test_upgrade_from_the_first_revision_reaches_head(plain: Engine) -> None:
    _to(plain, FIRST_REVISION)
    assert current_revision(plain) == FIRST_REVISION

    result = upgrade(plain)

    assert (result.before, result.after) == (FIRST_REVISION, head_revision())
    assert _schema_diff(plain) == []
    assert upgrade(plain).format().endswith("(up to date)")


def test_downgrade_to_base_and_back_to_head(plain: Engine) -> None:
    upgrade(plain)
    with plain.connect() as connection:
        command.downgrade(migration_config(connection), "base")
        connection.commit()
    assert set(inspect(plain).get_table_names()) <= {"alembic_version"}

    upgrade(plain)

    assert _schema_diff(plain) == []


def _previous_release_database(engine: Engine) -> None:
    """A database as the release before migrations left it: the first revision's tables,
    no `alembic_version`, and rows in them (written in SQL, as that release's code would)."""
    _to(engine, FIRST_REVISION)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
        connection.execute(
            text(
                "INSERT INTO plan_versions (journey_id, version, plan_json, source_yaml, "
                "active, created_at) VALUES ('recover', 'v1', '{}', 'id: recover', true, "
                "'2025-01-02 03:04:05+00:00')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO profiles (customer_id, traits, updated_at) "
                "VALUES ('c1', :traits, '2025-01-02 03:04:05+00:00')"
            ),
            {"traits": json.dumps({"email": "c1@example.com"})},
        )
        connection.execute(
            text(
                "INSERT INTO runs (run_id, workflow_id, journey_id, version, customer_id, "
                "status, holdout, path, started_at, updated_at) VALUES ('r1', "
                "'journey/recover/c1', 'recover', 'v1', 'c1', 'running', false, '[]', "
                "'2025-01-02 03:04:05+00:00', '2025-01-02 03:04:05+00:00')"
            )
        )


def test_a_database_of_the_previous_release_upgrades_in_place_and_keeps_its_rows(
    plain: Engine, empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _previous_release_database(plain)
    monkeypatch.setenv("DATABASE_URL", empty_url)

    # `journeys up` runs this same upgrade (service.cli.db.upgrade_database) before it
    # starts anything.
    result = runner.invoke(app, ["db", "upgrade"])

    assert result.exit_code == 0, result.output
    assert f"stamped at {FIRST_REVISION}, upgraded to {head_revision()}" in result.output
    assert current_revision(plain) == head_revision()
    assert _schema_diff(plain) == []
    engine = make_engine(empty_url)  # what the API and the worker do next
    try:
        with session_scope(engine) as session:
            assert session.exec(select(PlanVersion.journey_id, PlanVersion.active)).all() == [
                ("recover", True)
            ]
            profile = session.get(Profile, "c1")
            assert profile is not None and profile.traits == {"email": "c1@example.com"}
            run = session.get(Run, "r1")
            assert run is not None and (run.status, run.customer_id) == ("running", "c1")
    finally:
        engine.dispose()


def _stamp_ahead(engine: Engine, revision: str = "9999_from_the_future") -> None:
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})


def test_a_database_ahead_of_the_code_is_refused_naming_both_revisions(
    plain: Engine, empty_url: str
) -> None:
    _stamp_ahead(plain)

    with pytest.raises(DatabaseAhead) as raised:
        make_engine(empty_url)

    message = str(raised.value)
    assert "9999_from_the_future" in message and head_revision() in message
    assert current_revision(plain) == "9999_from_the_future"  # nothing was touched


def test_journeys_db_upgrade_refuses_a_database_ahead_and_exits_1(
    plain: Engine, empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stamp_ahead(plain)
    monkeypatch.setenv("DATABASE_URL", empty_url)

    result = runner.invoke(app, ["db", "upgrade"])

    assert result.exit_code == 1
    assert "9999_from_the_future" in result.output
    assert f"its newest is {head_revision()}" in result.output
    assert "Traceback" not in result.output


def test_journeys_db_current_prints_the_revision(
    plain: Engine, empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_url)

    before = runner.invoke(app, ["db", "current"])
    upgrade(plain)
    after = runner.invoke(app, ["db", "current"])

    assert before.exit_code == 0, before.output
    assert "revision  none" in before.output and "behind" in before.output
    assert after.exit_code == 0, after.output
    assert f"revision  {head_revision()}" in after.output
    assert "up to date" in after.output


def test_journeys_db_current_does_not_create_a_missing_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "state" / "journeys.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")

    result = runner.invoke(app, ["db", "current"])

    assert result.exit_code == 0, result.output
    assert "revision  none" in result.output
    assert not database.exists()


@pytest.mark.slow  # in `make test`; over 2 s, out of `make test-fast`
def test_starts_racing_on_one_fresh_database_migrate_it_once(empty_url: str) -> None:
    """Four processes start at once on an empty database: one migrates, three find it done."""
    script = (
        "import sys, time\n"
        "from sqlalchemy import create_engine\n"
        "from engine.migrate import upgrade\n"
        "engine = create_engine(sys.argv[1])\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "print(upgrade(engine).before)\n"
    )
    at = time.time() + 3.0  # after every process has imported what it needs
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", script, empty_url, str(at)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = [start.communicate(timeout=120) for start in starts]

    assert [start.returncode for start in starts] == [0] * 4, outcomes
    befores = sorted(out.strip() for out, _ in outcomes)
    assert befores == [head_revision()] * 3 + ["None"]
    engine = create_engine(empty_url)
    try:
        assert _schema_diff(engine) == []
    finally:
        engine.dispose()


def test_revision_0002_lists_runs_already_recorded_by_their_split_arms(plain: Engine) -> None:
    _to(plain, FIRST_REVISION)
    path = [
        {"step": "entry", "type": "entry", "at": "2025-01-02T03:04:05Z", "detail": {}},
        {"step": "ab", "type": "split", "at": "2025-01-02T03:04:05Z", "detail": {"arm": "b"}},
        {"step": "ab", "type": "split", "at": "2025-01-03T03:04:05Z", "detail": {"arm": "b"}},
        {"step": "nudge", "type": "send", "at": "2025-01-02T03:04:05Z", "detail": {}},
    ]
    with plain.begin() as connection:
        for run_id, run_path in (("r1", path), ("r2", [])):
            connection.execute(
                text(
                    "INSERT INTO runs (run_id, workflow_id, journey_id, version, customer_id, "
                    "status, holdout, path, started_at, updated_at) VALUES (:run_id, "
                    "'journey/recover/c1', 'recover', 'v1', 'c1', 'running', false, :path, "
                    "'2025-01-02 03:04:05+00:00', '2025-01-02 03:04:05+00:00')"
                ),
                {"run_id": run_id, "path": json.dumps(run_path)},
            )

    _to(plain, "0002")

    with plain.connect() as connection:
        rows = connection.execute(text("SELECT run_id, step_id, arm FROM run_arms")).all()
    assert [tuple(row) for row in rows] == [("r1", "ab", "b")]


def _insert_run(connection: Connection, run_id: str, path: list[dict[str, Any]]) -> None:
    connection.execute(
        text(
            "INSERT INTO runs (run_id, workflow_id, journey_id, version, customer_id, "
            "status, holdout, path, started_at, updated_at) VALUES (:run_id, "
            "'journey/recover/c1', 'recover', 'v1', 'c1', 'running', false, :path, "
            "'2025-01-02 03:04:05+00:00', '2025-01-02 03:04:05+00:00')"
        ),
        {"run_id": run_id, "path": json.dumps(path)},
    )


def test_revision_0003_moves_each_runs_json_path_into_rows_and_back(plain: Engine) -> None:
    _to(plain, "0002")
    path = [
        {"step": "entry", "type": "entry", "at": "2025-01-02T03:04:05Z", "detail": {}},
        {
            "step": "ab",
            "type": "split",
            "at": "2025-01-02T03:04:06.250000Z",
            "outcome": "b",
            "detail": {"arm": "b", "bucket": 7},
        },
        {"step": "nudge", "type": "send", "at": "2025-01-03T03:04:05Z", "outcome": "sent"},
    ]
    with plain.begin() as connection:
        _insert_run(connection, "r1", path)
        _insert_run(connection, "r2", [])

    _to(plain, "0003")

    with session_scope(plain) as session:
        assert read_path(session, "r1") == [
            {**entry, "outcome": entry.get("outcome"), "detail": entry.get("detail", {})}
            for entry in path
        ]
        assert read_path(session, "r2") == []
        runs = session.exec(select(Run.run_id, Run.path, Run.current_run_id)).all()
    assert sorted(tuple(run) for run in runs) == [("r1", [], None), ("r2", [], None)]

    with plain.connect() as connection:
        command.downgrade(migration_config(connection), "0002")
        connection.commit()
        stored = dict(connection.execute(text("SELECT run_id, path FROM runs")).all())
    assert "run_path" not in inspect(plain).get_table_names()
    assert {run_id: _json(value) for run_id, value in stored.items()} == {
        "r1": [{"outcome": None, "detail": {}, **entry} for entry in path],
        "r2": [],
    }


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
