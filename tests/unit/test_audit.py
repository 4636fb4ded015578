"""The hash-chained audit log (`engine.audit`): appends chain and take turns, a retried
record logs nothing twice, the database refuses edits, and every kind of tampering (an
UPDATE, a DELETE, an INSERT in the middle, a swap, a rewrite of the whole chain) is found
at the right entry. Tampering drops the triggers first, as an attacker with the database
owner's rights would; on PostgreSQL the test schema is made without them.

Runs on SQLite, and on PostgreSQL when JOURNEYS_TEST_DATABASE_URL is set."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Table, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from engine.audit import (
    GENESIS,
    Checkpoint,
    Record,
    append,
    canonical,
    digest,
    entry_hash,
    load_or_create_signing_key,
    make_checkpoint,
    public_key_hex,
    record,
    verify_chain,
)
from engine.database import AuditEntry, make_engine, session_scope
from tests.database import deploy

AUDIT: Table = AuditEntry.__table__  # type: ignore[attr-defined]

JOURNEYS = """
version: 1
journeys:
  - id: welcome
    entry: {event: signed_up}
    steps:
      - {id: done, exit: done}
"""


def _fill(db: Engine, count: int) -> None:
    for n in range(1, count + 1):
        record(
            db,
            "send.sent" if n % 2 else "decision",
            f"run:r{n}",
            actor="journeys",
            customer=f"c{n % 3}",
            details={"n": n, "channel": "email", "reason": "é ✓"},
        )


def _tamper(db: Engine, *statements: str, **parameters: Any) -> None:
    """Run ``statements`` as the database's owner: the append-only triggers dropped first."""
    with db.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("DROP TRIGGER IF EXISTS audit_no_update_delete ON audit"))
        else:
            connection.execute(text("DROP TRIGGER IF EXISTS audit_no_update"))
            connection.execute(text("DROP TRIGGER IF EXISTS audit_no_delete"))
        for statement in statements:
            connection.execute(text(statement), parameters)


def _row(db: Engine, seq: int) -> dict[str, Any]:
    with db.connect() as connection:
        row = connection.execute(text("SELECT * FROM audit WHERE seq = :seq"), {"seq": seq})
        return dict(row.mappings().one())


def test_entries_chain_from_the_genesis_hash_and_an_intact_chain_verifies(db: Engine) -> None:
    _fill(db, 8)

    report = verify_chain(db)

    assert report.ok, report.format()
    assert (report.count, report.head_seq) == (8, 8)
    first, second = _row(db, 1), _row(db, 2)
    assert first["prev_hash"] == GENESIS and second["prev_hash"] == first["hash"]
    body = {name: first[name] for name in ("seq", "time", "actor", "kind", "subject")}
    body |= {"customer": first["customer"], "details": first["details"], "prev_hash": GENESIS}
    if isinstance(body["details"], str):  # SQLite hands JSON back as text through text()
        import json

        body["details"] = json.loads(body["details"])
    assert first["hash"] == entry_hash(GENESIS, body)
    assert canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
    assert report.format().startswith("audit chain intact: 8 entries, head 8 ")


def test_a_record_with_a_ref_logged_before_is_not_logged_again(db: Engine) -> None:
    with session_scope(db) as session:
        assert append(session, [Record("decision", "run:r1", ref="path:r1:3")]) == [1]
    with session_scope(db) as session:
        again = [Record("decision", "run:r1", ref="path:r1:3"), Record("x", "y", ref="path:r1:4")]
        assert append(session, again) == [2]
    assert verify_chain(db).count == 2


def test_an_append_rolled_back_with_its_change_leaves_no_gap(db: Engine) -> None:
    _fill(db, 2)
    with pytest.raises(RuntimeError), session_scope(db) as session:
        append(session, [Record("deploy", "catalogue")])
        raise RuntimeError("the change failed")
    _fill(db, 1)
    report = verify_chain(db)
    assert report.ok and report.count == 3


def test_concurrent_appends_take_turns_and_never_fork_the_chain(db: Engine) -> None:
    errors: list[BaseException] = []

    def appender(worker: int) -> None:
        try:
            for n in range(15):
                record(db, "send.sent", f"run:w{worker}-{n}", actor="journeys")
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=appender, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    report = verify_chain(db)
    assert report.ok, report.format()
    assert report.count == 60


def test_the_database_refuses_update_and_delete_of_an_entry(tmp_path: Path) -> None:
    db = make_engine(f"sqlite:///{tmp_path / 'journeys.db'}")  # migrated: with the triggers
    try:
        _fill(db, 2)
        for statement in ("UPDATE audit SET actor = 'x' WHERE seq = 1", "DELETE FROM audit"):
            with pytest.raises(DBAPIError, match="append-only"), db.begin() as connection:
                connection.execute(text(statement))
        assert verify_chain(db).count == 2
    finally:
        db.dispose()


def test_an_updated_detail_is_found_at_its_entry(db: Engine) -> None:
    _fill(db, 8)
    _tamper(db)
    with db.begin() as connection:
        connection.execute(update(AUDIT).where(AUDIT.c.seq == 5).values(details={"n": 50}))

    report = verify_chain(db)

    assert not report.ok
    assert report.problem is not None and report.problem.seq == 5
    assert report.format() == (
        "audit chain BROKEN at entry 5: hash does not match its content (edited, or put in by hand)"
    )


def test_a_deleted_entry_is_found_where_it_was(db: Engine) -> None:
    _fill(db, 8)
    _tamper(db, "DELETE FROM audit WHERE seq = 5")

    report = verify_chain(db)

    assert report.format() == (
        "audit chain BROKEN at entry 5: missing (it is deleted): entry 6 follows 4"
    )


def test_a_deleted_last_entry_is_found_by_the_head(db: Engine) -> None:
    _fill(db, 8)
    _tamper(db, "DELETE FROM audit WHERE seq = 8")

    report = verify_chain(db)

    assert report.problem is not None and report.problem.seq == 8
    assert "missing (deleted): the head says the chain ends at 8" in report.format()


def _insert_at(db: Engine, seq: int, *, chained: bool) -> None:
    """Move entries ``seq``... one up and put a new entry at ``seq``: chained to the one
    before with a correct hash (an attacker who knows the scheme), or not."""
    before = _row(db, seq - 1)
    body = {
        "seq": seq,
        "time": before["time"],
        "actor": "user:mallory",
        "kind": "review.decided",
        "subject": "review:t1",
        "customer": "c1",
        "details": {"decision": "approve"},
        "prev_hash": before["hash"],
    }
    forged = entry_hash(before["hash"], body) if chained else "f" * 64
    _tamper(
        db,
        "UPDATE audit SET seq = seq + 1000 WHERE seq >= :seq",
        "UPDATE audit SET seq = seq - 999 WHERE seq >= 1000",
        "INSERT INTO audit (seq, time, actor, kind, subject, customer, details, prev_hash, "
        "hash) VALUES (:seq, :time, 'user:mallory', 'review.decided', 'review:t1', 'c1', "
        """'{"decision": "approve"}', :prev, :forged)""",
        seq=seq,
        time=before["time"],
        prev=before["hash"],
        forged=forged,
    )


def test_an_entry_inserted_in_the_middle_is_found_where_it_was_put(db: Engine) -> None:
    _fill(db, 8)
    _insert_at(db, 6, chained=True)

    report = verify_chain(db)

    assert report.format() == (
        "audit chain BROKEN at entry 6: inserted (it was put in): entry 7 was chained to entry 5"
    )


def test_an_entry_inserted_with_a_made_up_hash_is_found_at_itself(db: Engine) -> None:
    _fill(db, 8)
    _insert_at(db, 6, chained=False)

    report = verify_chain(db)

    assert report.problem is not None and report.problem.seq == 6


def test_two_swapped_entries_are_found_at_the_first_of_them(db: Engine) -> None:
    _fill(db, 8)
    _tamper(
        db,
        "UPDATE audit SET seq = -5 WHERE seq = 5",
        "UPDATE audit SET seq = 5 WHERE seq = 6",
        "UPDATE audit SET seq = 6 WHERE seq = -5",
    )

    report = verify_chain(db)

    assert report.format() == (
        "audit chain BROKEN at entry 5: holds the entry written as 6 (entries reordered)"
    )


def _rewrite_from(db: Engine, seq: int) -> None:
    """Edit entry ``seq`` and recompute every hash after it and the head: the chain is
    consistent again, and only a checkpoint tells."""
    _tamper(db, "UPDATE audit SET actor = 'user:mallory' WHERE seq = :seq", seq=seq)
    prev = _row(db, seq - 1)["hash"] if seq > 1 else GENESIS
    import json

    with db.begin() as connection:
        rows = connection.execute(
            text("SELECT * FROM audit WHERE seq >= :seq ORDER BY seq"), {"seq": seq}
        ).mappings()
        for row in [dict(r) for r in rows]:
            details = row["details"]
            body = {
                "seq": row["seq"],
                "time": row["time"],
                "actor": row["actor"],
                "kind": row["kind"],
                "subject": row["subject"],
                "customer": row["customer"],
                "details": json.loads(details) if isinstance(details, str) else details,
                "prev_hash": prev,
            }
            prev = entry_hash(prev, body)
            connection.execute(
                text("UPDATE audit SET prev_hash = :p, hash = :h WHERE seq = :s"),
                {"p": body["prev_hash"], "h": prev, "s": row["seq"]},
            )
        connection.execute(text("UPDATE audit_head SET hash = :h"), {"h": prev})


def test_a_rewritten_chain_is_found_by_the_checkpoint_it_no_longer_matches(
    db: Engine, tmp_path: Path
) -> None:
    key = load_or_create_signing_key(tmp_path)
    _fill(db, 6)
    checkpoint = make_checkpoint(db, key)
    _fill(db, 2)
    assert verify_chain(db, checkpoint=checkpoint).ok

    _rewrite_from(db, 3)

    assert verify_chain(db).ok  # the chain alone cannot tell
    report = verify_chain(db, checkpoint=checkpoint, public_key=public_key_hex(key))
    assert report.problem is not None and report.problem.seq == 6
    assert "its hash is not the one the checkpoint" in report.format()


def test_a_forged_checkpoint_is_refused(db: Engine, tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path)
    _fill(db, 4)
    checkpoint = make_checkpoint(db, key)
    trusted = public_key_hex(key)
    assert verify_chain(db, checkpoint=checkpoint, public_key=trusted).ok

    moved = Checkpoint(3, _row(db, 3)["hash"], checkpoint.time, trusted, checkpoint.signature)
    report = verify_chain(db, checkpoint=moved, public_key=trusted)
    assert report.format() == (
        "audit chain BROKEN at entry 3: checkpoint refused: the signature does not match "
        "(seq, hash, time)"
    )

    other = Ed25519PrivateKey.generate()  # a checkpoint the attacker signed themselves
    own = Checkpoint(3, moved.hash, moved.time, public_key_hex(other), "")
    own = Checkpoint(own.seq, own.hash, own.time, own.public_key, other.sign(own.signed()).hex())
    assert verify_chain(db, checkpoint=own).ok  # its own key says yes...
    refused = verify_chain(db, checkpoint=own, public_key=trusted)  # ...the trusted one no
    assert refused.problem is not None and "not the trusted" in refused.problem.what


def test_a_checkpoint_past_the_end_of_the_chain_finds_the_deleted_tail(
    db: Engine, tmp_path: Path
) -> None:
    key = load_or_create_signing_key(tmp_path)
    _fill(db, 5)
    checkpoint = make_checkpoint(db, key)
    _tamper(db, "DELETE FROM audit WHERE seq >= 4", "UPDATE audit_head SET seq = 3")
    with db.begin() as connection:
        connection.execute(
            text("UPDATE audit_head SET hash = (SELECT hash FROM audit WHERE seq = 3)")
        )

    report = verify_chain(db, checkpoint=checkpoint, public_key=public_key_hex(key))

    assert report.problem is not None and report.problem.seq == 4
    assert "covers entries up to 5, the chain ends at 3" in report.format()


def test_the_signing_key_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path)
    path = tmp_path / "audit_signing_key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert public_key_hex(load_or_create_signing_key(tmp_path)) == public_key_hex(key)


def test_a_deploy_logs_the_deploy_and_each_activation(db: Engine) -> None:
    deploy(db, JOURNEYS)
    deploy(db, JOURNEYS)  # unchanged: the deploy is logged, no activation
    with db.connect() as connection:
        kinds = connection.execute(text("SELECT kind, subject FROM audit ORDER BY seq")).all()
    assert [tuple(row) for row in kinds] == [
        ("deploy", "catalogue"),
        ("version.activated", "journey:welcome"),
        ("deploy", "catalogue"),
    ]
    assert verify_chain(db).ok


def test_a_note_is_kept_only_as_its_digest() -> None:
    assert digest("call the customer at +15551234567") == (
        "sha256:" + __import__("hashlib").sha256(b"call the customer at +15551234567").hexdigest()
    )
    assert digest(None) is None


def test_review_desk_claims_and_refusals_are_logged_with_who_and_no_address(
    db: Engine,
) -> None:
    from engine.database import ReviewTask
    from service.review_desk import ReviewRefused, claim_task, release_task
    from service.users import Viewer

    with session_scope(db) as session:
        session.add(
            ReviewTask(
                id="t1",
                workflow_id="journey/j/c1",
                run_id="r1",
                journey_id="j",
                customer_id="c1",
                step_id="ask",
                visit=1,
                queue="collections",
                title="Risk for c1",
                decisions=["approve", "reject"],
            )
        )
    ana = Viewer(id=1, name="ana", role="ops")
    claim_task(db, task_id="t1", viewer=ana, address="203.0.113.7")
    with pytest.raises(ReviewRefused):
        claim_task(db, task_id="t1", viewer=Viewer(id=2, name="bo", role="ops"), address=None)
    release_task(db, task_id="t1", viewer=ana, address="203.0.113.7")

    with db.connect() as connection:
        rows = connection.execute(
            text("SELECT kind, subject, actor, details FROM audit ORDER BY seq")
        ).all()
    assert [tuple(row[:3]) for row in rows] == [
        ("review.claimed", "review:t1", "user:ana"),
        ("review.refused", "review:t1", "user:bo"),
        ("review.released", "review:t1", "user:ana"),
    ]
    assert "203.0.113.7" not in str([row[3] for row in rows])
    assert verify_chain(db).ok
