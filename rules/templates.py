"""Journey templates: Jinja2 in a sandbox, checked at compile time, strict at render time.

Lives here: the two sandboxed environments (HTML-escaping and plain text, created once at
import), ``compile_template`` with its static checks, and ``CompiledTemplate.render``.
Must not live here: filter implementations (``rules.filters``; their caps and metering
do live here), I/O (template files are read by the caller), ``temporalio`` imports, and
state shared between renders.

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
- ``'{% for %}' loops nested <n> deep are not allowed (at most 3: each level multiplies
  the work)``
- a render cap that a part made of literals only would break on every render, e.g.
  ``string result too long (max 10000 chars) in '*'`` for ``{{ '=' * 20000 }}``

Forbidden constructs are reported before unknown filters/tests, those before unknown
names, those before broken caps, then the first line first.

Render errors (``RenderError.message``): ``template needs <path>, which is missing``
(StrictUndefined: a missing variable or attribute; the path is dotted when it can be
traced, e.g. ``profile.first_name``), ``template would print None for <path>`` (or
``template would print None``) so "Hi None," is never sent,
``template is not allowed to do that: <why>`` (sandbox), ``rendered template is longer
than <n> characters``, ``unknown timezone '<tz>'``, the render bounds below, and
``cannot render template: <reason>`` for anything else.

Render bounds (docs/security.md, "Template rendering bounds"): a string that an
operation builds is at most ``MAX_STRING_LENGTH`` (10,000) characters, or as long as a
longer string a filter was given: ``string result too long (max 10000 chars) in <what>``
with ``<what>`` one of ``'~'``, ``'+'``, ``'*'``, ``join``, ``filter '<name>'``, ``a {%
set %} or {% filter %} block``; lists stay within 1000 items (``list result too long
(max 1000 items) in '+'``), powers and integer products within 300 digits (``number too
large: the result of '*' would have more than 300 digits``). Each render has a budget
(a ``ContextVar`` set by ``render``, never shared): ``template rendering took more than
100000 steps (...)``, ``template rendering built more than 1000000 characters``.

Attribute access on mappings reads keys only (``event.items`` is the key ``items``,
never the dict method), like expressions.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from jinja2 import Template, meta, nodes, pass_eval_context
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.filters import make_attrgetter, sync_do_join
from jinja2.runtime import Context, StrictUndefined, Undefined, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing
from jinja2.visitor import NodeTransformer
from markupsafe import soft_str

from .expressions import (
    CONTEXT_NAMES,
    MAX_POWER_DIGITS,
    MAX_STRING_LENGTH,
    LimitExceededError,
    capped_add,
    capped_multiply,
    capped_power,
    did_you_mean,
    numeric_modulo,
)
from .filters import FILTER_NAMES, FILTERS, RENDER_TIMEZONE_VARIABLE
from .functions import load_zone

__all__ = [
    "MAX_LOOP_NESTING",
    "MAX_RENDER_CHARACTERS",
    "MAX_RENDER_STEPS",
    "CompiledTemplate",
    "RenderError",
    "TemplateError",
    "compile_template",
]

MAX_RENDER_STEPS: Final = 100_000
"""Loop iterations, operators, filters, tests, lookups and printed values, per render."""
MAX_RENDER_CHARACTERS: Final = 1_000_000
"""Characters (and list items) that operations may build or scan, in all, per render."""
MAX_LOOP_NESTING: Final = 3
"""How deep ``{% for %}`` loops may nest; each level multiplies the work."""


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


# --- render bounds -------------------------------------------------------------------
#
# Every operation a template can run is metered against one budget per render: a step
# each (operators, lookups, filters, tests, loop iterations, printed values), and the
# characters it builds or scans. Operations that build strings are also capped per value
# (``MAX_STRING_LENGTH``), and checked before they build when they can multiply sizes
# (``~``, ``join``, ``*``, ``replace``, set blocks). See docs/security.md.

_TOO_MANY_STEPS: Final = (
    f"template rendering took more than {MAX_RENDER_STEPS} steps"
    " (loop iterations, operators, filters and printed values)"
)
_TOO_MANY_CHARACTERS: Final = (
    f"template rendering built more than {MAX_RENDER_CHARACTERS} characters"
)
_PLAIN_TOO_LONG: Final = f"string result too long (max {MAX_STRING_LENGTH} chars)"


class _Budget:
    """What one render has spent so far."""

    __slots__ = ("characters", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.characters = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_RENDER_STEPS:
            raise LimitExceededError(_TOO_MANY_STEPS)

    def charge(self, size: int) -> None:
        self.characters += size
        if self.characters > MAX_RENDER_CHARACTERS:
            raise LimitExceededError(_TOO_MANY_CHARACTERS)


_BUDGET: Final[ContextVar[_Budget | None]] = ContextVar("journeys_render_budget", default=None)
"""The budget of the render running in this thread; None outside ``render`` (Jinja's
compile-time constant folding is capped per value but not metered)."""


def _step() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.step()


def _charge(size: int) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.charge(size)


def _too_long(where: str) -> LimitExceededError:
    return LimitExceededError(f"{_PLAIN_TOO_LONG} in {where}")


def _built(value: Any, where: str, *, allowance: int = 0) -> Any:
    """``value``, which ``where`` just built: a string longer than the cap (or than
    ``allowance``, the length of a longer string it was given) is refused; strings and
    lists are charged to the budget."""
    if isinstance(value, str):
        if len(value) > max(MAX_STRING_LENGTH, allowance):
            raise _too_long(where)
        _charge(len(value))
    elif isinstance(value, list | tuple):
        _charge(len(value))
    return value


_CONTAINERS: Final = (list, tuple, Mapping)


def _text_longer_than(value: Any, limit: int) -> bool:
    """Whether the text of a list, tuple or mapping would be longer than ``limit``, found
    without building it: ``[event.items] * 1000`` prints as hundreds of megabytes."""
    size = 0
    stack = [value]
    while stack:
        item = stack.pop()
        children: Iterable[Any] = ()
        if isinstance(item, list | tuple):
            size += 2 + 2 * len(item)  # brackets, and ", " between items
            children = item
        elif isinstance(item, Mapping):
            size += 2 + 4 * len(item)  # braces, ": " and ", "
            children = itertools.chain.from_iterable(item.items())
        elif isinstance(item, str):
            size += len(item) + 2  # quotes (escapes make it longer: checked once built)
        else:
            size += len(repr(item))
        if size > limit:
            return True
        stack.extend(children)
    return False


def _text(value: Any, where: str, limit: int) -> str:
    """``value`` as Jinja prints it (Markup stays Markup), refused before a list or
    mapping is turned into more than ``limit`` characters."""
    if isinstance(value, _CONTAINERS) and _text_longer_than(value, limit):
        raise _too_long(where)
    return soft_str(value)


def _texts(values: Iterable[Any], where: str, *, separator: int = 0) -> list[str]:
    """Each value as text, refused as soon as they (with ``separator`` characters between
    them) add up to more than the cap: nothing over the cap is ever built."""
    texts: list[str] = []
    size = -separator
    for value in values:
        text = _text(value, where, max(MAX_STRING_LENGTH - size - separator, 0))
        size += separator + len(text)
        if size > MAX_STRING_LENGTH:
            raise _too_long(where)
        texts.append(text)
    return texts


def _concatenate(values: Iterable[Any], *, html: bool) -> str:
    """``a ~ b ~ c`` as Jinja does it (escaping in HTML when a part is Markup), capped."""
    _step()
    texts = _texts(values, "'~'")
    text: str = _built(markup_join(texts) if html else str_join(texts), "'~'")
    return text


@pass_eval_context
def _capped_join(eval_ctx: Any, value: Any, d: Any = "", attribute: Any = None) -> Any:
    """Jinja's ``join``, refused before it builds a string over the cap: a long separator
    between many items is the classic blow-up (``items | join(sep)``)."""
    _step()
    if attribute is not None:
        value = map(make_attrgetter(eval_ctx.environment, attribute), value)
    separator = _text(d, "join", MAX_STRING_LENGTH)
    texts = _texts(value, "join", separator=len(separator))
    return _built(sync_do_join(eval_ctx, texts, d), "join")


_PASS_THROUGH_FILTERS: Final = frozenset({"default", "first", "last", "length"})
"""Filters that give back their input, a part of it, or its length: a step, no charge."""


def _metered_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` taking a step per call; unless it passes its input through, its input
    text is charged and its result capped: no longer than the cap, or than its input."""
    where = f"filter '{name}'"
    value_at = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(function)  # keeps jinja_pass_arg, so Jinja passes the same arguments
    def stepped(*args: Any, **kwargs: Any) -> Any:
        _step()
        return function(*args, **kwargs)

    @functools.wraps(function)
    def metered(*args: Any, **kwargs: Any) -> Any:
        _step()
        value = args[value_at] if len(args) > value_at else None
        allowance = 0
        if isinstance(value, str):
            allowance = len(value)
            _charge(allowance)
        elif isinstance(value, _CONTAINERS) and _text_longer_than(value, MAX_STRING_LENGTH):
            raise _too_long(where)
        try:
            result = function(*args, **kwargs)
        except LimitExceededError as error:
            if error.message == _PLAIN_TOO_LONG:  # capped_replace's own check
                raise _too_long(where) from None
            raise
        return _built(result, where, allowance=allowance)

    return stepped if name in _PASS_THROUGH_FILTERS else metered


def _metered_test(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` taking a step per call; ``is in`` also charges the length it scans."""

    @functools.wraps(function)
    def metered(*args: Any, **kwargs: Any) -> Any:
        _step()
        if name == "in" and len(args) > 1:
            _scanned(args[1])
        return function(*args, **kwargs)

    return metered


def _scanned(container: Any) -> Any:
    """The right side of ``in``: a search costs its length."""
    if isinstance(container, str | list | tuple | Mapping):
        _charge(len(container))
    return container


# Products of integers get the same cap as powers: squaring again and again
# (``{% set b = a * a %}``) doubles the digits at each step.
_MAX_PRODUCT_BITS: Final = math.floor(MAX_POWER_DIGITS / math.log10(2))


def _capped_product(left: Any, right: Any) -> Any:
    if (
        isinstance(left, int)
        and isinstance(right, int)
        and abs(left).bit_length() + abs(right).bit_length() > _MAX_PRODUCT_BITS
    ):
        raise LimitExceededError(
            f"number too large: the result of '*' would have more than {MAX_POWER_DIGITS} digits"
        )
    return capped_multiply(left, right)


_BINARY_OPERATORS: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "+": capped_add,
    "-": operator.sub,
    "*": _capped_product,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": numeric_modulo,
    "**": capped_power,
}


def _binop(symbol: str, left: Any, right: Any) -> Any:
    """``left <symbol> right``, capped and metered; the same at compile time (literals)."""
    _step()
    try:
        result = _BINARY_OPERATORS[symbol](left, right)
    except LimitExceededError as error:
        if "result too long" in error.message:  # the string and list caps: say which operator
            raise LimitExceededError(f"{error.message} in '{symbol}'") from None
        raise
    return _built(result, f"'{symbol}'")


class _PrintedNoneError(Exception):
    """A ``{{ ... }}`` evaluated to None."""


def _finalize(value: Any) -> Any:
    """What ``{{ }}`` prints: never None; in a render, a step, and its text charged."""
    if value is None:
        raise _PrintedNoneError
    budget = _BUDGET.get()
    if budget is None or isinstance(value, Undefined):
        return value
    budget.step()
    if not isinstance(value, str):
        left = MAX_RENDER_CHARACTERS - budget.characters
        if isinstance(value, _CONTAINERS) and _text_longer_than(value, left):
            raise LimitExceededError(_TOO_MANY_CHARACTERS)
        value = str(value)
    budget.charge(len(value))
    return value


class _JourneySandbox(ImmutableSandboxedEnvironment):
    """The sandbox with capped, metered operations and key-only attribute access on mappings.

    Operators, lookups, filters, tests and printed values meter themselves; ``~``, loops
    and ``in`` reach the ``_journeys_*`` hooks through calls that ``_Metering`` puts into
    each checked tree (templates themselves cannot call anything).
    """

    intercepted_binops = frozenset(_BINARY_OPERATORS)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        return _binop(operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _step()
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _step()
        value = super().getitem(obj, argument)
        if isinstance(argument, slice) and isinstance(value, str | list | tuple):
            _charge(len(value))
        return value

    def concat(self, pieces: Iterable[str]) -> str:
        """Joins the output of ``{% set x %}...{% endset %}`` and ``{% filter %}`` blocks
        (Jinja's generated code calls ``environment.concat``): capped before joining."""
        texts = pieces if isinstance(pieces, list) else list(pieces)
        size = sum(map(len, texts))
        if size > MAX_STRING_LENGTH:
            raise _too_long("a {% set %} or {% filter %} block")
        _charge(size)
        return "".join(texts)

    def _journeys_concat(self, *values: Any) -> str:
        return _concatenate(values, html=self.autoescape is True)

    def _journeys_loop(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            _step()
            yield item

    def _journeys_scan(self, container: Any) -> Any:
        return _scanned(container)


def _environment(*, html: bool) -> _JourneySandbox:
    environment = _JourneySandbox(
        autoescape=html, undefined=_ReportingUndefined, finalize=_finalize
    )
    environment.globals.clear()  # no range(), lipsum(), dict(), cycler(), namespace()
    environment.filters = {name: _metered_filter(name, f) for name, f in FILTERS.items()}
    environment.filters["join"] = _capped_join
    tests: Mapping[str, Callable[..., Any]] = environment.tests  # type: ignore[assignment]
    environment.tests = {name: _metered_test(name, test) for name, test in tests.items()}
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
_FORBIDDEN_RANK, _UNKNOWN_TOOL_RANK, _UNKNOWN_NAME_RANK, _BOUNDS_RANK = 0, 1, 2, 3
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


# --- bounds that can be seen in the source --------------------------------------------

_DEEP_LOOPS = (
    "'{{% for %}}' loops nested {} deep are not allowed (at most {}: each level multiplies "
    "the work)"
)


def _bound_problems(tree: nodes.Template) -> list[_Problem]:
    """Templates that would break a cap on every render: loops nested deeper than
    ``MAX_LOOP_NESTING``, and literal parts that build more than the caps allow
    (``{{ '=' * 20000 }}``). Anything that depends on the data is left to the render."""
    problems = [
        _Problem(_BOUNDS_RANK, loop.lineno, 0, _DEEP_LOOPS.format(depth, MAX_LOOP_NESTING), None)
        for loop, depth in _deep_loops(tree, 0)
    ]
    _fold(tree, problems)
    return problems


def _deep_loops(node: nodes.Node, loops: int) -> Iterator[tuple[nodes.Node, int]]:
    """The outermost loops nested deeper than allowed, with their depth."""
    for child in node.iter_child_nodes():
        depth = loops + isinstance(child, nodes.For)
        if depth > MAX_LOOP_NESTING:
            yield child, depth
        else:
            yield from _deep_loops(child, depth)


def _literal_parts(node: nodes.Node) -> list[nodes.Node] | None:
    if isinstance(node, nodes.BinExpr):
        return [node.left, node.right]
    if isinstance(node, nodes.Concat):
        return list(node.nodes)
    if isinstance(node, nodes.List | nodes.Tuple):
        return list(node.items)
    return None


def _fold(node: nodes.Node, problems: list[_Problem]) -> Any:
    """``node``'s value when it is made of literals only, else ``missing``; a literal
    operation that breaks a cap is added to ``problems``."""
    if isinstance(node, nodes.Const):
        return node.value
    children = _literal_parts(node)
    if children is None:
        for child in node.iter_child_nodes():
            _fold(child, problems)
        return missing
    parts = [_fold(child, problems) for child in children]
    if any(part is missing for part in parts):
        return missing
    try:
        if isinstance(node, nodes.BinExpr):
            return _binop(node.operator, *parts)
        if isinstance(node, nodes.Concat):
            return _concatenate(parts, html=False)
    except LimitExceededError as error:
        problems.append(_Problem(_BOUNDS_RANK, node.lineno, 0, error.message, None))
        return missing
    except Exception:  # a literal that fails in another way fails the same at render
        return missing
    return parts if isinstance(node, nodes.List) else tuple(parts)


def _hook(name: str, arguments: list[Any], at: nodes.Node) -> nodes.Call:
    hook = nodes.EnvironmentAttribute(name, lineno=at.lineno)
    return nodes.Call(hook, arguments, [], None, None, lineno=at.lineno)


class _Metering(NodeTransformer):
    """Routes ``~``, ``{% for %}`` and the right side of ``in`` through the sandbox's
    metered hooks; applied to a tree after it passed every check."""

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _hook("_journeys_concat", node.nodes, node)

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _hook("_journeys_loop", [node.iter], node.iter)
        return node

    def visit_Operand(self, node: nodes.Operand) -> nodes.Node:
        self.generic_visit(node)
        if node.op in ("in", "notin"):
            node.expr = _hook("_journeys_scan", [node.expr], node.expr)
        return node


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
        token = _BUDGET.set(_Budget())
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
        finally:
            _BUDGET.reset(token)

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
    bounds = _bound_problems(tree)
    if bounds:
        raise _first_error(bounds)

    tree = _Metering().visit(tree)
    tree.set_environment(environment)
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
