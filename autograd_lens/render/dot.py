"""``Graph`` to Graphviz DOT text, and DOT to SVG/PNG/PDF through the ``dot`` program.

What reaches ``dot`` is decided first, from the graph's size, by :mod:`.layout`: repeated
structure folded (one instance drawn, with its count), modules as nested clusters
(``netD.main: Sequential``) and, when that is still too large, collapsed to boxes at the deepest
depth that fits, and at last a cut. The DOT text is built by plain string joins (a 20,000-node
graph takes milliseconds); layout is what costs.

Highlighted nodes are never absorbed into a fold or a box: they stay visible in red or orange.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LensError
from .layout import BUDGET, Box, Plan, clusters_of, describe_module, plan

if TYPE_CHECKING:
    from ..graph import Graph, Highlight, Node

__all__ = ["DEFAULTS", "FORMATS", "render", "save", "to_dot"]

#: Render options and their defaults. ``Graph.options`` overrides these; explicit keywords win.
DEFAULTS: dict[str, Any] = {
    "max_nodes": 2000,
    "collapse": "auto",
    "fold": None,
    "depth": None,
    "show_saved": True,
    "legend": True,
    "rankdir": "TB",
    "timeout": 60.0,
    "budget": None,  # layout cost allowed (None: layout.BUDGET)
    "open": (),  # folds and modules drawn open: "fold:<node id>", "module:<name>"
    "ids": None,  # a prefix: SVG ids on boxes, edges and clusters
}

COLLAPSE_MODES = ("auto", "module", "fold", "none")
RANKDIRS = ("TB", "LR", "BT", "RL")

#: File extension -> output format.
FORMATS: dict[str, str] = {
    ".svg": "svg",
    ".png": "png",
    ".pdf": "pdf",
    ".dot": "dot",
    ".gv": "dot",
    ".json": "json",
}

#: Above this layout cost (see :func:`.layout.layout_cost`), network simplex is cut short
#: (``nslimit``): a wider drawing, but seconds instead of minutes.
NSLIMIT_ABOVE = 1000

#: Above this many ranks crossed by long edges (a weight shared by many steps that are not
#: folded), edges are drawn straight: spline routing around thousands of hidden nodes takes
#: seconds where straight lines take milliseconds.
STRAIGHT_ABOVE = 800

#: Saved tensors listed per op node before "+N more".
MAX_SAVED_LINES = 6

FONT = "Helvetica"
MONO = "Courier"

# (fill, border) pairs for top-level modules.
PALETTE: tuple[tuple[str, str], ...] = (
    ("#dbeafe", "#1d4ed8"),  # blue
    ("#fae8ff", "#a21caf"),  # fuchsia
    ("#dcfce7", "#15803d"),  # green
    ("#fef9c3", "#a16207"),  # amber
    ("#cffafe", "#0e7490"),  # cyan
    ("#e0e7ff", "#4338ca"),  # indigo
    ("#ecfccb", "#4d7c0f"),  # lime
    ("#fce7f3", "#be185d"),  # pink
    ("#e7e5e4", "#57534e"),  # stone
    ("#ccfbf1", "#0f766e"),  # teal
)

RED = "#dc2626"
ORANGE = "#ea580c"
GREY = "#9ca3af"
VIOLET = "#7c3aed"
HIGHLIGHT_COLOURS: dict[str, str] = {
    "error": RED,
    "stray": RED,
    "freed": RED,
    "leak": ORANGE,
    "pass-through": ORANGE,
    "focus": ORANGE,
    "crossing": VIOLET,
}

OP_FILL, OP_BORDER = "#f8fafc", "#475569"
INPUT_FILL, INPUT_BORDER = "#f1f5f9", "#0f172a"
OUTPUT_FILL, OUTPUT_BORDER = "#d1fae5", "#065f46"
CUSTOM_FILL, CUSTOM_BORDER = "#ede9fe", "#6d28d9"
COMPILED_FILL, COMPILED_BORDER = "#fef3c7", "#b45309"
FOLD_FILL, FOLD_BORDER = "#f1f5f9", "#334155"
NOTE_FILL, NOTE_BORDER = "#fffbeb", "#92400e"
FREED_FILL = "#f9fafb"


# ----------------------------------------------------------------------------------------------
# Small text helpers
# ----------------------------------------------------------------------------------------------


def _esc(text: object) -> str:
    """Text made safe inside an HTML-like label."""
    return html.escape(str(text), quote=True)


def _q(text: object) -> str:
    """A double-quoted DOT string."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def shape_text(shape: tuple[int, ...] | None, unknown: str = "?") -> str:
    """``(3,)``, ``(16, 8)``, ``scalar``, or ``unknown`` when the shape is not known."""
    if shape is None:
        return unknown
    if not shape:
        return "scalar"
    if len(shape) == 1:
        return f"({shape[0]},)"
    return "(" + ", ".join(str(d) for d in shape) + ")"


def fmt_bytes(n: int) -> str:
    """``1536 -> '1.5 KB'``."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _small(text: str, colour: str = "#475569", face: str = MONO) -> str:
    return f'<FONT POINT-SIZE="9" FACE="{face}" COLOR="{colour}">{text}</FONT>'


def _top(module: str | None) -> str | None:
    if not module:
        return None
    return module.split(".", 1)[0]


def module_colours(names: set[str]) -> dict[str, tuple[str, str]]:
    """A palette entry per top-level module name, given in sorted order of the names.

    The same set of networks (``netD`` and ``netG``) gets the same colours in every drawing, and
    the first colours of the palette are far apart.
    """
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(names))}


# ----------------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------------


def resolve_options(graph: Graph, options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults, then ``graph.options``, then the explicit ``options`` (``None`` means unset)."""
    opts = dict(DEFAULTS)
    for source in (getattr(graph, "options", None) or {}, options):
        for key, value in source.items():
            if value is not None:
                opts[key] = value
    if opts["collapse"] not in COLLAPSE_MODES:
        raise LensError(
            f"collapse={opts['collapse']!r} is not a collapse mode; use one of {', '.join(COLLAPSE_MODES)}"
        )
    if opts["rankdir"] not in RANKDIRS:
        raise LensError(f"rankdir={opts['rankdir']!r} is not a direction; use one of {', '.join(RANKDIRS)}")
    try:
        opts["max_nodes"] = int(opts["max_nodes"])
    except (TypeError, ValueError):
        raise LensError(f"max_nodes must be a positive integer; got {opts['max_nodes']!r}") from None
    if opts["max_nodes"] < 1:
        raise LensError(f"max_nodes must be a positive integer; got {opts['max_nodes']!r}")
    if opts["depth"] is not None and (not isinstance(opts["depth"], int) or opts["depth"] < 1):
        raise LensError(f"depth must be a positive integer; got {opts['depth']!r}")
    return opts


# ----------------------------------------------------------------------------------------------
# DOT text
# ----------------------------------------------------------------------------------------------


#: Highlight tags, most severe first: the first one of a box or edge gives its colour.
SEVERITY_ORDER = ("error", "stray", "freed", "leak", "pass-through", "focus", "crossing")


def _by_severity(hls: list[Highlight]) -> list[Highlight]:
    """``hls`` most severe first; a crossing is dropped where a leak marks the same edge."""
    rank = {t: i for i, t in enumerate(SEVERITY_ORDER)}
    out = sorted(hls, key=lambda h: rank.get(h.tag, 0))
    if any(h.tag == "leak" for h in out):
        out = [h for h in out if h.tag != "crossing"] or out
    return out


def hl_text(h: Highlight) -> str:
    """``⚠ stray: stepped by ...``; a crossing reads as its label (``fake: netG → netD``)."""
    if h.tag == "crossing":
        return h.label or "enters another network"
    return f"⚠ {h.tag}" + (f": {h.label}" if h.label else "")


def _hl_lines(hls: list[Highlight]) -> str:
    out = []
    seen: set[tuple[str, str]] = set()
    for h in _by_severity(hls):
        if (h.tag, h.label) in seen:
            continue
        seen.add((h.tag, h.label))
        colour = HIGHLIGHT_COLOURS.get(h.tag, RED)
        text = hl_text(h)
        out.append(f'<BR/><FONT POINT-SIZE="10" COLOR="{colour}"><B>{_esc(text)}</B></FONT>')
    return "".join(out)


def _hl_attrs(hls: list[Highlight]) -> str:
    colour = HIGHLIGHT_COLOURS.get(_by_severity(hls)[0].tag, RED)
    return f' color="{colour}" penwidth=3'


def _saved_lines(node: Node) -> str:
    lines = []
    freed = [s.name for s in node.saved if s.freed]
    for s in [s for s in node.saved if not s.freed][:MAX_SAVED_LINES]:
        text = f"{_esc(s.name)} {_esc(shape_text(s.shape))}"
        if s.param:
            text += f" = <B>{_esc(s.param)}</B>"
        lines.append("<BR/>" + _small(text))
    extra = len(node.saved) - len(freed) - MAX_SAVED_LINES
    if extra > 0:
        lines.append("<BR/>" + _small(f"+{extra} more saved"))
    if freed:
        names = ", ".join(freed[:MAX_SAVED_LINES]) + (", …" if len(freed) > MAX_SAVED_LINES else "")
        lines.append("<BR/>" + _small(f"saved, freed: {_esc(names)}", "#6b7280"))
    return "".join(lines)


class _Emitter:
    """Builds DOT statements for nodes, groups, outputs and edges, and records what it used."""

    def __init__(self, graph: Graph, opts: Mapping[str, Any]) -> None:
        self.graph = graph
        self.show_saved = bool(opts["show_saved"])
        self.types = graph.module_types
        self.ids: str | None = opts.get("ids")
        tops = {t for t in (_top(n.module) for n in graph.nodes) if t}
        tops.update(t for t in (_top(n.name) for n in graph.nodes if n.kind == "param") if t)
        self.colours = module_colours(tops)
        self.used: dict[str, Any] = {}
        self._cache: dict[tuple[Any, ...], str] = {}
        self.node_hl: dict[int, list[Highlight]] = {}
        self.edge_hl: dict[tuple[int, int], list[Highlight]] = {}
        for h in graph.highlights:
            if h.edge is not None:
                self.edge_hl.setdefault((int(h.edge[0]), int(h.edge[1])), []).append(h)
            elif h.node is not None and 0 <= h.node < len(graph.nodes):
                self.node_hl.setdefault(h.node, []).append(h)

    def _colour_of(self, module: str | None, name: str | None = None) -> tuple[str, str] | None:
        top = _top(module) or _top(name)
        return self.colours.get(top) if top else None

    def node(self, n: Node, extra_hl: list[Highlight] | None = None, alias: tuple[str, int] | None = None) -> str:
        """The statement for one node. Nodes that look alike (most of a deep net) share the text
        after their id, so it is built once. ``alias``: the name and count of the nodes it stands
        for in a fold (``net.#.0.weight``, 300)."""
        hls = self.node_hl.get(n.id, [])
        if extra_hl:
            hls = hls + extra_hl
        if alias is not None:
            n = n._replace(name=alias[0])
        if hls or alias is not None:
            attrs = self._node_attrs(n, hls, alias[1] if alias else 0)
        else:
            key = (n.kind, n.op, n.name, n.module, n.shape, n.saved, n.freed, n.ctx_tensors)
            attrs = self._cache.get(key)
            if attrs is None:
                attrs = self._cache[key] = self._node_attrs(n, hls)
        if self.ids is not None:
            attrs = f'[id="{self.ids}n{n.id}" class="lens-node" ' + attrs[1:]
        return f"n{n.id} {attrs}"

    def cluster_attrs(self, name: str, p: Plan) -> str:
        """The attributes of a cluster: a module (``name: Type``) or the frame of a fold."""
        fold = p.folds.get(name)
        if fold is not None:
            self.used["fold"] = True
            n_nodes = sum(len(i) for i in fold.instances)
            sub = f"{n_nodes} nodes; one of the {fold.count} drawn, what enters and leaves it at its edges"
            label = f"<B>{_esc(fold.label)}</B><BR/>{_small(_esc(sub), '#334155', FONT)}"
            ident = self._id("c-" + fold.key, "lens-fold") if self.ids is not None else ""
            return (
                f'graph [label=<{label}> style="rounded,dashed,filled" fillcolor="#f8fafc" color="{FOLD_BORDER}" '
                f"penwidth=1.6 fontsize=11 tooltip={_q(fold.ident)}{ident}]"
            )
        module = name.split("/", 1)[-1]
        self.used["cluster"] = True
        desc = describe_module(module, self.types) if "/" not in name else self.types.get(module, "")
        label = f"<B>{_esc(module)}</B>" + (f": {_esc(desc)}" if desc else "")
        fill, border = self._colour_of(module) or (FOLD_FILL, FOLD_BORDER)
        return (
            f'graph [label=<{label}> style="rounded" color="{border}" fontsize=10 '
            f"tooltip={_q('module:' + module)}]"
        )

    def _node_attrs(self, n: Node, hls: list[Highlight], stands_for: int = 0) -> str:
        kind = n.kind
        used = self.used
        style = "filled"
        shape_attr = "box"
        extra = ""
        if kind == "param":
            colours = self._colour_of(n.module, n.name) or PALETTE[-2]
            fill, border = colours
            top = _top(n.module) or _top(n.name) or "?"
            used.setdefault("params", {})[top] = colours
            label = f"<B>{_esc(n.name or 'parameter')}</B><BR/>{_small(_esc(shape_text(n.shape)))}"
            if stands_for:
                label += "<BR/>" + _small(f"one of {stands_for}, one per instance", "#334155", FONT)
        elif kind == "input":
            fill, border = INPUT_FILL, INPUT_BORDER
            used["input"] = True
            shape_attr = "invhouse"
            label = f"<B>{_esc(n.name or 'input')}</B><BR/>{_small(_esc(shape_text(n.shape)))}"
        else:
            if kind == "custom":
                fill, border = CUSTOM_FILL, CUSTOM_BORDER
                used["custom"] = True
                head = f'{_small("custom Function", CUSTOM_BORDER, FONT)}<BR/><B>{_esc(n.op)}</B>'
                style = "filled,bold"
            elif kind == "compiled":
                fill, border = COMPILED_FILL, COMPILED_BORDER
                used["compiled"] = True
                head = f'{_small("compiled region", COMPILED_BORDER, FONT)}<BR/><B>{_esc(n.op)}</B>'
                style = "filled,bold"
                shape_attr = "box3d"
            else:
                fill, border = OP_FILL, OP_BORDER
                used["op"] = True
                head = f"<B>{_esc(n.op)}</B>"
                style = "rounded,filled"
            label = head
            if n.shape is not None:
                label += "<BR/>" + _small("→ " + _esc(shape_text(n.shape)), "#64748b")
            if self.show_saved and n.saved:
                label += _saved_lines(n)
            if n.ctx_tensors:
                label += "<BR/>" + _small("on ctx: " + _esc(", ".join(n.ctx_tensors)), RED)
        if n.freed:
            used["freed"] = True
            style += ",dashed"
            border = GREY
            fill = FREED_FILL
            label += "<BR/>" + _small("buffers freed", "#6b7280", FONT)
            extra += ' fontcolor="#6b7280"'
        if hls:
            for h in hls:
                used.setdefault("highlights", {})[h.tag] = True
            label += _hl_lines(hls)
            extra += _hl_attrs(hls)
        else:
            extra += f' color="{border}"'
        tooltip = n.module or n.name or n.op
        return (
            f'[shape={shape_attr} style="{style}" fillcolor="{fill}"{extra} '
            f"tooltip={_q(tooltip)} label=<{label}>]"
        )

    def box(self, key: str, box: Box, hls: list[Highlight]) -> str:
        """A collapsed module: its name and type, what it holds."""
        nodes = self.graph.nodes
        members = [nodes[i] for i in box.members]
        self.used["module"] = True
        ops = sum(1 for m in members if m.kind not in ("param", "input"))
        params = sorted({m.name or "?" for m in members if m.kind == "param"})
        saved = sum(m.saved_bytes for m in members)
        freed = sum(1 for m in members if m.freed)
        fill, border = self._colour_of(box.module) or (FOLD_FILL, FOLD_BORDER)
        desc = describe_module(box.module, self.types)
        label = f"<B>{_esc(box.module)}</B>" + (f": {_esc(desc)}" if desc else "")
        label += "<BR/>" + _small(
            f"{ops} op{'s' if ops != 1 else ''} · {len(params)} param{'s' if len(params) != 1 else ''}", "#334155", FONT
        )
        if params and len(params) <= 4:
            shapes = {m.name: m.shape for m in members if m.kind == "param"}
            for name in params:
                label += "<BR/>" + _small(f"{_esc(name.rsplit('.', 1)[-1])} {_esc(shape_text(shapes.get(name)))}")
        style = "filled"
        if saved:
            label += "<BR/>" + _small(f"saved {fmt_bytes(saved)}", "#334155", FONT)
        if freed:
            self.used["freed"] = True
            style += ",dashed"
            label += "<BR/>" + _small(f"{freed} with buffers freed", "#6b7280", FONT)
        if hls:
            label += self._hl_used(hls)
            extra = _hl_attrs(hls)
        else:
            extra = f' color="{border}"'
        return (
            f'{key} [shape=box3d style="{style}" fillcolor="{fill}"{extra}{self._id(key, "lens-box")} '
            f"tooltip={_q(box.module + ' (collapsed: select to open)')} label=<{label}>]"
        )

    def _hl_used(self, hls: list[Highlight]) -> str:
        for h in hls:
            self.used.setdefault("highlights", {})[h.tag] = True
        return _hl_lines(hls)

    def _id(self, key: str, cls: str = "") -> str:
        if self.ids is None:
            return ""
        return f' id="{self.ids}{key}"' + (f' class="{cls}"' if cls else "")

    def legend(self) -> str:
        used = self.used
        rows: list[tuple[str, str, str]] = []  # (fill, border, text)
        for top, (fill, border) in sorted(used.get("params", {}).items()):
            rows.append((fill, border, f"parameter of {top}"))
        if used.get("input"):
            rows.append((INPUT_FILL, INPUT_BORDER, "input (leaf that requires grad)"))
        if used.get("op"):
            rows.append((OP_FILL, OP_BORDER, "autograd op (saved tensors listed)"))
        if used.get("custom"):
            rows.append((CUSTOM_FILL, CUSTOM_BORDER, "custom autograd.Function"))
        if used.get("compiled"):
            rows.append((COMPILED_FILL, COMPILED_BORDER, "torch.compile region"))
        if used.get("module"):
            rows.append(("#ffffff", FOLD_BORDER, "module (collapsed)"))
        if used.get("fold"):
            rows.append(("#f8fafc", FOLD_BORDER, "repeated block (folded: one instance drawn)"))
        if used.get("carried"):
            rows.append(("#ffffff", FOLD_BORDER, "dashed edge: handed to the next instance"))
        if used.get("output"):
            rows.append((OUTPUT_FILL, OUTPUT_BORDER, "output"))
        if used.get("freed"):
            rows.append((FREED_FILL, GREY, "buffers freed by a backward (dashed)"))
        for tag in used.get("highlights", {}):
            colour = HIGHLIGHT_COLOURS.get(tag, RED)
            text = "where one network's output enters another" if tag == "crossing" else f"⚠ {tag}"
            rows.append(("#ffffff", colour, text))
        if used.get("more"):
            rows.append((NOTE_FILL, NOTE_BORDER, "nodes not shown"))
        if not rows:
            return ""
        cells = "".join(
            f'<TR><TD BGCOLOR="{fill}" COLOR="{border}" BORDER="2" WIDTH="18" HEIGHT="12"></TD>'
            f'<TD ALIGN="LEFT"><FONT POINT-SIZE="10">{_esc(text)}</FONT></TD></TR>'
            for fill, border, text in rows
        )
        table = f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="3" CELLPADDING="2">{cells}</TABLE>'
        return (
            'subgraph cluster_legend {\n  label=<<B>legend</B>> fontsize=11 style="rounded" color="#cbd5e1"\n'
            f"  legend [shape=plaintext label=<{table}>]\n}}"
        )


def to_dot(
    graph: Graph,
    *,
    max_nodes: int | None = None,
    collapse: str | None = None,
    depth: int | None = None,
    show_saved: bool | None = None,
    legend: bool | None = None,
    rankdir: str | None = None,
    **options: Any,
) -> str:
    """DOT text for ``graph``.

    Args:
        graph: the graph to draw.
        max_nodes: most boxes handed to ``dot`` (default 2000).
        collapse: ``"auto"`` (default: fold, then collapse modules, only as far as needed to fit),
            ``"fold"`` (always fold repeated structure), ``"module"`` (one box per module at
            ``depth``) or ``"none"`` (neither: what does not fit is cut).
        depth: module depth for ``collapse="module"`` (default: the deepest that fits).
        show_saved: list saved tensors on op nodes (default True).
        legend: add a legend of what the drawing uses (default True).
        rankdir: ``"TB"`` (default: inputs on top, outputs below) or ``"LR"``, ``"BT"``, ``"RL"``.
        options: ``fold`` (True: always fold repeated structure; False: never), ``budget`` (layout
            cost allowed, see :mod:`autograd_lens.render.layout`), ``open`` (folds and modules to
            draw open: ``"fold:<node id>"``, ``"module:<name>"``), ``ids`` (a prefix: give every
            box, edge and cluster an SVG id), ``timeout`` (ignored here); defaults come from
            ``graph.options``.

    Returns:
        the DOT source, edges running ``producer -> consumer`` as in ``graph.edges``.
    """
    explicit = dict(options)
    for key, value in (
        ("max_nodes", max_nodes),
        ("collapse", collapse),
        ("depth", depth),
        ("show_saved", show_saved),
        ("legend", legend),
        ("rankdir", rankdir),
    ):
        if value is not None:
            explicit[key] = value
    return build(graph, resolve_options(graph, explicit))[0]


def build(graph: Graph, opts: Mapping[str, Any]) -> tuple[str, Plan]:
    """The DOT source for ``graph`` under resolved options, and the plan it draws."""
    p = plan(graph, opts)
    if opts.get("note"):
        p.notes.append(str(opts["note"]))
    em = _Emitter(graph, opts)
    item = p.item
    nodes = graph.nodes
    n_nodes = len(nodes)

    # highlights of nodes drawn by another box, or of edges inside one box, attach to that box
    item_hl: dict[str, list[Highlight]] = {}
    for nid, hls in em.node_hl.items():
        key = item[nid]
        if key is not None and key != f"n{nid}":
            item_hl.setdefault(key, []).extend(hls)
    edge_count: dict[tuple[str, str], int] = {}
    for a, b in graph.edges:
        ka, kb = item[a], item[b]
        if ka is None:
            if kb is None:
                continue
            ka = "more"
        elif kb is None or ka == kb:
            continue
        edge_count[(ka, kb)] = edge_count.get((ka, kb), 0) + 1
    edge_hl: dict[tuple[str, str], list[Highlight]] = {}
    for (a, b), hls in em.edge_hl.items():
        if not (0 <= a < n_nodes and 0 <= b < n_nodes):
            continue
        ka, kb = item[a], item[b]
        if ka is None or kb is None:
            continue
        if ka == kb:
            item_hl.setdefault(ka, []).extend(hls)
        else:
            edge_hl.setdefault((ka, kb), []).extend(hls)
            edge_count.setdefault((ka, kb), 1)

    # statements per cluster path
    by_cluster: dict[tuple[str, ...], list[str]] = {}
    keys = p.keys()
    for key in keys:
        if key[0] == "n":
            nid = int(key[1:])
            stmt = em.node(nodes[nid], item_hl.get(key), p.alias.get(nid))
        else:
            stmt = em.box(key, p.boxes[key], item_hl.get(key, []))
        by_cluster.setdefault(clusters_of(graph, p, key), []).append(stmt)
    top = by_cluster.setdefault((), [])
    if p.hidden:
        em.used["more"] = True
        plural = "s" if p.hidden != 1 else ""
        hint = f"raise max_nodes= (now {opts['max_nodes']}) or budget=, or draw with collapse='module'"
        note = f"… {p.hidden} more node{plural} not shown<BR/>{_small(_esc(hint), NOTE_BORDER, FONT)}"
        top.append(f'more [shape=note style="filled" fillcolor="{NOTE_FILL}" color="{NOTE_BORDER}" label=<{note}>]')
    for j, out in enumerate(graph.outputs):
        em.used["output"] = True
        label = f"<B>{_esc(out.name)}</B><BR/>{_small(_esc(shape_text(out.shape)) + ' ' + _esc(out.dtype))}"
        top.append(
            f'o{j} [shape=box style="rounded,filled,bold" fillcolor="{OUTPUT_FILL}" color="{OUTPUT_BORDER}" '
            f"peripheries=2{em._id(f'o{j}')} label=<{label}>]"
        )
        if out.node is not None and 0 <= out.node < n_nodes:
            src = item[out.node] or "more"
            top.append(f'{src} -> o{j} [color="{OUTPUT_BORDER}" penwidth=1.5]')

    edges: list[str] = []
    for (ka, kb), count in edge_count.items():
        attrs = []
        hls = edge_hl.get((ka, kb))
        if hls:
            hls = _by_severity(hls)
            for h in hls:
                em.used.setdefault("highlights", {})[h.tag] = True
            colour = HIGHLIGHT_COLOURS.get(hls[0].tag, RED)
            text = "; ".join(dict.fromkeys(hl_text(h) for h in hls))
            attrs.append(f'color="{colour}" penwidth=3 fontcolor="{colour}" label={_q(text)}')
        elif (ka, kb) in p.carried:
            em.used["carried"] = True
            attrs.append(f'style=dashed constraint=false color="{FOLD_BORDER}" fontcolor="{FOLD_BORDER}" '
                         f'label="next ×{count}"')
        elif count > 1:
            attrs.append(f'label="×{count}"')
            if count >= 10:
                attrs.append("penwidth=2")
        if ka == "more":
            attrs.append('style=dashed color="#92400e"')
        if em.ids is not None:
            attrs.append(f'id="{em.ids}e-{ka}-{kb}" class="lens-edge"')
        edges.append(f"{ka} -> {kb}" + (f" [{' '.join(attrs)}]" if attrs else ""))

    head = [
        "digraph autograd {",
        f'  graph [rankdir={opts["rankdir"]} fontname="{FONT}" fontsize=12 nodesep=0.25 ranksep=0.35 '
        'bgcolor="white" labeljust=l outputorder=edgesfirst'
        + (" nslimit=0.01 nslimit1=0.01" if p.cost > NSLIMIT_ABOVE else "")
        + (" splines=line" if p.span > STRAIGHT_ABOVE else "")
        + "]",
        f'  node [fontname="{FONT}" fontsize=11 margin="0.12,0.05" penwidth=1.2 height=0.3]',
        f'  edge [fontname="{FONT}" fontsize=9 color="#64748b" arrowsize=0.7]',
    ]
    title = graph.title
    drawn = len(keys)
    if title or p.notes:
        sub = f"{n_nodes} nodes" + (f", drawn as {drawn} boxes" if drawn != n_nodes else "")
        if p.notes:
            sub += "; " + "; ".join(p.notes)
        lead, _, premise = title.partition(" — ")  # the premise, when the title states one, below it
        text = f"<B>{_esc(lead)}</B><BR/>" if lead else ""
        text += f'<FONT POINT-SIZE="11">{_esc(premise)}</FONT><BR/>' if premise else ""
        text += _small(_esc(sub), "#64748b", FONT)
        head.append(f"  label=<{text}> labelloc=t")
    parts = ["\n".join(head)]
    parts.append(_clusters(em, graph, p, by_cluster))
    parts.append("  " + "\n  ".join(edges) if edges else "")
    if opts["legend"]:
        leg = em.legend()
        if leg:
            parts.append(leg)
    parts.append("}\n")
    return "\n".join(x for x in parts if x), p


def _clusters(em: _Emitter, graph: Graph, p: Plan, by_cluster: dict[tuple[str, ...], list[str]]) -> str:
    """Nested ``subgraph cluster_*`` blocks for modules and folds, with their statements."""
    children: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for path in list(by_cluster):
        for k in range(len(path), 0, -1):
            parent = path[: k - 1]
            children.setdefault(parent, set()).add(path[:k])
            by_cluster.setdefault(path[:k], [])
    out: list[str] = []
    counter = [0]

    def emit(path: tuple[str, ...], indent: str) -> None:
        if path:
            name = path[-1]
            counter[0] += 1
            out.append(f"{indent}subgraph cluster_{counter[0]} {{")
            out.append(f"{indent}  {em.cluster_attrs(name, p)}")
        for stmt in by_cluster.get(path, []):
            out.append(f"{indent}  {stmt}" if path else f"  {stmt}")
        for child in sorted(children.get(path, ())):
            emit(child, indent + "  " if path else "  ")
        if path:
            out.append(f"{indent}}}")

    emit((), "")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Running dot
# ----------------------------------------------------------------------------------------------

INSTALL_HINT = (
    "install Graphviz: `apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` (macOS) "
    "or `conda install graphviz`; .dot and .json output work without it"
)


def dot_program() -> str:
    """The path of Graphviz's ``dot``, or a ``LensError`` that says how to install it."""
    exe = shutil.which("dot")
    if exe is None:
        raise LensError(f"cannot find the Graphviz `dot` program on PATH to lay out the graph; {INSTALL_HINT}")
    return exe


#: The last layouts made, by (source, format): ``lens trace`` draws each graph for its SVG file
#: and again for ``report.html``.
_LAID_OUT: dict[tuple[str, str], bytes] = {}
_LAID_OUT_MAX = 16


def run_dot(source: str, fmt: str, *, timeout: float = 60.0, nodes: int | None = None) -> bytes:
    """Lay out DOT ``source`` with ``dot -T<fmt>``; ``LensError`` on a missing program, timeout or failure."""
    exe = dot_program()
    done = _LAID_OUT.get((source, fmt))
    if done is not None:
        return done
    try:
        proc = subprocess.run(
            [exe, f"-T{fmt}"], input=source.encode("utf-8"), capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        size = f" ({nodes} nodes)" if nodes is not None else ""
        raise DotTimeout(
            f"`dot` did not finish laying out the graph{size} within {timeout:g} s; pass a smaller "
            "max_nodes=, collapse='module' or 'fold', or a larger timeout="
        ) from None
    except OSError as exc:
        raise LensError(f"cannot run Graphviz `dot` ({exe}): {exc.strerror or exc}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = err[0] if err else f"exit status {proc.returncode}"
        raise LensError(f"Graphviz `dot -T{fmt}` failed: {detail}")
    if len(_LAID_OUT) >= _LAID_OUT_MAX:
        _LAID_OUT.pop(next(iter(_LAID_OUT)))
    _LAID_OUT[(source, fmt)] = proc.stdout
    return proc.stdout


class DotTimeout(LensError):
    """``dot`` did not finish within its time."""


#: Without a ``timeout`` given, the seconds ``dot`` has before the graph is drawn again coarser
#: (the budget keeps layouts far below this; it is the net under an estimate gone wrong).
FIRST_TRY_S = 15.0


def lay_out(graph: Graph, fmt: str, **options: Any) -> tuple[bytes, Plan]:
    """``graph`` laid out by ``dot`` as ``fmt`` (svg, png, pdf), and the plan it draws.

    The plan is chosen to fit the layout budget, so ``dot`` finishes in seconds; should it still
    run out of time, the graph is drawn again, coarser, and the drawing says so.
    """
    opts = resolve_options(graph, options)
    source, p = build(graph, opts)
    timeout = float(opts["timeout"])
    chosen = options.get("timeout") is not None or (getattr(graph, "options", None) or {}).get("timeout") is not None
    first = timeout if chosen else min(timeout, FIRST_TRY_S)
    try:
        return run_dot(source, fmt, timeout=first, nodes=len(graph)), p
    except DotTimeout:
        coarse = {
            **opts,
            "budget": max(50, int(opts["budget"] or BUDGET) // 8),
            "note": f"drawn coarser: the layout did not finish within {first:g} s",
        }
        source, p = build(graph, coarse)
        return run_dot(source, fmt, timeout=max(1.0, timeout - first) if not chosen else timeout, nodes=len(graph)), p


def render(graph: Graph, fmt: str, **options: Any) -> bytes:
    """``graph`` as bytes in ``fmt``: ``svg``, ``png``, ``pdf`` (through ``dot``), ``dot``/``gv`` or ``json``."""
    fmt = fmt.lower().lstrip(".")
    if fmt == "json":
        return graph.to_json(indent=1).encode("utf-8")
    if fmt == "svg":
        options.setdefault("ids", "")  # ids on boxes and edges, for pages that point at them
    if fmt in ("dot", "gv"):
        return to_dot(graph, **options).encode("utf-8")
    if fmt not in ("svg", "png", "pdf"):
        raise LensError(f"cannot render format {fmt!r}; supported: svg, png, pdf, dot, gv, json")
    return lay_out(graph, fmt, **options)[0]


def save(graph: Graph, path: str | Path, **options: Any) -> Path:
    """Write ``graph`` to ``path``; the format follows the extension (.svg .png .pdf .dot .gv .json).

    Parent folders are created. Returns the path written.
    """
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise LensError(
            f"cannot tell the format of {str(path)!r} from its extension {path.suffix or '(none)'!r}; "
            f"use one of {', '.join(FORMATS)}"
        )
    data = render(graph, fmt, **options)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise LensError(f"cannot write the graph to {str(path)!r}: {exc.strerror or exc}") from None
    return path
