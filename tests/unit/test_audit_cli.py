"""`journeys audit ...` as an operator and an auditor use them: `verify` says intact (exit
0) or names the first wrong entry (exit 1) for each kind of tampering; `checkpoint` writes a
signed file that `verify --from` checks, and refuses a forged one; `pubkey` prints the key;
`export` writes JSONL that the offline procedure of docs/security.md (run as written there,
with nothing of journeys) verifies, and that it rejects once tampered with.

Tampering drops the append-only triggers first, as an attacker with the database owner's
rights would (tests/unit/test_audit.py covers each kind against the library)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from engine.audit import public_key_hex, record
from engine.database import make_engine
from engine.pseudonyms import customer_ref, pseudonym_key
from service.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("JOURNEYS_STATE_DIR", str(state))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{state / 'journeys.db'}")
    monkeypatch.delenv("JOURNEYS_AUDIT_SIGNING_KEY_FILE", raising=False)
    return state


@pytest.fixture
def db(state: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{state / 'journeys.db'}")
    for n in range(1, 9):
        record(
            engine,
            "decision" if n % 2 else "send.sent",
            f"run:r{n}",
            actor="journeys",
            customer="c1" if n % 2 else "c2",
            details={"n": n},
        )
    yield engine
    engine.dispose()


def _tamper(db: Engine, *statements: str) -> None:
    with db.begin() as connection:
        connection.execute(text("DROP TRIGGER IF EXISTS audit_no_update"))
        connection.execute(text("DROP TRIGGER IF EXISTS audit_no_delete"))
        for statement in statements:
            connection.execute(text(statement))


def _verify(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["audit", "verify", *args])
    return result.exit_code, result.output.strip()


def test_verify_says_an_intact_chain_is_intact_in_one_line(db: Engine) -> None:
    code, output = _verify()
    assert code == 0
    assert re.fullmatch(r"audit chain intact: 8 entries, head 8 [0-9a-f]{16}", output), output


@pytest.mark.parametrize(
    ("statements", "expected"),
    [
        (
            ["UPDATE audit SET details = '{\"n\": 40}' WHERE seq = 4"],
            "audit chain BROKEN at entry 4: hash does not match its content "
            "(edited, or put in by hand)",
        ),
        (
            ["DELETE FROM audit WHERE seq = 4"],
            "audit chain BROKEN at entry 4: missing (it is deleted): entry 5 follows 3",
        ),
        (
            [
                "UPDATE audit SET seq = seq + 1000 WHERE seq >= 4",
                "UPDATE audit SET seq = seq - 999 WHERE seq >= 1000",
                "INSERT INTO audit (seq, time, actor, kind, subject, customer, details, "
                "prev_hash, hash) SELECT 4, time, 'user:mallory', 'review.decided', "
                "'review:t1', 'c1', '{}', hash, hash FROM audit WHERE seq = 3",
            ],
            "audit chain BROKEN at entry 4: hash does not match its content "
            "(edited, or put in by hand)",
        ),
        (
            [
                "UPDATE audit SET seq = -4 WHERE seq = 4",
                "UPDATE audit SET seq = 4 WHERE seq = 5",
                "UPDATE audit SET seq = 5 WHERE seq = -4",
            ],
            "audit chain BROKEN at entry 4: holds the entry written as 5 (entries reordered)",
        ),
    ],
    ids=["update", "delete", "insert", "swap"],
)
def test_verify_names_the_first_tampered_entry_and_exits_1(
    db: Engine, statements: list[str], expected: str
) -> None:
    _tamper(db, *statements)

    code, output = _verify()

    assert (code, output) == (1, expected)


def test_checkpoint_writes_a_signed_file_that_verify_checks(db: Engine, state: Path) -> None:
    made = runner.invoke(app, ["audit", "checkpoint"])
    assert made.exit_code == 0, made.output
    path = state / "audit" / "checkpoint-8.json"
    assert "checkpoint at entry 8 " in made.output and str(path) in made.output
    assert (state / "audit_signing_key").stat().st_mode & 0o777 == 0o600
    checkpoint = json.loads(path.read_text())
    pubkey = runner.invoke(app, ["audit", "pubkey"]).output.strip()
    assert checkpoint["public_key"] == pubkey and re.fullmatch(r"[0-9a-f]{64}", pubkey)

    code, output = _verify("--from", str(path))
    assert code == 0, output
    assert output.endswith(f"checkpoint at 8 ({checkpoint['time']}) verified")

    forged = state / "forged.json"
    forged.write_text(json.dumps({**checkpoint, "seq": 7}))
    code, output = _verify("--from", str(forged))
    assert (code, output) == (
        1,
        "audit chain BROKEN at entry 7: checkpoint refused: the signature does not match "
        "(seq, hash, time)",
    )


def test_verify_with_a_checkpoint_finds_a_deleted_tail(db: Engine, state: Path) -> None:
    assert runner.invoke(app, ["audit", "checkpoint", "-o", str(state / "cp.json")]).exit_code == 0
    _tamper(
        db,
        "DELETE FROM audit WHERE seq >= 7",
        "UPDATE audit_head SET seq = 6, hash = (SELECT hash FROM audit WHERE seq = 6)",
    )
    code, output = _verify()  # the checkpoint stored in the database tells
    assert code == 1
    assert output.startswith("audit chain BROKEN at entry 7: missing (deleted): the checkpoint")

    _tamper(db, "DELETE FROM audit_checkpoints")  # the owner can delete those too
    assert _verify()[0] == 0  # the chain alone looks whole
    code, output = _verify("--from", str(state / "cp.json"))  # the shipped copy tells
    assert code == 1
    assert output.startswith("audit chain BROKEN at entry 7: missing (deleted): the checkpoint")


def test_verify_refuses_a_checkpoint_stored_with_another_key(db: Engine, state: Path) -> None:
    assert runner.invoke(app, ["audit", "checkpoint"]).exit_code == 0
    other = Ed25519PrivateKey.generate()
    signed = '{"hash":"%s","seq":8,"time":"2026-12-05T00:00:00.000000Z"}'
    with db.begin() as connection:
        head = connection.execute(text("SELECT hash FROM audit WHERE seq = 8")).scalar_one()
        message = (signed % head).encode()
        connection.execute(
            text(
                "INSERT INTO audit_checkpoints (seq, hash, time, public_key, signature) "
                "VALUES (8, :hash, '2026-12-05T00:00:00.000000Z', :key, :signature)"
            ),
            {"hash": head, "key": public_key_hex(other), "signature": other.sign(message).hex()},
        )

    code, output = _verify()

    assert code == 1
    assert output.startswith("audit chain BROKEN at entry 8: checkpoint refused: signed by key ")
    assert output.endswith("not the trusted " + _verify_key(state)[:16] + "...")


def _verify_key(state: Path) -> str:
    return runner.invoke(app, ["audit", "pubkey"]).output.strip()


def _offline_procedure() -> str:
    """The Python block after the marker in docs/security.md, as a reader copies it."""
    doc = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    after = doc.split("<!-- audit-offline-verify -->", 1)[1]
    found = re.search(r"```python\n(.*?)```", after, re.S)
    assert found is not None
    snippet = found.group(1)
    assert len(snippet.splitlines()) <= 40
    return snippet


def _run_offline(tmp_path: Path, export: Path, public_key: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "verify_export.py"
    script.write_text(_offline_procedure(), encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script), str(export), public_key],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_the_documented_offline_procedure_verifies_an_export_and_rejects_a_tampered_one(
    db: Engine, state: Path, tmp_path: Path
) -> None:
    export = tmp_path / "audit.jsonl"
    made = runner.invoke(
        app, ["audit", "export", "--from", "2000-01-01", "--to", "2999-12-31", "-o", str(export)]
    )
    assert made.exit_code == 0, made.output
    assert made.output.startswith("8 entries, checkpoint at entry 8")
    public_key = runner.invoke(app, ["audit", "pubkey"]).output.strip()
    lines = export.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 9 and json.loads(lines[-1])["export"]["entries"] == 8

    good = _run_offline(tmp_path, export, public_key)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == "export verified: 8 entries, checkpoint at 8 signed"

    entry = json.loads(lines[3])
    entry["details"]["n"] = 400
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join([*lines[:3], json.dumps(entry), *lines[4:]]) + "\n")
    bad = _run_offline(tmp_path, tampered, public_key)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "entry 4: hash does not match its content"

    dropped = tmp_path / "dropped.jsonl"
    dropped.write_text("\n".join([*lines[:3], *lines[4:]]) + "\n")
    assert _run_offline(tmp_path, dropped, public_key).stderr.strip() == "entry 4: missing"

    other_key = public_key_hex(Ed25519PrivateKey.generate())
    forged = _run_offline(tmp_path, export, other_key)
    assert forged.returncode == 1
    assert forged.stderr.strip() == "checkpoint: the signature does not hold"


def test_a_customer_export_holds_only_their_entries_and_still_verifies(
    db: Engine, tmp_path: Path
) -> None:
    export = tmp_path / "c1.jsonl"
    made = runner.invoke(
        app,
        [
            *("audit", "export", "--from", "2000-01-01", "--to", "2999-12-31"),
            *("--customer", "c1", "-o", str(export)),
        ],
    )
    assert made.exit_code == 0, made.output
    *entries, trailer = [json.loads(line) for line in export.read_text().splitlines()]
    assert [entry["seq"] for entry in entries] == [1, 3, 5, 7]
    # The trailer names the customer as the entries do: by pseudonym, never the id.
    assert trailer["export"]["customer"] == customer_ref("c1", pseudonym_key(db))
    assert '"c1"' not in export.read_text()
    public_key = runner.invoke(app, ["audit", "pubkey"]).output.strip()
    assert _run_offline(tmp_path, export, public_key).returncode == 0


def test_an_export_of_a_period_without_entries_has_only_the_checkpoint(
    db: Engine, tmp_path: Path
) -> None:
    export = tmp_path / "none.jsonl"
    made = runner.invoke(
        app, ["audit", "export", "--from", "2001-01-01", "--to", "2001-01-31", "-o", str(export)]
    )
    assert made.exit_code == 0, made.output
    assert len(export.read_text().splitlines()) == 1


def _doc_outputs() -> list[str]:
    """The output lines of the example block under "Verifying" in docs/security.md."""
    doc = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    after = doc.split("**Verifying.**", 1)[1]
    found = re.search(r"```\n(.*?)```", after, re.S)
    assert found is not None
    return [line for line in found.group(1).splitlines() if not line.startswith("$")]


def test_the_verify_examples_in_the_doc_are_what_verify_prints(db: Engine) -> None:
    for n in range(9, 13):
        record(db, "decision", f"run:r{n}", actor="journeys", details={"n": n})
    intact, edited, deleted = _doc_outputs()
    hex16 = r"[0-9a-f]{16}"

    printed = _verify()[1]
    assert re.sub(hex16, "HASH", printed) == re.sub(hex16, "HASH", intact)
    _tamper(db, "UPDATE audit SET details = '{\"n\": 50}' WHERE seq = 5")
    assert _verify() == (1, edited)
    _tamper(db, "DELETE FROM audit WHERE seq = 5")
    assert _verify() == (1, deleted)
