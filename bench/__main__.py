"""Every measurement of bench/, one after the other, and one table of the targets.

    .venv/bin/python -m bench                     # everything, as in bench/README.md
    .venv/bin/python -m bench --quick             # smaller sizes: a smoke run, not figures
    .venv/bin/python -m bench --only rules,stats  # some of them
    .venv/bin/python -m bench --markdown /tmp/table.md --json /tmp/bench.json

Each measurement is its own script (`python -m bench.<name>`), run here as a child
process with ``--json``: its output (and its progress bars) goes to the terminal as it
runs, then its figures are read back from the JSON and checked against issue #20's
targets (and #19's stats budget). A measurement that fails or is left out shows as
such in the table; the exit status is 0 only when every measurement ran.

PostgreSQL figures (the stats query) need ``--postgres URL`` (an empty database).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["MEASUREMENTS", "Row", "main"]

console = Console()


@dataclass(frozen=True)
class Row:
    """One target: the figure, the baseline beside it and their ratio, and the goal."""

    target: str
    figure: float | None
    unit: str
    goal: str
    met: bool | None
    baseline: float | None = None
    ratio: float | None = None
    note: str = ""


Reader = Callable[[dict[str, Any]], list[Row]]


@dataclass(frozen=True)
class Measurement:
    name: str
    module: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    read: Reader
    needs: tuple[str, ...] = field(default=())


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return round(value / base, 3)


def _at_least(value: float | None, goal: float) -> bool | None:
    return None if value is None or math.isnan(value) else value >= goal


def _at_most(value: float | None, goal: float) -> bool | None:
    return None if value is None or math.isnan(value) else value <= goal


# ----------------------------------------------------------------------------- readers


def _throughput(data: dict[str, Any]) -> list[Row]:
    summary = data["summary"]
    overall = summary["overall"]
    rows = [
        Row(
            "1. throughput, overall (jobs/s, engine through the API)",
            overall.get("engine_jobs_per_s"),
            "jobs/s",
            ">= 0.9 x baseline",
            _at_least(overall.get("engine_ratio"), 0.9),
            overall.get("baseline_jobs_per_s"),
            overall.get("engine_ratio"),
        )
    ]
    for kind in summary["kinds"]:
        rows.append(
            Row(
                f"1. throughput, {kind['kind']}",
                kind.get("engine_jobs_per_s"),
                "jobs/s",
                ">= 0.85 x baseline",
                _at_least(kind.get("engine_ratio"), 0.85),
                kind.get("baseline_jobs_per_s"),
                kind.get("engine_ratio"),
            )
        )
    return rows


def _stats(data: dict[str, Any]) -> list[Row]:
    rows = []
    for name, found in data["queries"].items():
        if name == "check" or name.startswith("funnel"):
            continue
        median = found["median_ms"]
        rows.append(
            Row(
                f"#19 {name} ({data['database']})",
                median,
                "ms",
                "< 200 ms",
                median < 200.0,
                note=f"cpu {found['median_cpu_ms']} ms",
            )
        )
    return rows


def _latency(data: dict[str, Any]) -> list[Row]:
    paths = {path["path"]: path for path in data["paths"]}
    engine, baseline = paths["engine"], paths.get("baseline", {})
    message, base_message = engine["to_message"], baseline.get("to_message", {})
    first, base_first = engine["to_first_task"], baseline.get("to_first_task", {})
    return [
        Row(
            "2. latency, event to message in SMTP, p99",
            message["p99"],
            "ms",
            "< 150 ms",
            _at_most(message["p99"], 149.999),
            base_message.get("p99"),
            _ratio(message["p99"], base_message.get("p99")),
        ),
        Row(
            "2. latency, event to message in SMTP, p50",
            message["p50"],
            "ms",
            "<= 1.2 x baseline",
            _at_most(_ratio(message["p50"], base_message.get("p50")), 1.2),
            base_message.get("p50"),
            _ratio(message["p50"], base_message.get("p50")),
        ),
        Row(
            "2. latency, event to the run's first workflow task, p50",
            first["p50"],
            "ms",
            "reported",
            None,
            base_first.get("p50"),
            _ratio(first["p50"], base_first.get("p50")),
        ),
    ]


_INGEST_GOALS = {
    "single": ("3. ingest, one by one, 16 connections", 1000.0),
    "batch": ("3. ingest, batches of 100", 5000.0),
    "signal": ("3. ingest, each event signals a waiting run", 300.0),
}


def _ingest(data: dict[str, Any]) -> list[Row]:
    phases = {(p["phase"], p["target"]): p for p in data["phases"]}
    rows = []
    for phase, (target, goal) in _INGEST_GOALS.items():
        engine, floor = phases.get((phase, "engine")), phases.get((phase, "floor"))
        if engine is None:
            continue
        lost = engine["events"] - (engine["stored"] or 0)
        unrouted = engine["events"] - (engine["routed"] or 0)
        rate = engine["events_per_s"]
        floor_rate = floor["events_per_s"] if floor else None
        rows.append(
            Row(
                target,
                rate,
                "events/s",
                f">= {goal:,.0f}/s, none lost",
                _at_least(rate, goal) and not lost and not unrouted,
                floor_rate,
                _ratio(rate, floor_rate),
                f"baseline: the floor; lost {lost}, unrouted {unrouted}",
            )
        )
    return rows


def _capacity(data: dict[str, Any]) -> list[Row]:
    sides = {side["side"]: side for side in data["sides"]}
    engine, baseline = sides["engine"], sides.get("baseline", {})
    runs = engine["runs"]
    rows = [
        Row(
            f"4. Temporal DB per waiting run (N = {runs:,})",
            round(engine["temporal_bytes_per_run"] / 1024, 2),
            "KB",
            "<= 1.5 x baseline",
            _at_most(data["summary"].get("temporal_bytes_ratio"), 1.5),
            _kilobytes(baseline.get("temporal_bytes_per_run")),
            data["summary"].get("temporal_bytes_ratio"),
        ),
        Row(
            f"4. worker RSS, {runs:,} waiting",
            engine["worker_rss_waiting_mb"],
            "MB",
            "<= 1.5 x baseline",
            _at_most(data["summary"].get("worker_rss_ratio"), 1.5),
            baseline.get("worker_rss_waiting_mb"),
            data["summary"].get("worker_rss_ratio"),
        ),
        Row(
            "4. app DB per run",
            _kilobytes(engine["app_bytes_per_run"]),
            "KB",
            "reported",
            None,
        ),
    ]
    for index, block in enumerate(engine.get("blocks", [])):
        base = (
            (baseline.get("blocks") or [])[index]
            if index < len(baseline.get("blocks") or [])
            else {}
        )
        rows.append(
            Row(
                f"4. starts/s, runs {block['first'] + 1:,}-{block['first'] + block['count']:,}",
                block.get("start_per_s"),
                "runs/s",
                "no collapse",
                None,
                base.get("start_per_s"),
                _ratio(block.get("start_per_s"), base.get("start_per_s")),
                f"wakes/s {block.get('wake_per_s')} (baseline {base.get('wake_per_s')})",
            )
        )
    for kind in ("start", "wake"):
        held, base_held = _held(engine, kind), _held(baseline, kind)
        rows.append(
            Row(
                f"4. {kind}s/s, slowest block / first block",
                held,
                "",
                f">= {COLLAPSE} (no collapse)",
                _at_least(held, COLLAPSE),
                base_held,
                note=f"engine {kind}s/s overall {engine.get(f'{kind}_per_s')} "
                f"(baseline {baseline.get(f'{kind}_per_s')})",
            )
        )
    return rows


COLLAPSE = 0.5
"""A rate collapses when a later block of 10,000 runs goes at less than half the first's."""


def _held(side: dict[str, Any], kind: str) -> float | None:
    """The slowest block's start (or wake) rate over the first block's."""
    rates = [block.get(f"{kind}_per_s") or 0.0 for block in side.get("blocks") or []]
    if not rates or not rates[0]:
        return None
    return round(min(rates) / rates[0], 3)


def _kilobytes(value: float | None) -> float | None:
    return None if value is None else round(value / 1024, 2)


def _rules(data: dict[str, Any]) -> list[Row]:
    rows = []
    found = {(row["shape"], row["path"]): row for row in data["rows"]}
    for shape in ("minimal", "typical"):
        compiled, zen = found.get((shape, "compiled")), found.get((shape, "zen"))
        if compiled is None or zen is None:
            continue
        ratio = round(compiled["ratio_to_zen"], 2)
        rows.append(
            Row(
                f"5. rules, reference rule ({shape} contexts), compiled vs zen-engine",
                round(compiled["median_ops_per_s"]),
                "ops/s",
                ">= 1.5 x zen",
                ratio >= 1.5,
                round(zen["median_ops_per_s"]),
                ratio,
                "CPU time",
            )
        )
    return rows


MEASUREMENTS: list[Measurement] = [
    Measurement(
        "throughput",
        "bench.throughput",
        ("--events", "100", "--rounds", "3", "--direct"),
        ("--events", "20", "--rounds", "1"),
        _throughput,
    ),
    Measurement("latency", "bench.latency", (), ("--events", "40", "--warmup", "5"), _latency),
    Measurement(
        "ingest",
        "bench.ingest",
        (),
        ("--single", "500", "--batched", "2000", "--signals", "100"),
        _ingest,
    ),
    Measurement(
        "capacity",
        "bench.capacity",
        ("--runs", "100000", "--wake-sample", "1000"),
        ("--runs", "1000", "--block", "500"),
        _capacity,
    ),
    Measurement("rules", "bench.rules", (), ("--contexts", "2000", "--repeats", "3"), _rules),
    Measurement("stats", "bench.stats_query", (), ("--runs", "10000", "--repeat", "3"), _stats),
    Measurement(
        "stats-postgres",
        "bench.stats_query",
        (),
        ("--runs", "10000", "--repeat", "3"),
        _stats,
        needs=("postgres",),
    ),
]


# ----------------------------------------------------------------------------- running


def _run(measurement: Measurement, quick: bool, out: Path, extra: Sequence[str]) -> float:
    arguments = [*(measurement.quick if quick else measurement.full), *extra, "--json", str(out)]
    console.rule(
        f"[bold]{measurement.name}[/]: python -m {measurement.module} " + " ".join(arguments)
    )
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", measurement.module, *arguments], check=False)
    if done.returncode != 0:
        raise RuntimeError(f"python -m {measurement.module} exited with {done.returncode}")
    return time.monotonic() - began


def _format(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"


def _table(rows: Sequence[Row]) -> Table:
    table = Table(title="bench: issue #20's targets (and #19's stats budget)")
    for name in ("target", "figure", "baseline", "ratio", "goal", "met", "note"):
        table.add_column(
            name, justify="right" if name in ("figure", "baseline", "ratio") else "left"
        )
    for row in rows:
        met = {True: "[green]yes[/]", False: "[red]NO[/]", None: "–"}[row.met]
        table.add_row(
            row.target,
            f"{_format(row.figure)} {row.unit}" if row.figure is not None else "–",
            _format(row.baseline),
            _format(row.ratio),
            row.goal,
            met,
            row.note,
        )
    return table


def markdown(rows: Sequence[Row]) -> str:
    """The table as bench/README.md shows it."""
    lines = [
        "| target | figure | baseline | ratio | goal | met | note |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        figure = f"{_format(row.figure)} {row.unit}" if row.figure is not None else "–"
        met = {True: "yes", False: "**no**", None: "–"}[row.met]
        lines.append(
            f"| {row.target} | {figure} | {_format(row.baseline)} | {_format(row.ratio)} | "
            f"{row.goal} | {met} | {row.note} |"
        )
    return "\n".join(lines) + "\n"


def _capacity_size(runs: int) -> list[str]:
    """``--runs`` and ``--block`` for ``--capacity-runs``: blocks of 10,000, or of a
    quarter of a smaller count (the later arguments override the full run's)."""
    block = 10_000 if runs >= 40_000 else max(1, runs // 4)
    return ["--runs", str(runs), "--block", str(block)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--only", help="comma-separated names: " + ", ".join(m.name for m in MEASUREMENTS)
    )
    parser.add_argument("--postgres", help="an empty PostgreSQL database for the stats query")
    parser.add_argument(
        "--capacity-runs",
        type=int,
        help="waiting runs per side for the capacity measurement (default 100,000: about "
        "two hours here; blocks of 10,000, or a quarter of a smaller count)",
    )
    parser.add_argument("--json", type=Path, help="write every measurement's results here")
    parser.add_argument("--markdown", type=Path, help="write the targets table here")
    options = parser.parse_args(argv)
    chosen = MEASUREMENTS
    if options.only:
        names = {name.strip() for name in options.only.split(",")}
        unknown = names - {m.name for m in MEASUREMENTS}
        if unknown:
            parser.error(f"--only: unknown measurement(s) {', '.join(sorted(unknown))}")
        chosen = [m for m in MEASUREMENTS if m.name in names]
    rows: list[Row] = []
    results: dict[str, Any] = {}
    failed = 0
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        for measurement in chosen:
            extra: list[str] = []
            if "postgres" in measurement.needs:
                if not options.postgres:
                    rows.append(
                        Row(f"{measurement.name}: left out", None, "", "needs --postgres", None)
                    )
                    continue
                extra = ["--url", options.postgres]
            if measurement.name == "capacity" and options.capacity_runs and not options.quick:
                extra += _capacity_size(options.capacity_runs)
            out = Path(scratch) / f"{measurement.name}.json"
            try:
                seconds = _run(measurement, options.quick, out, extra)
                data = json.loads(out.read_text())
                results[measurement.name] = data
                rows += measurement.read(data)
                console.print(f"{measurement.name}: {seconds:.0f} s")
            except (RuntimeError, OSError, ValueError, KeyError) as error:
                failed += 1
                rows.append(Row(f"{measurement.name}: FAILED", None, "", str(error)[:80], False))
    console.print(_table(rows))
    if options.json:
        options.json.write_text(json.dumps(results, indent=2, default=str))
    if options.markdown:
        options.markdown.write_text(markdown(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
