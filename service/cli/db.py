"""`journeys db upgrade` and `journeys db current`: the app database's schema revision.

Every start (API, worker, `journeys up`) upgrades the database by itself; these are for an
operator who wants to migrate before rolling out, or to see where a database stands. Exit
codes: 0 fine, 1 the database is ahead of this code (a newer release migrated it), 2 a bad
setting.
"""

from __future__ import annotations

from pathlib import Path

import typer
from sqlalchemy.engine import make_url

from engine.database import engine_for
from engine.migrate import (
    DatabaseAhead,
    PartialSchema,
    Upgrade,
    current_revision,
    head_revision,
    known_revision,
    upgrade,
)
from service.cli.environment import runtime_settings, sqlite_parent

__all__ = ["app", "upgrade_database"]

app = typer.Typer(help="The app database's schema: upgrade it, or show its revision.")


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def upgrade_database(url: str) -> Upgrade:
    """Bring the database at ``url`` to head (what `journeys up` does before anything else),
    or exit 1 with the reason."""
    sqlite_parent(url)
    engine = engine_for(url)
    try:
        return upgrade(engine)
    except (DatabaseAhead, PartialSchema) as error:
        typer.echo(f"journeys: {_shown(url)}: {error}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


def _current(url: str) -> str | None:
    """The database's revision; None for a SQLite file that does not exist (left so)."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    engine = engine_for(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


@app.command("upgrade")
def upgrade_command() -> None:
    """Migrate the database (DATABASE_URL) to this code's schema; a no-op when it is there."""
    url = runtime_settings().database_url
    typer.echo(f"{_shown(url)}: {upgrade_database(url).format()}")


@app.command("current")
def current_command() -> None:
    """Print the database's schema revision and this code's."""
    url = runtime_settings().database_url
    revision = _current(url)
    head = head_revision()
    typer.echo(f"database  {_shown(url)}")
    typer.echo(f"revision  {revision or 'none (empty, or made before migrations)'}")
    typer.echo(f"code head {head}")
    if revision == head:
        typer.echo("up to date")
    elif revision is not None and not known_revision(revision):
        typer.echo(f"journeys: {DatabaseAhead(revision, head)}", err=True)
        raise typer.Exit(1)
    else:
        typer.echo("behind: `journeys db upgrade` (or any start) migrates it")
