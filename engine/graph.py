"""The journey map: a compiled plan drawn as Mermaid text or as a standalone SVG.

Mermaid renders on GitHub and in most docs tools; the SVG needs nothing at all (no network,
no browser), so it can go into a ticket or a review. Pure functions of a `Plan`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from html import escape
from typing import Any, assert_never

from grandalf.graphs import Edge as GEdge
from grandalf.graphs import Vertex, graph_core
from grandalf.layouts import SugiyamaLayout

from engine import plan as p
from engine.durations import format_duration
from engine.stats_models import JourneyStats
from engine.successors import Successor, successors

__all__ = [
    "Box",
    "Edge",
    "MapCounts",
    "MapLayout",
    "NodeCounts",
    "Route",
    "edges_of",
    "layout",
    "to_mermaid",
    "to_svg",
]

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


# ----------------------------------------------------------------------------- the SVG map
#
# Placement is grandalf's Sugiyama layout (the layered "dot" method: cycles broken by
# feedback edges, longest-path ranks, crossing reduction by barycentres, Brandes-Köpf
# coordinates); an edge that spans several ranks goes through the layout's dummy
# vertices, one per rank in between, which the layout keeps clear of the boxes. Every
# part of an edge is then either a vertical run through a dummy's column or a curve
# inside the gap between two ranks, so no edge crosses a box.

_BOX_W, _BOX_H, _COUNTS_H = 220, 46, 64
_GAP_X, _GAP_Y, _MARGIN, _TOP = 50, 76, 30, 80
_DUMMY_W, _DUMMY_H = 24, 10
_LOOP = 26  # how far a step's edge to itself reaches out to its right

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

# Drop-off (left / reached) bands of the counted map: upper bound, fill, legend text.
_DROP_OFF: tuple[tuple[float, str, str], ...] = (
    (0.05, "#e8f5e9", "under 5%"),
    (0.15, "#fff9c4", "5–15%"),
    (0.30, "#ffe0b2", "15–30%"),
    (0.50, "#ffccbc", "30–50%"),
    (float("inf"), "#ef9a9a", "50% or more"),
)
_NO_RUNS = "#f5f5f5"
_ENDS_HERE = "#eceff1"

_END_NAMES = frozenset({END, "", "end", "completed"})


@dataclass(frozen=True)
class NodeCounts:
    """A step's numbers on the map: runs that reached it, wait there now, ended there."""

    reached: int = 0
    waiting: int = 0
    left: int = 0


@dataclass(frozen=True)
class MapCounts:
    """Live numbers drawn on the map: per step, and per edge (source, target) the times
    runs took it. A run's end is the target ``__end__`` (also accepted: ``end``,
    ``completed`` or empty)."""

    steps: dict[str, NodeCounts]
    edges: dict[tuple[str, str], int]

    @classmethod
    def from_stats(cls, stats: JourneyStats) -> MapCounts:
        steps = {
            step: NodeCounts(reached=s.reached, waiting=s.waiting, left=s.left)
            for step, s in stats.steps.items()
        }
        edges: dict[tuple[str, str], int] = {}
        for edge in stats.edges:
            key = (edge.source, END if edge.target in _END_NAMES else edge.target)
            edges[key] = edges.get(key, 0) + edge.count
        return cls(steps=steps, edges=edges)


@dataclass(frozen=True)
class Box:
    """A node's rectangle: its centre and size."""

    node: str
    x: float
    y: float
    w: float
    h: float

    @property
    def top(self) -> float:
        return self.y - self.h / 2

    @property
    def bottom(self) -> float:
        return self.y + self.h / 2


@dataclass(frozen=True)
class Route:
    """An edge's drawing: an SVG path (moves, lines and cubic curves), the polyline that
    bounds it (the curves' control points: each curve lies inside it), and where its
    label goes."""

    edge: Edge
    path: str
    hull: tuple[tuple[float, float], ...]
    label_at: tuple[float, float]


@dataclass(frozen=True)
class MapLayout:
    boxes: dict[str, Box]
    routes: list[Route]
    width: float
    height: float


class _View:
    """What grandalf needs of a vertex: its size, and where the layout puts it."""

    def __init__(self, w: float, h: float) -> None:
        self.w, self.h = w, h
        self.xy: tuple[float, float] = (0.0, 0.0)


class _EdgeView:
    def setpath(self, points: list[tuple[float, float]]) -> None:
        self.points = points


def layout(plan: p.Plan, *, box_height: float = _BOX_H) -> MapLayout:
    """Where every node and edge of the plan's map goes (grandalf's layered layout)."""
    edges = edges_of(plan)
    nodes = [*plan.steps]
    if any(e.target == END for e in edges):
        nodes.append(END)
    vertices = {node: Vertex(node) for node in nodes}
    for vertex in vertices.values():
        vertex.view = _View(_BOX_W, box_height)
    links: list[tuple[Edge, GEdge]] = []
    for edge in edges:
        if edge.source != edge.target:
            link = GEdge(vertices[edge.source], vertices[edge.target])
            link.view = _EdgeView()
            links.append((edge, link))
    chains: dict[int, list[_Point]] = {}  # id(link) -> points, source first
    offset = float(_MARGIN)
    for members, inside in _components(nodes, links):  # side by side, the start's first
        component = graph_core([vertices[n] for n in members], inside)
        offset = _place(component, plan.start, inside, offset, chains)

    boxes = {
        node: Box(node, v.view.xy[0], v.view.xy[1], v.view.w, v.view.h)
        for node, v in vertices.items()
    }
    # Keyed by the edge's place in the plan: ties in a side's order are broken the same
    # way every time.
    ports = _ports(boxes, [(i, edge, chains[id(link)]) for i, (edge, link) in enumerate(links)])
    routes = []
    for i, (edge, link) in enumerate(links):
        tail, head = ports[(i, "tail")], ports[(i, "head")]
        routes.append(_route(edge, chains[id(link)], tail, head, boxes))
    routes += [_self_loop(edge, boxes[edge.source]) for edge in edges if edge.source == edge.target]
    routes = _stagger_labels(routes)
    width = max(b.x + b.w / 2 for b in boxes.values()) + _LOOP + 160 + _MARGIN
    height = max(b.bottom for b in boxes.values()) + _MARGIN
    return MapLayout(boxes=boxes, routes=routes, width=max(width, 560.0), height=height)


_Point = tuple[float, float, float]
"""A point an edge goes through: x, y, and half the height of its rank's band (a dummy's
vertical run crosses the whole band)."""


def _components(
    nodes: list[str], links: list[tuple[Edge, GEdge]]
) -> list[tuple[list[str], list[GEdge]]]:
    """The map's connected parts, each its nodes and edges in plan order. Built here, not
    by grandalf's `Graph`, which collects a part's edges in a set: its order, and so the
    layout, would change from one run to the next."""
    part = {node: node for node in nodes}

    def root(node: str) -> str:
        while part[node] != node:
            part[node] = part[part[node]]
            node = part[node]
        return node

    for edge, _ in links:
        part[root(edge.source)] = root(edge.target)
    found: dict[str, tuple[list[str], list[GEdge]]] = {}
    for node in nodes:
        found.setdefault(root(node), ([], []))[0].append(node)
    for edge, link in links:
        found[root(edge.source)][1].append(link)
    return list(found.values())


def _place(
    component: Any,
    start: str,
    links: list[GEdge],
    offset: float,
    chains: dict[int, list[_Point]],
) -> float:
    """Lay one connected part of the map out from ``offset`` (its left edge); record each
    of its edges' points (source, dummies, target) in ``chains``; return where the next
    part may start."""
    sugiyama = SugiyamaLayout(component)
    sugiyama.xspace, sugiyama.yspace = _GAP_X, _GAP_Y
    roots = [v for v in component.sV if v.data == start] or None
    sugiyama.init_all(roots=roots)
    for layer in sugiyama.layers:
        for v in layer:
            if not isinstance(v, Vertex):  # a dummy: an edge's way through the rank
                v.view.w, v.view.h = _DUMMY_W, _DUMMY_H
    sugiyama.draw()
    _keep_apart(sugiyama.layers)
    left = min(v.view.xy[0] - v.view.w / 2 for layer in sugiyama.layers for v in layer)
    right = max(v.view.xy[0] + v.view.w / 2 for layer in sugiyama.layers for v in layer)
    half: dict[int, float] = {}
    for rank, layer in enumerate(sugiyama.layers):
        y = layer[0].view.xy[1] + _TOP
        half[rank] = max(v.view.h for v in layer) / 2
        for v in layer:
            v.view.xy = (v.view.xy[0] + offset - left, y)

    def point(v: Any, rank: int) -> _Point:
        return (v.view.xy[0], v.view.xy[1], half[rank])

    for link in links:
        ranks = sugiyama.ctrls.get(link)
        source, target = link.v
        r0, r1 = sugiyama.grx[source].rank, sugiyama.grx[target].rank
        step = 1 if r1 > r0 else -1
        middle = [point(ranks[r], r) for r in range(r0 + step, r1, step)] if ranks else []
        chains[id(link)] = [point(source, r0), *middle, point(target, r1)]
    return float(offset + right - left + 2 * _GAP_X + _LOOP)


def _stagger_labels(routes: list[Route]) -> list[Route]:
    """Labels of edges out of one step, side by side in the same gap, at three heights
    in turn, so that neighbours' texts do not run into each other."""
    seen: dict[str, int] = {}
    staggered = []
    for route in sorted(routes, key=lambda r: (r.edge.source, r.label_at[0])):
        k = seen.get(route.edge.source, 0)
        seen[route.edge.source] = k + 1
        x, y = route.label_at
        staggered.append(replace(route, label_at=(x, y + ((k % 3) - 1) * 14)))
    return staggered


def _keep_apart(layers: list[list[Any]]) -> None:
    """Brandes-Köpf averages four placements, which can bring two neighbours closer than
    the spacing: push each rank's members apart again, in their order."""
    for layer in layers:
        members = sorted(layer, key=lambda v: v.view.xy[0])
        for before, after in itertools.pairwise(members):
            least = before.view.xy[0] + (before.view.w + after.view.w) / 2 + _GAP_X / 2
            if after.view.xy[0] < least:
                after.view.xy = (least, after.view.xy[1])


def _ports(
    boxes: dict[str, Box], chains: list[tuple[int, Edge, list[_Point]]]
) -> dict[tuple[int, str], tuple[float, float]]:
    """Where each edge leaves its source and enters its target: spread along the side it
    goes out of (downwards: the bottom; a loop back upwards: the top), in the order of
    the points they head to, so that they do not cross at the box."""
    sides: dict[tuple[str, str], list[tuple[float, int, str]]] = {}
    for key, edge, points in chains:
        down = points[-1][1] > points[0][1]
        sides.setdefault((edge.source, "bottom" if down else "top"), []).append(
            (points[1][0], key, "tail")
        )
        sides.setdefault((edge.target, "top" if down else "bottom"), []).append(
            (points[-2][0], key, "head")
        )
    found: dict[tuple[int, str], tuple[float, float]] = {}
    for (node, side), members in sides.items():
        box = boxes[node]
        usable = box.w * 0.8
        members.sort()
        y = box.bottom if side == "bottom" else box.top
        for i, (_, key, end) in enumerate(members):
            x = box.x - usable / 2 + usable * (i + 1) / (len(members) + 1)
            found[(key, end)] = (x, y)
    return found


def _route(
    edge: Edge,
    chain: list[_Point],
    tail: tuple[float, float],
    head: tuple[float, float],
    boxes: dict[str, Box],
) -> Route:
    """The edge through its chain: out of the tail port, through each dummy's column
    (a vertical line across its rank's whole band), into the head port; between two ranks a curve
    with vertical ends whose control points stay in the gap."""
    down = chain[-1][1] > chain[0][1]
    stops: list[tuple[tuple[float, float], tuple[float, float]]] = [(tail, tail)]
    for x, y, half in chain[1:-1]:
        near, far = (y - half, y + half) if down else (y + half, y - half)
        stops.append(((x, near), (x, far)))
    stops.append((head, head))
    parts = [f"M {tail[0]:.1f} {tail[1]:.1f}"]
    hull: list[tuple[float, float]] = [tail]
    for (_, (x1, y1)), ((x2, y2), exit_) in itertools.pairwise(stops):
        ym = (y1 + y2) / 2
        parts.append(f"C {x1:.1f} {ym:.1f} {x2:.1f} {ym:.1f} {x2:.1f} {y2:.1f}")
        hull += [(x1, ym), (x2, ym), (x2, y2)]
        if exit_ != (x2, y2):
            parts.append(f"L {exit_[0]:.1f} {exit_[1]:.1f}")
            hull.append(exit_)
    (_, (x1, y1)), ((x2, y2), _) = stops[0], stops[1]
    label_at = ((x1 + x2) / 2, (y1 + y2) / 2 + 4)
    return Route(edge, " ".join(parts), tuple(hull), label_at)


def _self_loop(edge: Edge, box: Box) -> Route:
    x = box.x + box.w / 2
    top, bottom = box.y - 8, box.y + 8
    path = (
        f"M {x:.1f} {top:.1f} C {x + _LOOP:.1f} {top - 6:.1f} "
        f"{x + _LOOP:.1f} {bottom + 6:.1f} {x:.1f} {bottom:.1f}"
    )
    hull = ((x, top), (x + _LOOP, top - 6), (x + _LOOP, bottom + 6), (x, bottom))
    return Route(edge, path, hull, (x + _LOOP + 4, box.y + 4))


def to_svg(plan: p.Plan, counts: MapCounts | None = None) -> str:
    """A standalone SVG drawing of the plan. With ``counts``, each step shows the runs
    that reached it, wait there now and ended there, is filled by its drop-off (ended
    there / reached; a legend says the bands), and each edge the times it was taken."""
    placed = layout(plan, box_height=_COUNTS_H if counts else _BOX_H)
    height = placed.height + (40 if counts else 0)
    width = max(placed.width, _LEGEND_WIDTH) if counts else placed.width  # the legend fits
    parts = _svg_head(plan, width, height, counts is not None)
    most = max(counts.edges.values(), default=0) if counts else 0
    counted: set[tuple[str, str]] = set()
    for route in placed.routes:
        key = (route.edge.source, route.edge.target)
        taken = counts.edges.get(key, 0) if counts is not None else None
        first = key not in counted  # two ways to one step (two rules): one count shown
        counted.add(key)
        parts.extend(_svg_edge(route, taken, most, shown=first))
    for node, box in placed.boxes.items():
        parts.extend(_svg_node(plan, node, box, counts))
    if counts is not None:
        parts.extend(_svg_legend(placed.height))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _svg_head(plan: p.Plan, width: float, height: float, counted: bool) -> list[str]:
    margin = _MARGIN
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif" '
        f'font-size="12" class="journey-map" data-counts="{"yes" if counted else "no"}" '
        f'role="img" aria-label="Journey map of {escape(plan.journey_id)}">',
        f"<title>{escape(plan.name or plan.journey_id)}: journey map</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="9" '
        'markerHeight="9" markerUnits="userSpaceOnUse" orient="auto-start-reverse">'
        '<path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{margin}" y="{margin + 4}" font-size="16" font-weight="bold">'
        f"{escape(plan.name or plan.journey_id)}</text>",
        f'<text x="{margin}" y="{margin + 24}" fill="#555">{escape(plan.journey_id)} · version '
        f"{escape(plan.version)} · starts on {escape(plan.entry.event)}"
        + escape("".join(f" · {e.event} exits as {e.outcome}" for e in plan.exit_on))
        + "</text>",
    ]


def _svg_edge(route: Route, taken: int | None, most: int, *, shown: bool) -> list[str]:
    edge = route.edge
    width = 1.0 if not taken or not most else 1.0 + 4.0 * taken / most
    data = f' data-from="{escape(edge.source)}" data-to="{escape(edge.target)}"'
    if taken is not None:
        data += f' data-taken="{taken}"'
    parts = [
        f'<g class="edge"{data}><path d="{route.path}" fill="none" stroke="#555" '
        f'stroke-width="{width:.1f}" marker-end="url(#arrow)"/>'
    ]
    label = edge.label if len(edge.label) <= 40 else edge.label[:37] + "..."
    if taken is not None and shown:
        label = f"{label} · {taken}" if label else f"{taken}"
    if label:
        lx, ly = route.label_at
        parts.append(
            f'<text x="{lx:.0f}" y="{ly:.0f}" fill="#333" font-size="11" text-anchor="middle" '
            f'stroke="white" stroke-width="3" paint-order="stroke">{escape(label)}</text>'
        )
    parts.append("</g>")
    return parts


def _fill(plan: p.Plan, node: str, counts: MapCounts | None) -> str:
    if node == END:
        return "#f1f8e9"
    step = plan.steps[node]
    if counts is None:
        return _COLOURS[step.type]
    if step.type == "exit":
        return _ENDS_HERE
    numbers = counts.steps.get(node, NodeCounts())
    if not numbers.reached:
        return _NO_RUNS
    drop = numbers.left / numbers.reached
    return next(colour for bound, colour, _ in _DROP_OFF if drop < bound)


def _svg_node(plan: p.Plan, node: str, box: Box, counts: MapCounts | None) -> list[str]:
    x, y, w, h = box.x, box.y, box.w, box.h
    fill = _fill(plan, node, counts)
    numbers = counts.steps.get(node, NodeCounts()) if counts else None
    data = f' data-step="{escape(node)}"'
    if numbers is not None and node != END:
        data += (
            f' data-reached="{numbers.reached}" data-waiting="{numbers.waiting}"'
            f' data-left="{numbers.left}"'
        )
    if node == END:
        shape = (
            f'<ellipse cx="{x:.1f}" cy="{y:.1f}" rx="{w / 2 - 50:.1f}" ry="{h / 2:.1f}" '
            f'fill="{fill}" stroke="#558b2f"/>'
        )
        lines = [("completed", "")]
    else:
        step = plan.steps[node]
        label = _label(step)
        label = label if len(label) <= 34 else label[:31] + "..."
        shape = (
            f'<rect x="{x - w / 2:.1f}" y="{y - h / 2:.1f}" width="{w:.0f}" height="{h:.0f}" '
            f'rx="8" fill="{fill}" stroke="#555"/>'
        )
        lines = [(node, ' font-weight="bold"'), (label, ' fill="#333"')]
        if numbers is not None:
            lines.append(
                (
                    f"reached {numbers.reached} · waiting {numbers.waiting} · left {numbers.left}",
                    ' class="counts" fill="#000"',
                )
            )
    first = y - (len(lines) - 1) * 8 + 4
    texts = [
        f'<text x="{x:.1f}" y="{first + 16 * i:.1f}" text-anchor="middle"{attrs}>'
        f"{escape(text)}</text>"
        for i, (text, attrs) in enumerate(lines)
    ]
    return [f'<g class="node"{data}>', shape, *texts, "</g>"]


_LEGEND_WIDTH = _MARGIN * 2 + 215 + 98 * (len(_DROP_OFF) + 1)


def _svg_legend(top: float) -> list[str]:
    x = float(_MARGIN)
    y = top + 10
    parts = [
        f'<g class="legend"><text x="{x:.0f}" y="{y + 12:.0f}">Drop-off (ended there / reached):</text>'
    ]
    x += 215
    for _, colour, text in _DROP_OFF:
        parts.append(
            f'<rect x="{x:.0f}" y="{y:.0f}" width="14" height="14" fill="{colour}" stroke="#555"/>'
            f'<text x="{x + 18:.0f}" y="{y + 12:.0f}">{escape(text)}</text>'
        )
        x += 98
    parts.append(
        f'<rect x="{x:.0f}" y="{y:.0f}" width="14" height="14" fill="{_ENDS_HERE}" stroke="#555"/>'
        f'<text x="{x + 18:.0f}" y="{y + 12:.0f}">exit step</text></g>'
    )
    return parts
