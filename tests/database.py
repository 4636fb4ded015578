"""The test database: SQLite in a temp dir, or PostgreSQL when JOURNEYS_TEST_DATABASE_URL is set."""

from __future__ import annotations

import os
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
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def fresh_engine(tmp_path: Path) -> Engine:
    """An engine on an empty schema (tables dropped and created on PostgreSQL)."""
    url = database_url(tmp_path)
    engine = make_engine(url)
    if not url.startswith("sqlite"):
        SQLModel.metadata.drop_all(engine)
        SQLModel.metadata.create_all(engine)
    return engine


def deploy(db: Engine, text: str) -> dict[str, Plan]:
    """Compile a journeys document and activate its plans, as `journeys deploy` does."""
    catalog = build_catalog_from_text(text)
    assert catalog.ok, "\n".join(violation.format() for violation in catalog.violations)
    deploy_catalog(catalog, engine=db, source_text=text)
    return catalog.plans
