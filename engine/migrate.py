"""Schema migrations of the app database: bring it to the code's head revision, or say why not.

`upgrade` is what every start runs (API, worker, `journeys up`, `journeys db upgrade`): it
takes a lock (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a transaction-scoped advisory lock), so
processes starting together on one fresh database migrate it once, and the others find it at
head. A database created before there were migrations (the tables, no `alembic_version`) is
stamped at the first revision and upgraded from there. A database at a revision this code
does not know was migrated by a newer release: `DatabaseAhead`, and nothing is touched.

The Alembic configuration is built here, so the runtime needs no alembic.ini (that file at
the repo root is for developers writing revisions). The revisions live in
`engine/migrations/versions/`. Nothing here knows the tables beyond their names.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

__all__ = [
    "FIRST_REVISION",
    "DatabaseAhead",
    "PartialSchema",
    "Upgrade",
    "current_revision",
    "head_revision",
    "known_revision",
    "migration_config",
    "upgrade",
]

FIRST_REVISION = "0001"
"""The schema the first release made with `create_all`, before there were migrations."""

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# The tables of the first revision: their presence without `alembic_version` is how a
# database made by that release is recognised.
_FIRST_TABLES = frozenset(
    {
        "api_keys",
        "cap_reservations",
        "deliveries",
        "events",
        "outbox",
        "plan_versions",
        "preferences",
        "profiles",
        "review_audit",
        "review_tasks",
        "runs",
        "suppressions",
        "users",
    }
)

# Indexes the first release's start created on a `runs` table an older build had made
# without them; a database adopted at the first revision gets them if it lacks them.
_FIRST_LATE_INDEXES = {
    "ix_runs_customer_status": ("runs", ("customer_id", "status")),
    "ix_runs_customer_entry": ("runs", ("customer_id", "journey_id", "key")),
}

_IN_PROCESS = threading.Lock()

# pg_advisory_xact_lock's key: "journeys" in ASCII, one lock per database.
_PG_LOCK_KEY = 0x6A6F75726E657973


class DatabaseAhead(RuntimeError):
    """The database is at a revision this code does not know (a newer release migrated it)."""

    def __init__(self, database_revision: str, code_head: str) -> None:
        super().__init__(
            f"the database is at schema revision {database_revision}, which this code does "
            f"not know (its newest is {code_head}): a newer release migrated it. Run that "
            "release, or restore a backup taken before the upgrade."
        )
        self.database_revision = database_revision
        self.code_head = code_head


class PartialSchema(RuntimeError):
    """Some of the first release's tables exist, not all, and nothing says which revision."""


@dataclass(frozen=True)
class Upgrade:
    """What `upgrade` did: from which revision (None: an empty database) to which."""

    before: str | None
    after: str
    adopted: bool = False
    """True when the database predates migrations and was stamped at the first revision."""

    def format(self) -> str:
        if self.adopted:
            return (
                f"database made before migrations: stamped at {FIRST_REVISION}, "
                f"upgraded to {self.after}"
            )
        if self.before == self.after:
            return f"database schema at {self.after} (up to date)"
        return f"database schema upgraded from {self.before or 'empty'} to {self.after}"


def migration_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, without an ini file; ``connection`` is the one env.py uses."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this code has."""
    head = ScriptDirectory.from_config(migration_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships its revisions
        raise RuntimeError(f"no migrations found in {MIGRATIONS}")
    return head


def known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of this code's (else a newer release wrote it)."""
    script = ScriptDirectory.from_config(migration_config())
    return revision in {script_revision.revision for script_revision in script.walk_revisions()}


def current_revision(engine: Engine) -> str | None:
    """The database's revision (None: not stamped, an empty or pre-migration database)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> Upgrade:
    """Bring the database to the head revision, under a lock; see the module docstring.

    Raises `DatabaseAhead` (and changes nothing) when the database is newer than the code.
    """
    head = head_revision()
    # Alembic's `context` and `op` are module-level proxies: one command at a time per
    # process. The database's lock below orders processes.
    with _IN_PROCESS, engine.connect() as connection:
        _lock(connection)
        before = MigrationContext.configure(connection).get_current_revision()
        if before is not None and not known_revision(before):
            raise DatabaseAhead(before, head)
        config = migration_config(connection)
        adopted = before is None and _predates_migrations(connection)
        if adopted:
            _adopt(connection, config)
        if before != head:
            command.upgrade(config, "head")
        connection.commit()
    return Upgrade(before=before, after=head, adopted=adopted)


def _lock(connection: Connection) -> None:
    """Begin the transaction the whole upgrade runs in, holding the database's write lock."""
    dialect = connection.dialect.name
    if dialect == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")


def _adopt(connection: Connection, config: Config) -> None:
    """Stamp a database made before migrations at the first revision, with what that
    release's start would have created (the late indexes) made first."""
    quote = connection.dialect.identifier_preparer.quote
    for name, (table, columns) in _FIRST_LATE_INDEXES.items():
        connection.exec_driver_sql(
            f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(table)} "
            f"({', '.join(quote(column) for column in columns)})"
        )
    command.stamp(config, FIRST_REVISION)


def _predates_migrations(connection: Connection) -> bool:
    """True when the first release's tables are here (with no `alembic_version`)."""
    present = _FIRST_TABLES & set(inspect(connection).get_table_names())
    if present and present != _FIRST_TABLES:
        missing = ", ".join(sorted(_FIRST_TABLES - present))
        raise PartialSchema(
            f"the database has some of journeys' tables but not {missing}, and no "
            "alembic_version: it was not made by journeys; refusing to migrate it"
        )
    return bool(present)
