"""Compiled journey rules against GoRules' zen-engine and a plain Python lambda (issue #20).

Evaluates the reference rule over the same N varied contexts, in the same process and
the same run, through:

- **compiled**: ``compile_expression(source).evaluate(context)``, the public path (closures
  compiled from the checked tree);
- **interpreted**: ``Expression.evaluate_interpreted``, the tree-walking evaluator that
  ``evaluate`` used before;
- **zen**: zen-engine's Rust core (``zen.compile_expression(...).evaluate(context)``,
  compiled once, like ours), and ``zen.evaluate_expression`` (parsed per call) for reference;
- **lambda**: the rule hand-written as a Python lambda, the limit for any Python evaluator.

All paths must agree on every context, or the bench stops. Each repeat times every path
once over all N contexts, the paths interleaved, so a load change hits all alike; the
table shows the median ops/s over the repeats and the ratio to compiled zen. Two context
shapes: ``minimal`` (only the three fields the rule reads) and ``typical`` (an event and a
profile with the other fields a journey context carries; zen converts the whole context
to its own values on every call, we read only what the rule reads).

    .venv/bin/python -m bench.rules                         # N=20,000, 7 repeats, ~1 minute
    .venv/bin/python -m bench.rules --contexts 5000 --repeats 3 --json /tmp/rules.json

zen-engine is a bench-only dependency (the ``bench`` extra in pyproject.toml).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import zen
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from rules import compile_expression

REFERENCE_RULE = (
    'event.amount > 1000 and profile.risk_score >= 0.7 and profile.country in ("KR", "JP")'
)
ZEN_RULE = 'event.amount > 1000 and profile.risk_score >= 0.7 and profile.country in ["KR", "JP"]'
COUNTRIES = ["KR", "JP", "US", "DE"]
SHAPES = ("minimal", "typical")

Context = dict[str, Any]


def reference_lambda(context: Context) -> bool:
    """The rule in plain Python: what a hand-written integration would do."""
    event, profile = context["event"], context["profile"]
    return (
        event["amount"] > 1000
        and profile["risk_score"] >= 0.7
        and profile["country"] in ("KR", "JP")
    )


def make_contexts(count: int, shape: str, seed: int = 20) -> list[Context]:
    """``count`` contexts: amounts around the threshold (ints and floats), risk scores
    from 0.5 to 1, four countries; ``typical`` adds the rest of a journey's context.

    The amount test holds on 62.5% of the contexts, the risk test on 60%, the country
    test on 50%: all three tests run on about 37% of them (``and`` stops at the first that
    fails, in every path) and the rule holds on about 19%.
    """
    draw = random.Random(seed)
    contexts: list[Context] = []
    for index in range(count):
        amount: int | float = draw.choice(
            [draw.randint(0, 4000), round(draw.uniform(0, 4000), 2), 1000, 1001]
        )
        event: dict[str, Any] = {"amount": amount}
        profile: dict[str, Any] = {
            "risk_score": round(draw.uniform(0.5, 1.0), 3),
            "country": draw.choice(COUNTRIES),
        }
        context: Context = {"event": event, "profile": profile}
        if shape == "typical":
            event.update(
                {
                    "type": "payment_failed",
                    "currency": draw.choice(["KRW", "JPY", "USD", "EUR"]),
                    "order_id": f"o-{index}",
                    "items": draw.randint(1, 9),
                }
            )
            profile.update(
                {
                    "customer_id": f"c-{index}",
                    "segment": draw.choice(["new", "loyal", "lapsed"]),
                    "first_name": "Ha-eun",
                    "email_opt_in": draw.random() < 0.8,
                    "orders": draw.randint(0, 40),
                }
            )
            context["vars"] = {"attempt": draw.randint(0, 3)}
            context["now"] = "2024-05-01T09:30:00Z"
        contexts.append(context)
    return contexts


def build_paths() -> dict[str, Callable[[Context], Any]]:
    expression = compile_expression(REFERENCE_RULE)
    zen_expression = zen.compile_expression(ZEN_RULE)
    zen_source = ZEN_RULE

    def zen_per_call(context: Context) -> Any:
        return zen.evaluate_expression(zen_source, context)

    return {
        "compiled": expression.evaluate,
        "interpreted": expression.evaluate_interpreted,
        "zen": zen_expression.evaluate,
        "zen (parse per call)": zen_per_call,
        "lambda": reference_lambda,
    }


def check_agreement(paths: dict[str, Callable[[Context], Any]], contexts: list[Context]) -> int:
    """The number of contexts the rule holds on; raises if any two paths disagree."""
    holds = 0
    for index, context in enumerate(contexts):
        results = {name: path(context) for name, path in paths.items()}
        if len(set(results.values())) != 1 or not all(type(r) is bool for r in results.values()):
            raise SystemExit(f"paths disagree on context {index} {context!r}: {results!r}")
        holds += results["lambda"]
    return holds


def time_once(path: Callable[[Context], Any], contexts: list[Context]) -> tuple[float, float]:
    """Ops per second of one pass of ``path`` over ``contexts``: per second of this
    process's CPU time (what the table shows: other processes on the machine lengthen the
    wall time, not this), and per second of wall time."""
    gc.collect()
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    for context in contexts:
        path(context)
    cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
    return len(contexts) / cpu, len(contexts) / wall


@dataclass
class Row:
    shape: str
    path: str
    median_ops_per_s: float
    runs_ops_per_s: list[float]
    median_us_per_op: float
    ratio_to_zen: float
    wall_median_ops_per_s: float
    wall_ratio_to_zen: float


def measure(count: int, repeats: int, console: Console) -> tuple[list[Row], dict[str, int]]:
    paths = build_paths()
    rows: list[Row] = []
    holding: dict[str, int] = {}
    with Progress(console=console, transient=True) as progress:
        for shape in SHAPES:
            contexts = make_contexts(count, shape)
            holding[shape] = check_agreement(paths, contexts)
            task = progress.add_task(f"{shape}: {count:,} contexts", total=repeats * len(paths))
            runs: dict[str, list[float]] = {name: [] for name in paths}
            walls: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(repeats):
                for name, path in paths.items():
                    cpu, wall = time_once(path, contexts)
                    runs[name].append(cpu)
                    walls[name].append(wall)
                    progress.advance(task)
            zen_median = statistics.median(runs["zen"])
            zen_wall = statistics.median(walls["zen"])
            for name, values in runs.items():
                median, wall_median = statistics.median(values), statistics.median(walls[name])
                rows.append(
                    Row(
                        shape,
                        name,
                        median,
                        values,
                        1e6 / median,
                        median / zen_median,
                        wall_median,
                        wall_median / zen_wall,
                    )
                )
    return rows, holding


def render(rows: list[Row], console: Console) -> None:
    table = Table(title="Reference rule: median ops/s (CPU time) over the repeats")
    for column in ("contexts", "path", "ops/s", "µs/op", "× zen", "× zen (wall)"):
        table.add_column(column, justify="left" if column in ("contexts", "path") else "right")
    for row in rows:
        table.add_row(
            row.shape,
            row.path,
            f"{row.median_ops_per_s:,.0f}",
            f"{row.median_us_per_op:.2f}",
            f"{row.ratio_to_zen:.2f}",
            f"{row.wall_ratio_to_zen:.2f}",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, default=20_000, help="contexts per shape")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per path")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    options = parser.parse_args(argv)
    console = Console()
    load_before = os.getloadavg()
    rows, holding = measure(options.contexts, options.repeats, console)
    load_after = os.getloadavg()
    render(rows, console)
    console.print(
        f"rule holds on {holding} of {options.contexts:,} contexts per shape; every path agreed. "
        f"Load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        f"on {os.cpu_count()} CPUs. Python {sys.version.split()[0]}, "
        f"zen-engine {version('zen-engine')}."
    )
    compiled = {row.shape: row.ratio_to_zen for row in rows if row.path == "compiled"}
    verdict = all(ratio >= 1.5 for ratio in compiled.values())
    console.print(f"compiled vs zen: {compiled} -> target 1.5x {'met' if verdict else 'MISSED'}")
    if options.json:
        options.json.write_text(
            json.dumps(
                {
                    "rule": REFERENCE_RULE,
                    "zen_rule": ZEN_RULE,
                    "contexts": options.contexts,
                    "repeats": options.repeats,
                    "rule_holds": holding,
                    "rows": [asdict(row) for row in rows],
                    "target_met": verdict,
                    "machine": {
                        "python": sys.version.split()[0],
                        "zen_engine": version("zen-engine"),
                        "platform": platform.platform(),
                        "cpus": os.cpu_count(),
                        "load_average_before": load_before,
                        "load_average_after": load_after,
                    },
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
