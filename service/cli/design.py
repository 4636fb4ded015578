"""The `journeys` command line: design-time commands (validate, schema, graph, show).

Thin: every command calls the engine and formats the result. Exit codes: 0 fine,
1 the journeys file has errors, 2 bad usage (unknown journey, unreadable file).
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from engine.catalog import Catalog, build_catalog
from engine.graph import to_mermaid, to_svg
from engine.schema import json_schema

__all__ = ["app", "main"]

app = typer.Typer(
    name="journeys",
    help="Declarative, durable customer journeys on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

FileArg = Annotated[Path, typer.Argument(help="The journeys file.", show_default=True)]


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


class GraphFormat(StrEnum):
    mermaid = "mermaid"
    svg = "svg"


def _echo_violations(catalog: Catalog) -> None:
    for violation in catalog.violations:
        typer.echo(violation.format(), err=violation.severity == "error" and False)


def _load_or_exit(file: Path) -> Catalog:
    catalog = build_catalog(file)
    if not catalog.ok:
        _echo_violations(catalog)
        count = len(catalog.checked.errors)
        typer.echo(f"{file}: {count} error{'s' if count != 1 else ''}", err=True)
        raise typer.Exit(1)
    return catalog


@app.command()
def validate(
    file: FileArg = Path("journeys.yaml"),
    format: Annotated[
        OutputFormat, typer.Option("--format", help="text or json")
    ] = OutputFormat.text,
) -> None:
    """Check a journeys file: every problem with file, line, column and a hint."""
    catalog = build_catalog(file)
    if format is OutputFormat.json:
        payload = {
            "file": str(file),
            "ok": catalog.ok,
            "violations": [v.as_dict() for v in catalog.violations],
            "journeys": [
                {
                    "id": plan.journey_id,
                    "version": plan.version,
                    "steps": len(plan.steps),
                    "entry": plan.entry.event,
                }
                for plan in catalog.plans.values()
            ],
            "personal": [
                {"field": f.field, "kind": f.kind, "why": f.why} for f in catalog.personal_fields()
            ],
        }
        typer.echo(json.dumps(payload, indent=2))
        raise typer.Exit(0 if catalog.ok else 1)
    _echo_violations(catalog)
    if not catalog.ok:
        count = len(catalog.checked.errors)
        typer.echo(f"{file}: {count} error{'s' if count != 1 else ''}")
        raise typer.Exit(1)
    for plan in catalog.plans.values():
        typer.echo(
            f"ok  {plan.journey_id}  version {plan.version}  {len(plan.steps)} steps  "
            f"enters on {plan.entry.event}"
        )
    _echo_personal(catalog)


def _echo_personal(catalog: Catalog) -> None:
    """What `validate` treats as personal data (docs/journeys.md, Personal data)."""
    fields = catalog.personal_fields()
    typer.echo("")
    typer.echo("personal data (masked in histories, logs, the runs table and the console):")
    width = max((len(f.field) for f in fields), default=0)
    for f in fields:
        typer.echo(f"  {f.field.ljust(width)}  {f.kind:<6}  {f.why}")
    typer.echo(
        "  any other trait or property named like email, phone, mobile, name, address,\n"
        "  birth, password, token, ... (by name), and any text holding an email address or\n"
        "  a +phone number (by form); an event property neither declared nor read by an\n"
        "  expression is not given to a run at all"
    )


@app.command()
def schema(
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write to this file.")
    ] = None,
) -> None:
    """Print the JSON Schema of the journey language (for editor completion and checks)."""
    text = json.dumps(json_schema(), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}")


def _plan_or_exit(catalog: Catalog, journey: str | None, *, command: str, file: Path) -> None:
    """Exit 2 with the journeys ``file`` has when ``journey`` is missing or unknown."""
    if journey in catalog.plans:
        return
    if journey is None:
        typer.echo(f"{command}: which journey? One of these in {file}:", err=True)
        for plan in catalog.plans.values():
            typer.echo(f"  {plan.journey_id.ljust(24)}  {plan.name or ''}".rstrip(), err=True)
    else:
        known = ", ".join(sorted(catalog.plans)) or "none"
        typer.echo(f"no journey '{journey}' (journeys: {known})", err=True)
    raise typer.Exit(2)


JourneyArg = Annotated[
    str | None, typer.Argument(help="The journey id (none: list the journeys).", show_default=False)
]


@app.command()
def graph(
    journey: JourneyArg = None,
    file: Annotated[Path, typer.Option("--file", "-f", help="The journeys file.")] = Path(
        "journeys.yaml"
    ),
    format: Annotated[
        GraphFormat, typer.Option("--format", help="mermaid or svg")
    ] = GraphFormat.mermaid,
) -> None:
    """Draw a journey: Mermaid text (renders on GitHub) or a standalone SVG."""
    catalog = _load_or_exit(file)
    _plan_or_exit(catalog, journey, command="graph", file=file)
    assert journey is not None
    plan = catalog.plans[journey]
    sys.stdout.write(to_mermaid(plan) if format is GraphFormat.mermaid else to_svg(plan))


@app.command()
def show(
    journey: JourneyArg = None,
    file: Annotated[Path, typer.Option("--file", "-f", help="The journeys file.")] = Path(
        "journeys.yaml"
    ),
) -> None:
    """Print a journey's compiled plan (JSON) and its version."""
    catalog = _load_or_exit(file)
    _plan_or_exit(catalog, journey, command="show", file=file)
    assert journey is not None
    plan = catalog.plans[journey]
    typer.echo(f"# {plan.journey_id} version {plan.version}", err=True)
    typer.echo(plan.model_dump_json(indent=2))


def main() -> None:
    """Entry point of the `journeys` command."""
    app()
