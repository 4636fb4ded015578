"""The journey map's layout (`engine.graph.to_svg`, grandalf's layered layout): on the
example's larger journeys and a synthetic one of 30 steps with branches and loops back,
no edge runs through a box other than its own ends, the SVG is well-formed XML, and the
live counts (reached, waiting, left; edges taken) are drawn with the drop-off colours."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from engine import plan as p
from engine.catalog import build_catalog
from engine.graph import END, MapCounts, NodeCounts, edges_of, layout, to_svg
from tests.unit.journey_docs import check, errors, journey_doc

ROOT = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"

Point = tuple[float, float]
Rect = tuple[float, float, float, float]  # left, top, right, bottom


def synthetic_steps(count: int = 30) -> str:
    """``count`` steps: every sixth a branch skipping ahead, every sixth (from the
    tenth) a branch looping back over a wait, one early way to the exit."""
    lines = []
    for i in range(count - 1):
        if i % 6 == 0:
            lines.append(
                f"- id: s{i}\n  branch:\n    - when: vars.n > {i}\n      goto: s{min(i + 3, count - 1)}\n  else: s{i + 1}"
            )
        elif i % 6 == 3 and i >= 9:
            lines.append(
                f"- id: s{i}\n  branch:\n    - when: vars.n > 100\n      goto: s{i - 7}\n"
                f"    - when: vars.n > 50\n      goto: s{count - 1}\n  else: s{i + 1}"
            )
        elif i % 6 == 2:  # every loop back lands on a wait
            lines.append(f"- id: s{i}\n  wait: 1h")
        else:
            lines.append(f"- id: s{i}\n  set:\n    vars.n: coalesce(vars.n, 0) + {i}")
    lines.append(f"- id: s{count - 1}\n  exit: done")
    return "\n".join(lines)


def synthetic_plan(count: int = 30) -> p.Plan:
    catalog = check(journey_doc(synthetic_steps(count)))
    assert not errors(catalog), errors(catalog)
    return catalog.plans["j"]


def example(journey: str) -> p.Plan:
    catalog = build_catalog(ROOT / "journeys.yaml")
    assert catalog.ok
    return catalog.plans[journey]


PLANS = {
    "payment_recovery": lambda: example("payment_recovery"),
    "onboarding": lambda: example("onboarding"),
    "synthetic_30": synthetic_plan,
    "synthetic_120": lambda: synthetic_plan(120),
}


# ----------------------------------------------------------------------------- geometry


def _cubic(a: Point, b: Point, c: Point, d: Point, steps: int = 24) -> list[Point]:
    out = []
    for k in range(1, steps + 1):
        t = k / steps
        s = 1 - t
        out.append(
            (
                s**3 * a[0] + 3 * s * s * t * b[0] + 3 * s * t * t * c[0] + t**3 * d[0],
                s**3 * a[1] + 3 * s * s * t * b[1] + 3 * s * t * t * c[1] + t**3 * d[1],
            )
        )
    return out


def path_points(d: str) -> list[Point]:
    """The polyline an SVG path of M, L and C commands follows (curves sampled)."""
    tokens = re.findall(r"[MLC]|-?\d+(?:\.\d+)?", d)
    points: list[Point] = []
    i = 0
    while i < len(tokens):
        command = tokens[i]
        i += 1
        numbers = []
        while i < len(tokens) and tokens[i] not in "MLC":
            numbers.append(float(tokens[i]))
            i += 1
        pairs = list(zip(numbers[::2], numbers[1::2], strict=True))
        if command in "ML":
            points.extend(pairs)
        else:
            for j in range(0, len(pairs), 3):
                p1, p2, p3 = pairs[j : j + 3]
                points.extend(_cubic(points[-1], p1, p2, p3))
    return points


def _segment_hits_rect(a: Point, b: Point, rect: Rect) -> bool:
    """Whether segment ab passes through the inside of ``rect`` (Liang-Barsky clipping,
    the rectangle shrunk by a hair so touching its border does not count)."""
    left, top, right, bottom = rect[0] + 0.5, rect[1] + 0.5, rect[2] - 0.5, rect[3] - 0.5
    t0, t1 = 0.0, 1.0
    dx, dy = b[0] - a[0], b[1] - a[1]
    for p_, q in ((-dx, a[0] - left), (dx, right - a[0]), (-dy, a[1] - top), (dy, bottom - a[1])):
        if p_ == 0:
            if q < 0:
                return False
            continue
        t = q / p_
        if p_ < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return False
    return True


def boxes_and_edges(svg: str) -> tuple[dict[str, Rect], list[tuple[str, str, list[Point]]]]:
    root = ET.fromstring(svg)
    boxes: dict[str, Rect] = {}
    for node in root.iter(f"{SVG}g"):
        if node.get("class") != "node":
            continue
        step = node.get("data-step")
        assert step is not None
        shape = node.find(f"{SVG}rect")
        if shape is not None:
            x, y = float(shape.get("x", 0)), float(shape.get("y", 0))
            w, h = float(shape.get("width", 0)), float(shape.get("height", 0))
            boxes[step] = (x, y, x + w, y + h)
        else:
            ellipse = node.find(f"{SVG}ellipse")
            assert ellipse is not None
            cx, cy = float(ellipse.get("cx", 0)), float(ellipse.get("cy", 0))
            rx, ry = float(ellipse.get("rx", 0)), float(ellipse.get("ry", 0))
            boxes[step] = (cx - rx, cy - ry, cx + rx, cy + ry)
    edges = []
    for group in root.iter(f"{SVG}g"):
        if group.get("class") != "edge":
            continue
        path = group.find(f"{SVG}path")
        assert path is not None
        edges.append(
            (group.get("data-from", ""), group.get("data-to", ""), path_points(path.get("d", "")))
        )
    return boxes, edges


# ----------------------------------------------------------------------------- tests


@pytest.mark.slow  # in `make test`; over 2 s, out of `make test-fast`
@pytest.mark.parametrize("name", sorted(PLANS))
@pytest.mark.parametrize("counted", [False, True])
def test_no_edge_crosses_a_box_and_the_svg_is_well_formed(name: str, counted: bool) -> None:
    plan = PLANS[name]()
    counts = (
        MapCounts(steps={s: NodeCounts(3, 1, 1) for s in plan.steps}, edges={}) if counted else None
    )
    svg = to_svg(plan, counts)
    boxes, edges = boxes_and_edges(svg)  # ET.fromstring raises on malformed XML
    expected_nodes = set(plan.steps) | (
        {END} if any(e.target == END for e in edges_of(plan)) else set()
    )
    assert set(boxes) == expected_nodes
    assert len(edges) == len(edges_of(plan))
    for source, target, points in edges:
        assert len(points) >= 2
        for a, b in itertools.pairwise(points):
            for node, rect in boxes.items():
                if node in (source, target):
                    continue
                assert not _segment_hits_rect(a, b, rect), (
                    f"{name}: edge {source} -> {target} crosses {node} at {a}-{b}"
                )
    for (one, r), (other, s) in itertools.combinations(boxes.items(), 2):
        overlap = r[0] < s[2] and s[0] < r[2] and r[1] < s[3] and s[1] < r[3]
        assert not overlap, f"{name}: boxes {one} and {other} overlap"


def test_edges_end_on_their_boxes() -> None:
    """Each edge starts on its source's border and ends on its target's."""
    plan = synthetic_plan()
    placed = layout(plan)
    for route in placed.routes:
        start, end = route.hull[0], route.hull[-1]
        source, target = placed.boxes[route.edge.source], placed.boxes[route.edge.target]
        assert source.x - source.w / 2 <= start[0] <= source.x + source.w / 2
        assert start[1] in (source.top, source.bottom) or route.edge.source == route.edge.target
        assert target.x - target.w / 2 <= end[0] <= target.x + target.w / 2
        assert end[1] in (target.top, target.bottom) or route.edge.source == route.edge.target


def test_the_synthetic_journey_has_loops_back() -> None:
    plan = synthetic_plan()
    order = list(plan.steps)
    backs = [
        e
        for e in edges_of(plan)
        if e.target in order and order.index(e.target) < order.index(e.source)
    ]
    assert len(backs) >= 3


def test_counts_are_drawn_on_nodes_and_edges_with_the_drop_off_colours() -> None:
    plan = example("payment_recovery")
    counts = MapCounts(
        steps={
            "score_risk": NodeCounts(reached=120, waiting=0, left=0),
            "route_by_risk": NodeCounts(reached=120, waiting=0, left=2),
            "ops_review": NodeCounts(reached=40, waiting=7, left=25),
            "wait_for_morning": NodeCounts(reached=60, waiting=12, left=6),
            "paid": NodeCounts(reached=30, waiting=0, left=30),
        },
        edges={("score_risk", "route_by_risk"): 120, ("route_by_risk", "ops_review"): 40},
    )
    svg = to_svg(plan, counts)
    root = ET.fromstring(svg)
    nodes = {g.get("data-step"): g for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
    review = nodes["ops_review"]
    assert (review.get("data-reached"), review.get("data-waiting"), review.get("data-left")) == (
        "40",
        "7",
        "25",
    )
    texts = ["".join(t.itertext()) for t in review.iter(f"{SVG}text")]
    assert "reached 40 · waiting 7 · left 25" in texts

    def fill(step: str) -> str | None:
        shape = nodes[step].find(f"{SVG}rect")
        assert shape is not None
        return shape.get("fill")

    assert fill("score_risk") == "#e8f5e9"  # no drop-off
    assert fill("wait_for_morning") == "#fff9c4"  # 10%: the 5-15% band
    assert fill("ops_review") == "#ef9a9a"  # 62%
    assert fill("paid") == "#eceff1"  # an exit step: runs end there by design
    assert fill("handover") == "#f5f5f5"  # no run reached it
    edges = [g for g in root.iter(f"{SVG}g") if g.get("class") == "edge"]
    taken = {(g.get("data-from"), g.get("data-to")): g.get("data-taken") for g in edges}
    assert taken[("score_risk", "route_by_risk")] == "120"
    assert taken[("route_by_risk", "ops_review")] == "40"
    assert taken[("ops_review", "offer_date")] == "0"
    labels = ["".join(t.itertext()) for g in edges for t in g.iter(f"{SVG}text")]
    assert "120" in labels
    assert any(label.endswith("· 40") for label in labels)
    legend = [g for g in root.iter(f"{SVG}g") if g.get("class") == "legend"]
    assert legend and "Drop-off" in "".join(legend[0].itertext())


def test_counts_from_journey_stats() -> None:
    from engine.stats_models import EdgeStats, JourneyStats, StepStats

    stats = JourneyStats(
        journey_id="j",
        steps={"a": StepStats(reached=5, waiting=1, left=2)},
        edges=[
            EdgeStats(source="a", target="b", count=3),
            EdgeStats.model_validate({"from": "b", "to": "__end__", "count": 2}),
        ],
    )
    counts = MapCounts.from_stats(stats)
    assert counts.steps["a"] == NodeCounts(5, 1, 2)
    assert counts.edges == {("a", "b"): 3, ("b", END): 2}


def test_the_plain_map_has_no_counts() -> None:
    svg = to_svg(example("onboarding"))
    assert 'data-counts="no"' in svg and "data-reached" not in svg and "legend" not in svg


def test_the_drawing_is_the_same_every_time() -> None:
    """The same plan, the same SVG (no set or object-address order leaks into it): a
    diff of two `journeys graph` outputs shows only what changed in the journey."""
    plan = example("payment_recovery")
    drawings = set()
    for _ in range(5):
        ballast = [object() for _ in range(1000)]  # other addresses for the next objects
        drawings.add(to_svg(plan))
        del ballast
    assert len(drawings) == 1
