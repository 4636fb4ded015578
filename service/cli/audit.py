"""`journeys audit ...`: the hash-chained audit log (`engine.audit`).

`checkpoint` signs the head (Ed25519) into `audit_checkpoints` and a JSON file to ship
elsewhere; `pubkey` prints the key that checks those signatures; `verify` recomputes the
chain and names the first entry that is wrong (exit 1), or says it is intact (exit 0);
`export` writes a date range (one customer's entries, if asked) as JSONL with the
checkpoint that covers it, for the offline check in docs/security.md ("Audit trail").

The signing key: the PEM file ``JOURNEYS_AUDIT_SIGNING_KEY_FILE`` names, else
``<state>/audit_signing_key``, made (mode 0600) by the first checkpoint.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from engine.audit import (
    SIGNING_KEY_ENV,
    SIGNING_KEY_FILE,
    Checkpoint,
    customer_filter,
    export_entries,
    latest_checkpoint,
    load_or_create_signing_key,
    make_checkpoint,
    public_key_hex,
    stored_checkpoints,
    utc_text,
    verify_chain,
    write_checkpoint_file,
)
from engine.database import AuditEntry
from engine.settings import RuntimeSettings
from service.cli.environment import open_database, runtime_settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["app", "trusted_public_key"]

app = typer.Typer(
    help="The hash-chained audit log: checkpoints, verification, exports.", no_args_is_help=True
)


def _key_path(settings: RuntimeSettings) -> tuple[Path, bool]:
    """The signing key's file, and whether the environment named it."""
    named = os.environ.get(SIGNING_KEY_ENV)
    if named:
        return Path(named), True
    return settings.state_dir / SIGNING_KEY_FILE, False


def _signing_key(settings: RuntimeSettings) -> Ed25519PrivateKey:
    path, named = _key_path(settings)
    try:
        return load_or_create_signing_key(settings.state_dir, path=path if named else None)
    except (OSError, ValueError) as error:
        typer.echo(f"journeys: the audit signing key: {error}", err=True)
        raise typer.Exit(2) from None


def trusted_public_key(settings: RuntimeSettings) -> str | None:
    """The public key of the signing key, if there is one (verifying never makes one)."""
    path, _ = _key_path(settings)
    if not path.exists():
        return None
    return public_key_hex(_signing_key(settings))


@app.command("pubkey")
def pubkey_command() -> None:
    """Print the public key (hex, Ed25519) that checks this installation's checkpoints."""
    typer.echo(public_key_hex(_signing_key(runtime_settings())))


def _write_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    write_checkpoint_file(checkpoint, path)


@app.command("checkpoint")
def checkpoint_command(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write it (default: <state>/audit/checkpoint-<seq>.json)",
        ),
    ] = None,
) -> None:
    """Sign the log's head now: stored in the database and written to a JSON file to
    ship elsewhere (cron: `journeys audit checkpoint` hourly, then copy the file)."""
    settings = runtime_settings()
    key = _signing_key(settings)
    db = open_database(settings.database_url)
    try:
        checkpoint = make_checkpoint(db, key)
    finally:
        db.dispose()
    path = output or settings.state_dir / "audit" / f"checkpoint-{checkpoint.seq}.json"
    _write_checkpoint(checkpoint, path)
    typer.echo(f"checkpoint at entry {checkpoint.seq} ({checkpoint.hash[:16]}) -> {path}")


@app.command("verify")
def verify_command(
    from_file: Annotated[
        Path | None,
        typer.Option("--from", help="A checkpoint file: its signature and head are checked too"),
    ] = None,
    public_key: Annotated[
        str | None,
        typer.Option(help="The trusted public key (hex); default: this installation's"),
    ] = None,
) -> None:
    """Recompute the whole chain: every hash, every link, no gap; and the checkpoints
    stored in the database, against this installation's key (none without a key). Exit 0
    with a summary when intact; exit 1 naming the first entry edited, deleted, inserted
    or reordered."""
    settings = runtime_settings()
    checkpoint: Checkpoint | None = None
    public_key = public_key or trusted_public_key(settings)
    if from_file is not None:
        try:
            checkpoint = Checkpoint.read(from_file)
        except (OSError, ValueError, KeyError) as error:
            typer.echo(f"journeys: {from_file}: not a checkpoint ({error})", err=True)
            raise typer.Exit(2) from None
        if public_key is None:
            typer.echo(
                "journeys: no trusted public key to check the checkpoint with: pass "
                f"--public-key (or set {SIGNING_KEY_ENV})",
                err=True,
            )
            raise typer.Exit(2)
    db = open_database(settings.database_url)
    try:
        stored = stored_checkpoints(db) if public_key is not None else []
        report = verify_chain(db, checkpoint=checkpoint, checkpoints=stored, public_key=public_key)
    finally:
        db.dispose()
    typer.echo(report.format())
    if not report.ok:
        raise typer.Exit(1)


def _moment(text: str, *, end: bool) -> str:
    """A date (``2026-12-05``: its start, or with ``end`` the next day's) or an ISO 8601
    time (UTC unless it says), as the log's time text."""
    try:
        if len(text) == 10:
            moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return utc_text(moment + timedelta(days=1) if end else moment)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date (YYYY-MM-DD) or an ISO time") from None
    return utc_text(moment)


def _last_in_range(db: Engine, start: str, end: str) -> int:
    table = AuditEntry.__table__  # type: ignore[attr-defined]
    with db.connect() as connection:
        last = connection.execute(
            select(func.max(table.c.seq)).where(table.c.time >= start, table.c.time < end)
        ).scalar()
    return int(last or 0)


@app.command("export")
def export_command(
    start: Annotated[str, typer.Option("--from", help="First day (YYYY-MM-DD) or time")],
    end: Annotated[str, typer.Option("--to", help="Last day (inclusive) or time (exclusive)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The JSONL file to write")],
    customer: Annotated[str | None, typer.Option(help="Only this customer's entries")] = None,
) -> None:
    """Write the entries of a period as JSONL, then a last line with the checkpoint that
    covers them (the newest at or after the period's last entry; one is made if there is
    none). Without --customer the entries run on to that checkpoint's head, so the whole
    export checks against its signature (docs/security.md, "Audit trail")."""
    settings = runtime_settings()
    first, last = _moment(start, end=False), _moment(end, end=True)
    db = open_database(settings.database_url)
    try:
        through = _last_in_range(db, first, last)
        checkpoint = latest_checkpoint(db, at_least=through)
        if checkpoint is None:
            checkpoint = make_checkpoint(db, _signing_key(settings))
        count = 0
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w", encoding="utf-8") as handle:
            entries = export_entries(
                db,
                start=first,
                end=last,
                customer=customer,
                through=None if customer else checkpoint.seq,
            )
            for entry in entries if through else ():  # no entry in the period: none
                handle.write(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")
                count += 1
            trailer = {
                "checkpoint": checkpoint.to_json(),
                "export": {
                    "from": first,
                    "to": last,
                    # The pseudonym the entries hold, never the id typed in.
                    "customer": customer_filter(db, customer)[0] if customer else None,
                    "entries": count,
                },
            }
            handle.write(json.dumps(trailer, sort_keys=True) + "\n")
    finally:
        db.dispose()
    typer.echo(f"{count} entries, checkpoint at entry {checkpoint.seq} -> {output}")
