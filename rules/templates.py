"""Journey templates: Jinja2 in a sandbox, checked at compile time, strict at render time.

Lives here: the two sandboxed environments (HTML-escaping and plain text, created once at
import), ``compile_template`` with its static checks, and ``CompiledTemplate.render``.
Must not live here: filter implementations (``rules.filters``), I/O (template files are
read by the caller), ``temporalio`` imports, and state shared between renders.

Compile-time errors: ``TemplateError.message`` is exactly one of these; ``line`` is
1-based within the template.

- ``template must be text, got <type>``
- ``cannot parse template: <Jinja's message>``: syntax errors, or anything Jinja rejects
- ``'<name>' is not allowed: names starting with '_' are private``: attributes
  (``{{ ''.__class__ }}``), string subscripts (``{{ x['_y'] }}``) and names (``{% set _x %}``)
- ``calls are not allowed in templates``: ``{{ tags.append(1) }}``, ``{{ range(3) }}``
- ``'{% <tag> %}' is not allowed in templates``: include, import, from ... import, extends,
  macro, call, autoescape
- ``unknown filter '<name>'`` / ``unknown test '<name>'`` (hint: the closest one)
- ``unknown name '<name>'``: a free name not in ``names`` (hint: the closest one)

Forbidden constructs are reported before unknown filters/tests, those before unknown
names, then the first line first.

Render errors (``RenderError.message``): ``template needs <path>, which is missing``
(StrictUndefined: a missing variable or attribute; the path is dotted when it can be
traced, e.g. ``profile.first_name``), ``template would print None for <path>`` (or
``template would print None``) so "Hi None," is never sent,
``template is not allowed to do that: <why>`` (sandbox), ``rendered template is longer
than <n> characters``, ``string result too long (max 10000 chars)`` and the other
arithmetic caps shared with expressions, ``unknown timezone '<tz>'`` and
``cannot render template: <reason>`` for anything else.

Attribute access on mappings reads keys only (``event.items`` is the key ``items``,
never the dict method), like expressions.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from jinja2 import Template, meta, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.runtime import Context, StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from .expressions import (
    CONTEXT_NAMES,
    LimitExceededError,
    capped_add,
    capped_multiply,
    capped_power,
    did_you_mean,
    numeric_modulo,
)
from .filters import FILTER_NAMES, FILTERS, RENDER_TIMEZONE_VARIABLE
from .functions import load_zone

__all__ = ["CompiledTemplate", "RenderError", "TemplateError", "compile_template"]


class TemplateError(ValueError):
    """A template was rejected at compile time; ``line`` is 1-based within the template."""

    def __init__(self, message: str, *, line: int = 1, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.hint = hint

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,), {"line": self.line, "hint": self.hint})


class RenderError(Exception):
    """Rendering failed; the only error ``CompiledTemplate.render`` raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- environments --------------------------------------------------------------------


class _MissingDetail(str):
    """An undefined-value message that remembers what was looked up, and on what."""

    owner: Any
    key: Any
    refused: bool


class _ReportingUndefined(StrictUndefined):
    """StrictUndefined whose error message carries the owner and key for ``render``."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        detail = _MissingDetail(super()._undefined_message)
        detail.owner = self._undefined_obj
        detail.key = self._undefined_name
        detail.refused = self._undefined_hint is not None
        return detail


class _PrintedNoneError(Exception):
    """A ``{{ ... }}`` evaluated to None."""


def _refuse_none(value: Any) -> Any:
    if value is None:
        raise _PrintedNoneError
    return value


_BINARY_OPERATORS: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "+": capped_add,
    "*": capped_multiply,
    "**": capped_power,
    "%": numeric_modulo,
}


class _JourneySandbox(ImmutableSandboxedEnvironment):
    """The sandbox with size-capped arithmetic and key-only attribute access on mappings."""

    intercepted_binops = frozenset(_BINARY_OPERATORS)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        return _BINARY_OPERATORS[operator](left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


def _environment(*, html: bool) -> _JourneySandbox:
    environment = _JourneySandbox(
        autoescape=html, undefined=_ReportingUndefined, finalize=_refuse_none
    )
    environment.globals.clear()  # no range(), lipsum(), dict(), cycler(), namespace()
    environment.filters = dict(FILTERS)
    return environment


_ENVIRONMENTS: Final[Mapping[bool, _JourneySandbox]] = {
    True: _environment(html=True),
    False: _environment(html=False),
}
_TEST_NAMES: Final = frozenset(_ENVIRONMENTS[False].tests)

# --- compile-time checks -------------------------------------------------------------

_FORBIDDEN_TAGS: Final[Mapping[type[nodes.Node], str]] = {
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
    nodes.Extends: "extends",
    nodes.Macro: "macro",
    nodes.CallBlock: "call",
    nodes.EvalContextModifier: "autoescape",
    nodes.ScopedEvalContextModifier: "autoescape",
}
_FORBIDDEN_RANK, _UNKNOWN_TOOL_RANK, _UNKNOWN_NAME_RANK = 0, 1, 2
_PRIVATE = "'{}' is not allowed: names starting with '_' are private"
_NO_CALLS = "calls are not allowed in templates"


class _Problem(NamedTuple):
    rank: int
    line: int
    depth: int  # deeper first on the same line: the leftmost part of x.__a__.__b__
    message: str
    hint: str | None


class _Visit(NamedTuple):
    node: nodes.Node
    parent: nodes.Node | None
    depth: int


def _walk(root: nodes.Node) -> Iterator[_Visit]:
    stack = [_Visit(root, None, 0)]
    while stack:
        visit = stack.pop()
        yield visit
        children = list(visit.node.iter_child_nodes())
        stack.extend(_Visit(child, visit.node, visit.depth + 1) for child in reversed(children))


def _string_key(node: nodes.Getitem) -> str | None:
    if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return node.arg.value
    return None


def _path_of(node: nodes.Node) -> tuple[str, ...] | None:
    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and (key := _string_key(node)) is not None:
            parts.append(key)
            node = node.node
        elif isinstance(node, nodes.Name):
            parts.append(node.name)
            return tuple(reversed(parts))
        else:
            return None


def _extends_path(parent: nodes.Node | None, child: nodes.Node) -> bool:
    if isinstance(parent, nodes.Getattr):
        return parent.node is child
    if isinstance(parent, nodes.Getitem):
        return parent.node is child and _string_key(parent) is not None
    return False


def _is_printed(parent: nodes.Node | None, child: nodes.Node) -> bool:
    if isinstance(parent, nodes.Output):
        return True
    return isinstance(parent, nodes.Filter) and parent.node is child


def _problem_with(node: nodes.Node) -> tuple[int, str, str | None] | None:
    """What, if anything, is wrong with this one node: (rank, message, hint)."""
    tag = _FORBIDDEN_TAGS.get(type(node))
    if tag is not None:
        return _FORBIDDEN_RANK, f"'{{% {tag} %}}' is not allowed in templates", None
    if isinstance(node, nodes.Call):
        return _FORBIDDEN_RANK, _NO_CALLS, "use a filter instead, e.g. {{ name | upper }}"
    private = None
    if isinstance(node, nodes.Getattr):
        private = node.attr
    elif isinstance(node, nodes.Getitem):
        private = _string_key(node)
    elif isinstance(node, nodes.Name):
        private = node.name
    if private is not None and private.startswith("_"):
        return _FORBIDDEN_RANK, _PRIVATE.format(private), None
    if isinstance(node, nodes.Filter) and node.name not in FILTER_NAMES:
        hint = did_you_mean(node.name, FILTER_NAMES) or (
            f"available filters: {', '.join(sorted(FILTER_NAMES))}"
        )
        return _UNKNOWN_TOOL_RANK, f"unknown filter '{node.name}'", hint
    if isinstance(node, nodes.Test) and node.name not in _TEST_NAMES:
        return (
            _UNKNOWN_TOOL_RANK,
            f"unknown test '{node.name}'",
            did_you_mean(node.name, _TEST_NAMES),
        )
    return None


def _problems(tree: nodes.Template) -> list[_Problem]:
    problems: list[_Problem] = []
    for node, _parent, depth in _walk(tree):
        found = _problem_with(node)
        if found is not None:
            rank, message, hint = found
            problems.append(_Problem(rank, node.lineno, depth, message, hint))
    return problems


def _first_error(problems: list[_Problem]) -> TemplateError:
    first = min(problems, key=lambda problem: (problem.rank, problem.line, -problem.depth))
    return TemplateError(first.message, line=first.line, hint=first.hint)


def _syntax_error(error: TemplateSyntaxError) -> TemplateError:
    return TemplateError(f"cannot parse template: {error.message}", line=error.lineno or 1)


# --- the compiled template -----------------------------------------------------------


def _lookup(context: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = context
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return missing
        value = value[key]
    return value


@dataclass(frozen=True)
class CompiledTemplate:
    """A checked, compiled template; ``render`` it as many times as needed.

    ``names`` are the context names it reads; ``attribute_paths`` the longest dotted
    paths read from them, in source order, e.g. ``("profile", "first_name")``.
    """

    source: str
    html: bool
    names: frozenset[str]
    attribute_paths: tuple[tuple[str, ...], ...]
    _template: Template = field(repr=False, compare=False)
    _printed_paths: tuple[tuple[str, ...], ...] = field(repr=False, compare=False, default=())

    def render(
        self, context: Mapping[str, Any], *, timezone: str = "UTC", max_length: int = 100_000
    ) -> str:
        """Render with ``context``; dates are shown in ``timezone`` (IANA name).

        Raises ``RenderError`` and nothing else: for a missing variable or attribute,
        a printed None, a sandbox refusal, or output longer than ``max_length``.
        """
        try:
            load_zone(timezone)
        except ValueError as error:
            raise RenderError(str(error)) from None
        try:
            variables = dict(context)
            variables[RENDER_TIMEZONE_VARIABLE] = timezone
            pieces: list[str] = []
            length = 0
            for piece in self._template.generate(variables):
                length += len(piece)
                if length > max_length:
                    raise RenderError(f"rendered template is longer than {max_length} characters")
                pieces.append(piece)
            return "".join(pieces)
        except RenderError:
            raise
        except UndefinedError as error:
            raise RenderError(self._missing_message(error, context)) from error
        except _PrintedNoneError as error:
            raise RenderError(self._printed_none_message(context)) from error
        except SecurityError as error:
            raise RenderError(f"template is not allowed to do that: {error}") from error
        except LimitExceededError as error:
            raise RenderError(error.message) from error
        except Exception as error:
            reason = str(error) or type(error).__name__
            raise RenderError(f"cannot render template: {reason}") from error

    def _missing_message(self, error: UndefinedError, context: Mapping[str, Any]) -> str:
        detail = error.args[0] if error.args else None
        if not isinstance(detail, _MissingDetail):
            return f"template needs a value that is missing: {error}"
        if detail.refused:
            return f"template is not allowed to do that: {detail}"
        if detail.owner is missing:
            return f"template needs {detail.key}, which is missing"
        for path in self.attribute_paths:
            for end in range(1, len(path)):
                if path[end] == detail.key and _lookup(context, path[:end]) is detail.owner:
                    return f"template needs {'.'.join(path[: end + 1])}, which is missing"
        for name, value in context.items():
            if value is detail.owner:
                return f"template needs {name}.{detail.key}, which is missing"
        return f"template needs {detail.key}, which is missing"

    def _printed_none_message(self, context: Mapping[str, Any]) -> str:
        for path in self._printed_paths:
            if _lookup(context, path) is None:
                return f"template would print None for {'.'.join(path)}"
        return "template would print None"


def compile_template(
    source: str, *, html: bool, names: Collection[str] = CONTEXT_NAMES
) -> CompiledTemplate:
    """Parse, check and compile ``source``; ``html=True`` turns on autoescaping.

    ``names`` are the context names the template may read. Raises ``TemplateError``
    (see the module docstring for every message).
    """
    if not isinstance(source, str):
        raise TemplateError(f"template must be text, got {type(source).__name__}")
    environment = _ENVIRONMENTS[html]
    try:
        tree = environment.parse(source)
    except TemplateSyntaxError as error:
        raise _syntax_error(error) from None

    problems = _problems(tree)
    if problems:
        raise _first_error(problems)

    try:
        free_names = meta.find_undeclared_variables(tree)
    except TemplateSyntaxError as error:
        raise _syntax_error(error) from None
    reads = _reads(tree, free_names, names)
    if reads.unknown:
        raise _first_error(reads.unknown)

    try:
        template = environment.from_string(tree)
    except TemplateSyntaxError as error:
        raise _syntax_error(error) from None
    return CompiledTemplate(
        source=source,
        html=html,
        names=frozenset(free_names),
        attribute_paths=reads.paths,
        _template=template,
        _printed_paths=reads.printed,
    )


class _Reads(NamedTuple):
    """What a template reads: free names it may not (as problems), the attribute paths
    below its free names, and those of them (or bare names) it prints."""

    unknown: list[_Problem]
    paths: tuple[tuple[str, ...], ...]
    printed: tuple[tuple[str, ...], ...]


def _reads(tree: nodes.Template, free_names: set[str], names: Collection[str]) -> _Reads:
    unknown: list[_Problem] = []
    paths: dict[tuple[str, ...], None] = {}  # a dict keeps the first-seen order
    printed: dict[tuple[str, ...], None] = {}
    for node, parent, depth in _walk(tree):
        if isinstance(node, nodes.Name) and node.name in free_names:
            if node.name not in names:
                unknown.append(_unknown_name(node, depth, names))
            if _is_printed(parent, node):
                printed.setdefault((node.name,), None)
        if isinstance(node, nodes.Getattr | nodes.Getitem) and not _extends_path(parent, node):
            path = _path_of(node)
            if path is not None and path[0] in free_names:
                paths.setdefault(path, None)
                if _is_printed(parent, node):
                    printed.setdefault(path, None)
    return _Reads(unknown, tuple(paths), tuple(printed))


def _unknown_name(node: nodes.Name, depth: int, names: Collection[str]) -> _Problem:
    hint = did_you_mean(node.name, names) or f"available names: {', '.join(sorted(names))}"
    return _Problem(_UNKNOWN_NAME_RANK, node.lineno, depth, f"unknown name '{node.name}'", hint)
