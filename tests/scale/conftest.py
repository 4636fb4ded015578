"""The scale-out tests share the e2e suite's Temporal dev server fixture and stack."""

from tests.e2e.conftest import temporal_server

__all__ = ["temporal_server"]
