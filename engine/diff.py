"""What deploying a catalogue would change, without changing anything (`journeys deploy
--dry-run`, `journeys diff`).

Per journey: the steps the new version adds, removes and changes against the active
version, and how many open runs (``runs.status`` running) of the journey wait at a step
that the new version removes or changes. A send step counts as changed when a form of its
template that its channels send changed too: it would send another message. Runs in flight keep the version they
started on whatever a deploy does; the count says how many customers sit at a step whose
meaning moves on, for whoever reads the versions side by side.

Reads only: no row is written, no schema created or migrated (a database without the
tables, or a SQLite file that does not exist, has no active version). A domain operation:
nothing here prints or knows the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from engine.catalog import Catalog
from engine.database import PlanVersion, Run
from engine.plan import Plan, SendPlan

__all__ = ["JourneyDiff", "diff_catalog", "diff_plans"]

Status = Literal["new", "unchanged", "changed", "retired"]


@dataclass(frozen=True)
class JourneyDiff:
    """What deploying would do to one journey."""

    journey_id: str
    status: Status
    version: str | None
    active: str | None = None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    other: tuple[str, ...] = ()
    """What else differs (``entry``, ``settings``, ...) when no step does."""
    runs_waiting: int = 0
    """Open runs at a removed or changed step (for a retired journey: every open run)."""
    waiting_at: dict[str, int] = field(default_factory=dict)

    def format(self) -> str:
        """``payment_recovery: 2 steps changed (a, b), 1 added (x), 1 removed (y); 3 open
        runs wait at changed or removed steps``."""
        name = self.journey_id
        if self.status == "unchanged":
            return f"{name}: unchanged"
        if self.status == "new":
            return f"{name}: new journey ({_count(len(self.added), 'step')})"
        if self.status == "retired":
            verb = "carries" if self.runs_waiting == 1 else "carry"
            return (
                f"{name}: retired (no longer in the file, was {self.active}); "
                f"{_count(self.runs_waiting, 'open run')} {verb} on"
            )
        groups = [
            (what, steps)
            for what, steps in (
                ("changed", self.changed),
                ("added", self.added),
                ("removed", self.removed),
            )
            if steps
        ]
        parts = [
            f"{_count(len(steps), 'step') if i == 0 else len(steps)} {what} ({', '.join(steps)})"
            for i, (what, steps) in enumerate(groups)
        ]
        if parts:
            text = f"{name}: {', '.join(parts)}"
        else:
            text = f"{name}: no step changed ({', '.join(self.other) or 'version'} changed)"
        if self.changed or self.removed:
            verb = "waits" if self.runs_waiting == 1 else "wait"
            text += f"; {_count(self.runs_waiting, 'open run')} {verb} at changed or removed steps"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "journey": self.journey_id,
            "status": self.status,
            "version": self.version,
            "active_version": self.active,
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": list(self.changed),
            "other_changes": list(self.other),
            "open_runs_waiting": self.runs_waiting,
            "open_runs_by_step": dict(self.waiting_at),
        }


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


_SAME_WHEN_EQUAL = ("name", "description", "entry", "exit_on", "goals", "settings", "start")


def diff_plans(new: Plan, active: Plan) -> JourneyDiff:
    """The steps ``new`` adds, removes and changes against ``active`` (no runs counted)."""
    if new.version == active.version:
        return JourneyDiff(new.journey_id, "unchanged", new.version, active.version)
    added = tuple(s for s in new.steps if s not in active.steps)
    removed = tuple(s for s in active.steps if s not in new.steps)
    changed = tuple(s for s in new.steps if s in active.steps and _step_changed(s, new, active))
    other = tuple(
        name
        for name in (*_SAME_WHEN_EQUAL, "holdout", "models", "channels")
        if _part(new, name) != _part(active, name)
    )
    return JourneyDiff(
        new.journey_id,
        "changed",
        new.version,
        active.version,
        added=added,
        removed=removed,
        changed=changed,
        other=other,
    )


def _part(plan: Plan, name: str) -> Any:
    if name == "holdout":
        return (plan.holdout_percent, plan.salt)
    if name == "channels":
        return (plan.channels, plan.channel_config)
    return getattr(plan, name)


def _step_changed(step_id: str, new: Plan, active: Plan) -> bool:
    before, after = active.steps[step_id], new.steps[step_id]
    if before != after:
        return True
    if isinstance(after, SendPlan):
        return _sent_forms(new, after) != _sent_forms(active, after)
    return False


def _sent_forms(plan: Plan, step: SendPlan) -> dict[str, str]:
    """The forms of the step's template that its channels may send (a channel's own, and
    ``text``, which a channel without its own form falls back to)."""
    prefixes = {_FORM_PREFIX.get(channel, "text") for channel in step.channels} | {"text"}
    forms = plan.templates.get(step.template, {})
    return {name: text for name, text in forms.items() if name.split(".")[0] in prefixes}


_FORM_PREFIX = {"email": "email", "sms": "sms", "push": "push"}


def diff_catalog(catalog: Catalog, *, engine: Engine) -> list[JourneyDiff]:
    """One line per journey of a valid ``catalog`` against the active versions, journeys
    that a deploy would retire last. Reads only."""
    if not catalog.ok:
        raise ValueError("only a valid catalogue can be compared")
    if not _has_tables(engine):
        return [_new(plan) for plan in catalog.plans.values()]
    with Session(engine) as session:
        active = {
            row.journey_id: row
            for row in session.exec(select(PlanVersion).where(col(PlanVersion.active).is_(True)))
        }
        lines = []
        for journey_id, plan in catalog.plans.items():
            row = active.get(journey_id)
            if row is None:
                lines.append(_new(plan))
                continue
            diff = diff_plans(plan, Plan.model_validate_json(row.plan_json))
            lines.append(_with_runs(session, diff, (*diff.changed, *diff.removed)))
        for journey_id, row in sorted(active.items()):
            if journey_id not in catalog.plans:
                retired = JourneyDiff(journey_id, "retired", None, row.version)
                lines.append(_with_runs(session, retired, None))
        session.rollback()
    return lines


def _new(plan: Plan) -> JourneyDiff:
    return JourneyDiff(plan.journey_id, "new", plan.version, added=tuple(plan.steps))


def _has_tables(engine: Engine) -> bool:
    url = engine.url
    on_disk = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    if on_disk and not Path(str(url.database)).exists():
        return False  # connecting would create the file
    names = set(inspect(engine).get_table_names())
    return {"plan_versions", "runs"} <= names


def _with_runs(session: Session, diff: JourneyDiff, steps: tuple[str, ...] | None) -> JourneyDiff:
    """``diff`` with the open runs of its journey, on any version, at ``steps`` (None: at
    any step)."""
    if steps == ():
        return diff
    statement = (
        select(Run.step, func.count())
        .where(col(Run.journey_id) == diff.journey_id, col(Run.status) == "running")
        .group_by(col(Run.step))
    )
    if steps is not None:
        statement = statement.where(col(Run.step).in_(steps))
    counts: Mapping[str | None, int] = {
        step: int(count) for step, count in session.exec(statement).all()
    }
    by_step = {str(step): count for step, count in sorted(counts.items(), key=lambda i: str(i[0]))}
    return replace(diff, runs_waiting=sum(counts.values()), waiting_at=by_step)
