"""Deploying a catalogue: store and activate every plan of a valid catalogue, in one
transaction, and say what that did to each journey (new, unchanged, retired, and how many
runs stay on the version they started on).

A domain operation: `journeys deploy`, `journeys up`, the tests and the benchmark call it.
Nothing here prints, reads files or knows the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import yaml
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from engine.catalog import Catalog
from engine.database import Run, activate_plan, active_plans, session_scope

__all__ = ["DeployLine", "deploy_catalog"]


@dataclass(frozen=True)
class DeployLine:
    """What deploying did to one journey."""

    journey_id: str
    status: Literal["new", "unchanged", "retired"]
    version: str | None
    previous: str | None = None
    runs_staying: int = 0

    def format(self) -> str:
        if self.status == "unchanged":
            return f"{self.journey_id}: unchanged (version {self.version})"
        if self.status == "retired":
            return (
                f"{self.journey_id}: retired (was {self.previous}, no longer in the file), "
                f"{self.runs_staying} runs stay on {self.previous}"
            )
        if self.previous is None:
            return f"{self.journey_id}: new version {self.version}"
        return (
            f"{self.journey_id}: new version {self.version} (was {self.previous}), "
            f"{self.runs_staying} runs stay on {self.previous}"
        )


def deploy_catalog(catalog: Catalog, *, engine: Engine, source_text: str) -> list[DeployLine]:
    """Store and activate every plan of a valid ``catalog``, in one transaction; one line per
    journey it touched, retired ones last.

    Runs in flight keep their version; journeys no longer in the catalogue stop taking new
    entrants (their runs in flight carry on). ``source_text`` is the document the catalogue
    came from: each version keeps its journey's own section of it.
    """
    if not catalog.ok:
        raise ValueError("only a valid catalogue can be deployed")
    with session_scope(engine) as session:
        lines = [
            _activate(session, catalog, journey_id, source_text) for journey_id in catalog.plans
        ]
        lines += _retire_absent(session, catalog)
    return lines


def _activate(session: Session, catalog: Catalog, journey_id: str, source_text: str) -> DeployLine:
    plan = catalog.plans[journey_id]
    status, previous = activate_plan(
        session,
        journey_id=journey_id,
        version=plan.version,
        plan_json=plan.model_dump_json(),
        source_yaml=_journey_yaml(catalog, journey_id, source_text),
    )
    if status == "unchanged":
        return DeployLine(journey_id, "unchanged", plan.version)
    staying = _running_on(session, journey_id, previous) if previous else 0
    return DeployLine(journey_id, "new", plan.version, previous, staying)


def _retire_absent(session: Session, catalog: Catalog) -> list[DeployLine]:
    lines = []
    for stale in active_plans(session):
        if stale.journey_id in catalog.plans:
            continue
        stale.active = False
        session.add(stale)
        staying = _running_on(session, stale.journey_id, stale.version)
        lines.append(DeployLine(stale.journey_id, "retired", None, stale.version, staying))
    return lines


def _running_on(session: Session, journey_id: str, version: str) -> int:
    statement = (
        select(func.count())
        .select_from(Run)
        .where(
            col(Run.journey_id) == journey_id,
            col(Run.version) == version,
            col(Run.status) == "running",
        )
    )
    return int(session.exec(statement).one())


def _journey_yaml(catalog: Catalog, journey_id: str, fallback: str) -> str:
    """The journey's own section of the document as YAML (what an auditor reads back)."""
    journeys = catalog.checked.loaded.data.get("journeys")
    if isinstance(journeys, list):
        for journey in journeys:
            if isinstance(journey, dict) and journey.get("id") == journey_id:
                return yaml.safe_dump(journey, sort_keys=False, allow_unicode=True)
    return fallback
