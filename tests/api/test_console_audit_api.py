"""The console's audit log, as an auditor uses it (issue #18): the entries newest first,
found by customer, run, actor and kind, in pages; a download of what the search shows
whose hashes and checkpoint check offline; and no other role than auditor and admin."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from engine.audit import (
    GENESIS,
    HASHED_FIELDS,
    entry_hash,
    load_or_create_signing_key,
    make_checkpoint,
    record,
)
from engine.pseudonyms import customer_ref, pseudonym_key
from tests.api.test_console_runs_api import NoTemporal, signed_in

pytestmark = pytest.mark.asyncio(loop_scope="session")


def shown_seqs(text: str) -> list[int]:
    return [int(seq) for seq in re.findall(r'<tr data-seq="(\d+)"', text)]


def log_some(db: Engine) -> None:
    """Entries about two customers and a run, by a person and the system."""
    record(db, "consent.changed", "customer:c-ann", actor="api:crm", customer="c-ann",
           details={"channel": "sms", "opted_in": False})  # fmt: skip
    record(db, "run.started", "run:r-1", actor="system", customer="c-ann",
           details={"journey": "payment_recovery"})  # fmt: skip
    record(db, "review.decided", "run:r-1", actor="user:ana", customer="c-ann",
           details={"decision": "approve"})  # fmt: skip
    record(db, "run.started", "run:r-2", actor="system", customer="c-bob",
           details={"journey": "onboarding"})  # fmt: skip


@pytest.mark.parametrize(
    ("query", "kinds"),
    [
        ({"customer": "c-ann"}, ["review.decided", "run.started", "consent.changed"]),
        ({"run": "r-1"}, ["review.decided", "run.started"]),
        ({"actor": "user:"}, ["review.decided", "user.password_changed"]),
        ({"kind": "run."}, ["run.started", "run.started"]),
        ({"customer": "c-bob", "kind": "review."}, []),
    ],
)
async def test_an_auditor_finds_entries_by_customer_run_actor_and_kind(
    database_url: str, db: Engine, query: dict[str, str], kinds: list[str]
) -> None:
    async with signed_in(database_url, db, role="auditor", client=NoTemporal()) as http:
        log_some(db)
        page = await http.get("/console/audit", params=query)

    assert page.status_code == 200, page.text
    found = re.findall(r"<tr data-seq=\"\d+\">\s*<td>\d+</td>\s*<td>.*?</td>\s*<td>.*?</td>\s*"
                       r"<td>([^<]+)</td>", page.text, re.S)  # fmt: skip
    assert found == kinds
    seqs = shown_seqs(page.text)
    assert seqs == sorted(seqs, reverse=True)  # newest first
    assert 'href="/console/audit"' in page.text  # in the navigation


async def test_the_log_comes_in_pages_of_a_hundred(database_url: str, db: Engine) -> None:
    async with signed_in(database_url, db, role="admin", client=NoTemporal()) as http:
        for n in range(130):
            record(db, "run.started", f"run:r-{n}", actor="system", customer="c-many")
        first = await http.get("/console/audit", params={"customer": "c-many"})
        older = re.search(r'id="older" href="([^"]+)"', first.text)
        assert older is not None
        second = await http.get(older.group(1).replace("&amp;", "&"))

    assert len(shown_seqs(first.text)) == 100 and len(shown_seqs(second.text)) == 30
    assert min(shown_seqs(first.text)) > max(shown_seqs(second.text))
    assert 'id="older"' not in second.text


async def test_the_download_checks_offline_against_its_hashes_and_checkpoint(
    database_url: str, db: Engine, tmp_path: Path
) -> None:
    async with signed_in(database_url, db, role="auditor", client=NoTemporal()) as http:
        log_some(db)
        key = load_or_create_signing_key(tmp_path)
        checkpoint = make_checkpoint(db, key)
        whole = await http.get("/console/audit/export")
        theirs = await http.get("/console/audit/export", params={"customer": "c-ann"})

    assert whole.status_code == 200
    assert whole.headers["content-disposition"] == 'attachment; filename="audit-export.jsonl"'
    *entries, trailer = [json.loads(line) for line in whole.text.splitlines()]
    # The whole log: each entry's hash is its content's, chained to the one before, and
    # the last is the head the checkpoint signed.
    previous = GENESIS
    for entry in entries:
        assert entry["prev_hash"] == previous
        assert entry_hash(previous, {k: entry[k] for k in HASHED_FIELDS}) == entry["hash"]
        previous = entry["hash"]
    assert trailer["checkpoint"]["seq"] == entries[-1]["seq"] == checkpoint.seq
    assert trailer["checkpoint"]["hash"] == previous
    assert trailer["export"]["entries"] == len(entries)
    *mine, _ = [json.loads(line) for line in theirs.text.splitlines()]
    assert [e["kind"] for e in mine] == ["consent.changed", "run.started", "review.decided"]
    assert {e["customer"] for e in mine} == {customer_ref("c-ann", pseudonym_key(db))}


@pytest.mark.parametrize("role", ["ops", "supervisor", "designer"])
async def test_only_auditors_and_admins_read_the_log(
    database_url: str, db: Engine, role: str
) -> None:
    async with signed_in(database_url, db, role=role, client=NoTemporal()) as http:
        page = await http.get("/console/audit")
        export = await http.get("/console/audit/export")
        shown = (await http.get("/console/runs")).text

    assert page.status_code == 403 and export.status_code == 403
    assert 'href="/console/audit"' not in shown
