"""The `journeys` command line: design-time commands (validate, schema, graph, show, preview).

Thin: every command calls the engine and formats the result. Exit codes: 0 fine,
1 the journeys file has errors, 2 bad usage (unknown journey, unreadable file).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from channels.preview import (
    ChannelPreview,
    PairError,
    TemplatePreview,
    catalog_forms,
    parse_pairs,
    preview_template,
)
from engine.catalog import Catalog, build_catalog
from engine.graph import to_mermaid, to_svg
from engine.scenarios import load_scenario_file
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


def _pairs(values: list[str] | None, option: str) -> dict[str, object]:
    try:
        return parse_pairs(values or [], what=f"{option} value")
    except PairError as error:
        typer.echo(f"preview: {error}", err=True)
        raise typer.Exit(2) from None


def _scenario_values(path: Path, name: str | None) -> tuple[dict[str, object], dict[str, object]]:
    """A scenario's profile, and the properties of the first event its timeline sends."""
    loaded = load_scenario_file(path)
    for violation in loaded.violations:
        typer.echo(violation.format(), err=True)
    if loaded.violations:
        raise typer.Exit(2)
    chosen = next((s for s in loaded.scenarios if name is None or s.name == name), None)
    if chosen is None:
        names = "; ".join(s.name for s in loaded.scenarios)
        typer.echo(f"preview: {path}: no scenario named {name!r} (scenarios: {names})", err=True)
        raise typer.Exit(2)
    first = next((entry for entry in chosen.timeline if entry.event), None)
    return dict(chosen.profile), dict(first.properties) if first else {}


def _echo_channel(channel: ChannelPreview, html_out: Path | None) -> None:
    typer.echo(f"== {channel.channel}")
    if channel.error is not None:
        typer.echo(f"  error: {channel.where}: {channel.error}{_missing_hint(channel.error)}")
        return
    if channel.subject is not None:
        typer.echo(f"  subject: {channel.subject}")
    if channel.title is not None:
        typer.echo(f"  title: {channel.title}")
    if channel.sms_segments is not None:
        typer.echo(
            f"  {channel.sms_segments} segment{'s' if channel.sms_segments != 1 else ''}, "
            f"{channel.sms_encoding}, {len(channel.body or '')} characters"
        )
    shown = [i for i in channel.lengths if channel.channel == "push" or i.over]
    if shown:
        parts = [
            f"{i.part} {i.length}/{i.limit}" + (" OVER THE LIMIT" if i.over else "") for i in shown
        ]
        typer.echo(f"  characters: {', '.join(parts)}")
    for warning in channel.warnings:
        typer.echo(f"  warning: {warning}")
    if channel.body:
        label = "text" if channel.channel == "email" else "body"
        typer.echo(f"  {label}:")
        for line in channel.body.splitlines():
            typer.echo(f"    {line}")
    if channel.html is not None and html_out is not None:
        typer.echo(f"  html: {html_out} ({len(channel.html)} characters)")


_OPTIONS = {"profile": "--profile", "event": "--event", "vars": "--var"}


def _missing_hint(error: str) -> str:
    """How to give a missing value on the command line (`needs profile.first_name`)."""
    for root, option in _OPTIONS.items():
        marker = f"needs {root}."
        if marker in error:
            name = error.split(marker, 1)[1].split(",", 1)[0].split(".", 1)[0]
            return f" (give it with {option} {name}=...)"
    return ""


def _html_target(html_out: Path | None, name: str) -> Path:
    if html_out is not None:
        return html_out
    descriptor, name_on_disk = tempfile.mkstemp(prefix=f"journeys-preview-{name}-", suffix=".html")
    os.close(descriptor)
    return Path(name_on_disk)


def _write_html(preview: TemplatePreview, html_out: Path | None) -> Path | None:
    html = next((c.html for c in preview.channels if c.html is not None), None)
    if html is None:
        return None
    target = _html_target(html_out, preview.template)
    try:
        target.write_text(html, encoding="utf-8")
    except OSError as error:
        typer.echo(f"preview: --html-out {target}: {error.strerror}", err=True)
        raise typer.Exit(2) from None
    return target


@app.command()
def preview(
    template: Annotated[str, typer.Argument(help="The template's name in the journeys file.")],
    profile: Annotated[
        list[str] | None,
        typer.Option(
            "--profile", help="A profile trait NAME=VALUE (JSON values parse); repeatable."
        ),
    ] = None,
    event: Annotated[
        list[str] | None,
        typer.Option("--event", help="An event property NAME=VALUE; repeatable."),
    ] = None,
    var: Annotated[
        list[str] | None,
        typer.Option("--var", help="A journey variable NAME=VALUE (vars.NAME); repeatable."),
    ] = None,
    scenario: Annotated[
        Path | None,
        typer.Option(
            "--scenario",
            help="Take the profile and the first event's properties from a scenario file"
            " (its first scenario, or --scenario-name's); --profile/--event add to them.",
        ),
    ] = None,
    scenario_name: Annotated[
        str | None, typer.Option("--scenario-name", help="The scenario to take, by name.")
    ] = None,
    html_out: Annotated[
        Path | None,
        typer.Option("--html-out", help="Write the email HTML here (default: a temp file)."),
    ] = None,
    file: Annotated[Path, typer.Option("--file", "-f", help="The journeys file.")] = Path(
        "journeys.yaml"
    ),
    format: Annotated[
        OutputFormat, typer.Option("--format", help="text or json")
    ] = OutputFormat.text,
) -> None:
    """Render a template for every channel it has, as a send would: email subject, text
    and HTML (to a file), SMS with its segments and encoding, push with its lengths.
    Exit 1 when a channel cannot be rendered (the error at its file:line)."""
    given = _scenario_values(scenario, scenario_name) if scenario else ({}, {})
    values = (
        {**given[0], **_pairs(profile, "--profile")},
        {**given[1], **_pairs(event, "--event")},
        _pairs(var, "--var"),
    )
    if not file.is_file():
        typer.echo(f"preview: {file}: no such journeys file", err=True)
        raise typer.Exit(2)
    catalog = build_catalog(file)
    try:
        forms, places = catalog_forms(catalog, template)
    except KeyError:
        templates = catalog.checked.loaded.data.get("templates")
        known = ", ".join(sorted(templates)) if isinstance(templates, dict) else "none"
        typer.echo(f"preview: no template '{template}' in {file} (templates: {known})", err=True)
        raise typer.Exit(2) from None
    document = catalog.document
    result = preview_template(
        template,
        forms,
        profile=values[0],
        event=values[1],
        variables=values[2],
        timezone=(document.settings.timezone if document is not None else None) or "UTC",
        places=places,
    )
    written = _write_html(result, html_out)
    if format is OutputFormat.json:
        payload = result.as_dict()
        payload["html_file"] = str(written) if written else None
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        typer.echo(f"template {template} (time zone {result.timezone})")
        for channel in result.channels:
            _echo_channel(channel, written)
    raise typer.Exit(0 if result.ok else 1)


def main() -> None:
    """Entry point of the `journeys` command."""
    app()
