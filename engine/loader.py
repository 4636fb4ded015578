"""Safe YAML loading with positions: journeys files (and their `include:`s) to plain data.

Only YAML's core tags are accepted (no `!!python/...`), files are size-capped, and alias
expansion is bounded, so a hostile file cannot run code or exhaust memory; includes stay
inside the catalogue's folder, so a file outside it is never read. Every value and
mapping key keeps its file, line and column in a `SourceMap` for the validator's messages.
`${VAR}` references are kept verbatim: they are resolved only at run time. As in YAML 1.2,
only `true` and `false` are booleans: `yes`/`no`/`on`/`off` stay words (a step called `no`).

YAML ends a plain value inside `{...}` at a comma, so `{when: f(x, 0)}` reads as `when:
f(x` and a key `0)`: such a value is put back together from the source and reported
(`flow-split`, at the made-up key, with the quoted form as the hint), so the expression is
checked as written and the made-up keys are not reported as unknown.

Nothing here validates journeys; problems are returned as `Violation`s, never raised.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.violations import KEY, Location, Path, SourceMap, Violation

__all__ = ["MAX_FILE_BYTES", "MAX_NODES", "LoadedDocument", "load_document", "load_text"]

MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_NODES = 200_000
MAX_INCLUDES = 200

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_CORE}{t}" for t in ("str", "int", "float", "bool", "null", "timestamp")}
_MERGEABLE = ("journeys", "events", "channels", "models", "templates")


@dataclass
class LoadedDocument:
    """A journeys document as plain data, where each value came from, and load problems."""

    data: dict[str, Any]
    source: SourceMap
    root: FsPath
    violations: list[Violation] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(v.severity == "error" for v in self.violations)


class _LoadError(Exception):
    def __init__(self, code: str, message: str, line: int, column: int, hint: str | None = None):
        super().__init__(message)
        self.code, self.message, self.line, self.column, self.hint = (
            code,
            message,
            line,
            column,
            hint,
        )


@dataclass(frozen=True)
class _Split:
    """A plain value a flow mapping cut at its commas: `{when: f(x, 0)}` reads as
    `when: f(x` and a key `0)`. ``owner`` is the pair holding the start of the value
    (None when no pair does), ``pieces`` the pairs made of the rest, ``text`` the value as
    written in the source (None when it cannot be put back together)."""

    owner: int | None
    pieces: tuple[int, ...]
    text: str | None


@dataclass(frozen=True)
class _SplitFound:
    """A split reported at ``path`` (the first made-up key), named after the build."""

    path: Path
    message: str
    hint: str
    where: Location


class _Builder:
    """Turns a composed YAML node tree into plain data, recording positions."""

    def __init__(self, file: str, source: SourceMap, prefix: Path = (), text: str = "") -> None:
        self.file = file
        self.source = source
        self.prefix = prefix
        self.text = text
        self._lines: list[str] | None = None
        self.nodes = 0
        self.constructor = yaml.SafeLoader("")
        self.splits: list[_SplitFound] = []

    def _note_text(self, node: ScalarNode, path: Path) -> None:
        """Record where a one-line scalar's text begins, if the source holds it verbatim
        (so a type error can point inside an expression)."""
        if not self.text or node.start_mark.line != node.end_mark.line:
            return
        if node.style not in (None, "'", '"') or not isinstance(node.value, str):
            return
        if self._lines is None:
            self._lines = self.text.split("\n")
        line = node.start_mark.line
        start = node.start_mark.column + (0 if node.style is None else 1)
        if line < len(self._lines) and self._lines[line][start:].startswith(node.value):
            self.source.texts[path] = Location(self.file, line + 1, start + 1)

    def _mark(self, node: Node) -> Location:
        return Location(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: Node, path: Path, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _LoadError(
                "yaml-too-large",
                f"document expands to more than {MAX_NODES} values (aliases used as a bomb?)",
                node.start_mark.line + 1,
                node.start_mark.column + 1,
            )
        if depth > 64:
            raise _LoadError(
                "yaml-too-large",
                "document nests more than 64 levels deep",
                node.start_mark.line + 1,
                node.start_mark.column + 1,
            )
        self.source.add(self.prefix + path, self._mark(node))
        if isinstance(node, ScalarNode):
            self._note_text(node, self.prefix + path)
            return self._scalar(node)
        if isinstance(node, SequenceNode):
            self._check_tag(node, f"{_CORE}seq")
            return [self.build(child, (*path, i), depth + 1) for i, child in enumerate(node.value)]
        if isinstance(node, MappingNode):
            self._check_tag(node, f"{_CORE}map")
            self.constructor.flatten_mapping(node)  # resolves `<<: *anchor` merges
            splits = _flow_splits(node, self.text) if node.flow_style else []
            skipped = {index for split in splits for index in split.pieces}
            result: dict[str, Any] = {}
            for index, (key_node, value_node) in enumerate(node.value):
                if index in skipped:
                    continue
                key = self._scalar(key_node) if isinstance(key_node, ScalarNode) else None
                if not isinstance(key, str | int | float | bool) or isinstance(key, bool):
                    raise _LoadError(
                        "yaml",
                        "mapping keys must be plain text",
                        key_node.start_mark.line + 1,
                        key_node.start_mark.column + 1,
                    )
                text_key = str(key)
                if text_key in result:
                    raise _LoadError(
                        "duplicate-key",
                        f"key '{text_key}' appears twice in this mapping",
                        key_node.start_mark.line + 1,
                        key_node.start_mark.column + 1,
                        "remove one of them",
                    )
                self.source.add((*self.prefix, *path, text_key, KEY), self._mark(key_node))
                result[text_key] = self.build(value_node, (*path, text_key), depth + 1)
            for split in splits:
                self._report_split(node, split, path, result)
            return result
        raise _LoadError("yaml", "unsupported YAML node", node.start_mark.line + 1, 1)

    def _report_split(
        self, node: MappingNode, split: _Split, path: Path, result: dict[str, Any]
    ) -> None:
        """Report ``split``; put the value back together in ``result`` when it can be, so
        the expression is checked as written and its made-up keys are not reported too."""
        pairs = node.value
        made_up = [str(pairs[index][0].value) for index in split.pieces]
        first = pairs[split.pieces[0]][0]
        keys = " and a key " if len(made_up) == 1 else " and keys "
        listed = ", ".join(repr(key) for key in made_up)
        if split.owner is not None and split.text is not None:
            owner_key, owner_value = pairs[split.owner]
            name = str(owner_key.value)
            result[name] = split.text
            message = (
                f"the flow mapping split the expression {split.text!r} at a comma: YAML read "
                f"{name + ': ' + str(owner_value.value)!r}{keys}{listed}"
            )
            hint = f"wrap the expression in quotes: {{{name}: {_quoted(split.text)}}}"
        else:
            message = (
                f"key {made_up[0]!r} looks like the end of an expression the flow mapping "
                "split at a comma"
            )
            hint = 'wrap the expression in quotes: {when: "f(x, 0)"}'
        at = (*self.prefix, *path, str(first.value))
        self.splits.append(_SplitFound(at, message, hint, self._mark(first)))

    def _check_tag(self, node: Node, expected: str) -> None:
        if node.tag != expected:
            self._unsafe(node)

    def _unsafe(self, node: Node) -> None:
        raise _LoadError(
            "unsafe-yaml",
            f"YAML tag '{node.tag}' is not allowed: journeys files hold plain data only",
            node.start_mark.line + 1,
            node.start_mark.column + 1,
            "remove the tag",
        )

    def _scalar(self, node: ScalarNode) -> Any:
        if node.tag not in _SCALAR_TAGS:
            self._unsafe(node)
        if node.tag in (f"{_CORE}str", f"{_CORE}timestamp"):
            return str(node.value)  # dates stay text; the language parses its own times
        if node.tag == f"{_CORE}bool" and node.value.lower() not in ("true", "false"):
            return str(node.value)  # YAML 1.2: `yes`, `no`, `on`, `off` are words, not booleans
        return self.constructor.construct_object(node, deep=True)


_OPENING = "(["
_CLOSING = ")]"


def _balance(text: str) -> int:
    """Brackets opened and not closed in ``text`` (negative: closed and not opened)."""
    return sum(text.count(c) for c in _OPENING) - sum(text.count(c) for c in _CLOSING)


def _looks_like_tail(text: str) -> bool:
    """Whether a key reads as the end of an expression cut at a comma: `0)`, `c) > 1`."""
    if _balance(text) < 0:
        return True
    return (text[:1].isdigit() or text[:1] == " ") and text.endswith(tuple(_CLOSING))


def _plain(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.style is None and node.tag != f"{_CORE}null"


def _piece(pair: tuple[Node, Node]) -> bool:
    """Whether a pair is a made-up key of a split: a plain key with no value."""
    key, value = pair
    return (
        _plain(key) and isinstance(value, ScalarNode) and value.style is None and value.value == ""
    )


def _flow_splits(node: MappingNode, text: str) -> list[_Split]:
    """The values ``node`` (a flow mapping) cut at their commas.

    YAML ends a plain value in a flow mapping at `, `: `{when: f(x, 0)}` reads as
    `when: f(x` and a key `0)` with no value. A value with a bracket left open followed by
    such keys, one of them closing it, is put back together from ``text``; a key that looks
    like the end of one with no such value before it is reported alone."""
    pairs = node.value
    found: list[_Split] = []
    taken: set[int] = set()
    for index, (_, value) in enumerate(pairs):
        if not _plain(value) or _balance(str(value.value)) <= 0:
            continue
        depth, end, pieces = _balance(str(value.value)), index + 1, []
        while depth > 0 and end < len(pairs) and _piece(pairs[end]):
            depth += _balance(str(pairs[end][0].value))
            pieces.append(end)
            end += 1
        if not any(_looks_like_tail(str(pairs[p][0].value)) for p in pieces):
            continue
        found.append(_Split(index, tuple(pieces), _written(value, pairs[pieces[-1]][0], text)))
        taken.update(pieces)
    for index, (key, _) in enumerate(pairs):
        if index not in taken and _plain(key) and _looks_like_tail(str(key.value)):
            found.append(_Split(None, (index,), None))
    return found


def _written(first: Node, last: Node, text: str) -> str | None:
    """The source from ``first`` to ``last`` on one line; None unless that is one stretch
    of a flow mapping (a split value holds no brace; `<<:` merges bring pairs from
    another mapping, which is fine when both ends come from it)."""
    start, end = first.start_mark.index, last.end_mark.index
    written = text[start:end] if text and start < end else ""
    if not written or any(brace in written for brace in "{}"):
        return None
    return re.sub(r"[ \t]*\r?\n[ \t]*", " ", written)


def _quoted(text: str) -> str:
    """``text`` as a YAML quoted scalar, for a hint."""
    if '"' not in text and "\\" not in text:
        return f'"{text}"'
    if "'" not in text:
        return f"'{text}'"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _names_at(data: Any, path: Path) -> tuple[str | None, str | None]:
    """The journey and step ``path`` is in, as the validator names them."""
    if len(path) < 2 or path[0] != "journeys" or not isinstance(data, dict):
        return None, None
    journeys, index = data.get("journeys"), path[1]
    if not isinstance(journeys, list) or not isinstance(index, int) or index >= len(journeys):
        return None, None
    journey = journeys[index]
    if not isinstance(journey, dict):
        return None, None
    name = journey.get("id") if isinstance(journey.get("id"), str) else None
    steps = journey.get("steps")
    if len(path) < 4 or path[2] != "steps" or not isinstance(path[3], int):
        return name, None
    if not isinstance(steps, list) or path[3] >= len(steps) or not isinstance(steps[path[3]], dict):
        return name, None
    step_id = steps[path[3]].get("id")
    return name, step_id if isinstance(step_id, str) else f"#{path[3] + 1}"


def _parse(
    text: str, file: str, source: SourceMap, found: list[Violation], prefix: Path = ()
) -> Any:
    """``text`` as plain data, its positions in ``source``; the values a flow mapping
    split at a comma are put back together and reported into ``found``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "cannot be parsed"
        hint = _flow_hint(exc)
        raise _LoadError("yaml", f"YAML syntax error: {problem}", line, column, hint) from exc
    except yaml.YAMLError as exc:
        raise _LoadError("yaml", f"YAML error: {exc}", 1, 1) from exc
    if node is None:
        return None
    builder = _Builder(file, source, prefix, text)
    data = builder.build(node, ())
    reported: set[tuple[Location, str]] = set()
    for split in builder.splits:
        where = split.where
        if (where, split.message) in reported:
            continue  # an anchored mapping used again (`<<: *x`): once, where it is written
        reported.add((where, split.message))
        journey, step = _names_at(data, split.path)
        found.append(
            Violation(
                "flow-split",
                split.message,
                where.file,
                where.line,
                where.column,
                journey=journey,
                step=step,
                hint=split.hint,
            )
        )
    return data


def _flow_hint(exc: yaml.MarkedYAMLError) -> str | None:
    """How to write an expression that broke a `{...}` or `[...]`: `{v: f(x, "a")}` ends
    the plain value `f(x` at the comma, then finds `"a"` where a `,` or `}` must be."""
    context, problem = exc.context or "", exc.problem or ""
    if "flow mapping" not in context and "flow sequence" not in context:
        return None
    if "but got" not in problem or "<stream end>" in problem:
        return None
    return (
        "inside { } or [ ], a value without quotes ends at a comma or a bracket: wrap the"
        ' expression in quotes, e.g. {when: "f(x, 0)"}'
    )


def _violation(exc: _LoadError, file: str) -> Violation:
    return Violation(exc.code, exc.message, file, exc.line, exc.column, hint=exc.hint)


def load_text(
    text: str, *, file: str = "journeys.yaml", root: FsPath | None = None
) -> LoadedDocument:
    """Load a journeys document from text (includes resolve against ``root``)."""
    source = SourceMap(default_file=file)
    doc = LoadedDocument({}, source, root or FsPath("."), files=[file])
    if len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        doc.violations.append(
            Violation(
                "yaml-too-large", f"file is larger than {MAX_FILE_BYTES // 1024} KiB", file, 1, 1
            )
        )
        return doc
    try:
        data = _parse(text, file, source, doc.violations)
    except _LoadError as exc:
        doc.violations.append(_violation(exc, file))
        return doc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        doc.violations.append(
            Violation(
                "type",
                "a journeys file must be a mapping with `version:` and `journeys:`",
                file,
                1,
                1,
            )
        )
        return doc
    doc.data = data
    walk = _Walk.start(doc.root, file)
    _resolve_includes(doc, data, data.pop("include", None), doc.source, doc.root, walk)
    _read_rule_tables(doc)
    return doc


def load_document(path: str | FsPath) -> LoadedDocument:
    """Load a journeys file from disk. Problems come back as violations, never exceptions."""
    fs_path = FsPath(path)
    file = str(path)
    try:
        raw = _read_capped(fs_path)
    except OSError as exc:
        doc = LoadedDocument({}, SourceMap(file), fs_path.parent, files=[file])
        doc.violations.append(
            Violation("file", f"cannot read {file}: {exc.strerror or exc}", file, 1, 1)
        )
        return doc
    except _LoadError as exc:
        doc = LoadedDocument({}, SourceMap(file), fs_path.parent, files=[file])
        doc.violations.append(_violation(exc, file))
        return doc
    return load_text(raw, file=file, root=fs_path.parent)


def _read_capped(path: FsPath) -> str:
    with path.open("rb") as handle:
        raw = handle.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise _LoadError(
            "yaml-too-large", f"file is larger than {MAX_FILE_BYTES // 1024} KiB", 1, 1
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _LoadError("yaml", f"file is not UTF-8 text (byte {exc.start})", 1, 1) from exc


@dataclass
class _Walk:
    """One load's walk through its includes.

    Includes are confined to ``folder``, the catalogue's folder (the root file's, links
    resolved), as `html_file` templates are; a file is known by its real path, so a link to
    a file is that file. ``chain`` holds the files being included, root first: a match on it
    closes a cycle. ``seen`` holds every file merged: one reached again by another way (a
    diamond) is merged once, where it was first reached.
    """

    folder: FsPath
    written: FsPath
    chain: list[tuple[str, str]]
    seen: set[str]

    @classmethod
    def start(cls, root: FsPath, file: str) -> _Walk:
        real = os.path.realpath(root / FsPath(file).name)
        return cls(
            folder=FsPath(os.path.realpath(root)),
            written=FsPath(os.path.abspath(root)),
            chain=[(real, FsPath(file).name)],
            seen={real},
        )

    def reaches_out(self, pattern: str, base: FsPath) -> bool:
        """Whether ``pattern`` (relative to ``base``) names a place outside the folder, as
        written or once the links before its first wildcard are followed; nothing is read."""
        if FsPath(pattern).is_absolute():
            return True
        if not _within(FsPath(os.path.normpath(os.path.abspath(base / pattern))), self.written):
            return True
        fixed = list(FsPath(pattern).parts[:-1])
        for index, part in enumerate(fixed):
            if _is_glob(part):
                fixed = fixed[:index]
                break
        return not _within(FsPath(os.path.realpath(base.joinpath(*fixed))), self.folder)

    def holds(self, real: str) -> bool:
        return _within(FsPath(real), self.folder)

    def name(self, match: str) -> str:
        """``match`` as a path from the catalogue's folder, for messages."""
        return os.path.relpath(os.path.abspath(match), self.written)

    def cycle(self, real: str, closing: str) -> str | None:
        """The chain ``a.yaml -> b.yaml -> a.yaml`` that including ``real`` closes, if any."""
        paths = [path for path, _ in self.chain]
        if real not in paths:
            return None
        names = [name for _, name in self.chain[paths.index(real) :]]
        return " -> ".join([*names, closing])


def _within(path: FsPath, folder: FsPath) -> bool:
    return path == folder or folder in path.parents


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def _resolve_includes(
    doc: LoadedDocument,
    data: dict[str, Any],
    includes: Any,
    owner: SourceMap,
    base: FsPath,
    walk: _Walk,
) -> None:
    """Merge the files ``includes`` names (relative to ``base``) into ``data``."""
    if includes is None:
        return
    where = owner.locate(("include",))
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        doc.violations.append(_at("type", "include: must be a list of file patterns", where))
        return
    for index, pattern in enumerate(includes):
        if not _include_pattern(doc, data, pattern, owner.locate(("include", index)), base, walk):
            return


def _include_pattern(
    doc: LoadedDocument,
    data: dict[str, Any],
    pattern: str,
    where: Location,
    base: FsPath,
    walk: _Walk,
) -> bool:
    """Merge the files one include ``pattern`` matches; False once there are too many."""
    outside = f"include: '{pattern}' is outside the journeys folder"
    confined = f"includes must stay inside {walk.folder}"
    if walk.reaches_out(pattern, base):  # refused before any file or folder out there is read
        doc.violations.append(_at("include", outside, where, hint=confined))
        return True
    matches = sorted(glob.glob(str(base / pattern)))
    if not matches:
        message = f"include: '{pattern}' matches no file"
        doc.violations.append(_at("include", message, where, hint=f"paths are relative to {base}"))
    for match in matches:
        real, name = os.path.realpath(match), walk.name(match)
        if not walk.holds(real):
            message = f"{outside}: '{name}' links out of it"
            doc.violations.append(_at("include", message, where, hint=confined))
            continue
        if real == walk.chain[-1][0] and _is_glob(pattern):
            continue  # a wildcard over a file's own folder matches that file: not an include
        cycle = walk.cycle(real, name)
        if cycle is not None:
            message = f"include: '{pattern}' closes a cycle: {cycle}"
            hint = "a file may not include itself, directly or through other files"
            doc.violations.append(_at("include", message, where, hint=hint))
            continue
        if real in walk.seen:
            continue  # a diamond: already merged where it was first reached
        walk.seen.add(real)
        if len(walk.seen) > MAX_INCLUDES:
            message = f"more than {MAX_INCLUDES} included files"
            doc.violations.append(_at("include", message, where))
            return False
        walk.chain.append((real, name))
        _merge_file(doc, data, match, real, walk)
        walk.chain.pop()
    return True


def _at(code: str, message: str, where: Location, *, hint: str | None = None) -> Violation:
    return Violation(code, message, where.file, where.line, where.column, hint=hint)


def _merge_file(
    doc: LoadedDocument, data: dict[str, Any], match: str, real: str, walk: _Walk
) -> None:
    """Merge the included file ``match`` (read at ``real``, the path that was checked) into
    ``data``, then the files it includes."""
    doc.files.append(match)
    local = SourceMap(match)
    included = _read_included(doc, match, real, local)
    if included is None:
        return
    _check_included_keys(doc, included, match, local)
    for section in _MERGEABLE:
        part = included.get(section)
        if part is None:
            continue
        if section == "journeys":
            _merge_journeys(doc, data, part, match, local)
        elif isinstance(part, dict):
            _merge_section(doc, data, section, part, match, local)
    _resolve_includes(doc, data, included.get("include"), local, FsPath(match).parent, walk)


def _read_included(
    doc: LoadedDocument, match: str, real: str, local: SourceMap
) -> dict[str, Any] | None:
    """The included file's mapping; None (with a violation, unless it is empty) otherwise."""
    try:
        included = _parse(_read_capped(FsPath(real)), match, local, doc.violations)
    except _LoadError as exc:
        doc.violations.append(_violation(exc, match))
        return None
    except OSError as exc:
        doc.violations.append(Violation("include", f"cannot read {match}: {exc}", match, 1, 1))
        return None
    if included is None:
        return None
    if not isinstance(included, dict):
        doc.violations.append(Violation("type", "an included file must be a mapping", match, 1, 1))
        return None
    return included


def _check_included_keys(
    doc: LoadedDocument, included: dict[str, Any], match: str, local: SourceMap
) -> None:
    for key in included:
        if key not in (*_MERGEABLE, "version", "include"):
            loc = local.locate((key,), key=True)
            doc.violations.append(
                Violation(
                    "include",
                    f"'{key}' cannot be set in an included file",
                    match,
                    loc.line,
                    loc.column,
                    hint=f"included files may hold: {', '.join(_MERGEABLE)}",
                )
            )


def _merge_journeys(
    doc: LoadedDocument, data: dict[str, Any], part: Any, match: str, local: SourceMap
) -> None:
    """Append an included file's journeys, each keeping its own file and lines."""
    if not isinstance(part, list):
        loc = local.locate(("journeys",))
        doc.violations.append(
            Violation("type", "journeys: must be a list", match, loc.line, loc.column)
        )
        return
    target = data.setdefault("journeys", [])
    if not isinstance(target, list):
        return
    for journey_index, journey in enumerate(part):
        new_index = len(target)
        target.append(journey)
        _copy_marks(local, doc.source, ("journeys", journey_index), ("journeys", new_index))


def _merge_section(
    doc: LoadedDocument,
    data: dict[str, Any],
    section: str,
    part: dict[str, Any],
    match: str,
    local: SourceMap,
) -> None:
    """Add an included file's events, channels, models or templates; names stay unique."""
    target = data.setdefault(section, {})
    if not isinstance(target, dict):
        return
    for name, value in part.items():
        if name in target:
            loc = local.locate((section, name), key=True)
            doc.violations.append(
                Violation(
                    "duplicate-id",
                    f"{section[:-1]} '{name}' is already defined in another file",
                    match,
                    loc.line,
                    loc.column,
                    hint="names must be unique across included files",
                )
            )
            continue
        target[name] = value
        _copy_marks(local, doc.source, (section, name), (section, name))


def _copy_marks(src: SourceMap, dst: SourceMap, old: Path, new: Path) -> None:
    size = len(old)
    for path, loc in src.marks.items():
        if path[:size] == old:
            dst.add(new + path[size:], loc)


# ----------------------------------------------------------------------------- decision tables

MAX_TABLE_ROWS = 10_000


def _read_rule_tables(doc: LoadedDocument) -> None:
    """Every `decide: {rules_csv: file}` read into that table's ``rules`` now, so the plan
    the compiler makes carries its rules and never reads a file; each rule and cell keeps
    its CSV file, row and column for the validator's messages."""
    journeys = doc.data.get("journeys")
    for j, journey in enumerate(journeys if isinstance(journeys, list) else []):
        steps = journey.get("steps") if isinstance(journey, dict) else None
        for s, step in enumerate(steps if isinstance(steps, list) else []):
            table = step.get("decide") if isinstance(step, dict) else None
            if isinstance(table, dict) and isinstance(table.get("rules_csv"), str):
                _read_rule_table(doc, table, ("journeys", j, "steps", s, "decide"))


def _read_rule_table(doc: LoadedDocument, table: dict[str, Any], at: Path) -> None:
    where = doc.source.locate((*at, "rules_csv"))
    name: str = table["rules_csv"]
    if "rules" in table:
        doc.violations.append(_at("decide", "give rules: or rules_csv:, not both", where))
        return
    base = doc.root if where.file == doc.files[0] else FsPath(where.file).parent
    path = base / name
    if FsPath(name).is_absolute() or ".." in FsPath(name).parts:
        message = f"rules_csv '{name}' must be a file beside the journeys file"
        doc.violations.append(_at("decide", message, where))
        return
    real = FsPath(os.path.realpath(path))
    if not _within(real, FsPath(os.path.realpath(doc.root))):  # a link out: never read
        message = f"rules_csv '{name}' links out of the journeys folder"
        doc.violations.append(_at("decide", message, where, hint="keep the CSV beside it"))
        return
    try:
        text = _read_capped(real)
    except (OSError, _LoadError) as exc:
        message = f"rules_csv: cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
        doc.violations.append(_at("decide", message, where))
        return
    inputs = table.get("inputs")
    table["rules"] = _csv_rules(
        doc, text, str(path), set(inputs if isinstance(inputs, dict) else ()), at
    )


def _csv_rules(
    doc: LoadedDocument, text: str, file: str, inputs: set[str], at: Path
) -> list[dict[str, Any]]:
    """A CSV table's rows as rules: a column named like an input holds that input's test,
    `goto` where the rule leads, any other column an output (an expression); an empty
    cell is any (a test), not set (an output), or the step after the table (goto)."""
    rows = list(csv.reader(io.StringIO(text)))
    lines = _row_lines(text)
    if not rows:
        doc.violations.append(Violation("decide", "the rules CSV is empty", file, 1, 1))
        return []
    if not any(any(cell.strip() for cell in row) for row in rows[1:]):
        doc.violations.append(Violation("decide", "the rules CSV has no rules", file, 1, 1))
        return []
    if len(rows) - 1 > MAX_TABLE_ROWS:
        message = f"the rules CSV has more than {MAX_TABLE_ROWS} rows"
        doc.violations.append(Violation("decide", message, file, MAX_TABLE_ROWS + 2, 1))
        return []
    header = [column.strip() for column in rows[0]]
    rules: list[dict[str, Any]] = []
    for number, row in enumerate(rows[1:], start=1):
        if not any(cell.strip() for cell in row):
            continue
        line = lines[number] if number < len(lines) else number + 1
        path = (*at, "rules", len(rules))
        doc.source.add(path, Location(file, line, 1))
        rule: dict[str, Any] = {"when": {}, "set": {}}
        for column, (title, cell) in enumerate(zip(header, row, strict=False), start=1):
            value = cell.strip()
            if not title:  # a spreadsheet's trailing empty column
                continue
            part = "when" if title in inputs else "goto" if title == "goto" else "set"
            cell_path = (*path, title) if part == "goto" else (*path, part, title)
            doc.source.add(cell_path, Location(file, line, column))
            doc.source.add((*cell_path, KEY), Location(file, line, column))
            if part == "goto":
                if value:
                    rule["goto"] = value
            elif part == "when" or value:
                rule[part][title] = value
        rules.append(rule)
    return rules


def _row_lines(text: str) -> list[int]:
    """The line each CSV record starts on (a quoted cell may span lines)."""
    reader = csv.reader(io.StringIO(text))
    starts: list[int] = []
    line = 1
    for _ in reader:
        starts.append(line)
        line = reader.line_num + 1
    return starts
