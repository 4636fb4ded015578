"""`journeys stats JOURNEY`: a journey's numbers from the API (GET
/v1/journeys/{id}/stats, or /funnel with ``--funnel``), as text, JSON or CSV.

A client command like `journeys emit`: it calls the running API with the operator's key
(`service.cli.main._api`, `_answer`). ``--since 7d`` is ``--from`` seven days ago;
``--from``/``--to`` take ISO 8601 times (UTC when they have no offset).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import typer

from engine.durations import DurationError, parse_duration
from engine.experiments import describe
from engine.stats_models import RESERVED_ARM_NAMES, ArmStats, ExperimentStats

__all__ = ["StatsFormat", "render_text", "stats_command"]


class StatsFormat(StrEnum):
    text = "text"
    json = "json"
    csv = "csv"


def stats_command(
    journey: Annotated[str, typer.Argument(help="The journey's id.")],
    version: Annotated[
        str | None, typer.Option("--version", help="One version (default: all versions).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Runs that entered this long ago or later: 24h, 7d, 2w."),
    ] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="Runs that entered at or after (ISO 8601).")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Runs that entered before (ISO 8601).")
    ] = None,
    funnel: Annotated[
        str | None,
        typer.Option("--funnel", help="Step ids, comma-separated: the funnel through them."),
    ] = None,
    output: Annotated[
        StatsFormat, typer.Option("--format", help="text (default), json or csv.")
    ] = StatsFormat.text,
) -> None:
    """A journey's numbers: entries, outcomes, steps, sends, reviews, experiments
    (docs/operations.md, "Journey numbers")."""
    from service.cli.main import _answer, _api  # main registers this command

    if since is not None and start is not None:
        raise typer.BadParameter("give --since or --from, not both", param_hint="--since")
    params: dict[str, str] = {}
    if since is not None:
        try:
            seconds = parse_duration(since)
        except DurationError as error:
            raise typer.BadParameter(str(error), param_hint="--since") from None
        params["from"] = (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()
    for name, value in (("from", start), ("to", end), ("version", version), ("steps", funnel)):
        if value is not None:
            params[name] = value
    if output is StatsFormat.csv:
        params["format"] = "csv"
    path = f"/v1/journeys/{journey}/" + ("funnel" if funnel is not None else "stats")
    with _api() as client:
        response = client.get(path, params=params)
        if output is StatsFormat.csv and response.is_success:
            typer.echo(response.text, nl=False)
            return
        body = _answer(response)
    if output is StatsFormat.json:
        typer.echo(json.dumps(body, indent=2, ensure_ascii=False))
    else:
        typer.echo(render_text(body))


def render_text(body: dict[str, Any]) -> str:
    """A stats (or funnel) answer as a few aligned blocks for a terminal."""
    if "edges" not in body:
        return _funnel_text(body)
    lines = [
        f"journey {body['journey_id']}, version {body.get('version') or 'all'}, "
        f"entered {body.get('from') or 'any time'} to {body.get('to') or 'now'}",
        f"entries {body['entries']}, active {body['active']}, conversions "
        f"{body['conversions']['count']} ({_pct(body['conversions'].get('rate'))})",
    ]
    if body["outcomes"]:
        lines.append(
            "outcomes: " + ", ".join(f"{name} {n}" for name, n in body["outcomes"].items())
        )
    if body["steps"]:
        lines += ["", f"{'step':<24}{'reached':>9}{'waiting':>9}{'left':>7}{'p50':>10}{'p90':>10}"]
        for name, step in body["steps"].items():
            lines.append(
                f"{name:<24}{step['reached']:>9}{step['waiting']:>9}{step['left']:>7}"
                f"{_seconds(step['p50_seconds']):>10}{_seconds(step['p90_seconds']):>10}"
            )
    if body["edges"]:
        lines += ["", "moves:"]
        lines += [f"  {e['from']} -> {e['to']}: {e['count']}" for e in body["edges"]]
    lines += _sends_text(body["sends"]) + _reviews_text(body["reviews"])
    lines += _experiments_text(body["experiments"])
    return "\n".join(lines)


def _sends_text(sends: dict[str, Any]) -> list[str]:
    lines = ["", "sends:"] if sends else []
    for step, channels in sends.items():
        for channel, n in channels.items():
            skipped = ", ".join(f"{why} {count}" for why, count in n["skipped"].items())
            lines.append(
                f"  {step} {channel}: attempted {n['attempted']}, sent {n['sent']}, "
                f"failed {n['failed']}" + (f", skipped: {skipped}" if skipped else "")
            )
    return lines


def _reviews_text(reviews: dict[str, Any]) -> list[str]:
    lines = ["", "reviews:"] if reviews else []
    for step, r in reviews.items():
        decided = ", ".join(f"{d} {n}" for d, n in r["decided"].items()) or "none"
        lines.append(
            f"  {step}: opened {r['opened']}, decided {decided}, escalated {r['escalated']}, "
            f"timed out {r['timed_out']}, to decision p50 "
            f"{_seconds(r['p50_seconds_to_decision'])} p90 "
            f"{_seconds(r['p90_seconds_to_decision'])}"
        )
    return lines


_EXPERIMENT_KEYS = RESERVED_ARM_NAMES


def _experiments_text(experiments: dict[str, Any]) -> list[str]:
    lines = ["", "experiments:"] if experiments else []
    for name, experiment in experiments.items():
        arms = {k: v for k, v in experiment.items() if k not in _EXPERIMENT_KEYS}
        p_value = experiment.get("p_value")
        lines.append(
            f"  {name}: p={'-' if p_value is None else f'{p_value:.4f}'}, "
            f"winner {experiment.get('winner') or '-'}"
            + (f" ({experiment['warning']})" if experiment.get("warning") else "")
        )
        for arm, n in arms.items():
            lines.append(
                f"    {arm}: entries {n['entries']}, conversions {n['conversions']} "
                f"({_pct(n.get('rate'))})"
            )
        lines.append(f"    verdict: {_verdict(experiment, arms)}")
    return lines


def _verdict(experiment: dict[str, Any], arms: dict[str, Any]) -> str:
    """The one line `engine.experiments.describe` says of the experiment."""
    stats = ExperimentStats(
        arms={arm: ArmStats.model_validate(numbers) for arm, numbers in arms.items()},
        control=experiment.get("control_arm"),
        p_value=experiment.get("p_value"),
        winner=experiment.get("winner"),
        test=experiment.get("test") or "",
        warning=experiment.get("warning"),
    )
    return describe(stats)


def _funnel_text(body: dict[str, Any]) -> str:
    lines = [
        f"journey {body['journey_id']}, version {body.get('version') or 'all'}: "
        f"{body['entries']} entered"
    ]
    for step in body["steps"]:
        lines.append(
            f"  {step['step']:<24}{step['reached']:>9}  {_pct(step.get('rate_from_entry'))} "
            f"of entries, {_pct(step.get('rate_from_previous'))} of the step before"
        )
    return "\n".join(lines)


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    if value < 172800:
        return f"{value / 3600:.1f}h"
    return f"{value / 86400:.1f}d"
