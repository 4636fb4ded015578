"""`journeys user ...` and `journeys apikey ...`: console accounts and event-source keys.

They write to the app database of this machine's settings (`DATABASE_URL`, by default the
one `journeys up` uses under ./state). A password or key is printed once, here, and
stored only as a hash. `journeys apikey list` shows keys by id, name and scopes, never a
key or its hash; `journeys apikey revoke` marks one revoked in the database, and API
processes refuse it within `API_KEY_CACHE_SECONDS` (they remember valid keys that long).
"""

from __future__ import annotations

import getpass
from datetime import datetime
from typing import Annotated

import typer

from engine.database import (
    ROLES,
    create_api_key,
    find_api_keys,
    join_scopes,
    list_api_keys,
    revoke_api_keys,
    session_scope,
)
from engine.timestamps import as_utc
from service.cli.environment import open_database, runtime_settings
from service.users import UserError, add_user, list_users, reset_password

__all__ = ["apikey_app", "user_app"]

user_app = typer.Typer(
    help="Console users: ops reviewers, supervisors, auditors...", no_args_is_help=True
)
apikey_app = typer.Typer(help="API keys for event sources (one per source).", no_args_is_help=True)


def _database_url() -> str:
    return runtime_settings().database_url


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="The user's sign-in name (a-z, 0-9, . _ - @).")],
    role: Annotated[str, typer.Option("--role", help=f"One of: {', '.join(ROLES)}.")],
) -> None:
    """Create a user and print their one-time password (they choose their own at first sign-in)."""
    db = open_database(_database_url())
    try:
        password = add_user(db, name=name, role=role, actor=cli_actor())
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    typer.echo(f"user {name.strip().lower()} ({role}) created")
    typer.echo(f"one-time password: {password}")
    typer.echo("They sign in at /console/login and then choose their own password.")


@user_app.command("reset")
def user_reset(name: Annotated[str, typer.Argument(help="The user's name.")]) -> None:
    """Give a user a new one-time password (signs them out everywhere)."""
    db = open_database(_database_url())
    try:
        password = reset_password(db, name=name, actor=cli_actor())
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    typer.echo(f"one-time password: {password}")


@user_app.command("list")
def user_list() -> None:
    """Every user with their role."""
    db = open_database(_database_url())
    try:
        users = list_users(db)
    finally:
        db.dispose()
    if not users:
        typer.echo("no users (add one with: journeys user add NAME --role ops)")
    for user in users:
        state = (
            "disabled"
            if user.disabled
            else ("must set password" if user.must_change_password else "active")
        )
        typer.echo(f"{user.name:30} {user.role:12} {state}")


_SCOPE_HELP = (
    "What the key may do (repeat for more): ingest (send events), read (runs, journeys, "
    "messages, preferences, reviews), admin (everything). Default: ingest."
)


@apikey_app.command("add")
def apikey_add(
    name: Annotated[str, typer.Argument(help="The event source, e.g. 'payments' or 'segment'.")],
    scope: Annotated[
        list[str] | None, typer.Option("--scope", "-s", help=_SCOPE_HELP, show_default=False)
    ] = None,
) -> None:
    """Create an API key for an event source and print it (stored hashed)."""
    name = name.strip()
    if not 1 <= len(name) <= 100:
        typer.echo("error: the name needs 1 to 100 characters", err=True)
        raise typer.Exit(1)
    try:
        scopes = join_scopes(s.strip().lower() for s in (scope or ["ingest"]))
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    db = open_database(_database_url())
    try:
        with session_scope(db) as session:
            key = create_api_key(session, name=name, scopes=scopes.split(","), actor=cli_actor())
    finally:
        db.dispose()
    typer.echo(f"API key for {name}: {key}")
    typer.echo(f"scopes: {scopes.replace(',', ', ')}")
    typer.echo(
        "Send it as 'Authorization: Bearer <key>' (or HTTP Basic with the key as user name)."
    )


def cli_actor() -> str:
    """Who makes a change from this command line, for the audit log: ``cli:<os user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return "cli"


def _when(moment: datetime | None) -> str:
    return as_utc(moment).strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "-"


@apikey_app.command("list")
def apikey_list() -> None:
    """Every API key: id, name, scopes, when made and when revoked (never the key)."""
    db = open_database(_database_url())
    try:
        with session_scope(db) as session:
            rows = [
                (str(k.id), k.name, k.scopes, _when(k.created_at), _when(k.revoked_at))
                for k in list_api_keys(session)
            ]
    finally:
        db.dispose()
    if not rows:
        typer.echo("no API keys (add one with: journeys apikey add NAME --scope ingest)")
        return
    header = ("ID", "NAME", "SCOPES", "CREATED", "REVOKED")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        typer.echo("  ".join([*cells, row[-1]]))


@apikey_app.command("revoke")
def apikey_revoke(
    name_or_id: Annotated[
        str, typer.Argument(help="The key's id (see `journeys apikey list`) or its name.")
    ],
) -> None:
    """Revoke an API key: the API refuses it (401) within a few seconds. It stays listed."""
    db = open_database(_database_url())
    try:
        with session_scope(db) as session:
            found = list(find_api_keys(session, name_or_id))
            active = [k for k in found if k.revoked_at is None]
            if not found:
                typer.echo(f"error: no API key has the id or name {name_or_id.strip()!r}", err=True)
                raise typer.Exit(1)
            if len(active) > 1:
                ids = ", ".join(str(k.id) for k in active)
                typer.echo(
                    f"error: {len(active)} keys are named {name_or_id.strip()!r} (ids {ids}): "
                    "revoke one by its id",
                    err=True,
                )
                raise typer.Exit(1)
            if not active:
                typer.echo(f"API key {found[-1].id} ({found[-1].name}) was revoked already")
                return
            [record] = revoke_api_keys(session, active, actor=cli_actor())
            said = f"revoked API key {record.id} ({record.name})"
    finally:
        db.dispose()
    # Here, not at the top: it brings FastAPI, which no other command here needs.
    from service.api.auth import API_KEY_CACHE_SECONDS

    typer.echo(
        f"{said}: the API refuses it within {API_KEY_CACHE_SECONDS:g} seconds "
        "(the time it remembers a valid key)"
    )
