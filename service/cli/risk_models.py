"""`journeys models ...`: the risk models of a journeys file, seen before they are deployed.

`journeys models check [FILE]` calls every model declared under `models:` once, with its
declared `example:` features, through the same adapters the `score` step uses, and prints
one line per model: its latency and score, or why it would fall back. Exit codes: 0 every
model answered, 1 one failed (or has no example, or a broken declaration), 2 the file
cannot be read. `${VAR}` in a model's url or token are read from this shell's environment;
neither is printed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from engine.loader import load_document
from engine.validator import check_document

__all__ = ["ModelCheck", "app", "check_models"]

app = typer.Typer(
    name="models",
    help="Risk models: call each declared model once, before you deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclass(frozen=True)
class ModelCheck:
    """One model's check: did it answer, with what, how fast."""

    name: str
    kind: str
    ok: bool
    score: float | None = None
    latency_ms: float | None = None
    version: str | None = None
    problem: str | None = None

    def format(self, width: int) -> str:
        """``ok    NAME  KIND  score S  N ms  version V`` or ``FAIL  NAME  KIND  why``."""
        head = f"{'ok' if self.ok else 'FAIL':<4}  {self.name:<{width}}  {self.kind:<6}"
        if self.ok:
            version = f"  version {self.version}" if self.version else ""
            return f"{head}  score {self.score:.4f}  {self.latency_ms:.1f} ms{version}"
        after = f" after {self.latency_ms:.1f} ms" if self.latency_ms is not None else ""
        return f"{head}  {self.problem}{after}"


async def check_models(
    models: dict[str, Any], *, model_root: Path, broken: set[str] | None = None
) -> list[ModelCheck]:
    """Call each of ``models`` (name -> declaration mapping) with its example, in order."""
    from activities.scoring import score_with_model  # numpy and onnxruntime: only when needed

    checks: list[ModelCheck] = []
    for name, declaration in models.items():
        kind = str(declaration.get("kind", "?")) if isinstance(declaration, dict) else "?"
        if broken and name in broken:
            checks.append(
                ModelCheck(name, kind, ok=False, problem="its declaration has errors (see above)")
            )
            continue
        example = declaration.get("example")
        if not example:
            checks.append(
                ModelCheck(
                    name,
                    kind,
                    ok=False,
                    problem="no example: give it example: {feature: value, ...} to check it",
                )
            )
            continue
        result = await score_with_model(name, declaration, example, model_root=model_root)
        if result.fallback_used:
            checks.append(
                ModelCheck(
                    name,
                    kind,
                    ok=False,
                    latency_ms=result.latency_ms,
                    problem=f"would fall back to {result.score:g}: {result.error}",
                )
            )
        else:
            checks.append(
                ModelCheck(
                    name,
                    kind,
                    ok=True,
                    score=result.score,
                    latency_ms=result.latency_ms,
                    version=result.model_version,
                )
            )
    return checks


@app.command()
def check(
    file: Annotated[Path, typer.Argument(help="The journeys file.")] = Path("journeys.yaml"),
) -> None:
    """Call every declared model once with its example features; print latency and score."""
    if not file.is_file():
        typer.echo(f"{file}: no such file", err=True)
        raise typer.Exit(2)
    checked = check_document(load_document(file))
    document = checked.document
    if document is None:
        for violation in checked.errors:
            typer.echo(violation.format(), err=True)
        raise typer.Exit(1)
    declared = document.models or {}
    if not declared:
        typer.echo(f"{file}: no models declared")
        return
    broken = {name for name, model in declared.items() if model is None}
    for violation in checked.errors:
        if violation.journey is None:  # catalogue problems, the models' among them
            typer.echo(violation.format())
    raw = checked.loaded.data.get("models") if isinstance(checked.loaded.data, dict) else None
    models = {
        name: (
            model.model_dump(mode="json")
            if model is not None
            else dict(raw[name])
            if isinstance(raw, dict) and isinstance(raw.get(name), dict)
            else {}
        )
        for name, model in declared.items()
    }
    checks = asyncio.run(
        check_models(models, model_root=checked.loaded.root.resolve(), broken=broken)
    )
    width = max(len(name) for name in declared)
    for result in checks:
        typer.echo(result.format(width))
    failed = sum(not result.ok for result in checks)
    typer.echo(
        f"{len(checks)} model{'s' if len(checks) != 1 else ''}: "
        f"{len(checks) - failed} ok, {failed} failed"
    )
    if failed:
        raise typer.Exit(1)
