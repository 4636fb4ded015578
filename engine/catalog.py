"""A journeys file, end to end at design time: load, validate, compile.

`build_catalog` is what the CLI, `deploy` and the worker call; it never raises on bad
input: everything wrong is in `Catalog.violations` and only clean journeys get plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.compiler import compile_checked
from engine.loader import load_document, load_text
from engine.plan import Plan
from engine.spec import Document
from engine.validator import CheckedDocument, check_document
from engine.violations import Violation

__all__ = ["Catalog", "build_catalog", "build_catalog_from_text"]


@dataclass(frozen=True)
class Catalog:
    """The checked document and the plans of its valid journeys."""

    checked: CheckedDocument
    plans: dict[str, Plan]

    @property
    def document(self) -> Document | None:
        return self.checked.document

    @property
    def violations(self) -> list[Violation]:
        return self.checked.violations

    @property
    def ok(self) -> bool:
        return self.checked.ok


def build_catalog(path: str | Path) -> Catalog:
    """Load, validate and compile the journeys file at ``path``."""
    checked = check_document(load_document(path))
    return Catalog(checked=checked, plans=compile_checked(checked))


def build_catalog_from_text(
    text: str, *, file: str = "journeys.yaml", root: Path | None = None
) -> Catalog:
    """The same, from text (tests, the API)."""
    checked = check_document(load_text(text, file=file, root=root))
    return Catalog(checked=checked, plans=compile_checked(checked))
