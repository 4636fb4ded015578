"""The database models (SQLModel) and the keyword-only functions that read and write them.

SQLite by default (a file under the state directory), PostgreSQL when `DATABASE_URL` says
so. Tables: plan versions (immutable, with their YAML), events (deduplicated by message
id), profiles, runs (their paths as rows, their split arms, their goal conversions), the
outbox, review tasks, deliveries, consent and caps, API keys, console users, the review
audit trail and the hash-chained audit log (`engine.audit`).
`make_engine` brings the schema to head through the migrations (`engine.migrate`,
`engine/migrations/`): a change to a table here needs a new revision there. Nothing here
knows Temporal; workflows never import this module (activities and the API do).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, UniqueConstraint, event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from engine.timestamps import utcnow

__all__ = [
    "API_KEY_SCOPES",
    "ROLES",
    "ApiKey",
    "AuditCheckpoint",
    "AuditEntry",
    "AuditHead",
    "CapReservation",
    "ChannelRate",
    "Delivery",
    "EventRecord",
    "OutboxMessage",
    "ParkedEvent",
    "PlanVersion",
    "Preference",
    "Profile",
    "ReviewAudit",
    "ReviewTask",
    "Run",
    "RunArm",
    "RunConversion",
    "RunPathEntry",
    "StepRollup",
    "Suppression",
    "User",
    "activate_plan",
    "active_plans",
    "api_key_digest",
    "check_api_key",
    "check_api_key_digest",
    "create_api_key",
    "dialect_insert",
    "engine_for",
    "find_api_keys",
    "get_profile",
    "join_scopes",
    "list_api_keys",
    "make_engine",
    "open_runs_for",
    "revoke_api_keys",
    "session_scope",
    "split_scopes",
    "store_event",
    "upsert_profile",
    "utcnow",
]


class PlanVersion(SQLModel, table=True):
    """One compiled version of a journey; immutable once stored. `active` marks the live one."""

    __tablename__ = "plan_versions"
    __table_args__ = (UniqueConstraint("journey_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    journey_id: str = Field(index=True, max_length=100)
    version: str = Field(max_length=32)
    plan_json: str
    source_yaml: str
    active: bool = Field(default=False, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    activated_at: datetime | None = None


class EventRecord(SQLModel, table=True):
    """An accepted event, stored before the API answers 2xx; `message_id` deduplicates."""

    __tablename__ = "events"

    message_id: str = Field(primary_key=True, max_length=200)
    type: str = Field(max_length=20)
    name: str | None = Field(default=None, max_length=200, index=True)
    customer_id: str = Field(index=True, max_length=200)
    properties: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    timestamp: datetime
    received_at: datetime = Field(default_factory=utcnow)
    routed: bool = Field(default=False, index=True)


class Profile(SQLModel, table=True):
    """A customer's traits (from `identify` and `set` steps) and channel addresses."""

    __tablename__ = "profiles"

    customer_id: str = Field(primary_key=True, max_length=200)
    traits: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow)


class Run(SQLModel, table=True):
    """One journey run as the console, the API and audits see it."""

    __tablename__ = "runs"
    # Routing reads a customer's runs on every event: its open runs, and its runs of one
    # journey and key (reentry). Without these SQLite, which keeps no statistics, picks
    # the single-column index on `status` or `journey_id` and scans every open run or
    # every run of the journey, so each event cost more as the table grew.
    __table_args__ = (
        Index("ix_runs_customer_status", "customer_id", "status"),
        Index("ix_runs_customer_entry", "customer_id", "journey_id", "key"),
        # The console's runs list pages newest first (revision 0006).
        Index("ix_runs_started", "started_at", "run_id"),
        # A journey's numbers (`engine.stats`, revision 0011): its runs counted by status,
        # step and outcome from the index alone (covering), in the index's order (no sort:
        # 115 -> 16 ms for 120,000 runs on SQLite), the window and version read from it.
        Index(
            "ix_runs_journey_status",
            "journey_id",
            "status",
            "step",
            "outcome",
            "holdout",
            "version",
            "started_at",
        ),
    )

    run_id: str = Field(primary_key=True, max_length=100)
    workflow_id: str = Field(index=True, max_length=400)
    journey_id: str = Field(index=True, max_length=100)
    version: str = Field(max_length=32)
    customer_id: str = Field(max_length=200)
    key: str | None = Field(default=None, max_length=200)
    status: str = Field(default="running", index=True, max_length=20)
    step: str | None = Field(default=None, max_length=100)
    outcome: str | None = Field(default=None, max_length=100)
    holdout: bool = False
    trigger_message_id: str | None = Field(default=None, max_length=200)
    # No longer written (`[]`): the path is `run_path`'s rows. Kept for readers of an older
    # release during a rollout; revision 0003 moved every path there.
    path: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    started_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None
    # Temporal's run id of the generation now running (`run_id` is the first one's, the
    # run's id across continue-as-new): queries go to it. Null: the first generation.
    current_run_id: str | None = Field(default=None, max_length=100)


class RunArm(SQLModel, table=True):
    """The arm a run was put in at one split: the path's split entries, as rows, so that
    runs can be listed by arm (a JSON path is not searchable alike on SQLite and
    PostgreSQL). Written with the runs row (`activities.runs.upsert_run`); a run is in
    one arm per split, however often it passes it, as its bucket is stable."""

    __tablename__ = "run_arms"
    # Listing asks for one split's arm across runs; the key serves a run's own arms.
    __table_args__ = (Index("ix_run_arms_step_arm", "step_id", "arm"),)

    run_id: str = Field(primary_key=True, max_length=100)
    step_id: str = Field(primary_key=True, max_length=100)
    arm: str = Field(max_length=100)


class RunConversion(SQLModel, table=True):
    """A run reaching one of its event goals (`engine.conversions`): written as the goal
    event is stored, once per run and goal (the earliest such event). ``goal`` is the
    goal's key in the plan (`engine.plan.EventGoalPlan.key`), ``at`` the event's time,
    ``value`` what the goal's `value:` gave (0 without one or when it failed).
    Outcome goals have no rows: the runs table's outcome says it (revision 0010)."""

    __tablename__ = "run_conversions"

    run_id: str = Field(primary_key=True, max_length=100)
    goal: str = Field(primary_key=True, max_length=250)
    at: datetime
    value: float = 0.0
    message_id: str | None = Field(default=None, max_length=200)


class ParkedEvent(SQLModel, table=True):
    """One event of a run's parked backlog: its message id at ``position`` in the queue
    that ``generation`` of the run starts with.

    A run that continues as new with more queued events than its input can carry by
    reference (their message ids) parks them here (`activities.runs.park_events`) and
    carries only how many there are (`engine.payloads.ParkedBacklog`). The generation
    reads them back a page at a time, joined to `events` (`load_events`). Rows of a
    generation are written once, by its predecessor, and deleted two generations later."""

    __tablename__ = "run_backlog"

    run_id: str = Field(primary_key=True, max_length=100)
    generation: int = Field(primary_key=True)
    position: int = Field(primary_key=True)
    message_id: str = Field(max_length=200)


class RunPathEntry(SQLModel, table=True):
    """One entry of a run's path, at its position ``seq`` (0-based) in the whole path.

    A row per entry, not one JSON column rewritten whole by every record: a run records
    only the entries it has not recorded yet (`RecordRunInput.path_start`), so recording
    costs the same at the 20,000th step as at the first, and a reader pages through a long
    path instead of loading it. Written with the runs row (`activities.runs.upsert_run`)
    and by `open_review_task`, by position (`engine.run_path.write_path`): a retried
    record writes nothing twice. The key (run_id, seq) is also the index a run's path is
    read by."""

    __tablename__ = "run_path"
    # Whether a run had reached a step before (`engine.step_rollup`, revision 0011).
    __table_args__ = (Index("ix_run_path_run_step", "run_id", "step", "seq"),)

    run_id: str = Field(primary_key=True, max_length=100)
    seq: int = Field(primary_key=True)
    step: str
    type: str
    at: datetime
    outcome: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class StepRollup(SQLModel, table=True):
    """A journey's step numbers, pre-aggregated: how many times ``metric`` (``reached``,
    ``edge``, ``time``, ``send``, ``arm``; ``conv`` and ``attr`` for conversions) counted
    ``bucket`` at ``step``, over the runs of one version that entered in one UTC ``hour``.
    Kept by `engine.step_rollup` in the transaction that writes the path rows, and by
    `engine.conversion_counts` in those that can change a run's conversions (revisions
    0011 and 0012 filled it from the rows before them); read by `engine.stats`, which sums
    hours instead of reading every path row."""

    __tablename__ = "step_rollup"
    # Summed by step, metric and bucket from the index alone, in its order (no sort).
    __table_args__ = (
        Index(
            "ix_step_rollup_sum",
            "journey_id",
            "step",
            "metric",
            "bucket",
            "hour",
            "version",
            "count",
            "value",
        ),
    )

    journey_id: str = Field(primary_key=True, max_length=100)
    hour: datetime = Field(primary_key=True)
    version: str = Field(primary_key=True, max_length=32)
    step: str = Field(primary_key=True, max_length=100)
    metric: str = Field(primary_key=True, max_length=20)
    bucket: str = Field(primary_key=True, max_length=200)
    count: int = 0
    value: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    """The summed goal value of ``conv`` counters (`engine.conversion_counts`); 0 else."""


class OutboxMessage(SQLModel, table=True):
    """A message a send step produced; with no channel URL set, this is where it goes."""

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("run_id", "step_id", "visit"),)

    id: int | None = Field(default=None, primary_key=True)
    workflow_id: str = Field(index=True, max_length=400)
    run_id: str = Field(max_length=100)
    step_id: str = Field(max_length=100)
    visit: int
    journey_id: str = Field(max_length=100)
    customer_id: str = Field(index=True, max_length=200)
    channel: str = Field(max_length=50)
    recipient: str | None = Field(default=None, max_length=400)
    subject: str | None = None
    body: str
    status: str = Field(default="captured", max_length=20)
    created_at: datetime = Field(default_factory=utcnow)


class ReviewTask(SQLModel, table=True):
    """A human-review task a `review` step opened; decided in the console or by the API."""

    __tablename__ = "review_tasks"
    __table_args__ = (UniqueConstraint("run_id", "step_id", "visit"),)

    id: str = Field(primary_key=True, max_length=64)
    workflow_id: str = Field(index=True, max_length=400)
    run_id: str = Field(max_length=100)
    journey_id: str = Field(index=True, max_length=100)
    customer_id: str = Field(index=True, max_length=200)
    step_id: str = Field(max_length=100)
    visit: int
    queue: str = Field(index=True, max_length=100)
    title: str
    details: str | None = None
    decisions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="open", index=True, max_length=20)
    escalated: bool = False
    claimed_by: str | None = Field(default=None, max_length=100)
    decision: str | None = Field(default=None, max_length=100)
    reviewer: str | None = Field(default=None, max_length=100)
    note: str | None = None
    case: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    due_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    decided_at: datetime | None = None


class Delivery(SQLModel, table=True):
    """One send step visit's delivery: written `pending` before the provider is called and
    marked after, so a retried activity finds the earlier outcome instead of sending twice.
    Recipients are stored masked (and hashed for look-ups), never in clear."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("run_id", "step_id", "visit", "channel"),)

    id: int | None = Field(default=None, primary_key=True)
    workflow_id: str = Field(index=True, max_length=400)
    run_id: str = Field(max_length=100)
    step_id: str = Field(max_length=100)
    visit: int
    journey_id: str = Field(index=True, max_length=100)
    customer_id: str = Field(index=True, max_length=200)
    channel: str | None = Field(default=None, max_length=50)
    template: str | None = Field(default=None, max_length=100)
    recipient_hash: str | None = Field(default=None, max_length=64)
    recipient_masked: str | None = Field(default=None, max_length=200)
    status: str = Field(default="pending", index=True, max_length=20)
    reason: str | None = None
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None


class Preference(SQLModel, table=True):
    """A customer's opt-in or opt-out for one channel (absent: the channel's default, in)."""

    __tablename__ = "preferences"

    customer_id: str = Field(primary_key=True, max_length=200)
    channel: str = Field(primary_key=True, max_length=50)
    opted_in: bool
    source: str = Field(default="api", max_length=50)
    updated_at: datetime = Field(default_factory=utcnow)


class Suppression(SQLModel, table=True):
    """An address that must not get messages (hard bounce, invalid number, STOP)."""

    __tablename__ = "suppressions"

    channel: str = Field(primary_key=True, max_length=50)
    address_hash: str = Field(primary_key=True, max_length=64)
    reason: str = Field(max_length=400)
    created_at: datetime = Field(default_factory=utcnow)


class CapReservation(SQLModel, table=True):
    """A slot of a customer's frequency cap, taken atomically before a message is sent."""

    __tablename__ = "cap_reservations"
    __table_args__ = (UniqueConstraint("run_id", "step_id", "visit"),)

    id: int | None = Field(default=None, primary_key=True)
    customer_id: str = Field(index=True, max_length=200)
    run_id: str = Field(max_length=100)
    step_id: str = Field(max_length=100)
    visit: int
    reserved_at: datetime = Field(default_factory=utcnow, index=True)


class ChannelRate(SQLModel, table=True):
    """A channel's send rate and its token bucket, shared by every worker (`channels.pacing`).

    ``per_second`` and ``burst`` are the catalogue's (written by `journeys deploy`);
    ``tokens`` is what the bucket held at ``updated_at`` (below zero: sends already promised
    a moment within the next second)."""

    __tablename__ = "channel_rates"

    channel: str = Field(primary_key=True, max_length=100)
    per_second: float
    burst: int
    tokens: float
    updated_at: datetime = Field(default_factory=utcnow)


API_KEY_SCOPES = ("ingest", "read", "admin")
"""What an API key may do: ``ingest`` sends events, ``read`` reads runs, journeys,
messages and reviews, ``admin`` does all of it and more (docs/security.md has the table)."""


class ApiKey(SQLModel, table=True):
    """An API key for an event source; only its SHA-256 is stored.

    ``scopes`` is a comma-separated list of `API_KEY_SCOPES` (keys made before scopes
    existed were given ``admin`` by the migration). A revoked key (``revoked_at`` set)
    is kept, so that `list_api_keys` still shows it, and refused."""

    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    key_hash: str = Field(unique=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    scopes: str = Field(default="ingest", max_length=100)
    revoked_at: datetime | None = None


ROLES = ("admin", "designer", "ops", "supervisor", "auditor")
"""Console roles: ops and supervisors decide review tasks; auditors and designers read."""


class User(SQLModel, table=True):
    """A person who signs in to the console (or calls the review API as themselves).

    Only an argon2 hash of the password is stored. A password printed by `journeys user
    add` is one-time: `must_change_password` holds until the user sets their own.
    `session_version` is part of every session cookie; raising it signs the user out
    everywhere (a password change, a disabled account)."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=100)
    role: str = Field(max_length=20)
    password_hash: str = Field(max_length=200)
    must_change_password: bool = True
    session_version: int = 1
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class ReviewAudit(SQLModel, table=True):
    """Who did what to a review task, when, and from which address: every claim, release,
    decision, and every refused attempt."""

    __tablename__ = "review_audit"

    id: int | None = Field(default=None, primary_key=True)
    task_id: str = Field(index=True, max_length=64)
    actor: str = Field(max_length=100)
    role: str | None = Field(default=None, max_length=20)
    action: str = Field(max_length=20)  # claim, release, decide
    outcome: str = Field(max_length=20)  # done, refused
    decision: str | None = Field(default=None, max_length=100)
    note: str | None = None
    reason: str | None = None
    address: str | None = Field(default=None, max_length=100)
    at: datetime = Field(default_factory=utcnow, index=True)


class AuditEntry(SQLModel, table=True):
    """One entry of the hash-chained audit log (`engine.audit`): append-only, ``seq``
    1, 2, 3, ... without gaps, ``hash`` = SHA-256(``prev_hash`` || the canonical JSON of
    the entry). ``time`` is fixed-width UTC text (``2026-12-05T04:33:28.123456Z``), hashed
    exactly as stored; it sorts as it reads. ``ref`` is not hashed: an idempotency key
    (a retried record appends nothing twice). Triggers refuse UPDATE and DELETE
    (revision 0007)."""

    __tablename__ = "audit"

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    time: str = Field(index=True, max_length=32)
    actor: str = Field(max_length=200)
    kind: str = Field(max_length=50)
    subject: str = Field(max_length=400)
    customer: str | None = Field(default=None, index=True, max_length=200)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)
    ref: str | None = Field(default=None, unique=True, max_length=400)


class AuditHead(SQLModel, table=True):
    """The audit log's head: one row (``id`` 1), the last entry's ``seq`` and ``hash``.
    Every append updates it first, so appends take turns on this row's lock."""

    __tablename__ = "audit_head"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int
    hash: str = Field(max_length=64)


class AuditCheckpoint(SQLModel, table=True):
    """A signed checkpoint of the audit log: Ed25519 over (``seq``, ``hash``, ``time``)."""

    __tablename__ = "audit_checkpoints"

    id: int | None = Field(default=None, primary_key=True)
    seq: int = Field(index=True)
    hash: str = Field(max_length=64)
    time: str = Field(max_length=32)
    public_key: str = Field(max_length=64)
    signature: str = Field(max_length=128)


class PseudonymKey(SQLModel, table=True):
    """The key customer pseudonyms are made with when ``JOURNEYS_PSEUDONYM_KEY`` is not
    set (`engine.pseudonyms`): one row, ``id`` ``"current"``."""

    __tablename__ = "pseudonym_key"

    id: str = Field(primary_key=True, max_length=20)
    key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class CustomerKey(SQLModel, table=True):
    """A customer's history key seed (`runtime.customer_keys`): with the history key ring's
    key it derives the key that seals the payloads of that customer's runs. Erasure
    deletes the row, and with it the only way to open those payloads (crypto-shredding).
    ``ref`` is the customer's pseudonym, never the id."""

    __tablename__ = "customer_keys"

    ref: str = Field(primary_key=True, max_length=40)
    seed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class ErasedCustomer(SQLModel, table=True):
    """A customer who was erased (`service.erasure`), by pseudonym: events naming them are
    not stored and start nothing. ``status`` is ``erasing`` until every step is done
    (`journeys erase` run again finishes an interrupted erasure), then ``erased``."""

    __tablename__ = "erased_customers"

    ref: str = Field(primary_key=True, max_length=40)
    status: str = Field(default="erasing", max_length=20)
    actor: str = Field(max_length=200)
    requested_at: datetime = Field(default_factory=utcnow)
    erased_at: datetime | None = None
    counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


# ----------------------------------------------------------------------------- engine


def make_engine(url: str) -> Engine:
    """An engine for ``url``, its schema brought to the code's head revision by
    `engine.migrate.upgrade` (created on an empty database). What every start uses.

    Raises `engine.migrate.DatabaseAhead` on a database a newer release migrated."""
    from engine.migrate import upgrade  # the migrations import this module's tables

    engine = engine_for(url)
    try:
        upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


_NO_DRIVER = re.compile(r"^postgres(ql)?://")


def with_driver(url: str) -> str:
    """``postgresql://`` or ``postgres://`` with the driver the project installs
    (psycopg 3): SQLAlchemy would pick psycopg2 for a URL that names none. A URL that
    names its driver is left as it is."""
    return _NO_DRIVER.sub("postgresql+psycopg://", url)


def engine_for(url: str) -> Engine:
    """An engine for ``url``, the schema untouched; SQLite gets WAL and a busy timeout.
    A PostgreSQL URL without a driver gets psycopg 3 (`with_driver`)."""
    if not url.startswith("sqlite"):
        return create_engine(with_driver(url), pool_pre_ping=True, pool_size=10, max_overflow=20)
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    if url in ("sqlite://", "sqlite:///:memory:"):
        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, **kwargs)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


# ----------------------------------------------------------------------------- plans


def activate_plan(
    session: Session, *, journey_id: str, version: str, plan_json: str, source_yaml: str
) -> tuple[str, str | None]:
    """Store (if new) and activate a plan version. Returns ``(status, previous_version)``.

    ``status`` is ``unchanged`` when that version is already active, else ``new``.
    """
    current = session.exec(
        select(PlanVersion).where(
            PlanVersion.journey_id == journey_id, col(PlanVersion.active).is_(True)
        )
    ).first()
    if current is not None and current.version == version:
        return "unchanged", current.version
    stored = session.exec(
        select(PlanVersion).where(
            PlanVersion.journey_id == journey_id, PlanVersion.version == version
        )
    ).first()
    if stored is None:
        stored = PlanVersion(
            journey_id=journey_id, version=version, plan_json=plan_json, source_yaml=source_yaml
        )
        session.add(stored)
    previous = current.version if current is not None else None
    if current is not None:
        current.active = False
        session.add(current)
    stored.active = True
    stored.activated_at = utcnow()
    session.add(stored)
    session.flush()
    return "new", previous


def active_plans(session: Session) -> Sequence[PlanVersion]:
    return session.exec(select(PlanVersion).where(col(PlanVersion.active).is_(True))).all()


# ----------------------------------------------------------------------------- events and profiles


def dialect_insert(dialect: str) -> Any:
    """The database's own INSERT, which has ``ON CONFLICT`` (both supported databases do),
    so "insert unless it exists" and upserts are one atomic statement."""
    if dialect == "postgresql":
        return postgresql_insert
    if dialect == "sqlite":
        return sqlite_insert
    raise RuntimeError(f"unsupported database dialect {dialect!r}: use SQLite or PostgreSQL")


def store_event(session: Session, record: EventRecord) -> bool:
    """Store an event; False (and nothing changed) if its message id was seen before.

    One statement, ``INSERT ... ON CONFLICT DO NOTHING RETURNING``: whether the row went in
    comes back as a row (psycopg reports no rowcount for this statement)."""
    table = EventRecord.__table__  # type: ignore[attr-defined]
    values = {column.name: getattr(record, column.name) for column in table.columns}
    statement = _store_event_statement(session.get_bind().dialect.name)
    return session.connection().execute(statement, values).first() is not None


@functools.cache
def _store_event_statement(dialect: str) -> Any:
    table = EventRecord.__table__  # type: ignore[attr-defined]
    return (
        dialect_insert(dialect)(table)
        .on_conflict_do_nothing(index_elements=["message_id"])
        .returning(table.c.message_id)
    )


def get_profile(session: Session, customer_id: str) -> dict[str, Any]:
    profile = session.get(Profile, customer_id)
    return dict(profile.traits) if profile is not None else {}


def upsert_profile(session: Session, *, customer_id: str, traits: dict[str, Any]) -> dict[str, Any]:
    """Merge ``traits`` into the customer's profile; a None value removes the trait."""
    profile = session.get(Profile, customer_id)
    merged = dict(profile.traits) if profile is not None else {}
    for name, value in traits.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    if profile is None:
        profile = Profile(customer_id=customer_id, traits=merged)
    else:
        profile.traits = merged
        profile.updated_at = utcnow()
    session.add(profile)
    session.flush()
    return merged


def open_runs_for(
    session: Session, *, customer_id: str, journey_ids: Sequence[str]
) -> Sequence[Run]:
    if not journey_ids:
        return []
    return session.exec(
        select(Run).where(
            Run.customer_id == customer_id,
            col(Run.journey_id).in_(journey_ids),
            Run.status == "running",
        )
    ).all()


# ----------------------------------------------------------------------------- API keys


def api_key_digest(key: str) -> str:
    """What is stored of a key (and what a cache of valid keys may hold): its SHA-256."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def split_scopes(scopes: str) -> frozenset[str]:
    """The scopes in an `ApiKey.scopes` column (unknown names are dropped)."""
    return frozenset(s for s in (part.strip() for part in scopes.split(",")) if s in API_KEY_SCOPES)


def join_scopes(scopes: Iterable[str]) -> str:
    """The `ApiKey.scopes` column for these scopes, in `API_KEY_SCOPES` order.

    Raises ValueError naming a scope that is not one of `API_KEY_SCOPES`, or if none is given."""
    wanted = set(scopes)
    unknown = sorted(wanted - set(API_KEY_SCOPES))
    if unknown:
        raise ValueError(f"scope {unknown[0]!r} is not one of {', '.join(API_KEY_SCOPES)}")
    if not wanted:
        raise ValueError("a key needs at least one scope")
    return ",".join(s for s in API_KEY_SCOPES if s in wanted)


def create_api_key(
    session: Session,
    *,
    name: str,
    key: str | None = None,
    scopes: Iterable[str],
    actor: str = "system",
) -> str:
    """Store a key's hash and return the key (generated when not given), with ``scopes``
    (always said: the operator's own keys, `journeys up`'s ``state/api_key`` and
    ``JOURNEYS_API_KEY``, are ``admin``; `journeys apikey add` asks, ``ingest`` unless
    told). A key stored already (the same hash) is left as it is."""
    column = join_scopes(scopes)
    key = key or "jk_" + secrets.token_urlsafe(24)
    digest = api_key_digest(key)
    if session.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first() is None:
        record = ApiKey(name=name, key_hash=digest, scopes=column)
        session.add(record)
        session.flush()
        _audit_key(session, "apikey.added", record, actor)
    return key


def _audit_key(session: Session, kind: str, record: ApiKey, actor: str) -> None:
    """The key change in the audit log, in its transaction (never the key or its hash)."""
    from engine.audit import Record, append  # the audit log's tables are defined here

    details = {"name": record.name, "scopes": record.scopes}
    append(session, [Record(kind, f"apikey:{record.id}", actor, None, details, None)])


def check_api_key(session: Session, key: str) -> ApiKey | None:
    """The key's record if ``key`` is valid (known and not revoked)."""
    return check_api_key_digest(session, api_key_digest(key))


def check_api_key_digest(session: Session, digest: str) -> ApiKey | None:
    """The record of the key whose `api_key_digest` is ``digest``, if there is one and it
    is not revoked."""
    for candidate in session.exec(select(ApiKey).where(ApiKey.key_hash == digest)).all():
        if secrets.compare_digest(candidate.key_hash, digest) and candidate.revoked_at is None:
            return candidate
    return None


def list_api_keys(session: Session) -> Sequence[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    return session.exec(select(ApiKey).order_by(col(ApiKey.id))).all()


def find_api_keys(session: Session, name_or_id: str) -> Sequence[ApiKey]:
    """The keys ``name_or_id`` names: the key with that id if it is a number and one has
    it, otherwise every key of that name (names need not be unique)."""
    text = name_or_id.strip()
    if text.isdigit():
        record = session.get(ApiKey, int(text))
        if record is not None:
            return [record]
    return session.exec(select(ApiKey).where(ApiKey.name == text).order_by(col(ApiKey.id))).all()


def revoke_api_keys(
    session: Session, records: Iterable[ApiKey], *, actor: str = "system"
) -> list[ApiKey]:
    """Revoke these keys now; those revoked already keep their time. Returns the ones
    this call revoked (each in the audit log, by ``actor``)."""
    now = utcnow()
    revoked: list[ApiKey] = []
    for record in records:
        if record.revoked_at is None:
            record.revoked_at = now
            session.add(record)
            revoked.append(record)
    session.flush()
    for record in revoked:
        _audit_key(session, "apikey.revoked", record, actor)
    return revoked


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
