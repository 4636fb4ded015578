"""The worker's periodic audit checkpoint (`JOURNEYS_AUDIT_CHECKPOINT_EVERY`): it signs
the head when something was logged since the last checkpoint, writes the file an
operator ships elsewhere, and writes nothing while nothing is logged."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest

from engine.audit import Checkpoint, record, verify_chain
from engine.settings import RuntimeSettings
from tests.database import database_url, fresh_engine
from worker import sign_audit_log


async def test_the_worker_signs_the_head_only_when_it_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNEYS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("DATABASE_URL", database_url(tmp_path))
    monkeypatch.delenv("JOURNEYS_AUDIT_SIGNING_KEY_FILE", raising=False)
    db = fresh_engine(tmp_path)
    settings = RuntimeSettings.from_env()
    record(db, "deploy", "journey:j", actor="cli:root")
    stop = asyncio.Event()
    signer = asyncio.create_task(sign_audit_log(db, settings, timedelta(seconds=0.2), stop))
    try:
        folder = tmp_path / "state" / "audit"
        for _ in range(100):  # bounded: 10 s
            if list(folder.glob("checkpoint-*.json")):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # two more rounds, nothing logged: no new file
        first = sorted(p.name for p in folder.glob("checkpoint-*.json"))
        record(db, "run.started", "run:r-1", actor="system", customer="c1")
        for _ in range(100):
            if len(list(folder.glob("checkpoint-*.json"))) > 1:
                break
            await asyncio.sleep(0.1)
        files = sorted(p.name for p in folder.glob("checkpoint-*.json"))
    finally:
        stop.set()
        await asyncio.wait_for(signer, timeout=5)
    assert first == ["checkpoint-1.json"]
    assert files == ["checkpoint-1.json", "checkpoint-2.json"]
    latest = Checkpoint.from_json(json.loads((folder / "checkpoint-2.json").read_text()))
    assert verify_chain(db, checkpoint=latest).ok
    assert (tmp_path / "state" / "audit_signing_key").stat().st_mode & 0o077 == 0
    db.dispose()
