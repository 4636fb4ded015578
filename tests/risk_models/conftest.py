"""Fixtures of the model tests: the local model services (tests/risk_models/servers.py) and,
for the workflow-level test, the workflow fixtures of tests/workflows (on the root ``env``).

The ``served`` fixture starts MLServer from its own venv (.venv-mlserver, built on first
use, `make mlserver`): the root conftest marks every test using it ``mlserver``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.risk_models.servers import MLServer, ModelService, mlserver, model_service
from tests.workflows.conftest import env, start_run, worker  # noqa: F401

# Probe rows the MLServer tests score: (amount, days_past_due, failed_payments_90d, tenure).
HIGH_RISK_ROW = [900000.0, 30.0, 3.0, 12.0]
LOW_RISK_ROW = [15000.0, 1.0, 0.0, 48.0]


@pytest.fixture(scope="module")
def service() -> Iterator[ModelService]:
    """A plain HTTP model service on 127.0.0.1 (one route per behaviour)."""
    with model_service() as running:
        yield running


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    """MLServer (scikit-learn runtime, its own venv) serving `default_risk` on 127.0.0.1."""
    with mlserver(tmp_path_factory.mktemp("mlserver"), [HIGH_RISK_ROW, LOW_RISK_ROW]) as running:
        yield running
