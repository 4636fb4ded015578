"""Temporal workflow code only: the journey interpreter. Deterministic; no I/O."""
