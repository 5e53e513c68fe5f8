"""The Function graph a forward records, as Graphviz dot text or a PNG drawn with Pillow.

Nodes are the leaves (named inputs) and the Functions; an edge goes from each input of
a Function to it, the way the forward ran (the backward walks the same edges in reverse).
Each Function sits one row below the lowest of its inputs, so the picture reads top-down
like the forward.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..autograd import Tensor
from ..checkpoint import atomic_write_bytes
from ..gradcheck import _recorded_functions
from ..viz import save_png


@dataclass(frozen=True)
class Node:
    key: int  # id() of the Function or leaf tensor
    label: str  # a Function's class name or a leaf's name
    detail: str  # the shape it outputs
    row: int  # 0 for leaves; one more than the lowest input for a Function
    is_leaf: bool


def function_graph(outputs: list[Tensor], leaf_names: dict[int, str]) -> tuple[list[Node], list]:
    """(nodes, edges (from key, to key)) of the graph behind `outputs`. `leaf_names` maps
    id(leaf tensor) to a name; other leaves (constants, ids) are left out."""
    nodes: dict[int, Node] = {}
    edges = []
    for function in _recorded_functions(outputs):  # inputs' creators come first
        rows = []
        for t in function.inputs:
            if t.creator is not None:
                source = id(t.creator)
            elif id(t) in leaf_names:
                source = id(t)
                nodes.setdefault(source, Node(source, leaf_names[id(t)], _shape(t.shape), 0, True))
            else:
                continue
            rows.append(nodes[source].row)
            edges.append((source, id(function)))
        shape = _shape(function.output_specs[0][0])
        nodes[id(function)] = Node(id(function), function.name, shape, max(rows, default=0) + 1,
                                   False)  # fmt: skip
    return list(nodes.values()), edges


def _shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def to_dot(nodes: list[Node], edges: list) -> str:
    number = {n.key: i for i, n in enumerate(nodes)}
    lines = ["digraph forward {", "  rankdir=TB;", '  node [fontname="Helvetica"];']
    for n in nodes:
        style = "shape=ellipse" if n.is_leaf else "shape=box, style=rounded"
        lines.append(f'  n{number[n.key]} [{style}, label="{n.label}\\n{n.detail}"];')
    lines += [f"  n{number[a]} -> n{number[b]};" for a, b in edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 150, 40, 20, 36, 20


def draw(nodes: list[Node], edges: list) -> Image.Image:
    """Rows top-down: leaves first, each Function below its inputs."""
    rows: dict[int, list[Node]] = {}
    for n in nodes:
        rows.setdefault(n.row, []).append(n)
    widest = max(len(r) for r in rows.values())
    width = 2 * MARGIN + widest * BOX_W + (widest - 1) * GAP_X
    height = 2 * MARGIN + len(rows) * BOX_H + (len(rows) - 1) * GAP_Y
    image = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    centre = {}
    for row, members in sorted(rows.items()):
        span = len(members) * BOX_W + (len(members) - 1) * GAP_X
        left = (width - span) // 2
        top = MARGIN + row * (BOX_H + GAP_Y)
        for i, n in enumerate(members):
            x = left + i * (BOX_W + GAP_X)
            centre[n.key] = (x + BOX_W // 2, top, top + BOX_H)
            box = (x, top, x + BOX_W, top + BOX_H)
            if n.is_leaf:
                pen.ellipse(box, outline="black", fill="#e8f0ff")
            else:
                pen.rounded_rectangle(box, radius=8, outline="black", fill="#fff4dc")
            for j, text in enumerate((n.label, n.detail)):
                pen.text((x + BOX_W // 2, top + 12 + 16 * j), text, fill="black", font=font,
                         anchor="mm")  # fmt: skip
    for a, b in edges:
        (xa, _, bottom), (xb, top, _) = centre[a], centre[b]
        pen.line((xa, bottom, xb, top), fill="#555555", width=1)
        pen.polygon([(xb, top), (xb - 4, top - 8), (xb + 4, top - 8)], fill="#555555")
    return image


def write_graph(outputs: list[Tensor], leaf_names: dict[int, str], path: str | os.PathLike) -> Path:
    """Write the graph as dot text (a .dot or .gv path) or a PNG (any other), atomically."""
    path = Path(path)
    nodes, edges = function_graph(outputs, leaf_names)
    if path.suffix in (".dot", ".gv"):
        atomic_write_bytes(path, to_dot(nodes, edges).encode())
        return path
    return save_png(draw(nodes, edges), path)
