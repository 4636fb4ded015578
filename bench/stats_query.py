"""How long a journey's numbers take (`engine.stats.journey_stats`, issue #19) with
1,000,000 path rows: about 100,000 runs of one journey, on SQLite and on PostgreSQL.

    .venv/bin/python -m bench.stats_query                       # SQLite in a temp dir
    .venv/bin/python -m bench.stats_query --url postgresql+psycopg://postgres@127.0.0.1/bench
    .venv/bin/python -m bench.stats_query --runs 10000 --json /tmp/stats.json

The data is built directly in the database (no server, no worker): `runs`, `run_path` and
`review_tasks` rows bulk-inserted for a realistic mix (a split, sends with fallbacks and
quiet-hours deferrals, a wait, a review for some, a holdout, a fifth of the runs still
running), spread over 14 days; then the rollup is filled by `engine.step_rollup.backfill`,
the counting `write_path` does for each write (and revision 0011 for stored rows), and
`engine.conversion_counts.backfill`, the counting of conversions (revision 0012). On
PostgreSQL the tables are VACUUMed and ANALYZEd after the load, as autovacuum does after
a bulk insert (PostgreSQL 13 on): until then the visibility map is empty and an index-only
scan still reads the table (measured: 161 ms instead of 85 ms). Then each query is
timed ``--repeat`` times after one warm-up, and the median is reported: the whole journey
(all versions, all time), one version over a window that is not whole hours (its
part-hours are read from path rows), and a three-step funnel (read from path rows).

`--record` also times `write_path` for a run's typical record with the rollup and
without it (the cost the rollup adds to the worker's hot path).

The database must be empty (its tables are created by `make_engine` and dropped at the
end unless `--keep`).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from engine import conversion_counts, run_path, step_rollup
from engine.catalog import build_catalog_from_text
from engine.database import (
    Delivery,
    PlanVersion,
    ReviewTask,
    Run,
    RunArm,
    RunConversion,
    RunPathEntry,
    make_engine,
)
from engine.payloads import PathEntry
from engine.stats import funnel, journey_stats

__all__ = ["load", "main", "measure", "measure_record"]

JOURNEY = "bench"
END_OF_DATA = datetime(2026, 12, 5, tzinfo=UTC)
DAYS = 14
_RUNS: Table = Run.__table__  # type: ignore[attr-defined]
_PATH: Table = RunPathEntry.__table__  # type: ignore[attr-defined]
_REVIEWS: Table = ReviewTask.__table__  # type: ignore[attr-defined]
_ARMS: Table = RunArm.__table__  # type: ignore[attr-defined]
_CONVERSIONS: Table = RunConversion.__table__  # type: ignore[attr-defined]
_DELIVERIES: Table = Delivery.__table__  # type: ignore[attr-defined]
_PLAN_VERSIONS: Table = PlanVersion.__table__  # type: ignore[attr-defined]


def _path(rng: random.Random, start: datetime) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One run's path entries and its runs row's status, step and outcome. As the
    interpreter writes them: an `exit:` step (`done`, `lost`) has no entry; the end entry
    follows the step before it and the runs row names the exit step."""
    entries: list[dict[str, Any]] = []
    now = start

    def add(
        step: str, type_: str, seconds: float, outcome: str | None = None, **detail: Any
    ) -> None:
        nonlocal now
        now += timedelta(seconds=seconds)
        entries.append(
            {"step": step, "type": type_, "at": now, "outcome": outcome, "detail": detail}
        )

    add("entry", "entry", 0, event="signed_up")
    if rng.random() < 0.05:
        add("holdout", "holdout", 0.01, "control")
        add("end", "completed", 0.01, "holdout")
        return entries, {"status": "completed", "step": "holdout", "outcome": "holdout"}
    arm = "a" if rng.random() < 0.5 else "b"
    add("ab", "split", 0.02, arm, arm=arm)
    if arm == "a":
        roll = rng.random()
        if roll < 0.05:
            add("welcome", "send", 0.5, "deferred", channel="sms", reason="quiet hours 21:00-08:00")
            add("welcome", "send", rng.uniform(3600, 30000), "sent", channel="sms")
        elif roll < 0.15:
            add("welcome", "send", 0.3, "no_consent", channel="sms", reason="opted out")
            add("welcome", "send", 0.4, "sent", channel="email")
        elif roll < 0.17:
            add("welcome", "send", 0.3, "failed", channel="sms", reason="invalid number")
            add("welcome", "send", 0.4, "sent", channel="email")
        else:
            add("welcome", "send", 0.4, "sent", channel="sms")
    else:
        add("welcome_email", "send", 0.4, "sent", channel="email")
    add("wait_purchase", "wait", 0.01)
    if rng.random() < 0.2:  # still waiting
        return entries, {"status": "running", "step": "wait_purchase", "outcome": None}
    bought = rng.random() < 0.4
    add("wait_purchase", "event", rng.lognormvariate(10, 1.2), "purchase" if bought else "timeout")
    if bought:
        add("big_order", "branch", 0.01, "yes" if rng.random() < 0.25 else "no")
        if entries[-1]["outcome"] == "yes":
            add("check", "review", 0.1, "opened")
            add("check", "review", rng.lognormvariate(8, 1), "approve")
        add("thanks", "send", 0.3, "sent", channel="email")
        add("end", "completed", 0, "purchased")
        return entries, {"status": "completed", "step": "done", "outcome": "purchased"}
    add("remind", "send", 0.3, "sent" if rng.random() < 0.97 else "suppressed", channel="sms")
    add("wait_again", "wait", 0.01)
    add("wait_again", "event", rng.lognormvariate(11, 1), "timeout")
    add("end", "completed", 0, "no_purchase")
    return entries, {"status": "completed", "step": "lost", "outcome": "no_purchase"}


def _generate(runs: int, seed: int) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    rng = random.Random(seed)
    span = DAYS * 86400
    for n in range(runs):
        start = END_OF_DATA - timedelta(seconds=rng.uniform(0, span))
        entries, ending = _path(rng, start)
        run_id = f"run-{n:07d}"
        row = {
            "run_id": run_id,
            "workflow_id": f"journey/{JOURNEY}/c{n}",
            "journey_id": JOURNEY,
            "version": "v2" if start > END_OF_DATA - timedelta(days=5) else "v1",
            "customer_id": f"c{n}",
            "key": None,
            "holdout": ending["step"] == "holdout",
            "trigger_message_id": None,
            "path": [],
            "started_at": start,
            "updated_at": entries[-1]["at"],
            "ended_at": entries[-1]["at"] if ending["status"] != "running" else None,
            "current_run_id": run_id,
            **ending,
        }
        yield row, [{"run_id": run_id, "seq": seq, **e} for seq, e in enumerate(entries)]


def _review(run: dict[str, Any], path: list[dict[str, Any]]) -> dict[str, Any] | None:
    opened = next((e for e in path if e["step"] == "check" and e["outcome"] == "opened"), None)
    if opened is None:
        return None
    decided = path[path.index(opened) + 1]
    return {
        "id": "t-" + run["run_id"],
        "workflow_id": run["workflow_id"],
        "run_id": run["run_id"],
        "journey_id": JOURNEY,
        "customer_id": run["customer_id"],
        "step_id": "check",
        "visit": 1,
        "queue": "orders",
        "title": "Check the order",
        "details": None,
        "decisions": ["approve", "reject"],
        "status": "decided",
        "escalated": hash(run["run_id"]) % 10 == 0,
        "claimed_by": None,
        "decision": decided["outcome"],
        "reviewer": "ops",
        "note": None,
        "case": {},
        "due_at": None,
        "created_at": opened["at"],
        "decided_at": decided["at"],
    }


_PLAN = """
version: 1
events:
  signed_up: {}
  purchase: {}
journeys:
  - id: bench
    entry: {event: signed_up}
    goals: [{event: purchase, within: 7d}]
    steps:
      - {id: pause, wait: 1d}
"""


def _plan_versions(db: Engine) -> None:
    """The journey's two versions as deploy stores them, with the goal the conversion
    rows are for (stats read each version's goals: attribution windows, outcome goals)."""
    plan = build_catalog_from_text(_PLAN).plans[JOURNEY]
    with db.begin() as connection:
        for version in ("v1", "v2"):
            connection.execute(
                _PLAN_VERSIONS.insert(),
                {
                    "journey_id": JOURNEY,
                    "version": version,
                    "plan_json": plan.model_copy(update={"version": version}).model_dump_json(),
                    "source_yaml": _PLAN,
                    "active": version == "v2",
                    "created_at": END_OF_DATA,
                },
            )


def _deliveries(run: dict[str, Any], path: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A deliveries row per send that went out, as the send activity writes it."""
    return [
        {
            "workflow_id": run["workflow_id"],
            "run_id": run["run_id"],
            "step_id": e["step"],
            "visit": 1,
            "journey_id": JOURNEY,
            "customer_id": run["customer_id"],
            "channel": e["detail"].get("channel"),
            "template": e["step"],
            "status": "sent",
            "attempts": 1,
            "created_at": e["at"],
            "sent_at": e["at"],
        }
        for e in path
        if e["type"] == "send" and e["outcome"] == "sent"
    ]


def load(db: Engine, runs: int, seed: int) -> dict[str, float]:
    """Bulk-insert the runs, their paths, deliveries and review tasks; fill the rollup."""
    began = time.perf_counter()
    _plan_versions(db)
    batch_runs: list[dict[str, Any]] = []
    batch_path: list[dict[str, Any]] = []
    batch_reviews: list[dict[str, Any]] = []
    path_rows = 0

    batch_arms: list[dict[str, Any]] = []
    batch_conversions: list[dict[str, Any]] = []
    batch_deliveries: list[dict[str, Any]] = []

    def flush() -> None:
        with db.begin() as connection:
            connection.execute(_RUNS.insert(), batch_runs)
            connection.execute(_PATH.insert(), batch_path)
            if batch_reviews:
                connection.execute(_REVIEWS.insert(), batch_reviews)
            if batch_arms:
                connection.execute(_ARMS.insert(), batch_arms)
            if batch_conversions:
                connection.execute(_CONVERSIONS.insert(), batch_conversions)
            if batch_deliveries:
                connection.execute(_DELIVERIES.insert(), batch_deliveries)
        for batch in (
            batch_runs,
            batch_path,
            batch_reviews,
            batch_arms,
            batch_conversions,
            batch_deliveries,
        ):
            batch.clear()

    for run, path in _generate(runs, seed):
        batch_runs.append(run)
        batch_path.extend(path)
        path_rows += len(path)
        # As the engine writes them: a run's arm (`upsert_run`) and its goal conversion
        # (`engine.conversions`, when the purchase event is stored).
        batch_arms += [
            {"run_id": run["run_id"], "step_id": e["step"], "arm": e["outcome"]}
            for e in path
            if e["type"] == "split"
        ]
        batch_deliveries += _deliveries(run, path)
        bought = next((e for e in path if e["outcome"] == "purchase"), None)
        if bought is not None:
            batch_conversions.append(
                {
                    "run_id": run["run_id"],
                    "goal": "purchase",
                    "at": bought["at"],
                    "value": 10.0,
                    "message_id": None,
                }
            )
        review = _review(run, path)
        if review is not None:
            batch_reviews.append(review)
        if len(batch_path) >= 50_000:
            flush()
    if batch_runs:
        flush()
    loaded = time.perf_counter()
    with db.begin() as connection:
        step_rollup.backfill(connection)
        conversion_counts.backfill(connection)
    filled = time.perf_counter()
    if db.dialect.name == "postgresql":
        with db.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("VACUUM (ANALYZE)")
            )
    with db.connect() as connection:
        rollup_rows = connection.execute(text("SELECT count(*) FROM step_rollup")).scalar_one()
    return {
        "runs": runs,
        "path_rows": path_rows,
        "rollup_rows": int(rollup_rows),
        "load_s": round(loaded - began, 1),
        "backfill_s": round(filled - loaded, 1),
    }


def _median_ms(call: Callable[[], Any], repeat: int) -> tuple[float, float, list[float]]:
    """Median wall and CPU (this process's) milliseconds of ``repeat`` calls, after a
    warm-up (the pool's connection, the statements' compilation, the page cache). On a
    busy machine the CPU time is the steadier figure for SQLite, which runs in-process;
    PostgreSQL's own work is on the server, in the wall time only."""
    call()
    walls, cpus = [], []
    for _ in range(repeat):
        began, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append((time.perf_counter() - began) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return (
        round(statistics.median(walls), 1),
        round(statistics.median(cpus), 1),
        [round(t, 1) for t in walls],
    )


def measure(db: Engine, repeat: int) -> dict[str, Any]:
    window = (END_OF_DATA - timedelta(days=7, minutes=17), END_OF_DATA - timedelta(minutes=42))
    queries: dict[str, Callable[[], Any]] = {
        "stats, all versions, all time": lambda: journey_stats(db, JOURNEY),
        "stats, v2, 7-day window (part-hours)": lambda: journey_stats(
            db, JOURNEY, version="v2", start=window[0], end=window[1]
        ),
        "stats, all versions, one day": lambda: journey_stats(
            db, JOURNEY, start=END_OF_DATA - timedelta(days=1), end=END_OF_DATA
        ),
        "funnel ab > wait_purchase > thanks": lambda: funnel(
            db, JOURNEY, ["ab", "wait_purchase", "thanks"]
        ),
    }
    results = {}
    for name, call in queries.items():
        median, cpu, times = _median_ms(call, repeat)
        results[name] = {"median_ms": median, "median_cpu_ms": cpu, "times_ms": times}
        print(f"  {name:<40} median {median:7.1f} ms, cpu {cpu:7.1f} ms  {times}", flush=True)
    stats = journey_stats(db, JOURNEY)
    results["check"] = {"entries": stats.entries, "steps": len(stats.steps)}
    return results


def measure_record(db: Engine, records: int) -> dict[str, float]:
    """A run's typical records (its runs row exists; three entries appended, twice) with
    the rollup and without it: microseconds per `write_path` call and its transaction."""
    entries = [
        PathEntry(step="entry", type="entry", at=END_OF_DATA),
        PathEntry(step="ab", type="split", at=END_OF_DATA, outcome="a", detail={"arm": "a"}),
        PathEntry(step="welcome", type="send", at=END_OF_DATA, outcome="sent", detail={}),
    ]
    out: dict[str, float] = {}
    tag = f"{time.time_ns():x}"  # runs of an earlier --record on a kept database differ
    original = step_rollup.record_path
    for label, hook in (("with_rollup_us", original), ("without_rollup_us", None)):
        rows = [
            {
                "run_id": f"rec-{label}-{tag}-{n}",
                "workflow_id": "w",
                "journey_id": JOURNEY,
                "version": "record",
                "customer_id": "c",
                "status": "running",
                "holdout": False,
                "path": [],
                "started_at": END_OF_DATA,
                "updated_at": END_OF_DATA,
            }
            for n in range(records)
        ]
        with db.begin() as connection:
            connection.execute(_RUNS.insert(), rows)
        # `write_path` calls the name it imported from `engine.step_rollup`.
        setattr(run_path, "record_path", hook or (lambda *a, **k: None))  # noqa: B010
        try:
            began = time.perf_counter()
            for row in rows:
                # The run's first record, then a later one (which asks whether its steps
                # were reached before), each in its own transaction as the activity's.
                for start in (0, 3):
                    with db.begin() as connection:
                        run_path.write_path(
                            connection, run_id=str(row["run_id"]), start=start, entries=entries
                        )
            out[label] = round((time.perf_counter() - began) / (2 * records) * 1e6)
        finally:
            setattr(run_path, "record_path", original)  # noqa: B010
    print(f"  write_path, 3 entries: {out}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="an empty database (default: SQLite in a temp dir)")
    parser.add_argument("--runs", type=int, default=132_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--record", type=int, default=0, help="also time N write_path calls")
    parser.add_argument("--keep", action="store_true", help="leave the tables")
    parser.add_argument(
        "--reuse", action="store_true", help="measure the data a --keep run left (no load)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        url = args.url or f"sqlite:///{directory}/bench.db"
        db = make_engine(url)
        try:
            loaded: dict[str, Any] = {"reused": True}
            if not args.reuse:
                print(f"{db.dialect.name}: loading {args.runs} runs ...", flush=True)
                loaded = load(db, args.runs, args.seed)
                print(f"  {loaded}", flush=True)
            result: dict[str, Any] = {
                "database": db.dialect.name,
                "server_version": ".".join(map(str, db.dialect.server_version_info or ())),
                "machine": f"{platform.machine()} {platform.processor()} "
                f"python {platform.python_version()}",
                "date": datetime.now(UTC).date().isoformat(),
                "load": loaded,
                "queries": measure(db, args.repeat),
            }
            if args.record:
                result["record"] = measure_record(db, args.record)
        finally:
            if not args.keep:
                SQLModel.metadata.drop_all(db)
                with db.begin() as connection:
                    connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
            db.dispose()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
