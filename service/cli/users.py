"""`journeys user ...` and `journeys apikey ...`: console accounts and event-source keys.

They write to the app database of this machine's settings (`DATABASE_URL`, by default the
one `journeys up` uses under ./state). A password or key is printed once, here, and
stored only as a hash.
"""

from __future__ import annotations

from typing import Annotated

import typer

from engine.database import ROLES, create_api_key, session_scope
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
        password = add_user(db, name=name, role=role)
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
        password = reset_password(db, name=name)
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


@apikey_app.command("add")
def apikey_add(
    name: Annotated[str, typer.Argument(help="The event source, e.g. 'payments' or 'segment'.")],
) -> None:
    """Create an API key for an event source and print it (stored hashed)."""
    name = name.strip()
    if not 1 <= len(name) <= 100:
        typer.echo("error: the name needs 1 to 100 characters", err=True)
        raise typer.Exit(1)
    db = open_database(_database_url())
    try:
        with session_scope(db) as session:
            key = create_api_key(session, name=name)
    finally:
        db.dispose()
    typer.echo(f"API key for {name}: {key}")
    typer.echo(
        "Send it as 'Authorization: Bearer <key>' (or HTTP Basic with the key as user name)."
    )
