"""The full `journeys` command: the design-time commands of `engine.cli` plus the runtime
ones (up, deploy, emit, identify, runs)."""

from __future__ import annotations

from engine.cli import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the `journeys` command."""
    app()
