"""The audit trail: one append-only, hash-chained log of what the system did, with signed
checkpoints an operator can ship elsewhere.

**An entry** is a row of the `audit` table (`engine.database.AuditEntry`). What is hashed is
its *canonical JSON*: the object ``{seq, time, actor, kind, subject, customer, details,
prev_hash}`` written with sorted keys, no whitespace (``separators=(",", ":")``), non-ASCII
characters as themselves, encoded as UTF-8 (`canonical`). ``hash`` is the hex SHA-256 of
``prev_hash`` (64 ASCII hex digits) followed by those bytes (`entry_hash`); the first
entry's ``prev_hash`` is 64 zeros (`GENESIS`). ``seq`` counts 1, 2, 3, ... without gaps,
and is hashed, so an entry cannot move unseen. ``time`` is when it was appended, as
fixed-width UTC text (`utc_text`).

**No personal data**: no address, no message text, no note (its SHA-256: `digest`), and no
customer id. `append` writes the customer's keyed pseudonym (`engine.pseudonyms`) in
``customer`` and in place of the id wherever the subject or details name the customer
(``customer:<id>``, a workflow id's customer segment). So erasing a customer leaves their
entries as they are, and the chain verifies as before: nothing in it names them. (Entries
made before revision 0009 hold the id itself; `customer_filter` finds both.)

**Appends take turns.** `append` runs in the caller's transaction, as the last write of it
(so that the entry commits with the change it records, or not at all): it first updates
the one row of `audit_head` (``UPDATE ... RETURNING``), which on PostgreSQL takes that row's
lock until the transaction ends (as ``SELECT ... FOR UPDATE`` would) and on SQLite takes
the database's one write lock (which every writer takes anyway). Two appends never read the
same head, so the chain never forks. The cost: on PostgreSQL, transactions that append
commit one at a time from the moment they append to their commit (a few hundred
microseconds on a local server), whatever they touched; SQLite writers were serialized
already. `record` is the same in a transaction of its own (``BEGIN IMMEDIATE`` on SQLite).

**Checkpoints** (`make_checkpoint`) sign ``{seq, hash, time}`` of the head (canonical JSON,
Ed25519) with the key in ``JOURNEYS_AUDIT_SIGNING_KEY_FILE`` or ``<state>/audit_signing_key``
(created, mode 0600, on first use). `verify_chain` recomputes every hash and link and says
where the first problem is; with a checkpoint, it also checks the signature and that the
checkpoint's head is in the chain.

Imports `cryptography` only where it signs or checks a signature.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from engine.database import AuditCheckpoint, AuditEntry, AuditHead, dialect_insert
from engine.pseudonyms import customer_ref, is_ref, pseudonym_key, pseudonymize, pseudonymize_text
from engine.timestamps import utcnow

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "GENESIS",
    "HASHED_FIELDS",
    "SIGNING_KEY_ENV",
    "SIGNING_KEY_FILE",
    "ChainReport",
    "Checkpoint",
    "Problem",
    "Record",
    "append",
    "canonical",
    "check_entries",
    "checkpoint_if_moved",
    "consent_record",
    "digest",
    "entry_hash",
    "export_entries",
    "latest_checkpoint",
    "load_or_create_signing_key",
    "make_checkpoint",
    "public_key_hex",
    "record",
    "stored_checkpoints",
    "utc_text",
    "verify_chain",
    "write_checkpoint_file",
]

GENESIS = "0" * 64
"""The ``prev_hash`` of the first entry."""

HASHED_FIELDS = ("seq", "time", "actor", "kind", "subject", "customer", "details", "prev_hash")
"""The fields of an entry its hash covers (``hash`` and ``ref`` are not)."""

SIGNING_KEY_ENV = "JOURNEYS_AUDIT_SIGNING_KEY_FILE"
SIGNING_KEY_FILE = "audit_signing_key"

_AUDIT: Table = AuditEntry.__table__  # type: ignore[attr-defined]
_HEAD: Table = AuditHead.__table__  # type: ignore[attr-defined]
_CHECKPOINTS: Table = AuditCheckpoint.__table__  # type: ignore[attr-defined]
_HEAD_ID = 1
_PAGE = 1000
_LOOKBACK = 1024  # hashes of recent entries kept to tell an insertion from a replacement


# ----------------------------------------------------------------------------- entries


def utc_text(moment: datetime) -> str:
    """``moment`` as the fixed-width UTC text an entry's ``time`` holds."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(value: Any) -> bytes:
    """The canonical JSON of ``value``: sorted keys, no whitespace, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def entry_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    """SHA-256(prev_hash || canonical(body)), hex; ``body`` has the `HASHED_FIELDS`."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(body)).hexdigest()


def digest(text: str | None) -> str | None:
    """What the log keeps of a free text (a reviewer's note): its SHA-256, never the text."""
    if text is None:
        return None
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _plain(details: Mapping[str, Any]) -> dict[str, Any]:
    """``details`` as JSON gives it back (so the hash of what is stored is the hash made)."""
    value = json.loads(json.dumps(dict(details), default=str, allow_nan=False))
    assert isinstance(value, dict)
    return value


@dataclass(frozen=True)
class Record:
    """One thing to log. ``subject`` names what it is about (``run:<id>``,
    ``journey:<id>``, ``review:<id>``...); ``customer`` the customer id, if any; ``ref``
    an idempotency key: an entry with that ``ref`` already logged is not logged again."""

    kind: str
    subject: str
    actor: str = "system"
    customer: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    ref: str | None = None


_ADVANCE = (
    update(_HEAD)
    .where(_HEAD.c.id == _HEAD_ID)
    .values(seq=_HEAD.c.seq)  # a write: the lock, before anything is read
    .returning(_HEAD.c.seq, _HEAD.c.hash)
)
_SET_HEAD = (
    update(_HEAD)
    .where(_HEAD.c.id == _HEAD_ID)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
_LAST = select(_AUDIT.c.seq, _AUDIT.c.hash).order_by(_AUDIT.c.seq.desc()).limit(1)


def _connection(bind: Session | Connection) -> Connection:
    return bind.connection() if isinstance(bind, Session) else bind


def _lock_head(connection: Connection) -> tuple[int, str]:
    """Take the head's lock and read it; a schema made without the migration (no head
    row) gets its row, from the last entry, first."""
    row = connection.execute(_ADVANCE).first()
    if row is None:
        last = connection.execute(_LAST).first()
        seq, last_hash = (int(last.seq), str(last.hash)) if last is not None else (0, GENESIS)
        statement = dialect_insert(connection.dialect.name)(_HEAD).on_conflict_do_nothing()
        connection.execute(statement.values(id=_HEAD_ID, seq=seq, hash=last_hash))
        row = connection.execute(_ADVANCE).one()
    return int(row.seq), str(row.hash)


_LOGGED_ONE = select(_AUDIT.c.ref).where(_AUDIT.c.ref == bindparam("ref"))


def _logged(connection: Connection, refs: Sequence[str]) -> set[str]:
    """Which of ``refs`` are logged already."""
    if not refs:
        return set()
    if len(refs) == 1:  # most appends: a statement built once (an IN list is rendered each time)
        return set(connection.execute(_LOGGED_ONE, {"ref": refs[0]}).scalars())
    return set(connection.execute(select(_AUDIT.c.ref).where(_AUDIT.c.ref.in_(refs))).scalars())


def append(
    bind: Session | Connection, records: Sequence[Record], *, now: datetime | None = None
) -> list[int]:
    """Log ``records`` in the caller's transaction, in order; the sequence numbers given
    (a record whose ``ref`` is logged already is skipped). Call it last in the
    transaction: from here to the commit, other appends wait (see the module's doc)."""
    if not records:
        return []
    connection = _connection(bind)
    records = _pseudonymized(connection, records)
    refs = [item.ref for item in records if item.ref is not None]
    if len(refs) == len(records) and _logged(connection, refs) >= set(refs):
        return []  # all logged before (a retried record): no need to wait for the lock
    seq, prev_hash = _lock_head(connection)
    seen = _logged(connection, refs)  # again, under the lock
    time = utc_text(now or utcnow())
    rows: list[dict[str, Any]] = []
    for item in records:
        if item.ref is not None:
            if item.ref in seen:
                continue
            seen.add(item.ref)
        seq += 1
        body = {
            "seq": seq,
            "time": time,
            "actor": item.actor,
            "kind": item.kind,
            "subject": item.subject,
            "customer": item.customer,
            "details": _plain(item.details),
            "prev_hash": prev_hash,
        }
        prev_hash = entry_hash(prev_hash, body)
        rows.append({**body, "hash": prev_hash, "ref": item.ref})
    if rows:
        connection.execute(insert(_AUDIT), rows)
        connection.execute(_SET_HEAD, {"new_seq": seq, "new_hash": prev_hash})
    return [row["seq"] for row in rows]


def _pseudonymized(connection: Connection, records: Sequence[Record]) -> list[Record]:
    """``records`` with each customer id replaced by its pseudonym (see the module doc)."""
    if not any(item.customer for item in records):
        return list(records)
    key = pseudonym_key(connection)
    out: list[Record] = []
    for item in records:
        customer = item.customer
        if not customer or is_ref(customer):
            out.append(item)
            continue
        ref = customer_ref(customer, key)
        out.append(
            dataclasses.replace(
                item,
                customer=ref,
                subject=pseudonymize_text(item.subject, customer, ref),
                details=pseudonymize(dict(item.details), customer, ref),
            )
        )
    return out


def customer_filter(bind: Engine | Connection, customer: str) -> tuple[str, ...]:
    """What ``customer`` column values mean ``customer`` (an id or a pseudonym): the
    pseudonym and, for entries made before pseudonyms, the id itself."""
    if is_ref(customer):
        return (customer,)
    return (customer_ref(customer, pseudonym_key(bind)), customer)


def record(
    engine: Engine,
    kind: str,
    subject: str,
    *,
    actor: str,
    customer: str | None = None,
    details: Mapping[str, Any] | None = None,
    ref: str | None = None,
) -> int | None:
    """Log one entry in a transaction of its own (for a change already committed, or one
    made outside the database); its sequence number (None: ``ref`` was logged before).

    For user and API-key changes, e.g. ``record(engine, "user.added", "user:ana",
    actor="cli:root", details={"role": "ops"})``."""
    with Session(engine) as session:
        if engine.dialect.name == "sqlite":
            # pysqlite begins lazily and deferred; take the write lock up front.
            session.connection().exec_driver_sql("BEGIN IMMEDIATE")
        item = Record(kind, subject, actor, customer, details or {}, ref)
        sequence = append(session, [item])
        session.commit()
    return sequence[0] if sequence else None


def consent_record(
    *, customer: str, channel: str, opted_in: bool, source: str, actor: str
) -> Record:
    """A preference or consent change (an opt-in or opt-out of one channel)."""
    return Record(
        kind="consent.changed",
        subject=f"customer:{customer}",
        actor=actor,
        customer=customer,
        details={"channel": channel, "opted_in": opted_in, "source": source},
    )


# ----------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class Problem:
    """The first entry found wrong (by sequence number) and what is wrong with it."""

    seq: int
    what: str

    def format(self) -> str:
        return f"entry {self.seq}: {self.what}"


@dataclass
class ChainReport:
    """What verifying found: how many entries, the head, and the first problem (if any)."""

    count: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    problem: Problem | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def format(self) -> str:
        if self.problem is not None:
            return f"audit chain BROKEN at {self.problem.format()}"
        line = (
            f"audit chain intact: {self.count} entries, head {self.head_seq} {self.head_hash[:16]}"
        )
        if self.checkpoints:
            latest = self.checkpoints[-1]
            many = len(self.checkpoints)
            line += (
                f"; checkpoint at {latest.seq} ({latest.time}) verified"
                if many == 1
                else f"; {many} checkpoints verified, the latest at {latest.seq} ({latest.time})"
            )
        return line


def _body(row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in HASHED_FIELDS}


def _written_as(row: Mapping[str, Any]) -> int | None:
    """The sequence number, near its own, under which ``row``'s hash holds (a moved entry)."""
    body = _body(row)
    seq = int(row["seq"])
    for candidate in range(max(1, seq - 64), seq + 65):
        if (
            candidate != seq
            and entry_hash(row["prev_hash"], {**body, "seq": candidate}) == row["hash"]
        ):
            return candidate
    return None


class _Checker:
    """Walks entries in sequence order and keeps the first problem."""

    def __init__(self, *, first_seq: int = 1, prev_hash: str = GENESIS) -> None:
        self.expected = first_seq
        self.prev_hash = prev_hash
        self.recent: OrderedDict[str, int] = OrderedDict()
        self.report = ChainReport(head_seq=first_seq - 1, head_hash=prev_hash)

    def feed(self, row: Mapping[str, Any]) -> bool:
        """Check one entry; False once a problem is found."""
        problem = self._problem(row)
        if problem is not None:
            self.report.problem = problem
            return False
        self.recent[str(row["hash"])] = int(row["seq"])
        if len(self.recent) > _LOOKBACK:
            self.recent.popitem(last=False)
        self.prev_hash = str(row["hash"])
        self.report.count += 1
        self.report.head_seq, self.report.head_hash = int(row["seq"]), self.prev_hash
        self.expected += 1
        return True

    def _problem(self, row: Mapping[str, Any]) -> Problem | None:
        seq, expected = int(row["seq"]), self.expected
        if seq > expected:
            gap = f"entries {expected}..{seq - 1} are" if seq - 1 > expected else "it is"
            return Problem(expected, f"missing ({gap} deleted): entry {seq} follows {expected - 1}")
        if seq < expected:
            return Problem(seq, f"out of order: found after entry {expected - 1}")
        if row["prev_hash"] != self.prev_hash:
            earlier = self.recent.get(str(row["prev_hash"]))
            if earlier is not None and earlier < seq - 1:
                what = (
                    f"entries {earlier + 1}..{seq - 1} were" if earlier + 1 < seq - 1 else "it was"
                )
                return Problem(
                    earlier + 1,
                    f"inserted ({what} put in): entry {seq} was chained to entry {earlier}",
                )
            moved = _written_as(row)
            if moved is not None:
                return Problem(seq, f"holds the entry written as {moved} (entries reordered)")
            return Problem(
                seq,
                f"prev_hash is not the hash of entry {seq - 1} (an entry before it was "
                "replaced, or entries reordered)",
            )
        if entry_hash(self.prev_hash, _body(row)) != row["hash"]:
            moved = _written_as(row)
            if moved is not None:
                return Problem(seq, f"holds the entry written as {moved} (entries reordered)")
            return Problem(seq, "hash does not match its content (edited, or put in by hand)")
        return None


def check_entries(
    rows: Iterable[Mapping[str, Any]], *, first_seq: int = 1, prev_hash: str = GENESIS
) -> ChainReport:
    """Check ``rows`` (dicts with the `HASHED_FIELDS` and ``hash``) in order: contiguous
    sequence numbers from ``first_seq``, each chained to the one before, each hash right."""
    checker = _Checker(first_seq=first_seq, prev_hash=prev_hash)
    for row in rows:
        if not checker.feed(row):
            break
    return checker.report


_COLUMNS = [_AUDIT.c[name] for name in (*HASHED_FIELDS, "hash")]


def _entries(connection: Connection, after: int = 0) -> Iterator[dict[str, Any]]:
    """Every entry after ``after``, in sequence order, a page at a time."""
    while True:
        page = connection.execute(
            select(*_COLUMNS).where(_AUDIT.c.seq > after).order_by(_AUDIT.c.seq).limit(_PAGE)
        ).mappings()
        rows = [dict(row) for row in page]
        if not rows:
            return
        yield from rows
        after = int(rows[-1]["seq"])


def verify_chain(
    engine: Engine,
    *,
    checkpoint: Checkpoint | None = None,
    checkpoints: Sequence[Checkpoint] = (),
    public_key: str | None = None,
) -> ChainReport:
    """Recompute the whole chain; with ``checkpoint`` (and ``checkpoints``: those stored,
    `stored_checkpoints`), check each signature (against ``public_key``, hex; default:
    the checkpoint's own key) and that each head is in the chain. The head row (read first:
    appends may go on meanwhile) must be in the chain too, else entries at the end were
    deleted; no entry may lie beyond the head as it is after."""
    signed = list(dict.fromkeys([*checkpoints, *([checkpoint] if checkpoint else [])]))
    for each in signed:
        refused = each.refused(public_key)
        if refused is not None:
            return ChainReport(problem=Problem(each.seq, f"checkpoint refused: {refused}"))
    with engine.connect() as connection:
        anchors = [
            _Anchor(each.seq, each.hash, f"the checkpoint of {each.time}") for each in signed
        ]
        head = connection.execute(_HEAD_ROW).first()
        if head is not None:
            anchors.append(_Anchor(int(head.seq), str(head.hash), "the head"))
        anchors.sort(key=lambda anchor: anchor.seq)
        checker = _Checker()
        report = checker.report
        for row in _entries(connection):
            while anchors and anchors[0].seq < int(row["seq"]):
                if not _reached(report, anchors.pop(0)):
                    return report
            if not checker.feed(row):
                return report
        for anchor in anchors:
            if not _reached(report, anchor):
                return report
        after = connection.execute(_HEAD_ROW).first()
    if after is not None and report.head_seq > int(after.seq):
        report.problem = Problem(
            int(after.seq) + 1,
            f"beyond the head (entry {after.seq}): put in by hand, or the head was set back",
        )
    report.checkpoints = sorted(signed, key=lambda each: (each.seq, each.time))
    return report


_HEAD_ROW = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == _HEAD_ID)


@dataclass(frozen=True)
class _Anchor:
    """A (seq, hash) the chain must hold: a checkpoint's, or the head row's."""

    seq: int
    hash: str
    source: str


def _reached(report: ChainReport, anchor: _Anchor) -> bool:
    """Check ``anchor`` once the chain is read up to it (or to its end); False: a problem."""
    if report.head_seq < anchor.seq:
        says = (
            f"the head says the chain ends at {anchor.seq}, the last entry is {report.head_seq}"
            if anchor.source == "the head"
            else f"{anchor.source} covers entries up to {anchor.seq}, "
            f"the chain ends at {report.head_seq}"
        )
        report.problem = Problem(report.head_seq + 1, f"missing (deleted): {says}")
    elif report.head_seq == anchor.seq and report.head_hash != anchor.hash:
        report.problem = Problem(
            anchor.seq,
            f"its hash is not the one {anchor.source} holds (the chain up to it was rewritten)",
        )
    return report.problem is None


# ----------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """A signed head: Ed25519 over the canonical JSON of ``{seq, hash, time}``."""

    seq: int
    hash: str
    time: str
    public_key: str  # hex, the 32 raw bytes
    signature: str  # hex, 64 bytes

    def signed(self) -> bytes:
        return canonical({"seq": self.seq, "hash": self.hash, "time": self.time})

    def to_json(self) -> dict[str, Any]:
        return {
            "algorithm": "Ed25519",
            "seq": self.seq,
            "hash": self.hash,
            "time": self.time,
            "public_key": self.public_key,
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Checkpoint:
        return cls(
            seq=int(value["seq"]),
            hash=str(value["hash"]),
            time=str(value["time"]),
            public_key=str(value["public_key"]),
            signature=str(value["signature"]),
        )

    @classmethod
    def read(cls, path: Path) -> Checkpoint:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))

    def refused(self, public_key: str | None = None) -> str | None:
        """Why the signature does not hold (None: it does) for ``public_key`` (hex)."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        trusted = public_key or self.public_key
        if trusted != self.public_key:
            return f"signed by key {self.public_key[:16]}..., not the trusted {trusted[:16]}..."
        try:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(trusted))
            key.verify(bytes.fromhex(self.signature), self.signed())
        except (InvalidSignature, ValueError):
            return "the signature does not match (seq, hash, time)"
        return None


def load_or_create_signing_key(state_dir: Path, *, path: Path | None = None) -> Ed25519PrivateKey:
    """The signing key: from ``path`` (``JOURNEYS_AUDIT_SIGNING_KEY_FILE``), else
    ``<state>/audit_signing_key``, created (PEM, PKCS#8, mode 0600) on first use."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    given = path is not None
    path = path or state_dir / SIGNING_KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        data = path.read_bytes()
        if not given and path.stat().st_mode & 0o077:
            path.chmod(0o600)
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return key
    if given:
        raise FileNotFoundError(f"{path}: no such signing key file ({SIGNING_KEY_ENV})")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    path.chmod(0o600)
    return key


def public_key_hex(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def make_checkpoint(engine: Engine, key: Ed25519PrivateKey) -> Checkpoint:
    """Sign the head as it is now and store the checkpoint in `audit_checkpoints`."""
    with engine.begin() as connection:
        head = connection.execute(select(_HEAD.c.seq, _HEAD.c.hash)).first()
        if head is None:
            last = connection.execute(_LAST).first()
            seq, head_hash = (int(last.seq), str(last.hash)) if last is not None else (0, GENESIS)
        else:
            seq, head_hash = int(head.seq), str(head.hash)
        time = utc_text(utcnow())
        unsigned = Checkpoint(seq, head_hash, time, public_key_hex(key), "")
        checkpoint = Checkpoint(
            seq, head_hash, time, unsigned.public_key, key.sign(unsigned.signed()).hex()
        )
        connection.execute(
            insert(_CHECKPOINTS).values(
                seq=seq,
                hash=head_hash,
                time=time,
                public_key=checkpoint.public_key,
                signature=checkpoint.signature,
            )
        )
    return checkpoint


def write_checkpoint_file(checkpoint: Checkpoint, path: Path) -> Path:
    """The checkpoint as a JSON file an operator ships elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(checkpoint.to_json(), indent=2) + "\n", encoding="utf-8")
    return path


def checkpoint_if_moved(engine: Engine, key: Ed25519PrivateKey, directory: Path) -> Path | None:
    """Sign the head and write ``directory/checkpoint-<seq>.json``, unless the newest
    stored checkpoint is at the head already (a periodic signer writes nothing new while
    nothing is logged). The file written, or None."""
    with engine.connect() as connection:
        head = connection.execute(select(_HEAD.c.seq)).scalar()
    newest = latest_checkpoint(engine, at_least=int(head or 0))
    if newest is not None and newest.seq == int(head or 0):
        return None
    checkpoint = make_checkpoint(engine, key)
    return write_checkpoint_file(checkpoint, directory / f"checkpoint-{checkpoint.seq}.json")


def stored_checkpoints(engine: Engine) -> list[Checkpoint]:
    """Every checkpoint in `audit_checkpoints`, oldest first (`verify_chain` checks them
    against the trusted key: a row an attacker signed with a key of their own is refused)."""
    with engine.connect() as connection:
        rows = connection.execute(select(_CHECKPOINTS).order_by(_CHECKPOINTS.c.id)).all()
    return [Checkpoint(int(r.seq), r.hash, r.time, r.public_key, r.signature) for r in rows]


def latest_checkpoint(engine: Engine, *, at_least: int = 0) -> Checkpoint | None:
    """The newest stored checkpoint whose head is at ``at_least`` or later."""
    with engine.connect() as connection:
        row = connection.execute(
            select(_CHECKPOINTS)
            .where(_CHECKPOINTS.c.seq >= at_least)
            .order_by(_CHECKPOINTS.c.id.desc())
            .limit(1)
        ).first()
    if row is None:
        return None
    return Checkpoint(int(row.seq), row.hash, row.time, row.public_key, row.signature)


# ----------------------------------------------------------------------------- export


def export_entries(
    engine: Engine,
    *,
    start: str,
    end: str,
    customer: str | None = None,
    through: int | None = None,
) -> Iterator[dict[str, Any]]:
    """The entries logged from ``start`` (inclusive) to ``end`` (exclusive), UTC text as
    in ``time``; with ``customer``, only theirs. ``through``: go on past ``end`` up to that
    sequence number (to reach a checkpoint's head), unfiltered by time."""
    with engine.connect() as connection:
        wanted = set(customer_filter(connection, customer)) if customer is not None else None
        first = connection.execute(
            select(_AUDIT.c.seq).where(_AUDIT.c.time >= start).order_by(_AUDIT.c.seq).limit(1)
        ).scalar()
        if first is None:
            return
        for row in _entries(connection, after=int(first) - 1):
            inside = row["time"] < end
            if not inside and (through is None or int(row["seq"]) > through):
                return
            if wanted is not None and row["customer"] not in wanted:
                continue
            yield row
