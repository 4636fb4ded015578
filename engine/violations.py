"""The violation record every design-time check returns, and where it points in the YAML.

Nothing here parses or validates; it is the shared vocabulary of loader, validator and CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["KEY", "Location", "Path", "SourceMap", "Violation"]

Path = tuple[str | int, ...]
KEY = "\x00key"  # path suffix under which a mapping key's own position is kept


@dataclass(frozen=True, slots=True)
class Location:
    """A place in a source file: 1-based line and column."""

    file: str
    line: int
    column: int


@dataclass(slots=True)
class SourceMap:
    """Positions of every value (and mapping key) of a loaded document, by path."""

    default_file: str
    marks: dict[Path, Location] = field(default_factory=dict)

    def add(self, path: Path, location: Location) -> None:
        self.marks[path] = location

    def locate(self, path: Path, *, key: bool = False) -> Location:
        """The position of ``path``; of its key when ``key``; else of the nearest ancestor."""
        if key and (*path, KEY) in self.marks:
            return self.marks[(*path, KEY)]
        probe = tuple(path)
        while probe:
            if probe in self.marks:
                return self.marks[probe]
            probe = probe[:-1]
        return self.marks.get((), Location(self.default_file, 1, 1))


@dataclass(frozen=True, slots=True)
class Violation:
    """One thing wrong with a journeys file, with where it is and how to fix it."""

    code: str
    message: str
    file: str
    line: int
    column: int
    journey: str | None = None
    step: str | None = None
    hint: str | None = None
    severity: Literal["error", "warning"] = "error"

    def format(self) -> str:
        """``FILE:LINE:COL: journey/step: message (hint)``, the CLI's one-line form."""
        where = "/".join(part for part in (self.journey, self.step) if part) or "-"
        text = f"{self.file}:{self.line}:{self.column}: {where}: {self.message}"
        if self.severity == "warning":
            text = f"{self.file}:{self.line}:{self.column}: {where}: warning: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": self.severity,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "journey": self.journey,
            "step": self.step,
            "message": self.message,
            "hint": self.hint,
        }
