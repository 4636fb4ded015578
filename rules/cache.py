"""One compile cache per process for expressions and templates.

Plans keep expressions and templates as source text; whoever evaluates or renders them asks
here, so each source is parsed once per process however many runs, steps or activities
use it. Sources come from validated plans, so the caches stay small; they are bounded
all the same.
"""

from __future__ import annotations

import functools

from .expressions import Expression, compile_expression
from .templates import CompiledTemplate, compile_template

__all__ = ["cached_expression", "cached_template"]


@functools.lru_cache(maxsize=4096)
def cached_expression(source: str) -> Expression:
    """``compile_expression(source)``, parsed once per process."""
    return compile_expression(source)


@functools.lru_cache(maxsize=2048)
def cached_template(
    source: str, *, html: bool = False, names: frozenset[str] | None = None
) -> CompiledTemplate:
    """``compile_template(source, html=html, names=names)``, compiled once per process
    (``names`` None: the context names every run has)."""
    if names is None:
        return compile_template(source, html=html)
    return compile_template(source, html=html, names=names)
