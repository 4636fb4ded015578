"""Deploying a catalogue: store and activate every plan of a valid catalogue, in one
transaction, and say what that did to each journey (new, unchanged, retired, and how many
runs stay on the version they started on). In the same transaction each channel's send
rate (its `rate:`, else its default) is written to its `channel_rates` row, where every
worker's sends read it (`channels.pacing`): the rate in force is the last deploy's, for
runs on every version.

A domain operation: `journeys deploy`, `journeys up`, the tests and the benchmark call it.
Nothing here prints, reads files or knows the command line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import yaml
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from engine.audit import Record, append
from engine.catalog import Catalog
from engine.database import (
    ChannelRate,
    Run,
    activate_plan,
    active_plans,
    dialect_insert,
    session_scope,
    utcnow,
)
from engine.spec import channel_rate, rate_burst

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


def deploy_catalog(
    catalog: Catalog, *, engine: Engine, source_text: str, actor: str = "deploy"
) -> list[DeployLine]:
    """Store and activate every plan of a valid ``catalog``, in one transaction; one line per
    journey it touched, retired ones last.

    Runs in flight keep their version; journeys no longer in the catalogue stop taking new
    entrants (their runs in flight carry on). ``source_text`` is the document the catalogue
    came from: each version keeps its journey's own section of it. The audit log gets the
    deploy and each activation or retirement (`engine.audit`), by ``actor``, in the same
    transaction.
    """
    if not catalog.ok:
        raise ValueError("only a valid catalogue can be deployed")
    with session_scope(engine) as session:
        lines = [
            _activate(session, catalog, journey_id, source_text) for journey_id in catalog.plans
        ]
        lines += _retire_absent(session, catalog)
        _store_channel_rates(session, catalog)
        append(session, _audit_records(lines, source_text, actor))  # last: appends take turns
    return lines


def _audit_records(lines: list[DeployLine], source_text: str, actor: str) -> list[Record]:
    """The deploy (the document's SHA-256, what changed), then each activation and
    retirement; a deploy that changed nothing is logged too (someone ran it)."""
    document = hashlib.sha256(source_text.encode("utf-8")).hexdigest()
    changed = [line for line in lines if line.status != "unchanged"]
    records = [
        Record(
            kind="deploy",
            subject="catalogue",
            actor=actor,
            details={
                "document_sha256": document,
                "journeys": {line.journey_id: line.version for line in lines},
                "changed": [line.journey_id for line in changed],
            },
        )
    ]
    for line in changed:
        records.append(
            Record(
                kind="version.activated" if line.status == "new" else "version.retired",
                subject=f"journey:{line.journey_id}",
                actor=actor,
                details={
                    "version": line.version,
                    "previous": line.previous,
                    "runs_staying": line.runs_staying,
                },
            )
        )
    return records


def _store_channel_rates(session: Session, catalog: Catalog) -> None:
    """Each declared channel's rate and burst into its bucket's row (a new row starts
    full; an existing one keeps its tokens, capped at the new burst on its next send)."""
    document = catalog.document
    if document is None:
        return
    insert = dialect_insert(session.get_bind().dialect.name)
    for name, value in sorted(document.channels.items()):
        per_second = channel_rate(name, value)
        burst = rate_burst(per_second)
        statement = insert(ChannelRate).values(
            channel=name, per_second=per_second, burst=burst, tokens=burst, updated_at=utcnow()
        )
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["channel"], set_={"per_second": per_second, "burst": burst}
            )
        )


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
