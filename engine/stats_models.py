"""The shapes of a journey's numbers (issue #19): what `engine.stats` computes, the API
serves (``GET /v1/journeys/{id}/stats`` and ``/funnel``), the console draws and `journeys
stats` prints. One definition, so the four agree.

Every count is over the runs that **entered** in the window asked for (``from`` inclusive,
``to`` exclusive, by the run's start), of one version or of all versions; "now" numbers
(``active``, ``waiting``) are the state of those runs at the time of the query.
docs/operations.md ("Journey numbers") says how each one is computed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer

__all__ = [
    "RESERVED_ARM_NAMES",
    "ArmStats",
    "ChannelSends",
    "Conversions",
    "EdgeStats",
    "ExperimentStats",
    "FunnelStats",
    "FunnelStep",
    "JourneyStats",
    "ReviewStats",
    "StepStats",
]


RESERVED_ARM_NAMES = frozenset({"p_value", "winner", "control_arm", "test", "warning"})
"""Keys of a serialized experiment beside its arms: no split arm may be called so."""


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True)


class Conversions(_Model):
    """Runs that reached a goal (or an exit outcome declared a conversion) within its
    window after entry, their share of the entries, and the summed goal value."""

    count: int = 0
    rate: float | None = None  # count / entries; None with no entries
    value: float = 0.0


class StepStats(_Model):
    """One step: runs that reached it, runs waiting there now, runs whose path ended there
    (``left``: they went no further), and time spent there before the next step."""

    reached: int = 0
    waiting: int = 0
    left: int = 0
    p50_seconds: float | None = None
    p90_seconds: float | None = None


class EdgeStats(_Model):
    """How many times runs went from one step to the next."""

    source: str = Field(serialization_alias="from", validation_alias="from")
    target: str = Field(serialization_alias="to", validation_alias="to")
    count: int


class ChannelSends(_Model):
    """One send step on one channel: tried, sent, failed, skipped by reason (``no
    consent``, ``suppressed``, ``quiet hours``, ``frequency cap``, ``fallback``, ...)."""

    attempted: int = 0
    sent: int = 0
    failed: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)
    conversions: int = 0
    """Runs that converted within their goal's window after this send was sent (a window
    starts at each send as well as at entry: step-level attribution)."""


class ReviewStats(_Model):
    """One review step: tasks opened, decided (by decision), escalated, timed out, and
    the time from opening to decision."""

    opened: int = 0
    decided: dict[str, int] = Field(default_factory=dict)
    escalated: int = 0
    timed_out: int = 0
    p50_seconds_to_decision: float | None = None
    p90_seconds_to_decision: float | None = None


class ArmStats(_Model):
    """One arm of a split (or ``control``/``treated`` of the holdout): entries,
    conversions, rate with its 95% interval, and lift against the control arm."""

    entries: int = 0
    conversions: int = 0
    rate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    lift: float | None = None  # (rate - control rate) / control rate; None for the control


class ExperimentStats(_Model):
    """A split (by step id) or the holdout (``"holdout"``): its arms, the test's p-value,
    the winner (only when significant at 95%), and a warning when the sample is small.

    Serialized flat, as the API promises: ``{<arm>: {entries, ...}, ..., "p_value": ...,
    "winner": ..., "control_arm": ..., "test": ..., "warning": ...}``. The validator keeps
    split arm names from clashing with those keys (`RESERVED_ARM_NAMES`); the holdout's
    arms are ``control`` and ``treated``."""

    arms: dict[str, ArmStats]
    # Serialized as ``control_arm``: the holdout's arms are ``control`` and ``treated``.
    control: str | None = Field(default=None, serialization_alias="control_arm")
    p_value: float | None = None
    winner: str | None = None
    test: str = "two-proportion z-test"
    warning: str | None = None

    @model_serializer(mode="wrap")
    def _flat(self, handler: Any) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        arms = data.pop("arms")
        return {**arms, **data}


class JourneyStats(_Model):
    """Everything ``GET /v1/journeys/{id}/stats`` answers."""

    journey_id: str
    version: str | None = None  # None: all versions
    window_from: datetime | None = Field(default=None, serialization_alias="from")
    window_to: datetime | None = Field(default=None, serialization_alias="to")
    entries: int = 0
    active: int = 0
    outcomes: dict[str, int] = Field(default_factory=dict)
    conversions: Conversions = Field(default_factory=Conversions)
    steps: dict[str, StepStats] = Field(default_factory=dict)
    edges: list[EdgeStats] = Field(default_factory=list)
    sends: dict[str, dict[str, ChannelSends]] = Field(default_factory=dict)
    reviews: dict[str, ReviewStats] = Field(default_factory=dict)
    experiments: dict[str, ExperimentStats] = Field(default_factory=dict)


class FunnelStep(_Model):
    step: str
    reached: int
    rate_from_entry: float | None = None
    rate_from_previous: float | None = None


class FunnelStats(_Model):
    """``GET /v1/journeys/{id}/funnel?steps=a,b,c``: of the runs that entered, how many
    reached a, then b after a, then c after b (in that order in their path)."""

    journey_id: str
    version: str | None = None
    entries: int = 0
    steps: list[FunnelStep] = Field(default_factory=list)
