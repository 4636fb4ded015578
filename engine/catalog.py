"""A journeys file, end to end at design time: load, validate, compile.

`build_catalog` is what the CLI, `deploy` and the worker call; it never raises on bad
input: everything wrong is in `Catalog.violations` and only clean journeys get plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.compiler import compile_checked
from engine.loader import load_document, load_text
from engine.personal import kind_of
from engine.plan import Plan
from engine.spec import Document, declared_mark
from engine.validator import CheckedDocument, check_document
from engine.violations import Violation

__all__ = ["Catalog", "PersonalField", "build_catalog", "build_catalog_from_text"]


@dataclass(frozen=True)
class PersonalField:
    """A declared field the engine treats as personal, and why (`engine.personal`)."""

    field: str  # profile.contact, or event payment_failed.card_holder
    kind: str  # email, phone, pii or secret
    why: str  # "declared" or "by name"


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

    def personal_fields(self) -> list[PersonalField]:
        """Every field of the `profile:` and `events:` schemas that is personal: marked, or
        a well-known name not unmarked with `personal: none`."""
        document = self.document
        if document is None:
            return []
        found: list[PersonalField] = []
        schemas = [("profile", document.profile)] + [
            (f"event {name}", fields) for name, fields in document.events.items()
        ]
        for prefix, fields in schemas:
            for name, declaration in fields.items():
                mark = declared_mark(declaration)
                kind = kind_of(name, {name: mark} if mark else None)
                if kind is not None:
                    why = "declared" if mark else "by name"
                    found.append(PersonalField(f"{prefix}.{name}", kind, why))
        return found


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
