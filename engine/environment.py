"""`${VAR}` references: resolved from the environment at run time, never stored resolved."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

__all__ = ["MissingVariableError", "references", "resolve_env"]

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class MissingVariableError(KeyError):
    """A `${VAR}` whose variable is not set (the message names it, never other values)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"environment variable {self.name} is not set"


def references(text: str) -> list[str]:
    """The variable names ``text`` refers to."""
    return _REFERENCE.findall(text)


def resolve_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every `${VAR}` replaced by its value; MissingVariableError if unset."""
    env = os.environ if environ is None else environ

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env or env[name] == "":
            raise MissingVariableError(name)
        return env[name]

    return _REFERENCE.sub(value, text)
