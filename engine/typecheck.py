"""Design-time types of expressions and templates: what a value certainly is, and misuse.

Lives here: the small type lattice (``any``, ``none``, ``boolean``, ``number``, ``string``,
``timestamp``, ``list``, ``object``, ``model result``), the types of the context names
(``Scope``: event schemas, the profile's declared traits, the ``vars`` a journey's ``set``
steps and decision tables write, model results), and the walks over an expression's Python
AST and a template's Jinja AST that report what can never work: comparisons and arithmetic
between incompatible types, attributes of scalars, ``in`` on a non-collection, a model
result used as a number, and functions and filters given the wrong type.

Must not live here: parsing rules (``rules.expressions`` and ``rules.templates`` reject
what they reject first; this module only ever sees sources they accepted, but never
raises on any input), reporting (the validator turns ``TypeProblem`` into violations) and
anything the compiled plan holds: types exist only at validation time.

Conservative by design: a value of unknown type is ``any`` (undeclared traits and event
properties, call results, a name written with different types), and a problem is reported
only when every type involved is known and the operation can never do what it says.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from jinja2 import Environment, nodes

from engine import spec
from engine.unary import AnyValue, Literals, NumberRange, UnaryTest

__all__ = [
    "ANY",
    "Scope",
    "Type",
    "TypeProblem",
    "check_cell",
    "check_expression",
    "check_template",
    "expression_type",
    "journey_var_types",
    "scope_for",
]


@dataclass(frozen=True)
class Type:
    """A value's type; ``fields`` are an object's known attributes (others are ``any``)."""

    kind: str
    fields: Mapping[str, Type] = field(default_factory=dict, compare=False, hash=False)

    @property
    def known(self) -> bool:
        return self.kind not in ("any", "none")

    def attribute(self, name: str) -> Type:
        return self.fields.get(name, ANY)


ANY: Final = Type("any")
NONE: Final = Type("none")
BOOL: Final = Type("boolean")
NUMBER: Final = Type("number")
STRING: Final = Type("string")
TIMESTAMP: Final = Type("timestamp")
LIST: Final = Type("list")
OBJECT: Final = Type("object")
MODEL_RESULT: Final = Type(
    "model result",
    {
        "score": NUMBER,
        "model": STRING,
        "model_version": STRING,
        "latency_ms": NUMBER,
        "fallback_used": BOOL,
        "error": STRING,
    },
)

_ARTICLES: Final = {
    "boolean": "a boolean",
    "number": "a number",
    "string": "a string",
    "timestamp": "a timestamp",
    "list": "a list",
    "object": "an object",
    "model result": "a model result",
}
_DECLARED: Final[Mapping[str, Type]] = {
    "string": STRING,
    "email": STRING,
    "phone": STRING,
    "number": NUMBER,
    "integer": NUMBER,
    "boolean": BOOL,
    "timestamp": TIMESTAMP,
    "object": OBJECT,
    "list": LIST,
}
_NUMERIC: Final = frozenset({"number", "boolean"})
_TEXTUAL: Final = frozenset({"string", "timestamp"})
_MAPPING: Final = frozenset({"object", "model result"})


def _a(kind: Type) -> str:
    return _ARTICLES.get(kind.kind, kind.kind)


def _family(kind: Type) -> str:
    """What ``==`` can tell apart: numbers (and booleans), text, lists, mappings."""
    if kind.kind in _NUMERIC:
        return "number"
    if kind.kind in _TEXTUAL:
        return "text"
    if kind.kind in _MAPPING:
        return "mapping"
    return kind.kind


def join(types: Iterable[Type]) -> Type:
    """The one type all of ``types`` share (``none`` joins anything), else ``any``."""
    found: Type | None = None
    for kind in types:
        if kind.kind == "none":
            continue
        if found is None:
            found = kind
        elif found.kind != kind.kind or found.fields != kind.fields:
            return ANY
    return found if found is not None else NONE


def declared_type(declaration: Any) -> Type:
    """The type a field declaration (``number``, ``{type: string, personal: pii}``) gives."""
    if isinstance(declaration, spec.PropertySpec):
        declaration = declaration.type
    return _DECLARED.get(declaration, ANY) if isinstance(declaration, str) else ANY


def _schema_type(schema: Mapping[str, Any] | None) -> Type:
    if schema is None:
        return OBJECT
    return Type("object", {name: declared_type(d) for name, d in schema.items()})


@dataclass(frozen=True)
class Scope:
    """The types of the context names at one place in a journey."""

    names: Mapping[str, Type]

    def of(self, name: str) -> Type:
        return self.names.get(name, ANY)


def _event_type(document: spec.Document, events: Iterable[str]) -> Type:
    """``event`` when it may be any of ``events``: a property's type when they all agree."""
    schemas = [document.events.get(name) for name in sorted(set(events))]
    if not schemas or any(schema is None for schema in schemas):
        return OBJECT
    properties: dict[str, Type] = {}
    names = set().union(*(schema or {} for schema in schemas))
    for name in names:
        if all(schema is not None and name in schema for schema in schemas):
            properties[name] = join(declared_type(schema[name]) for schema in schemas if schema)
            if properties[name].kind == "none":
                properties[name] = ANY
    return Type("object", properties)


def scope_for(
    document: spec.Document,
    *,
    events: Iterable[str],
    entry_event: str | None,
    var_types: Mapping[str, Type] | None = None,
) -> Scope:
    """The context's types where ``event`` may be any of ``events``."""
    entry = document.events.get(entry_event) if entry_event is not None else None
    return Scope(
        {
            "event": _event_type(document, events),
            "trigger": Type(
                "object",
                {
                    "properties": _schema_type(entry),
                    "name": STRING,
                    "timestamp": TIMESTAMP,
                    "message_id": STRING,
                },
            ),
            "profile": _schema_type(document.profile),
            "customer": Type("object", {"email": STRING, "phone": STRING, "push_token": STRING}),
            "vars": Type("object", dict(var_types or {})),
            "scores": Type("object", {name: MODEL_RESULT for name in document.models}),
            "review": Type(
                "object",
                {"decision": STRING, "reviewer": STRING, "note": STRING, "at": TIMESTAMP},
            ),
            "journey": Type("object", {"id": STRING, "run_id": STRING, "step": STRING}),
            "run": Type("object", {"status_url": STRING}),
            "now": TIMESTAMP,
        }
    )


def journey_var_types(
    document: spec.Document, journey: spec.Journey, events: Mapping[str, Iterable[str]]
) -> dict[str, Type]:
    """The type of each ``vars.<name>`` the journey writes, when every writer agrees.

    ``events`` are the events ``event`` may be at each step (by step id). A call step's
    response, a ``collect`` table's outputs (lists) and expressions of unknown type count
    as writers too, so a name written two ways is ``any``.
    """
    written: dict[str, list[Type]] = {}
    for step in journey.steps:
        scope = scope_for(document, events=events.get(step.id, ()), entry_event=journey.entry.event)
        if isinstance(step, spec.SetStep):
            for target, source in step.set.items():
                root, _, name = target.partition(".")
                if root == "vars":
                    written.setdefault(name, []).append(expression_type(source, scope))
        elif isinstance(step, spec.CallStep):
            written.setdefault(step.id, []).append(ANY)
        elif isinstance(step, spec.DecideStep):
            collect = step.decide.hit == "collect"
            for rule in step.decide.rules:
                for name, source in rule.set.items():
                    kind = LIST if collect else expression_type(source, scope)
                    written.setdefault(name, []).append(kind)
    types: dict[str, Type] = {}
    for name, kinds in written.items():
        kind = join(kinds)
        if kind.known:
            types[name] = kind
    return types


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class TypeProblem:
    """One certain misuse: ``column`` (0-based, in the source) or template ``line``."""

    message: str
    hint: str | None
    column: int = 0
    line: int = 1


MAX_QUOTED: Final = 60


def _quoted(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_QUOTED else text[: MAX_QUOTED - 1] + "…"


def _parse(source: str) -> tuple[ast.expr, str, int] | None:
    if not isinstance(source, str):
        return None
    body = source.lstrip()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(body, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return tree.body, body, len(source) - len(body)


def check_expression(source: str, scope: Scope) -> list[TypeProblem]:
    """Every certain type misuse in ``source``, leftmost first; never raises."""
    parsed = _parse(source)
    if parsed is None:
        return []
    tree, body, lead = parsed
    walker = _Expressions(scope, body, lead)
    try:
        walker.type_of(tree)
    except RecursionError:
        return []
    return sorted(walker.problems, key=lambda problem: problem.column)


def expression_type(source: str, scope: Scope) -> Type:
    """The type of ``source``'s value (``any`` when unknown or unparsable); never raises."""
    parsed = _parse(source)
    if parsed is None:
        return ANY
    tree, body, lead = parsed
    try:
        return _Expressions(scope, body, lead).type_of(tree)
    except RecursionError:
        return ANY


_ORDERING: Final = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_EQUALITY: Final = {ast.Eq: "==", ast.NotEq: "!="}
_MEMBERSHIP: Final = {ast.In: "in", ast.NotIn: "not in"}
_ARITHMETIC: Final = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}


def _model_hint(text: str) -> str:
    return f"did you mean `{text}.score`?"


class _Expressions:
    """Infers the type of each node of one expression, collecting certain misuses."""

    def __init__(self, scope: Scope, body: str, lead: int) -> None:
        self.scope = scope
        self.body = body
        self.lead = lead
        self.lines = body.split("\n")
        self.problems: list[TypeProblem] = []

    # -- positions and text

    def column(self, node: ast.AST) -> int:
        lineno = getattr(node, "lineno", 1)
        offset = getattr(node, "col_offset", 0)
        if not 1 <= lineno <= len(self.lines):
            return self.lead
        before = sum(len(line) + 1 for line in self.lines[: lineno - 1])
        prefix = self.lines[lineno - 1].encode()[:offset].decode(errors="ignore")
        return self.lead + before + len(prefix)

    def text(self, node: ast.AST) -> str:
        segment = ast.get_source_segment(self.body, node)
        return _quoted(segment) if segment else type(node).__name__

    def report(self, node: ast.AST, message: str, hint: str | None) -> None:
        self.problems.append(TypeProblem(message, hint, column=self.column(node)))

    def model_misuse(self, node: ast.AST, kind: Type, what: str) -> bool:
        """Report ``node`` (a model result) used as ``what``; True when it was one."""
        if kind.kind != "model result":
            return False
        text = self.text(node)
        self.report(
            node,
            f"{text} is a model result, not {what}",
            _model_hint(text),
        )
        return True

    # -- the walk

    def type_of(self, node: ast.AST) -> Type:
        if isinstance(node, ast.Constant):
            return _constant_type(node.value)
        if isinstance(node, ast.Name):
            return self.scope.of(node.id)
        if isinstance(node, ast.Attribute):
            return self.member(node, node.value, node.attr)
        if isinstance(node, ast.Subscript):
            return self.subscript(node)
        if isinstance(node, ast.Compare):
            self.compare(node)
            return BOOL
        if isinstance(node, ast.BinOp):
            return self.binop(node)
        if isinstance(node, ast.UnaryOp):
            return self.unary(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        return self.compound(node)

    def compound(self, node: ast.AST) -> Type:
        """``and``/``or``, ``a if c else b``, literals of lists and dicts, anything else."""
        if isinstance(node, ast.BoolOp):
            return join([self.type_of(value) for value in node.values])
        if isinstance(node, ast.IfExp):
            self.type_of(node.test)
            return join([self.type_of(node.body), self.type_of(node.orelse)])
        for child in ast.iter_child_nodes(node):
            self.type_of(child)
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            return LIST
        if isinstance(node, ast.Dict):
            return OBJECT
        return ANY

    def member(self, node: ast.AST, value: ast.AST, name: str) -> Type:
        owner = self.type_of(value)
        if owner.kind in _MAPPING:
            return owner.attribute(name)
        if owner.known:
            text = self.text(value)
            self.report(
                node,
                f"{text} is {_a(owner)}: it has no attribute '{name}' (always missing)",
                f"only objects have attributes; use {text} itself"
                if owner.kind != "list"
                else f"a list has items, not attributes: {text}[0]",
            )
        return ANY

    def subscript(self, node: ast.Subscript) -> Type:
        key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return self.member(node, node.value, key.value)
        owner = self.type_of(node.value)
        index = self.type_of(key)
        if owner.kind in _NUMERIC or owner.kind == "timestamp":
            text = self.text(node.value)
            self.report(
                node,
                f"{text} is {_a(owner)}: it has no items (always missing)",
                "only lists, strings and objects can be indexed",
            )
            return ANY
        if owner.kind == "string" and (isinstance(key, ast.Slice) or index.kind in _NUMERIC):
            return STRING
        if owner.kind == "list" and isinstance(key, ast.Slice):
            return LIST
        return ANY

    def compare(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        kinds = [self.type_of(operand) for operand in operands]
        for index, op in enumerate(node.ops):
            left, right = operands[index], operands[index + 1]
            lkind, rkind = kinds[index], kinds[index + 1]
            if type(op) in _MEMBERSHIP:
                self.membership(_MEMBERSHIP[type(op)], left, lkind, right, rkind)
            elif type(op) in _ORDERING or type(op) in _EQUALITY:
                symbol = _ORDERING.get(type(op)) or _EQUALITY[type(op)]
                self.comparison(symbol, left, lkind, right, rkind)

    def comparison(
        self, symbol: str, left: ast.AST, lkind: Type, right: ast.AST, rkind: Type
    ) -> None:
        if not (lkind.known and rkind.known):
            return
        if symbol in ("==", "!="):
            if _family(lkind) == _family(rkind):
                return
        elif (
            (lkind.kind in _NUMERIC and rkind.kind in _NUMERIC)
            or (lkind.kind in _TEXTUAL and rkind.kind in _TEXTUAL)
            or (lkind.kind == rkind.kind == "list")
        ):
            return
        for side, kind, other in ((left, lkind, rkind), (right, rkind, lkind)):
            if kind.kind == "model result" and other.kind in _NUMERIC:
                self.model_misuse(side, kind, "a number")
                return
        never = "always true" if symbol == "!=" else "never true"
        self.report(
            left,
            f"'{symbol}' compares {self.text(left)} ({_a(lkind)}) with {self.text(right)}"
            f" ({_a(rkind)}): {never}",
            f"compare {_a(lkind)} with {_a(lkind)}; check the declared types",
        )

    def membership(
        self, symbol: str, left: ast.AST, lkind: Type, right: ast.AST, rkind: Type
    ) -> None:
        if rkind.kind in _NUMERIC:
            self.report(
                right,
                f"'{symbol}' needs a list, string or object on its right; "
                f"{self.text(right)} is {_a(rkind)}",
                "use == to compare values, or a list: x in [1, 2]",
            )
        elif rkind.kind == "string" and lkind.known and lkind.kind not in _TEXTUAL:
            self.report(
                left,
                f"'{symbol}' looks for {self.text(left)} ({_a(lkind)}) in "
                f"{self.text(right)} (a string): never true",
                "only text can be found in a string",
            )

    def binop(self, node: ast.BinOp) -> Type:
        lkind, rkind = self.type_of(node.left), self.type_of(node.right)
        symbol = _ARITHMETIC.get(type(node.op))
        if symbol is None or not (lkind.known and rkind.known):
            return ANY
        result = _arithmetic(symbol, lkind, rkind)
        if result is not None:
            return result
        if "timestamp" in (lkind.kind, rkind.kind):
            return ANY  # a timestamp may be a datetime at run time: leave it be
        for side, kind, other in ((node.left, lkind, rkind), (node.right, rkind, lkind)):
            if kind.kind == "model result" and other.kind in _NUMERIC:
                self.model_misuse(side, kind, "a number")
                return ANY
        self.report(
            node,
            f"'{symbol}' between {self.text(node.left)} ({_a(lkind)}) and "
            f"{self.text(node.right)} ({_a(rkind)}) always fails",
            "arithmetic needs numbers on both sides; + also joins two strings or two lists",
        )
        return ANY

    def unary(self, node: ast.UnaryOp) -> Type:
        kind = self.type_of(node.operand)
        if isinstance(node.op, ast.Not):
            return BOOL
        if not kind.known or kind.kind == "timestamp":
            return ANY
        if kind.kind in _NUMERIC:
            return NUMBER
        if not self.model_misuse(node.operand, kind, "a number"):
            symbol = "-" if isinstance(node.op, ast.USub) else "+"
            self.report(
                node,
                f"'{symbol}' on {self.text(node.operand)} ({_a(kind)}) always fails",
                "only numbers have a sign",
            )
        return ANY

    def call(self, node: ast.Call) -> Type:
        arguments = [self.type_of(argument) for argument in node.args]
        for keyword in node.keywords:
            self.type_of(keyword.value)
        name = node.func.id if isinstance(node.func, ast.Name) else ""
        expected = _PARAMETERS.get(name)
        if expected is not None and arguments and node.args:
            wanted, allowed = expected
            kind = arguments[0]
            if kind.known and kind.kind not in allowed:
                argument = node.args[0]
                if not ("number" in allowed and self.model_misuse(argument, kind, "a number")):
                    self.report(
                        argument,
                        f"{name}() needs {wanted}; {self.text(argument)} is {_a(kind)}",
                        f"give {name}() {wanted}",
                    )
        if name == "round" and len(node.args) == 2:
            digits = arguments[1]
            if digits.known and digits.kind not in _NUMERIC:
                self.report(
                    node.args[1],
                    f"round() needs a whole number of digits; {self.text(node.args[1])} is "
                    f"{_a(digits)}",
                    "e.g. round(x, 2)",
                )
        if name in ("min", "max"):
            return ANY if len(arguments) == 1 else join(arguments)
        if name == "coalesce":
            return join(arguments)
        return _RESULTS.get(name, ANY)


def _constant_type(value: object) -> Type:
    if value is None:
        return NONE
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int | float):
        return NUMBER
    if isinstance(value, str):
        return STRING
    return ANY


def _arithmetic(symbol: str, left: Type, right: Type) -> Type | None:
    """The result of ``left symbol right`` when it works, else None."""
    if left.kind in _NUMERIC and right.kind in _NUMERIC:
        return NUMBER
    if symbol == "+" and left.kind == right.kind and left.kind in ("string", "list"):
        return left
    if symbol == "*":
        for one, other in ((left, right), (right, left)):
            if one.kind in ("string", "list") and other.kind in _NUMERIC:
                return one
    return None


_TIME_INPUT: Final = ("a timestamp, ISO-8601 text or epoch seconds", _TEXTUAL | {"number"})
_PARAMETERS: Final[Mapping[str, tuple[str, frozenset[str]]]] = {
    "lower": ("a string", frozenset({"string", "timestamp"})),
    "upper": ("a string", frozenset({"string", "timestamp"})),
    "len": ("a string, list or object", frozenset({"string", "list", "object", "model result"})),
    "round": ("a number", frozenset(_NUMERIC)),
    "abs": ("a number", frozenset(_NUMERIC)),
    "days_since": _TIME_INPUT,
    "hours_since": _TIME_INPUT,
    "minutes_since": _TIME_INPUT,
}
_RESULTS: Final[Mapping[str, Type]] = {
    "days_since": NUMBER,
    "hours_since": NUMBER,
    "minutes_since": NUMBER,
    "lower": STRING,
    "upper": STRING,
    "len": NUMBER,
    "round": NUMBER,
    "abs": NUMBER,
    "exists": BOOL,
    "local_hour": NUMBER,
}


def check_cell(
    name: str, source: str, cell: str, test: UnaryTest, scope: Scope
) -> TypeProblem | None:
    """A decision table's cell ``cell`` that can never match its input ``name`` (the
    expression ``source``), by the input's type; None when it may match."""
    kind = expression_type(source, scope)
    if not kind.known or kind.kind == "timestamp" or isinstance(test, AnyValue):
        return None
    if isinstance(test, NumberRange):
        if kind.kind == "number":
            return None
        wanted = "a number"
    elif isinstance(test, Literals):
        literals = {_cell_kind(value) for value in test.values}
        if kind.kind in literals:
            return None
        wanted = " or ".join(sorted(_ARTICLES[literal] for literal in literals)) or "a literal"
    else:
        return None
    message = (
        f"input '{name}' ({_quoted(source)}) is {_a(kind)}: the cell '{cell.strip()}' "
        f"tests for {wanted} and never matches"
    )
    if kind.kind == "model result" and wanted == "a number":
        return TypeProblem(message, _model_hint(_quoted(source.strip())))
    return TypeProblem(message, _CELL_HINTS.get(kind.kind, _CELL_HINTS["object"]))


_CELL_HINTS: Final[Mapping[str, str]] = {
    "string": 'test a text input with quoted text, e.g. "gold", "silver"',
    "number": "test a number input with a comparison, an interval or numbers: < 0.3, 1, 2",
    "boolean": "test a boolean input with true or false",
    "object": "a cell tests one number, text or boolean: make the input one of its fields",
}


def _cell_kind(value: object) -> str:
    """What a cell's literal matches: booleans only booleans, numbers only numbers."""
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, float) else "string"


# ----------------------------------------------------------------------------- templates

_PARSER: Final = Environment()
_FILTER_INPUTS: Final[Mapping[str, tuple[str, frozenset[str]]]] = {
    "money": ("a number", frozenset({"number", "string"})),
    "date": _TIME_INPUT,
    "datetime": _TIME_INPUT,
    "abs": ("a number", frozenset(_NUMERIC)),
    "round": ("a number", frozenset(_NUMERIC)),
    "length": ("a string, list or object", frozenset({"string", "list", "object", "model result"})),
    "first": ("a string or list", frozenset({"string", "list", "object", "model result"})),
    "last": ("a string or list", frozenset({"string", "list", "object", "model result"})),
    "join": ("a list", frozenset({"string", "list", "object", "model result"})),
}
_FILTER_RESULTS: Final[Mapping[str, Type]] = {
    "money": STRING,
    "date": STRING,
    "datetime": STRING,
    "abs": NUMBER,
    "round": NUMBER,
    "int": NUMBER,
    "float": NUMBER,
    "length": NUMBER,
    "join": STRING,
    "lower": STRING,
    "upper": STRING,
    "capitalize": STRING,
    "title": STRING,
    "trim": STRING,
    "truncate": STRING,
    "replace": STRING,
}


def check_template(source: str, scope: Scope) -> list[TypeProblem]:
    """Every filter in ``source`` given a value of a type it cannot take; never raises."""
    try:
        tree = _PARSER.parse(source)
    except Exception:  # the template compiler reports what does not parse
        return []
    walker = _Templates(scope, tree)
    try:
        for node in tree.find_all(nodes.Filter):
            walker.type_of(node)
    except RecursionError:
        return []
    unique = {(p.line, p.message): p for p in walker.problems}
    return sorted(unique.values(), key=lambda problem: problem.line)


class _Templates:
    """Infers the type of Jinja expressions, reporting filters given the wrong type."""

    def __init__(self, scope: Scope, tree: nodes.Template) -> None:
        self.scope = scope
        self.local = {
            node.name for node in tree.find_all(nodes.Name) if node.ctx in ("store", "param")
        }
        self.problems: list[TypeProblem] = []

    def type_of(self, node: nodes.Node | None) -> Type:
        if isinstance(node, nodes.Const):
            return _constant_type(node.value)
        if isinstance(node, nodes.Name):
            return ANY if node.name in self.local else self.scope.of(node.name)
        if isinstance(node, nodes.Getattr):
            return self.member(node.node, node.attr)
        if isinstance(node, nodes.Getitem):
            key = node.arg
            if isinstance(key, nodes.Const) and isinstance(key.value, str):
                return self.member(node.node, key.value)
            return ANY
        if isinstance(node, nodes.Filter):
            return self.filter(node)
        return ANY

    def member(self, owner: nodes.Node, name: str) -> Type:
        kind = self.type_of(owner)
        return kind.attribute(name) if kind.kind in _MAPPING else ANY

    def filter(self, node: nodes.Filter) -> Type:
        if node.node is None:  # a {% filter %} block
            return ANY
        kind = self.type_of(node.node)
        expected = _FILTER_INPUTS.get(node.name)
        if expected is not None and kind.known and kind.kind not in expected[1]:
            wanted = expected[0]
            text = _template_text(node.node)
            if kind.kind == "model result" and "number" in expected[1]:
                message = f"filter '{node.name}' needs {wanted}; {text} is a model result"
                hint = _model_hint(text)
            else:
                message = f"filter '{node.name}' needs {wanted}; {text} is {_a(kind)}"
                hint = f"apply '{node.name}' to {wanted}, or check the declared type"
            self.problems.append(TypeProblem(message, hint, line=node.lineno or 1))
        if node.name == "default":
            return ANY
        return _FILTER_RESULTS.get(node.name, ANY)


def _template_text(node: nodes.Node) -> str:
    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            parts.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name):
            parts.append(node.name)
            return _quoted(".".join(reversed(parts)))
        elif isinstance(node, nodes.Const):
            return _quoted(repr(node.value)) if not parts else "the value"
        else:
            return "the value"
