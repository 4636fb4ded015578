"""What every `journeys` command that touches the runtime starts from: the settings, and the
app database brought to the code's schema. A bad setting ends the command with exit code
2, a database this code cannot use (a newer release migrated it) with 1: each with its
message, never a traceback.

Nothing here formats a command's own output; the commands do.
"""

from __future__ import annotations

from pathlib import Path

import typer
from sqlalchemy.engine import Engine

from engine.database import make_engine
from engine.migrate import DatabaseAhead, PartialSchema
from engine.settings import RuntimeSettings, SettingsError

__all__ = ["open_database", "runtime_settings", "sqlite_parent"]


def runtime_settings() -> RuntimeSettings:
    """The settings from the environment, or exit 2 naming the bad variable."""
    try:
        return RuntimeSettings.from_env()
    except SettingsError as error:
        typer.echo(f"journeys: {error}", err=True)
        raise typer.Exit(2) from None


def sqlite_parent(url: str) -> None:
    """Create the directory of a SQLite file URL (the state dir on a first run)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def open_database(url: str) -> Engine:
    """`make_engine` for a command: the schema at head, or exit 1 saying why not."""
    sqlite_parent(url)
    try:
        return make_engine(url)
    except (DatabaseAhead, PartialSchema) as error:
        typer.echo(f"journeys: {error}", err=True)
        raise typer.Exit(1) from None
