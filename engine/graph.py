"""The journey map: a compiled plan drawn as Mermaid text or as a standalone SVG.

Mermaid renders on GitHub and in most docs tools; the SVG needs nothing at all (no network,
no browser), so it can go into a ticket or a review. Pure functions of a `Plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import assert_never

from engine import plan as p
from engine.durations import format_duration
from engine.successors import Successor, successors

__all__ = ["Edge", "edges_of", "to_mermaid", "to_svg"]

END = "__end__"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str = ""


def _label(step: p.PlanStep) -> str:
    match step:
        case p.SendPlan():
            return f"send {step.template} via {' / '.join(step.channels)}"
        case p.TimerWaitPlan() | p.UntilWaitPlan() | p.DateWaitPlan() | p.EventWaitPlan():
            return _wait_label(step)
        case p.BranchPlan():
            return "branch"
        case p.SplitPlan():
            return "split " + " / ".join(f"{a.name} {a.weight:g}%" for a in step.arms)
        case p.ScorePlan():
            return f"score {step.model}"
        case p.ReviewPlan():
            return f"review in {step.queue}"
        case p.SetPlan():
            return "set " + ", ".join(step.assignments)
        case p.CallPlan():
            return f"call {step.method}"
        case p.ExitPlan():
            return f"exit: {step.outcome}"
        case p.DecidePlan():
            return f"decide ({step.hit}) on " + ", ".join(step.inputs)
        case _:
            assert_never(step)


def _edge_label(step: p.PlanStep, way: Successor) -> str:
    """How the map names a way out of ``step`` (`engine.successors` says where it leads)."""
    match way.kind:
        case "rule" if isinstance(step, p.DecidePlan):
            assert way.index is not None
            return _table_rule_label(step.rules[way.index].when, way.index)
        case "rule":
            assert isinstance(step, p.BranchPlan) and way.index is not None
            return step.rules[way.index].when
        case "arm":
            assert isinstance(step, p.SplitPlan) and way.index is not None
            arm = step.arms[way.index]
            return f"{arm.name} {arm.weight:g}%"
        case "decision":
            return way.name or ""
        case "timeout":
            return _timeout_label(step)
        case "missing":
            return "missing or past"
        case "else" | "received" | "failure":
            return {"else": "else", "received": "received", "failure": "failed"}[way.kind]
        case "next":
            return ""
        case _:
            assert_never(way.kind)


def _table_rule_label(cells: dict[str, str], index: int) -> str:
    """A table rule's edge: its number and the cells that test something."""
    tests = [f"{name} {cell}" for name, cell in cells.items() if cell.strip() not in ("", "-")]
    return f"rule {index + 1}: " + (", ".join(tests) or "any")


def _wait_label(step: p.TimerWaitPlan | p.UntilWaitPlan | p.DateWaitPlan | p.EventWaitPlan) -> str:
    match step:
        case p.TimerWaitPlan():
            return f"wait {format_duration(step.seconds)}"
        case p.UntilWaitPlan():
            return f"wait until {step.until} local"
        case p.DateWaitPlan():
            return _date_label(step)
        case p.EventWaitPlan():
            return f"wait for {step.event}"
        case _:
            assert_never(step)


def _date_label(step: p.DateWaitPlan) -> str:
    at = f" at {step.at} local" if step.at else ""
    if step.weekday is not None:
        return f"wait until {step.weekday}{at}"
    offset = ""
    if step.offset_seconds:
        sign = "-" if step.offset_seconds < 0 else "+"
        offset = f" {sign} {format_duration(abs(step.offset_seconds))}"
    return f"wait until {step.date}{offset}{at}"


def _timeout_label(step: p.PlanStep) -> str:
    if isinstance(step, p.ReviewPlan):
        return f"no decision in {format_duration(step.sla_seconds or 0)}"
    if isinstance(step, p.EventWaitPlan):
        return f"not within {format_duration(step.within_seconds or 0)}"
    return "timed out"


def edges_of(plan: p.Plan) -> list[Edge]:
    """Every transition of the plan; a run that falls off the end goes to ``END``. An
    event wait whose timeout goes where the event would is one edge."""
    edges: list[Edge] = []
    for step in plan.steps.values():
        ways = successors(step)
        merged = isinstance(step, p.EventWaitPlan) and len(ways) == 2
        if merged and ways[0].target == ways[1].target:
            edges.append(Edge(step.id, ways[0].target or END, "received or timed out"))
            continue
        edges.extend(
            Edge(step.id, way.target or END, _edge_label(step, way))
            for way in ways
            if way.kind != "timeout" or way.target is not None
        )
    return edges


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def to_mermaid(plan: p.Plan) -> str:
    """Mermaid flowchart text of the plan."""
    lines = [
        "flowchart TD",
        f'    entry(["{_mermaid_text("on " + plan.entry.event)}"]) --> {plan.start}',
    ]
    shapes = {
        "send": ('["', '"]'),
        "wait": ('(["', '"])'),
        "branch": ('{"', '"}'),
        "decide": ('{"', '"}'),
        "split": ('{{"', '"}}'),
        "score": ('[["', '"]]'),
        "review": ('[/"', '"/]'),
        "set": ('["', '"]'),
        "call": ('[["', '"]]'),
        "exit": ('(("', '"))'),
    }
    for step in plan.steps.values():
        left, right = shapes[step.type]
        lines.append(f"    {step.id}{left}{_mermaid_text(step.id + ': ' + _label(step))}{right}")
    edges = edges_of(plan)
    if any(e.target == END for e in edges):
        lines.append('    __end__(("completed"))')
    for edge in edges:
        arrow = f' -->|"{_mermaid_text(edge.label)}"| ' if edge.label else " --> "
        lines.append(f"    {edge.source}{arrow}{edge.target}")
    for exit_on in plan.exit_on:
        lines.append(f"    %% at any step: {exit_on.event} ends the run as {exit_on.outcome}")
    if plan.exit_on:
        text = "; ".join(f"on {e.event}: exit {e.outcome}" for e in plan.exit_on)
        lines.append(f'    exits>"{_mermaid_text("at any step: " + text)}"]')
    return "\n".join(lines) + "\n"


def _ranks(plan: p.Plan, edges: list[Edge]) -> dict[str, int]:
    """Longest-path layering over the plan with back edges ignored."""
    out: dict[str, list[str]] = {}
    for edge in edges:
        out.setdefault(edge.source, []).append(edge.target)
    order = [*plan.steps, END]
    position = {node: i for i, node in enumerate(order)}
    rank = {node: 0 for node in order}
    for node in order:  # steps are in file order, which is mostly topological
        for target in out.get(node, []):
            if position[target] > position[node]:
                rank[target] = max(rank[target], rank[node] + 1)
    for _ in range(len(order)):
        changed = False
        for node in order:
            for target in out.get(node, []):
                if position[target] > position[node] and rank[target] <= rank[node]:
                    rank[target] = rank[node] + 1
                    changed = True
        if not changed:
            break
    return rank


_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _MARGIN = 220, 46, 40, 56, 30
_COLOURS = {
    "send": "#e3f2fd",
    "wait": "#fff8e1",
    "branch": "#f3e5f5",
    "decide": "#f3e5f5",
    "split": "#f3e5f5",
    "score": "#e8f5e9",
    "review": "#ffebee",
    "set": "#eceff1",
    "call": "#eceff1",
    "exit": "#fafafa",
}


@dataclass(frozen=True)
class _Layout:
    """Where each box goes: its centre, by rank (row) then in row order."""

    centre: dict[str, tuple[float, float]]
    rank: dict[str, int]
    width: float
    height: float


def to_svg(plan: p.Plan) -> str:
    """A standalone SVG drawing of the plan."""
    edges = edges_of(plan)
    nodes = [*plan.steps]
    if any(e.target == END for e in edges):
        nodes.append(END)
    layout = _layout(nodes, _ranks(plan, edges))
    parts = _svg_head(plan, layout)
    for edge in edges:
        parts.extend(_svg_edge(edge, layout))
    for node in nodes:
        parts.extend(_svg_node(plan, node, layout.centre[node]))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _layout(nodes: list[str], rank: dict[str, int]) -> _Layout:
    rows: dict[int, list[str]] = {}
    for node in nodes:
        rows.setdefault(rank[node], []).append(node)
    width = max(len(r) for r in rows.values()) * (_BOX_W + _GAP_X) + 2 * _MARGIN + 160
    top = _MARGIN + 50
    centre: dict[str, tuple[float, float]] = {}
    for r, members in sorted(rows.items()):
        row_w = len(members) * _BOX_W + (len(members) - 1) * _GAP_X
        x0 = (width - row_w) / 2
        for i, node in enumerate(members):
            centre[node] = (
                x0 + i * (_BOX_W + _GAP_X) + _BOX_W / 2,
                top + r * (_BOX_H + _GAP_Y) + _BOX_H / 2,
            )
    height = top + (max(rows) + 1) * (_BOX_H + _GAP_Y) + _MARGIN
    return _Layout(centre=centre, rank=rank, width=width, height=height)


def _svg_head(plan: p.Plan, layout: _Layout) -> list[str]:
    width, height, margin = layout.width, layout.height, _MARGIN
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{margin}" y="{margin + 4}" font-size="16" font-weight="bold">{escape(plan.name or plan.journey_id)}</text>',
        f'<text x="{margin}" y="{margin + 24}" fill="#555">{escape(plan.journey_id)} · version {plan.version} · '
        f"starts on {escape(plan.entry.event)}"
        + escape("".join(f" · {e.event} exits as {e.outcome}" for e in plan.exit_on))
        + "</text>",
    ]


def _svg_edge(edge: Edge, layout: _Layout) -> list[str]:
    (x1, y1), (x2, y2) = layout.centre[edge.source], layout.centre[edge.target]
    if layout.rank[edge.target] > layout.rank[edge.source]:
        start, end = (x1, y1 + _BOX_H / 2), (x2, y2 - _BOX_H / 2)
        path = f"M {start[0]:.0f} {start[1]:.0f} L {end[0]:.0f} {end[1]:.0f}"
        lx, ly = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
    else:  # a loop back: around the right-hand side
        sx, ex = x1 + _BOX_W / 2, x2 + _BOX_W / 2
        bend = max(sx, ex) + 50
        path = f"M {sx:.0f} {y1:.0f} C {bend:.0f} {y1:.0f} {bend:.0f} {y2:.0f} {ex:.0f} {y2:.0f}"
        lx, ly = bend, (y1 + y2) / 2
    parts = [f'<path d="{path}" fill="none" stroke="#555" marker-end="url(#arrow)"/>']
    if edge.label:
        text = edge.label if len(edge.label) <= 40 else edge.label[:37] + "..."
        parts.append(
            f'<text x="{lx:.0f}" y="{ly:.0f}" fill="#333" font-size="11" text-anchor="middle" '
            f'stroke="white" stroke-width="3" paint-order="stroke">{escape(text)}</text>'
        )
    return parts


def _svg_node(plan: p.Plan, node: str, centre: tuple[float, float]) -> list[str]:
    x, y = centre
    if node == END:
        return [
            f'<ellipse cx="{x:.0f}" cy="{y:.0f}" rx="60" ry="20" fill="#f1f8e9" stroke="#558b2f"/>',
            f'<text x="{x:.0f}" y="{y + 4:.0f}" text-anchor="middle">completed</text>',
        ]
    step = plan.steps[node]
    label = _label(step)
    label = label if len(label) <= 34 else label[:31] + "..."
    return [
        f'<rect x="{x - _BOX_W / 2:.0f}" y="{y - _BOX_H / 2:.0f}" width="{_BOX_W}" height="{_BOX_H}" rx="8" '
        f'fill="{_COLOURS[step.type]}" stroke="#555"/>',
        f'<text x="{x:.0f}" y="{y - 4:.0f}" text-anchor="middle" font-weight="bold">{escape(node)}</text>',
        f'<text x="{x:.0f}" y="{y + 12:.0f}" text-anchor="middle" fill="#333">{escape(label)}</text>',
    ]
