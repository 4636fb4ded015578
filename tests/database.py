"""The test database: SQLite in a temp dir, or PostgreSQL when JOURNEYS_TEST_DATABASE_URL is set.

The one database helper of the suite: the root conftest's ``database_url`` and ``db``
fixtures use it, and so do the end-to-end stacks. On PostgreSQL every test gets the same
database with its tables dropped and created again, so those runs cannot be parallel.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from engine.catalog import build_catalog_from_text
from engine.database import make_engine
from engine.deploy import deploy_catalog
from engine.plan import Plan


def database_url(tmp_path: Path) -> str:
    url = os.environ.get("JOURNEYS_TEST_DATABASE_URL")
    if not url:
        return f"sqlite:///{tmp_path / 'journeys.db'}"
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


def fresh_engine(tmp_path: Path) -> Engine:
    """An engine on an empty schema (tables dropped and created on PostgreSQL)."""
    url = database_url(tmp_path)
    engine = make_engine(url)
    if not url.startswith("sqlite"):
        SQLModel.metadata.drop_all(engine)
        SQLModel.metadata.create_all(engine)
    return engine


def fresh_database_url(tmp_path: Path) -> str:
    """The URL of an empty app database, for code that makes its own engine from a URL."""
    fresh_engine(tmp_path).dispose()
    return database_url(tmp_path)


def deploy(db: Engine, text: str) -> dict[str, Plan]:
    """Compile a journeys document and activate its plans, as `journeys deploy` does."""
    catalog = build_catalog_from_text(text)
    assert catalog.ok, "\n".join(violation.format() for violation in catalog.violations)
    deploy_catalog(catalog, engine=db, source_text=text)
    return catalog.plans
