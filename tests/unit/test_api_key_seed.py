"""API replicas started together seed `JOURNEYS_API_KEY` once: the one that loses the
race to insert it (a unique-hash clash) finds it stored and starts (issue #20, seen with
two API processes in `make test-scale`)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from engine.database import ApiKey, create_api_key, session_scope
from service.api import app

KEY = "scale-seed-key-not-a-secret"


def test_the_replica_that_loses_the_insert_race_finds_the_key_stored(
    db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def racing(session: Any, **kwargs: Any) -> str:
        calls.append(1)
        if len(calls) == 1:
            # The other replica commits the key between our read and our insert.
            with session_scope(db) as other:
                create_api_key(other, **kwargs)
            raise IntegrityError("INSERT INTO api_keys", {}, Exception("duplicate key"))
        return create_api_key(session, **kwargs)

    monkeypatch.setattr(app, "create_api_key", racing)
    app._seed_api_key(db, KEY)

    assert len(calls) == 2
    with session_scope(db) as session:
        keys = session.exec(select(ApiKey)).all()
    assert [(key.name, key.scopes) for key in keys] == [("dev", "admin")]


def test_a_clash_that_persists_is_not_hidden(db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    def clash(session: Any, **kwargs: Any) -> str:
        raise IntegrityError("INSERT INTO api_keys", {}, Exception("duplicate key"))

    monkeypatch.setattr(app, "create_api_key", clash)
    with pytest.raises(IntegrityError):
        app._seed_api_key(db, KEY)
