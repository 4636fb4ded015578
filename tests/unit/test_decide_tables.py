"""Decision tables in the walk (`engine.decisions.decide`): a table with `hit: first` goes
where the equivalent chain of branch rules goes, for any rules and any input values."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine import plan as p
from engine.decisions import decide
from engine.payloads import DecideInput

BOUNDS = [0.0, 0.3, 0.5, 0.7, 1.0, 30.0]
TIERS = ["gold", "silver", "bronze"]


@st.composite
def number_cell(draw: st.DrawFn) -> tuple[str, str]:
    """A numeric unary test on input `x`, and the same test as an expression."""
    kind = draw(st.sampled_from(["any", "<", "<=", ">", ">=", "=", "interval"]))
    a, b = sorted(draw(st.lists(st.sampled_from(BOUNDS), min_size=2, max_size=2)))
    if kind == "any":
        return "-", "True"
    if kind == "=":
        return f"= {a}", f"vars.x == {a}"
    if kind != "interval":
        return f"{kind} {a}", f"vars.x {kind} {a}"
    left, right = draw(st.sampled_from(["[", "("])), draw(st.sampled_from(["]", ")"]))
    low = ">=" if left == "[" else ">"
    high = "<=" if right == "]" else "<"
    return f"{left}{a}..{b}{right}", f"vars.x {low} {a} and vars.x {high} {b}"


@st.composite
def tier_cell(draw: st.DrawFn) -> tuple[str, str]:
    """A text unary test on input `t` (a list of literals, or any), and its expression."""
    chosen = draw(st.lists(st.sampled_from(TIERS), max_size=2, unique=True))
    if not chosen:
        return "-", "True"
    cell = ", ".join(f'"{tier}"' for tier in chosen)
    return cell, " or ".join(f'vars.t == "{tier}"' for tier in chosen)


@st.composite
def table_and_chain(draw: st.DrawFn) -> tuple[p.DecidePlan, p.BranchPlan]:
    rules: list[p.DecideRulePlan] = []
    chain: list[p.BranchRulePlan] = []
    for index in range(draw(st.integers(min_value=1, max_value=5))):
        (x_cell, x_expr), (t_cell, t_expr) = draw(number_cell()), draw(tier_cell())
        rules.append(p.DecideRulePlan(when={"x": x_cell, "t": t_cell}, set={}, goto=f"r{index}"))
        chain.append(p.BranchRulePlan(when=f"({x_expr}) and ({t_expr})", goto=f"r{index}"))
    inputs = {"x": "vars.x", "t": "vars.t"}
    table = p.DecidePlan(id="s", inputs=inputs, hit="first", rules=tuple(rules), otherwise="no")
    return table, p.BranchPlan(id="s", rules=tuple(chain), otherwise="no")


def walk(step: p.PlanStep, variables: dict[str, Any]) -> str | None:
    return decide(DecideInput(start="s", steps={"s": step}, context={"vars": variables})).stop


@settings(max_examples=300, deadline=None)
@given(
    table_and_chain(),
    st.one_of(st.sampled_from(BOUNDS), st.floats(-1, 40), st.none()),
    st.sampled_from([*TIERS, "none"]),
)
def test_a_first_hit_table_goes_where_the_chain_of_branch_rules_goes(
    plans: tuple[p.DecidePlan, p.BranchPlan], x: float | None, t: str
) -> None:
    table, chain = plans
    variables = {"x": x, "t": t}
    assert walk(table, variables) == walk(chain, variables)


def test_collect_sets_every_matching_rules_outputs_as_lists() -> None:
    table = p.DecidePlan(
        id="s",
        inputs={"x": "vars.x"},
        hit="collect",
        rules=(
            p.DecideRulePlan(when={"x": "< 5"}, set={"tag": '"small"'}, goto="a"),
            p.DecideRulePlan(when={"x": "[1..2]"}, set={"tag": '"one"', "n": "vars.x"}, goto="b"),
            p.DecideRulePlan(when={"x": "> 9"}, set={"tag": '"big"'}, goto="c"),
        ),
        otherwise="no",
    )
    result = decide(DecideInput(start="s", steps={"s": table}, context={"vars": {"x": 1}}))
    [decision] = result.decisions
    assert result.stop == "a"
    assert decision.matched == [0, 1]
    assert decision.outputs == {"tag": ["small", "one"], "n": [1]}
    assert decision.values == [1]
