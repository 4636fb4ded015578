"""The console's audit log, for auditors and admins (issue #18): ``/console/audit`` lists
the hash-chained log's entries newest first, 100 a page, found by customer, run, actor and
kind; ``/console/audit/export`` downloads what the search shows as JSONL, each entry with
its hashes, and a last line with the newest signed checkpoint that covers them (the
offline procedure in docs/security.md checks it). Reading only: the log is written by
`engine.audit` and changed by nobody.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy import Select, func, select
from sqlalchemy.engine import Connection, Engine

from engine.audit import customer_filter, latest_checkpoint
from engine.database import AuditEntry
from service.api.deps import DatabaseDep
from service.console.routes import _page, _signed_in

__all__ = ["AUDIT_PAGE_SIZE", "router"]

router = APIRouter(prefix="/console", include_in_schema=False)

AUDIT_PAGE_SIZE = 100
EXPORT_LIMIT = 100_000
"""The most entries one download holds (`journeys audit export` has no limit)."""
_TABLE = AuditEntry.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class AuditSearch:
    customer: str = ""
    run: str = ""
    actor: str = ""
    kind: str = ""
    before: int | None = None  # the page's entries come before this sequence number

    @classmethod
    def of(cls, **given: str | None) -> AuditSearch:
        def text(name: str) -> str:
            value = (given.get(name) or "").strip()
            return value[:200] if "\x00" not in value else ""

        try:
            before = int(given.get("before") or 0) or None
        except ValueError:
            before = None
        return cls(
            customer=text("customer"),
            run=text("run"),
            actor=text("actor"),
            kind=text("kind"),
            before=before if before is None or before > 0 else None,
        )

    @property
    def filters(self) -> dict[str, str]:
        return {
            k: v for k, v in (("customer", self.customer), ("run", self.run),
                              ("actor", self.actor), ("kind", self.kind)) if v
        }  # fmt: skip

    def link(self, *, before: int | None = None, export: bool = False) -> str:
        query: dict[str, Any] = dict(self.filters)
        if before is not None:
            query["before"] = before
        path = "/console/audit/export" if export else "/console/audit"
        return path + (f"?{urlencode(query)}" if query else "")

    @staticmethod
    def customer_link(customer: str) -> str:
        return f"/console/audit?{urlencode({'customer': customer})}"

    def query(self, customers: tuple[str, ...] = ()) -> Select[Any]:
        """The search's entries, newest first. A customer (``customers``: the values that
        mean them, `engine.audit.customer_filter`) and a run are exact; an actor or a kind
        is matched by its beginning (``review.`` finds every review entry)."""
        statement = select(_TABLE)
        if self.customer:
            statement = statement.where(_TABLE.c.customer.in_(customers or (self.customer,)))
        if self.run:
            statement = statement.where(_TABLE.c.subject == f"run:{self.run}")
        for column, value in ((_TABLE.c.actor, self.actor), (_TABLE.c.kind, self.kind)):
            if value:
                # A substring compare, the same on SQLite and PostgreSQL (no LIKE wildcards).
                statement = statement.where(func.substr(column, 1, len(value)) == value)
        if self.before is not None:
            statement = statement.where(_TABLE.c.seq < self.before)
        return statement.order_by(_TABLE.c.seq.desc())


@dataclass(frozen=True)
class AuditPage:
    entries: list[dict[str, Any]]
    older: int | None  # ``before`` of the next page, if there is one


def _customers(connection: Connection, search: AuditSearch) -> tuple[str, ...]:
    return customer_filter(connection, search.customer) if search.customer else ()


def _search(db: Engine, search: AuditSearch) -> AuditPage:
    with db.connect() as connection:
        rows = [
            dict(row)
            for row in connection.execute(
                search.query(_customers(connection, search)).limit(AUDIT_PAGE_SIZE + 1)
            ).mappings()
        ]
    more = len(rows) > AUDIT_PAGE_SIZE
    rows = rows[:AUDIT_PAGE_SIZE]
    for row in rows:
        row["details_text"] = json.dumps(row["details"], sort_keys=True, ensure_ascii=False)
    return AuditPage(entries=rows, older=rows[-1]["seq"] if more and rows else None)


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(
    request: Request,
    db: DatabaseDep,
    customer: str | None = None,
    run: str | None = None,
    actor: str | None = None,
    kind: str | None = None,
    before: str | None = None,
) -> Response:
    viewer = await _signed_in(request, "view_audit")
    if isinstance(viewer, Response):
        return viewer
    search = AuditSearch.of(customer=customer, run=run, actor=actor, kind=kind, before=before)
    found = await asyncio.to_thread(_search, db, search)
    return _page(request, "audit.html", viewer=viewer, search=search, found=found)


def _export_lines(db: Engine, search: AuditSearch) -> Iterator[str]:
    """The search's entries, oldest first, one JSON object a line, as `journeys audit
    export` writes them; then the newest stored checkpoint at or after the last one."""
    newest = 0
    with db.connect() as connection:
        rows = (
            connection.execute(search.query(_customers(connection, search)).limit(EXPORT_LIMIT))
            .mappings()
            .all()
        )
    for row in reversed(rows):
        entry = {k: v for k, v in row.items() if k != "ref"}
        newest = max(newest, int(entry["seq"]))
        yield json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n"
    checkpoint = latest_checkpoint(db, at_least=newest) if rows else None
    trailer = {
        "checkpoint": checkpoint.to_json() if checkpoint is not None else None,
        "export": {"filters": search.filters, "entries": len(rows)},
    }
    yield json.dumps(trailer, sort_keys=True) + "\n"


@router.get("/audit/export")
async def audit_export(
    request: Request,
    db: DatabaseDep,
    customer: str | None = None,
    run: str | None = None,
    actor: str | None = None,
    kind: str | None = None,
) -> Response:
    viewer = await _signed_in(request, "view_audit")
    if isinstance(viewer, Response):
        return viewer
    search = AuditSearch.of(customer=customer, run=run, actor=actor, kind=kind)
    lines = await asyncio.to_thread(lambda: list(_export_lines(db, search)))
    return StreamingResponse(
        iter(lines),
        media_type="application/x-ndjson",
        headers={
            "Content-Disposition": 'attachment; filename="audit-export.jsonl"',
            "Cache-Control": "no-store",
        },
    )
