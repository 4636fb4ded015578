"""The journey expression and template languages: pure, no I/O, no ``temporalio``.

Public API: ``compile_expression`` -> ``Expression.evaluate`` (closures compiled from the
checked tree, with the semantics of a simpleeval-based evaluator; fixed function
allow-list, None-tolerant semantics, size caps) and ``compile_template`` ->
``CompiledTemplate.render`` (Jinja2 sandbox, StrictUndefined, fixed filter list).
Compile-time problems raise ``ExpressionError``/``TemplateError`` (with a column or line
and a hint); run-time problems raise only ``EvaluationError``/``RenderError``.
``cached_expression``/``cached_template`` (``rules.cache``) are the one per-process compile
cache that run-time code uses.
"""

from .cache import cached_expression, cached_template
from .expressions import (
    CONTEXT_NAMES,
    MESSAGE_NAMES,
    EvaluationError,
    Expression,
    ExpressionError,
    compile_expression,
)
from .filters import FILTER_NAMES
from .functions import FUNCTION_NAMES
from .templates import CompiledTemplate, RenderError, TemplateError, compile_template

__all__ = [
    "CONTEXT_NAMES",
    "FILTER_NAMES",
    "FUNCTION_NAMES",
    "MESSAGE_NAMES",
    "CompiledTemplate",
    "EvaluationError",
    "Expression",
    "ExpressionError",
    "RenderError",
    "TemplateError",
    "cached_expression",
    "cached_template",
    "compile_expression",
    "compile_template",
]
