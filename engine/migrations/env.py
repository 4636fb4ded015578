"""Alembic's environment for the app database: the models' metadata, batch mode for SQLite.

The runtime (`engine.migrate`) hands its own connection in `config.attributes["connection"]`,
already inside the locked transaction that serializes concurrent starts; the developer's
`alembic` command (alembic.ini at the repo root) connects to `sqlalchemy.url` or, when that
is unset, the `DATABASE_URL` of `engine.settings`. Nothing else belongs here.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import engine.database  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config
target_metadata = SQLModel.metadata
if config.config_file_name is not None:  # the developer's `alembic` command: its logging
    fileConfig(config.config_file_name)


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from engine.settings import RuntimeSettings

    return RuntimeSettings.from_env().database_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite alters a table by copying it; batch mode writes migrations that way.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
        return
    connectable = create_engine(_url())
    try:
        with connectable.connect() as connection:
            _run(connection)
    finally:
        connectable.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
