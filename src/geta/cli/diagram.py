"""A picture of a plan's graph: boxes per layer, prunable groups coloured; DOT, SVG, HTML, PNG.

Graphviz is not needed for SVG and HTML: `to_svg` lays the graph out itself (longest-path
layers from the inputs, one barycentre pass to order each layer); `to_dot` writes DOT text, and
PNG is DOT rendered by Graphviz's ``dot`` where it is installed. One box per layer module that
runs ops (its quantizers folded in), one per function op of a ``forward`` (a residual add of a
block is its own box); a box is filled with the colour of the prunable group whose channels it
produces (``out``), and lists the groups whose channels it consumes (``in``). Every picture
carries a colour legend of the groups.
"""

from __future__ import annotations

import html
import operator
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from torch import fx

from geta.errors import GetaError

if TYPE_CHECKING:
    from geta.plan import Plan

__all__ = [
    "Box",
    "Diagram",
    "GraphvizMissing",
    "build_diagram",
    "legend_entries",
    "render_png",
    "to_dot",
    "to_html",
    "to_svg",
    "write_graph",
]

PALETTE = (
    "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
    "#bc80bd", "#ccebc5", "#ffed6f", "#a6cee3", "#b2df8a", "#fb9a99", "#cab2d6", "#fdbf6f",
)  # fmt: skip
FROZEN = "#d9d9d9"
_FOLD = ("parametrizations", "geta_input_quantizer")  # quantizer paths fold into their layer


@dataclass
class Box:
    """One box of the picture."""

    key: str
    label: str
    produces: list[int] = field(default_factory=list)  # group ids whose channels it outputs (dim 0)
    consumes: list[int] = field(default_factory=list)  # group ids it reads on another dim
    ops: list[str] = field(default_factory=list)


@dataclass
class Diagram:
    """Boxes in topological order, edges between them, and the colour of every group."""

    boxes: dict[str, Box]
    edges: list[tuple[str, str]]
    colors: dict[int, str]  # group id -> fill colour (prunable: palette, frozen: grey)
    legend: dict[int, str]  # group id -> one-line description

    def fill(self, box: Box) -> str:
        return self.colors[box.produces[0]] if box.produces else "#ffffff"


def _module_path(node: fx.Node, paths: dict[fx.Node, str]) -> str:
    """The module path of ``node`` with quantizer paths folded into the layer they serve."""
    parts = paths.get(node, "").split(".") if paths.get(node) else []
    for marker in _FOLD:
        if marker in parts:
            parts = parts[: parts.index(marker)]
    return ".".join(parts)


def _containers(nodes: list[fx.Node], paths: dict[fx.Node, str]) -> set[str]:
    """Module paths with a sub-module that runs ops of its own (a block, not a layer)."""
    used = {_module_path(n, paths) for n in nodes if n.op == "call_function"}
    return {p for p in used for q in used if q.startswith(p + ".")} | ({""} if used else set())


def _box_key(node: fx.Node, paths: dict[fx.Node, str], keys: dict[fx.Node, str], containers: set[str]) -> str:
    if node.op == "placeholder":
        return f"input:{node.name}"
    if node.op == "output":
        return "output"
    if node.target is operator.getitem and isinstance(node.args[0], fx.Node):
        return keys[node.args[0]]  # plumbing: part of its producer's box
    path = _module_path(node, paths)
    # an op in the forward of a block (a residual add, an activation) is a box of its own:
    # folded into the block's box it would hide the data flow and draw cycles
    return f"op:{path}:{node.name}" if path in containers else path


def _label(key: str, plan: Plan, ops: list[str]) -> str:
    if key.startswith("input:") or key == "output":
        return key.split(":", 1)[-1]
    if key.startswith("op:"):
        return ", ".join(dict.fromkeys(ops))
    try:
        module = plan.model.get_submodule(key)
    except AttributeError:
        return key
    return f"{key}: {type(module).__name__.removeprefix('Parametrized')}"  # parametrize renames the class


def _op_name(node: fx.Node) -> str:
    name = getattr(node.target, "__name__", str(node.target))
    return name.split(".")[0]


def build_diagram(plan: Plan) -> Diagram:
    """Collapse the plan's captured graph to boxes and colour them by prune group."""
    graph = plan.graph
    keys: dict[fx.Node, str] = {}
    boxes: dict[str, Box] = {}
    edges: dict[tuple[str, str], None] = {}
    users_of: dict[int, set[str]] = {}  # id(tensor) -> boxes that read it
    containers = _containers(list(graph.nodes), graph.module_paths)
    for node in graph.nodes:
        if node in graph.refs:
            continue
        key = keys[node] = _box_key(node, graph.module_paths, keys, containers)
        box = boxes.setdefault(key, Box(key, ""))
        if node.op == "call_function":
            box.ops.append(_op_name(node))
        for arg in node.all_input_nodes:
            if arg in graph.refs:
                users_of.setdefault(id(graph.refs[arg].tensor), set()).add(key)
            elif keys.get(arg, key) != key:
                edges[(keys[arg], key)] = None
    for box in boxes.values():
        box.label = _label(box.key, plan, box.ops)
    colors, legend = _group_colors(plan, boxes, users_of)
    return Diagram(boxes, list(edges), colors, legend)


def _group_colors(
    plan: Plan, boxes: dict[str, Box], users_of: dict[int, set[str]]
) -> tuple[dict[int, str], dict[int, str]]:
    colors: dict[int, str] = {}
    legend: dict[int, str] = {}
    n = 0
    for g in plan.groups:
        if g.prunable:
            colors[g.id], n = PALETTE[n % len(PALETTE)], n + 1
            legend[g.id] = f"g{g.id}: {g.size} {g.unit_name}s, prunable"
        else:
            colors[g.id] = FROZEN
            legend[g.id] = f"g{g.id}: {g.size} {g.unit_name}s, frozen ({g.reason})"
        for s in g.slices:
            for key in sorted(users_of.get(id(s.tensor), ())):
                target = boxes[key].produces if s.dim == 0 else boxes[key].consumes
                if g.id not in target:
                    target.append(g.id)
    for box in boxes.values():  # prefer a prunable group as the fill colour
        box.produces.sort(key=lambda gid: (colors[gid] == FROZEN, gid))
    return colors, legend


def _box_text(d: Diagram, box: Box) -> list[str]:
    lines = [box.label]
    produced = list(dict.fromkeys(box.produces))
    consumed = [i for i in dict.fromkeys(box.consumes) if i not in produced]
    tags = ([f"out {', '.join(f'g{i}' for i in produced)}"] if produced else []) + (
        [f"in {', '.join(f'g{i}' for i in consumed)}"] if consumed else []
    )
    if tags:
        lines.append("; ".join(tags))
    return lines


def legend_entries(d: Diagram) -> list[tuple[str, str]]:
    """(colour, text) rows of the legend: each prunable group, then one row for the frozen ones."""
    rows = [(d.colors[g], text) for g, text in d.legend.items() if d.colors[g] != FROZEN]
    frozen = [g for g in d.legend if d.colors[g] == FROZEN]
    if frozen:
        rows.append((FROZEN, f"frozen (not prunable): {', '.join(f'g{g}' for g in frozen)}"))
    rows.append(("#ffffff", "no group: produces no prunable channels"))
    return rows


def to_dot(d: Diagram) -> str:
    """Graphviz DOT text of the diagram."""
    out = ["digraph geta {", '  rankdir=TB; node [shape=box, style="rounded,filled", fontname="Helvetica"];']
    for i, box in enumerate(d.boxes.values()):
        text = "\\n".join(t.replace('"', "'") for t in _box_text(d, box))
        out.append(f'  n{i} [label="{text}", fillcolor="{d.fill(box)}"];')
    index = {k: i for i, k in enumerate(d.boxes)}
    out += [f"  n{index[a]} -> n{index[b]};" for a, b in d.edges]
    rows = "".join(
        f'<tr><td bgcolor="{color}" width="18" border="1"></td><td align="left">{html.escape(text)}</td></tr>'
        for color, text in legend_entries(d)
    )
    out.append(f'  legend [shape=plaintext, style="", label=<<table border="0" cellspacing="2">'
               f'<tr><td colspan="2"><b>prune groups</b></td></tr>{rows}</table>>];')  # fmt: skip
    out.append("}")
    return "\n".join(out) + "\n"


def _layers(d: Diagram) -> dict[str, int]:
    order = {k: i for i, k in enumerate(d.boxes)}
    layer = dict.fromkeys(d.boxes, 0)
    for a, b in sorted(d.edges, key=lambda e: order[e[1]]):
        if order[a] < order[b]:  # forward edges only: a collapsed module may close a cycle
            layer[b] = max(layer[b], layer[a] + 1)
    return layer


def _positions(d: Diagram) -> tuple[dict[str, tuple[float, float, float]], float, float]:
    """Box key -> (centre x, top y, width); and the canvas width and height."""
    layer = _layers(d)
    rows: dict[int, list[str]] = {}
    for key in d.boxes:
        rows.setdefault(layer[key], []).append(key)
    preds: dict[str, list[str]] = {}
    for a, b in d.edges:
        preds.setdefault(b, []).append(a)
    pos: dict[str, tuple[float, float, float]] = {}
    width = 0.0
    for r in sorted(rows):
        keys = sorted(
            rows[r],
            key=lambda k: (
                sum(pos[p][0] for p in preds.get(k, []) if p in pos)
                / max(1, sum(p in pos for p in preds.get(k, [])))
            ),
        )
        widths = [max(len(t) for t in _box_text(d, d.boxes[k])) * 6.6 + 20 for k in keys]
        x = 20.0
        for k, w in zip(keys, widths):
            pos[k] = (x + w / 2, 20 + r * 70.0, w)
            x += w + 24
        width = max(width, x)
    return pos, width, 20 + (max(rows) + 1) * 70.0


def to_svg(d: Diagram) -> str:
    """A self-made layered SVG rendering of the diagram (no Graphviz needed)."""
    pos, width, height = _positions(d)
    total_width = width + _legend_width(d)
    height = max(height, 40 + 20 * (len(legend_entries(d)) + 1))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_width:.0f}" height="{height:.0f}" '
           'font-family="Helvetica, Arial, sans-serif" font-size="11">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" '
           'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>']  # fmt: skip
    for a, b in d.edges:
        (xa, ya, _), (xb, yb, _) = pos[a], pos[b]
        y0, y1 = ya + 40, yb
        mid = (y0 + y1) / 2 if y1 > y0 else y0 + 30
        out.append(
            f'<path d="M{xa:.1f},{y0:.1f} C{xa:.1f},{mid:.1f} {xb:.1f},{mid:.1f} {xb:.1f},{y1:.1f}" '
            'fill="none" stroke="#555" stroke-width="1" marker-end="url(#arrow)"/>'
        )
    for key, box in d.boxes.items():
        x, y, w = pos[key]
        out.append(
            f"<g><title>{html.escape(', '.join(box.ops) or box.label)}</title>"
            f'<rect x="{x - w / 2:.1f}" y="{y:.1f}" width="{w:.1f}" height="40" rx="6" '
            f'fill="{d.fill(box)}" stroke="#333"/>'
        )
        for i, text in enumerate(_box_text(d, box)):
            out.append(
                f'<text x="{x:.1f}" y="{y + 16 + 14 * i:.1f}" text-anchor="middle">{html.escape(text)}</text>'
            )
        out.append("</g>")
    out += _svg_legend(d, x=width + 10, y=20)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _svg_legend(d: Diagram, *, x: float, y: float) -> list[str]:
    """The colour legend as SVG elements, in a column starting at (x, y)."""
    out = [f'<text x="{x:.0f}" y="{y + 12:.0f}" font-weight="bold">prune groups</text>']
    for i, (color, text) in enumerate(legend_entries(d), start=1):
        top = y + 6 + 20 * i
        out.append(f'<rect x="{x:.0f}" y="{top:.0f}" width="14" height="14" fill="{color}" stroke="#333"/>')
        out.append(f'<text x="{x + 20:.0f}" y="{top + 11:.0f}">{html.escape(text)}</text>')
    return out


def _legend_width(d: Diagram) -> float:
    return 40 + 6.6 * max(len(text) for _, text in legend_entries(d))


def to_html(d: Diagram, summary: str) -> str:
    """A page with the SVG, a colour legend of the groups and the plan summary."""
    rows = "\n".join(
        f'<tr><td style="background:{d.colors[g]};width:2em"></td><td>{html.escape(t)}</td></tr>'
        for g, t in d.legend.items()
    )
    return (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>geta inspect</title></head>"
        f"<body style='font-family:Helvetica,Arial,sans-serif'>\n<h1>geta inspect</h1>\n{to_svg(d)}"
        f"<h2>Groups</h2>\n<table>{rows}</table>\n<h2>Summary</h2>\n<pre>{html.escape(summary)}</pre>\n"
        "</body></html>\n"
    )


def write_graph(plan: Plan, path: Path) -> None:
    """Write the picture of ``plan``: DOT (.dot/.gv), SVG (.svg), HTML (.html/.htm) or PNG (.png).

    PNG is rendered by Graphviz's ``dot`` program; without it `GraphvizMissing` is raised.
    """
    d = build_diagram(plan)
    suffix = path.suffix.lower()
    if suffix == ".png":
        render_png(to_dot(d), path)
        return
    if suffix in (".dot", ".gv"):
        text = to_dot(d)
    elif suffix == ".svg":
        text = to_svg(d)
    else:
        text = to_html(d, plan.summary())
    path.write_text(text, encoding="utf-8")


class GraphvizMissing(GetaError):
    """Graphviz's ``dot`` is not on PATH (needed for PNG pictures only)."""


def render_png(dot_text: str, path: Path) -> None:
    """Render DOT text to a PNG file with Graphviz's ``dot``."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing(
            f"--graph {path}: a PNG is drawn by Graphviz's dot program, which is not installed (or not "
            "on PATH); install graphviz (apt-get install graphviz, brew install graphviz, conda install "
            "graphviz) or write .svg or .html, which need nothing"
        )
    try:
        subprocess.run([exe, "-Tpng", "-o", str(path)], input=dot_text.encode(), check=True,
                       capture_output=True, timeout=300)  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = exc.stderr.decode(errors="replace").strip().splitlines()[:1] if exc.stderr else []
        raise GetaError(f"--graph {path}: Graphviz's dot failed ({'; '.join(detail) or exc})") from None
