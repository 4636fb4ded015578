"""Decision tables (`decide:` steps) in runs: each hit policy routes the run, sets `vars`,
and leaves on the path which rules held for which input values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from temporalio.testing import WorkflowEnvironment

from engine.catalog import build_catalog
from engine.payloads import PathEntry, RunState
from tests.workflows.conftest import StartRun, compile_plan, run_to_end, steps_of

HEAD = """\
version: 1
settings: {timezone: UTC}
events:
  payment_failed: {amount: number, days_past_due: integer, tier: string}
models:
  broken: {kind: python, function: "tests.workflows.models:explode", fallback: 0.9}
journeys:
  - id: j
    entry: {event: payment_failed}
    steps:
      - {id: risk, score: broken, features: {amount: event.amount}}
      - id: choose
        decide:
          inputs: {risk: scores.broken.score, late: event.days_past_due, tier: event.tier}
          hit: HIT
          rules:
            - {when: {risk: "< 0.5"}, set: {offer: '"reminder"', limit: 1000}, goto: remind}
            - {when: {risk: "[0.5..1]", late: "< 30", tier: '"gold"'}, set: {offer: '"grace"', limit: 500}, goto: grace}
            - {when: {risk: "[0.5..1]", late: ">= 30"}, set: {offer: '"plan"', limit: 100}, goto: plan}
            - {when: {tier: '"gold"', late: "-"}, set: {offer: '"call"'}, goto: call}
          else: review
      - {id: remind, exit: reminded}
      - {id: grace, exit: graced}
      - {id: plan, exit: planned}
      - {id: call, exit: called}
      - {id: review, exit: reviewed}
"""


def table(hit: str) -> str:
    text = HEAD.replace("HIT", hit)
    if hit == "unique":  # the gold rule overlaps the others, which unique does not allow
        text = "\n".join(line for line in text.splitlines() if "call" not in line) + "\n"
    return text


def decided(state: RunState) -> PathEntry:
    return next(entry for entry in state.path if entry.type == "decide")


async def run(
    env: WorkflowEnvironment, start_run: StartRun, hit: str, **properties: Any
) -> RunState:
    handle = await start_run(compile_plan(table(hit)), properties=properties)
    return await run_to_end(env, handle)


async def test_first_takes_the_first_matching_rule_after_the_score(
    env: WorkflowEnvironment, start_run: StartRun
) -> None:
    state = await run(env, start_run, "first", amount=10, days_past_due=12, tier="gold")
    assert steps_of(state)[1:] == [("risk", "0.9"), ("choose", "grace"), ("end", "graced")]
    assert (state.vars["offer"], state.vars["limit"]) == ("grace", 500)
    entry = decided(state)  # the gold rule holds too, but first stops at the first
    assert entry.outcome == "grace"
    assert entry.detail["rule"] == 1
    assert entry.detail["rules"] == [1]
    assert entry.detail["inputs"] == {"risk": 0.9, "late": 12, "tier": "gold"}


async def test_unique_routes_by_the_one_rule_that_holds(
    env: WorkflowEnvironment, start_run: StartRun
) -> None:
    state = await run(env, start_run, "unique", amount=10, days_past_due=45, tier="silver")
    assert state.outcome == "planned"
    assert decided(state).detail["rules"] == [2]
    assert decided(state).detail["error"] is None
    assert state.vars["offer"] == "plan"


async def test_collect_gathers_every_matching_rules_outputs_and_takes_the_first_goto(
    env: WorkflowEnvironment, start_run: StartRun
) -> None:
    state = await run(env, start_run, "collect", amount=10, days_past_due=12, tier="gold")
    assert state.outcome == "graced"
    assert state.vars["offer"] == ["grace", "call"]
    assert state.vars["limit"] == [500]
    assert decided(state).detail["rules"] == [1, 3]
    assert decided(state).detail["set"] == {"offer": ["grace", "call"], "limit": [500]}


async def test_no_matching_rule_takes_else_and_sets_nothing(
    env: WorkflowEnvironment, start_run: StartRun
) -> None:
    state = await run(env, start_run, "first", amount=10, days_past_due=12, tier="silver")
    assert state.outcome == "reviewed"
    assert "offer" not in state.vars
    assert decided(state).detail["rules"] == []
    assert decided(state).detail["rule"] is None


async def test_a_table_as_the_first_step_is_decided_before_anything_else(
    env: WorkflowEnvironment, start_run: StartRun
) -> None:
    text = table("first").replace(
        "      - {id: risk, score: broken, features: {amount: event.amount}}\n", ""
    )
    text = text.replace("scores.broken.score", "event.amount / 100")
    state = await run_to_end(
        env,
        await start_run(
            compile_plan(text), properties={"amount": 20, "days_past_due": 3, "tier": "x"}
        ),
    )
    assert state.outcome == "reminded"
    assert decided(state).detail["inputs"]["risk"] == 0.2
    assert decided(state).detail["reads"]["event.amount"] == 20


async def test_a_table_from_a_csv_routes_the_run_without_reading_the_file_again(
    env: WorkflowEnvironment, start_run: StartRun, tmp_path: Path
) -> None:
    (tmp_path / "offers.csv").write_text(
        "risk,late,tier,offer,limit,goto\n"
        "< 0.5,,,'reminder',1000,remind\n"
        "\"[0.5..1]\",< 30,'gold','grace',500,grace\n"
        "\"[0.5..1]\",>= 30,,'plan',100,plan\n"
        ",,'gold','call',,call\n"
    )
    text = HEAD.replace("HIT", "first")
    start = text.index("          rules:\n")
    end = text.index("          else: review\n")
    (tmp_path / "journeys.yaml").write_text(
        text[:start] + "          rules_csv: offers.csv\n" + text[end:]
    )
    catalog = build_catalog(tmp_path / "journeys.yaml")
    assert catalog.ok, [v.format() for v in catalog.violations]
    plan = catalog.plans["j"]
    (tmp_path / "offers.csv").unlink()  # the plan carries the rules
    handle = await start_run(plan, properties={"amount": 1, "days_past_due": 40, "tier": "x"})
    state = await run_to_end(env, handle)
    assert state.outcome == "planned"
    assert (state.vars["offer"], state.vars["limit"]) == ("plan", 100)
    assert decided(state).detail["rules"] == [2]
