"""``Graph`` as a rich tree for the terminal: outputs at the root, each node's inputs below it.

The walk is iterative (deep chains are fine). A node reached a second time is shown as a one-line
reference ``(see above)``; past ``MAX_LINES`` lines the tree stops with ``… N more nodes``. Below
``MAX_DEPTH`` levels a chain continues at the same indentation, marked ``↳`` (input of the line
above), so that deep graphs stay readable at 100 columns.
"""

from __future__ import annotations

from io import StringIO
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from .dot import shape_text

if TYPE_CHECKING:
    from ..graph import Graph, Node

__all__ = ["MAX_DEPTH", "MAX_LINES", "to_text", "to_tree"]

#: Nodes shown before the tree is cut.
MAX_LINES = 200

#: Nesting levels before chains continue flat.
MAX_DEPTH = 12

_TAG_STYLES = {
    "error": "bold red",
    "stray": "bold red",
    "freed": "bold red",
    "leak": "bold dark_orange",
    "pass-through": "bold dark_orange",
    "focus": "bold dark_orange",
    "crossing": "bold magenta",
}


def _shape(shape: tuple[int, ...] | None) -> str:
    return shape_text(shape, unknown="")


def _node_text(node: Node, highlights: dict[int, list[tuple[str, str]]], flat: bool) -> Text:
    text = Text()
    if flat:
        text.append("↳ ", style="dim")
    if node.kind == "param":
        text.append(node.name or "parameter", style="bold green")
        text.append(f" {_shape(node.shape)}", style="dim")
        text.append(" param", style="green")
    elif node.kind == "input":
        text.append(node.name or "input", style="bold blue")
        text.append(f" {_shape(node.shape)}", style="dim")
        text.append(" input", style="blue")
    else:
        text.append(node.op, style="bold")
        if node.kind == "custom":
            text.append(" custom Function", style="magenta")
        elif node.kind == "compiled":
            text.append(" compiled", style="yellow")
        if node.shape is not None:
            text.append(f" → {_shape(node.shape)}", style="dim")
        if node.module:
            text.append(f" [{node.module}]", style="cyan")
        if node.saved:
            parts = []
            for s in node.saved[:3]:
                if s.freed:
                    parts.append(f"{s.name} freed")
                elif s.param:
                    parts.append(f"{s.name}={s.param}")
                else:
                    parts.append(f"{s.name} {_shape(s.shape)}")
            more = len(node.saved) - 3
            text.append("  saved: " + ", ".join(parts) + (f" +{more}" if more > 0 else ""), style="dim")
    if node.freed:
        text.append("  buffers freed", style="bold grey50")
    for tag, label in highlights.get(node.id, ()):
        text.append(f"  ⚠ {tag}" + (f": {label}" if label else ""), style=_TAG_STYLES.get(tag, "bold red"))
    return text


def to_tree(graph: Graph) -> Tree:
    """A ``rich.tree.Tree``: one branch per output, under it the inputs of each node in turn."""
    title = graph.title or "autograd graph"
    root = Tree(Text.assemble((title, "bold"), (f"  {len(graph)} nodes", "dim")))
    highlights: dict[int, list[tuple[str, str]]] = {}
    for h in graph.highlights:
        if h.node is not None:
            highlights.setdefault(h.node, []).append((h.tag, h.label))
        if h.edge is not None:
            highlights.setdefault(h.edge[1], []).append((h.tag, h.label or f"from node {h.edge[0]}"))
    seen: set[int] = set()
    lines = 0
    cut = False
    for out in graph.outputs:
        branch = root.add(
            Text.assemble(
                (out.name, "bold green4"), (f" {_shape(out.shape)} {out.dtype}", "dim"), (" output", "green4")
            )
        )
        lines += 1
        if out.node is None:
            continue
        # (node id, parent tree, depth, flat)
        stack: list[tuple[int, Tree, int, bool]] = [(out.node, branch, 1, False)]
        while stack:
            nid, parent, depth, flat = stack.pop()
            if lines >= MAX_LINES:
                cut = True
                break
            node = graph.nodes[nid]
            lines += 1
            if nid in seen:
                ref = _node_text(node, {}, flat)
                ref.append(" (see above)", style="dim italic")
                parent.add(ref)
                continue
            seen.add(nid)
            inputs = graph.inputs_of(nid)
            if depth >= MAX_DEPTH and len(inputs) == 1:
                parent.add(_node_text(node, highlights, flat))
                stack.append((inputs[0], parent, depth, True))
                continue
            child = parent.add(_node_text(node, highlights, flat))
            for src in reversed(inputs):
                stack.append((src, child, depth + 1, False))
        if cut:
            break
    if cut:
        more = len(graph) - len(seen)
        root.add(Text(f"… {more} more node{'s' if more != 1 else ''}", style="dim"))
    return root


def to_text(graph: Graph, *, width: int = 100) -> str:
    """The tree of :func:`to_tree` as plain text, ``width`` columns wide."""
    buf = StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False, legacy_windows=False)
    console.print(to_tree(graph))
    return buf.getvalue()
