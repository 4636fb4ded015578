"""The violation record every design-time check returns, and where it points in the YAML.

Nothing here parses or validates; it is the shared vocabulary of loader, validator and CLI.
A violation's message and hint stay short whatever the source: a quoted value longer than
`MAX_QUOTED_CHARS` (a 200 KB expression) is cut to its start, an ellipsis, its length and
its position, and no message is longer than `MAX_MESSAGE_CHARS` (`shorten`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "ITEM_KEY",
    "KEY",
    "MAX_MESSAGE_CHARS",
    "MAX_QUOTED_CHARS",
    "Location",
    "Path",
    "SourceMap",
    "Violation",
    "shorten",
]

Path = tuple[str | int, ...]
KEY = "\x00key"  # path suffix under which a mapping key's own position is kept
ITEM_KEY = "[key]"  # pydantic's path suffix for a mapping key that fails validation

MAX_QUOTED_CHARS = 120
"""The most of a quoted value (an expression, a key) a message repeats back."""
MAX_MESSAGE_CHARS = 1000
"""The longest message or hint, whatever it quotes."""

# A quoted value as `repr` writes it: '...' or "..." with backslash escapes, on one line.
_QUOTED = re.compile(r"'(?:[^'\\\n]|\\.)*'" "|" r'"(?:[^"\\\n]|\\.)*"')


def shorten(text: str, *, line: int, column: int) -> str:
    """``text`` with every quoted value longer than `MAX_QUOTED_CHARS` cut to its start and
    an ellipsis, followed by its length and where it starts (``line:column``); then cut to
    `MAX_MESSAGE_CHARS`. Short text comes back unchanged."""
    if len(text) <= MAX_QUOTED_CHARS:
        return text

    def cut(found: re.Match[str]) -> str:
        quoted = found.group()
        inner = quoted[1:-1]
        if len(inner) <= MAX_QUOTED_CHARS:
            return quoted
        prefix = inner[:MAX_QUOTED_CHARS]
        trailing = len(prefix) - len(prefix.rstrip("\\"))
        if trailing % 2:  # do not leave half an escape before the ellipsis
            prefix = prefix[:-1]
        mark = quoted[0]
        return f"{mark}{prefix}…{mark} ({len(inner)} characters, at {line}:{column})"

    shortened = _QUOTED.sub(cut, text)
    if len(shortened) > MAX_MESSAGE_CHARS:
        shortened = shortened[: MAX_MESSAGE_CHARS - 1] + "…"
    return shortened


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
    # Where a one-line scalar's text begins, when the source holds it character for
    # character (plain, or quoted without escapes): a position inside it is then exact.
    texts: dict[Path, Location] = field(default_factory=dict)

    def add(self, path: Path, location: Location) -> None:
        self.marks[path] = location

    def locate_inside(self, path: Path, offset: int) -> Location | None:
        """The position of character ``offset`` (0-based) of the text at ``path``, when
        the source holds that text as it is; else None."""
        start = self.texts.get(path)
        if start is None:
            return None
        return Location(start.file, start.line, start.column + offset)

    def locate(self, path: Path, *, key: bool = False) -> Location:
        """The position of ``path``; of its key when ``key``; else of the nearest ancestor.

        A path ending in `ITEM_KEY`, as pydantic reports a mapping key it refused
        (`set: {Vars.x: ...}`), is that key's own position."""
        if path and path[-1] == ITEM_KEY and path not in self.marks:
            return self.locate(path[:-1], key=True)
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

    def __post_init__(self) -> None:
        # Every check's message is kept short here, whatever it quoted from the source.
        object.__setattr__(self, "message", self._shorten(self.message))
        if self.hint is not None:
            object.__setattr__(self, "hint", self._shorten(self.hint))

    def _shorten(self, text: str) -> str:
        return shorten(text, line=self.line, column=self.column)

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
