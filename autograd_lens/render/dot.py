"""``Graph`` to Graphviz DOT text, and DOT to SVG/PNG/PDF through the ``dot`` program.

The DOT text is built by plain string joins (a 20,000-node graph takes milliseconds). Layout is
what costs: ``dot`` needs seconds for a few thousand nodes and minutes for tens of thousands. So a
graph larger than ``max_nodes`` is reduced before it reaches ``dot``:

* ``collapse="module"`` draws one box per module (the first ``depth`` components of
  ``node.module``; by default the deepest level that fits), with counts of ops, parameters and
  saved bytes, and one edge per pair of modules with the number of autograd edges it stands for;
* ``collapse="fold"`` folds a chain of single-input, single-consumer nodes whose ops repeat into
  one box, e.g. ``×400 TanhBackward0 → MulBackward0``;
* ``collapse="auto"`` (the default) does nothing while the graph fits, then collapses to modules
  when nodes carry module names and folds otherwise;
* whatever still does not fit is cut, keeping the nodes closest to the outputs and every
  highlighted node, and a note says how many nodes are not shown.

Highlighted nodes are never absorbed into a group or a fold: they stay visible in red or orange.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LensError

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

#: Above this many emitted nodes, network simplex is cut short (``nslimit``): a wider drawing,
#: but seconds instead of minutes.
NSLIMIT_ABOVE = 1000

#: Saved tensors listed per op node before "+N more".
MAX_SAVED_LINES = 6

#: A chain is folded only where its op pattern repeats at least this often.
MIN_REPEATS = 3

#: Longest op pattern looked for in a chain.
MAX_PERIOD = 8

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
HIGHLIGHT_COLOURS: dict[str, str] = {
    "error": RED,
    "stray": RED,
    "freed": RED,
    "leak": ORANGE,
    "pass-through": ORANGE,
    "focus": ORANGE,
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
# Reduction: which drawn item shows each graph node
# ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Group:
    """Several graph nodes drawn as one box."""

    kind: str  # "module" or "fold"
    members: list[int] = field(default_factory=list)
    name: str = ""
    pattern: tuple[str, ...] = ()
    repeats: int = 0


@dataclass(slots=True)
class _View:
    """What reaches ``dot``: ``rep[i]`` is the key of the item drawing node ``i`` (None: cut)."""

    rep: list[str | None]
    groups: dict[str, _Group]
    hidden: int = 0
    notes: list[str] = field(default_factory=list)

    def count(self) -> int:
        individual = sum(1 for k in self.rep if k is not None and k[0] == "n")
        return individual + len(self.groups)


def _pinned(graph: Graph) -> set[int]:
    """Nodes that must stay individually visible: highlighted ones and output roots."""
    pins = {o.node for o in graph.outputs if o.node is not None}
    for h in graph.highlights:
        if h.node is not None:
            pins.add(h.node)
    return pins


def _module_parts(graph: Graph, pins: set[int]) -> list[list[str] | None]:
    """``node.module`` split at dots, or None for nodes that stay individual."""
    return [n.module.split(".") if n.module and n.id not in pins else None for n in graph.nodes]


def _collapse_modules(view: _View, parts: list[list[str] | None], depth: int) -> None:
    """Group nodes that carry a module by the first ``depth`` components of their module name."""
    keys: dict[str, str] = {}
    rep = view.rep
    groups = view.groups
    for i, p in enumerate(parts):
        if p is None:
            continue
        name = ".".join(p[:depth])
        key = keys.get(name)
        if key is None:
            key = keys[name] = f"m{len(keys)}"
            groups[key] = _Group("module", name=name)
        groups[key].members.append(i)
        rep[i] = key
    view.notes.append(f"modules at depth {depth}")


def _segments(ops: list[str]) -> list[tuple[int, int, int]]:
    """Runs of a repeating pattern in ``ops``: ``(start, end, period)``, greedy from the left."""
    out: list[tuple[int, int, int]] = []
    i, k = 0, len(ops)
    while i < k:
        best_len, best_p = 0, 0
        for p in range(1, MAX_PERIOD + 1):
            if i + p * MIN_REPEATS > k:
                break
            j = i + p
            while j < k and ops[j] == ops[j - p]:
                j += 1
            covered = (j - i) // p * p
            if covered // p >= MIN_REPEATS and covered > best_len:
                best_len, best_p = covered, p
        if best_p:
            out.append((i, i + best_len, best_p))
            i += best_len
        else:
            i += 1
    return out


def _signature(graph: Graph, view: _View, key: str) -> str:
    """What makes two drawn items "the same" for folding: the op, or the module with indices
    replaced by ``#`` (``net.3.lin`` -> ``net.#.lin``)."""
    if key[0] == "n":
        return graph.nodes[int(key[1:])].op
    name = view.groups[key].name
    return ".".join("#" if c.isdigit() else c for c in name.split("."))


def _fold_chains(graph: Graph, view: _View, pins: set[int]) -> None:
    """Fold repeating runs of a chain of drawn items (nodes or modules) that each have exactly one
    producer and one consumer."""
    rep = view.rep
    index: dict[str, int] = {}
    for k in rep:
        if k is not None and k not in index:
            index[k] = len(index)
    keys = list(index)
    m = len(keys)
    prod = [-1] * m  # -1 none, -2 several, else the one producer
    cons = [-1] * m
    for a, b in graph.edges:
        ka, kb = rep[a], rep[b]
        if ka is None or kb is None or ka == kb:
            continue
        ja, jb = index[ka], index[kb]
        if prod[jb] == -1:
            prod[jb] = ja
        elif prod[jb] != ja:
            prod[jb] = -2
        if cons[ja] == -1:
            cons[ja] = jb
        elif cons[ja] != jb:
            cons[ja] = -2
    blocked = {index[rep[p]] for p in pins if rep[p] is not None}
    eligible = [prod[j] >= 0 and cons[j] >= 0 and j not in blocked and keys[j][0] != "f" for j in range(m)]
    folded = 0
    start = sum(1 for k in view.groups if k[0] == "f")
    for j in range(m):
        if not eligible[j] or eligible[prod[j]]:
            continue
        chain = [j]
        c = j
        while eligible[cons[c]] and cons[c] != j:
            c = cons[c]
            chain.append(c)
        if len(chain) < MIN_REPEATS:
            continue
        sigs = [_signature(graph, view, keys[c]) for c in chain]
        for s, e, p in _segments(sigs):
            key = f"f{start + folded}"
            folded += 1
            group = _Group("fold", pattern=tuple(sigs[s : s + p]), repeats=(e - s) // p)
            for c in chain[s:e]:
                k = keys[c]
                if k[0] == "n":
                    group.members.append(int(k[1:]))
                else:
                    group.members.extend(view.groups.pop(k).members)
            group.members.sort()
            for i in group.members:
                rep[i] = key
            view.groups[key] = group
    if folded:
        view.notes.append(f"{folded} repeated chain{'s' if folded != 1 else ''} folded")


def _truncate(graph: Graph, view: _View, budget: int, pins: set[int]) -> None:
    """Keep the ``budget`` items closest to the outputs (highlighted ones first); cut the rest."""
    rep = view.rep
    inputs: dict[str, set[str]] = {}
    for a, b in graph.edges:
        ka, kb = rep[a], rep[b]
        if ka is not None and kb is not None and ka != kb:
            inputs.setdefault(kb, set()).add(ka)
    keep: dict[str, None] = {}
    for p in sorted(pins):
        if rep[p] is not None and len(keep) < budget:
            keep[rep[p]] = None
    frontier = [rep[o.node] for o in graph.outputs if o.node is not None and rep[o.node] is not None]
    seen = set(frontier)
    while frontier and len(keep) < budget:
        nxt: list[str] = []
        for k in frontier:
            if len(keep) >= budget:
                break
            keep[k] = None
            for src in sorted(inputs.get(k, ())):
                if src not in seen:
                    seen.add(src)
                    nxt.append(src)
        frontier = nxt
    if len(keep) < budget:  # parts not reachable from an output
        for k in rep:
            if len(keep) >= budget:
                break
            if k is not None and k not in keep:
                keep[k] = None
    hidden = 0
    for i, k in enumerate(rep):
        if k is not None and k not in keep:
            rep[i] = None
            hidden += 1
    for key in [k for k in view.groups if k not in keep]:
        del view.groups[key]
    view.hidden += hidden


def reduce(graph: Graph, opts: Mapping[str, Any]) -> _View:
    """Decide what reaches ``dot``: individual nodes, module boxes, folds, and a cut."""
    n = len(graph.nodes)
    budget = max(1, opts["max_nodes"] - len(graph.outputs) - 2)  # outputs, "more" note, legend
    mode = opts["collapse"]
    depth = opts["depth"]
    fold = opts["fold"]
    has_modules = any(nd.module for nd in graph.nodes)
    if mode == "auto":
        if depth is not None and has_modules:
            mode = "module"
        elif n <= budget:
            mode = "none"
        else:
            mode = "module" if has_modules else "fold"
    pins = _pinned(graph)

    def fresh() -> _View:
        return _View([f"n{i}" for i in range(n)], {})

    view = fresh()
    if mode == "module" and has_modules:
        parts = _module_parts(graph, pins)
        if depth is None:
            # the deepest level that fits, as it is or with its repeated blocks folded
            deepest = max((len(p) for p in parts if p is not None), default=1)
            for d in range(deepest, 0, -1):
                view = fresh()
                _collapse_modules(view, parts, d)
                if view.count() <= budget:
                    break
                if fold is not False:
                    _fold_chains(graph, view, pins)
                    if view.count() <= budget:
                        break
        else:
            _collapse_modules(view, parts, depth)
    if fold is True or (mode == "fold" and fold is not False):
        _fold_chains(graph, view, pins)
    elif fold is None and mode != "none" and view.count() > budget:
        _fold_chains(graph, view, pins)
    if view.count() > budget:
        _truncate(graph, view, budget, pins)
    return view


# ----------------------------------------------------------------------------------------------
# DOT text
# ----------------------------------------------------------------------------------------------


def _hl_lines(hls: list[Highlight]) -> str:
    out = []
    seen: set[tuple[str, str]] = set()
    for h in hls:
        if (h.tag, h.label) in seen:
            continue
        seen.add((h.tag, h.label))
        colour = HIGHLIGHT_COLOURS.get(h.tag, RED)
        text = f"⚠ {h.tag}" + (f": {h.label}" if h.label else "")
        out.append(f'<BR/><FONT POINT-SIZE="10" COLOR="{colour}"><B>{_esc(text)}</B></FONT>')
    return "".join(out)


def _hl_attrs(hls: list[Highlight]) -> str:
    colour = HIGHLIGHT_COLOURS.get(hls[0].tag, RED)
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

    def node(self, n: Node, extra_hl: list[Highlight] | None = None) -> str:
        """The statement for one node. Nodes that look alike (most of a deep net) share the text
        after their id, so it is built once."""
        hls = self.node_hl.get(n.id, [])
        if extra_hl:
            hls = hls + extra_hl
        if hls:
            return f"n{n.id} {self._node_attrs(n, hls)}"
        key = (n.kind, n.op, n.name, n.module, n.shape, n.saved, n.freed, n.ctx_tensors)
        attrs = self._cache.get(key)
        if attrs is None:
            attrs = self._cache[key] = self._node_attrs(n, hls)
        return f"n{n.id} {attrs}"

    def _node_attrs(self, n: Node, hls: list[Highlight]) -> str:
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

    def group(self, key: str, g: _Group, hls: list[Highlight]) -> str:
        nodes = self.graph.nodes
        members = [nodes[i] for i in g.members]
        saved = sum(m.saved_bytes for m in members)
        freed = sum(1 for m in members if m.freed)
        if g.kind == "module":
            self.used["module"] = True
            ops = sum(1 for m in members if m.kind not in ("param", "input"))
            params = [m for m in members if m.kind == "param"]
            fill, border = self._colour_of(g.name) or (FOLD_FILL, FOLD_BORDER)
            shape_attr = "box3d"
            style = "filled"
            label = f"<B>{_esc(g.name)}</B><BR/>" + _small(
                f"{ops} op{'s' if ops != 1 else ''} · {len(params)} param{'s' if len(params) != 1 else ''}", "#334155", FONT
            )
            if params and len(params) <= 4:
                for p in params:
                    short = (p.name or "?").rsplit(".", 1)[-1]
                    label += "<BR/>" + _small(f"{_esc(short)} {_esc(shape_text(p.shape))}")
        else:
            self.used["fold"] = True
            tops = {_top(m.module) for m in members}
            colours = self._colour_of(tops.pop()) if len(tops) == 1 else None
            fill, border = colours or (FOLD_FILL, FOLD_BORDER)
            shape_attr = "box"
            style = "rounded,filled"
            params = sum(1 for m in members if m.kind == "param")
            sub = f"{len(members)} nodes folded (a repeated chain)"
            if params:
                sub += f" · {params} params"
            label = f"<B>×{g.repeats} {_esc(' → '.join(g.pattern))}</B><BR/>" + _small(sub, "#334155", FONT)
        if saved:
            label += "<BR/>" + _small(f"saved {fmt_bytes(saved)}", "#334155", FONT)
        if freed:
            self.used["freed"] = True
            style += ",dashed"
            label += "<BR/>" + _small(f"{freed} with buffers freed", "#6b7280", FONT)
        extra = ""
        if hls:
            for h in hls:
                self.used.setdefault("highlights", {})[h.tag] = True
            label += _hl_lines(hls)
            extra = _hl_attrs(hls)
        else:
            extra = f' color="{border}"'
        periph = " peripheries=2" if g.kind == "fold" else ""
        return (
            f'{key} [shape={shape_attr} style="{style}" fillcolor="{fill}"{extra}{periph} '
            f"tooltip={_q(g.name or ' → '.join(g.pattern))} label=<{label}>]"
        )

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
            rows.append((FOLD_FILL, FOLD_BORDER, "repeated chain (folded)"))
        if used.get("output"):
            rows.append((OUTPUT_FILL, OUTPUT_BORDER, "output"))
        if used.get("freed"):
            rows.append((FREED_FILL, GREY, "buffers freed by a backward (dashed)"))
        for tag in used.get("highlights", {}):
            colour = HIGHLIGHT_COLOURS.get(tag, RED)
            rows.append(("#ffffff", colour, f"⚠ {tag}"))
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
        max_nodes: most nodes handed to ``dot`` (default 2000); larger graphs are reduced.
        collapse: ``"auto"`` (default), ``"module"``, ``"fold"`` or ``"none"``.
        depth: module depth for ``collapse="module"`` (default: the deepest that fits).
        show_saved: list saved tensors on op nodes (default True).
        legend: add a legend of what the drawing uses (default True).
        rankdir: ``"TB"`` (default: inputs on top, outputs below) or ``"LR"``, ``"BT"``, ``"RL"``.
        options: ``fold`` (True: always fold repeated chains; False: never), ``timeout`` (ignored
            here); defaults come from ``graph.options``.

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
    opts = resolve_options(graph, explicit)
    view = reduce(graph, opts)
    em = _Emitter(graph, opts)
    rep = view.rep
    nodes = graph.nodes

    # highlights of nodes that were cut, or of edges inside one item, attach to the item
    item_hl: dict[str, list[Highlight]] = {}
    for nid, hls in em.node_hl.items():
        key = rep[nid]
        if key is not None and key[0] != "n":
            item_hl.setdefault(key, []).extend(hls)
    edge_count: dict[tuple[str, str], int] = {}
    for a, b in graph.edges:
        ka, kb = rep[a], rep[b]
        if ka is None:
            if kb is None:
                continue
            ka = "more"
        elif kb is None:
            continue
        if ka == kb:
            continue
        pair = (ka, kb)
        edge_count[pair] = edge_count.get(pair, 0) + 1
    edge_hl: dict[tuple[str, str], list[Highlight]] = {}
    for (a, b), hls in em.edge_hl.items():
        if not (0 <= a < len(nodes) and 0 <= b < len(nodes)):
            continue
        ka, kb = rep[a], rep[b]
        if ka is None or kb is None:
            continue
        if ka == kb:
            item_hl.setdefault(ka, []).extend(hls)
        else:
            edge_hl.setdefault((ka, kb), []).extend(hls)
            edge_count.setdefault((ka, kb), 1)

    stmts: list[str] = []
    emitted: set[str] = set()
    for i, key in enumerate(rep):
        if key is None or key in emitted:
            continue
        emitted.add(key)
        if key[0] == "n":
            stmts.append(em.node(nodes[i], item_hl.get(key)))
        else:
            stmts.append(em.group(key, view.groups[key], item_hl.get(key, [])))
    if view.hidden:
        em.used["more"] = True
        plural = "s" if view.hidden != 1 else ""
        hint = f"max_nodes={opts['max_nodes']}: raise it, or try collapse=module / fold"
        note = f"… {view.hidden} more node{plural} not shown<BR/>{_small(_esc(hint), NOTE_BORDER, FONT)}"
        stmts.append(
            f'more [shape=note style="filled" fillcolor="{NOTE_FILL}" color="{NOTE_BORDER}" label=<{note}>]'
        )
    for j, out in enumerate(graph.outputs):
        em.used["output"] = True
        label = f"<B>{_esc(out.name)}</B><BR/>{_small(_esc(shape_text(out.shape)) + ' ' + _esc(out.dtype))}"
        stmts.append(
            f'o{j} [shape=box style="rounded,filled,bold" fillcolor="{OUTPUT_FILL}" color="{OUTPUT_BORDER}" '
            f"peripheries=2 label=<{label}>]"
        )
        if out.node is not None and 0 <= out.node < len(nodes):
            src = rep[out.node] or "more"
            stmts.append(f'{src} -> o{j} [color="{OUTPUT_BORDER}" penwidth=1.5]')

    for (ka, kb), count in edge_count.items():
        attrs = []
        hls = edge_hl.get((ka, kb))
        if hls:
            for h in hls:
                em.used.setdefault("highlights", {})[h.tag] = True
            colour = HIGHLIGHT_COLOURS.get(hls[0].tag, RED)
            text = "; ".join(dict.fromkeys(f"{h.tag}" + (f": {h.label}" if h.label else "") for h in hls))
            attrs.append(f'color="{colour}" penwidth=3 fontcolor="{colour}" label={_q("⚠ " + text)}')
        elif count > 1:
            attrs.append(f'label="×{count}"')
            if count >= 10:
                attrs.append("penwidth=2")
        if ka == "more":
            attrs.append('style=dashed color="#92400e"')
        stmts.append(f"{ka} -> {kb}" + (f" [{' '.join(attrs)}]" if attrs else ""))

    shown = len(emitted) + len(graph.outputs) + (1 if view.hidden else 0)
    head = [
        "digraph autograd {",
        f'  graph [rankdir={opts["rankdir"]} fontname="{FONT}" fontsize=12 nodesep=0.25 ranksep=0.35 '
        'bgcolor="white" labeljust=l outputorder=edgesfirst'
        + (" nslimit=0.01 nslimit1=0.01" if shown > NSLIMIT_ABOVE else "")
        + "]",
        f'  node [fontname="{FONT}" fontsize=11 margin="0.12,0.05" penwidth=1.2 height=0.3]',
        f'  edge [fontname="{FONT}" fontsize=9 color="#64748b" arrowsize=0.7]',
    ]
    title = graph.title
    if title or view.notes or view.hidden:
        sub = f"{len(nodes)} nodes"
        if view.notes:
            sub += "; " + "; ".join(view.notes)
        text = (f"<B>{_esc(title)}</B><BR/>" if title else "") + _small(_esc(sub), "#64748b", FONT)
        head.append(f"  label=<{text}> labelloc=t")
    parts = ["\n".join(head), "  " + "\n  ".join(stmts)]
    if opts["legend"]:
        leg = em.legend()
        if leg:
            parts.append(leg)
    parts.append("}\n")
    return "\n".join(parts)


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


def run_dot(source: str, fmt: str, *, timeout: float = 60.0, nodes: int | None = None) -> bytes:
    """Lay out DOT ``source`` with ``dot -T<fmt>``; ``LensError`` on a missing program, timeout or failure."""
    exe = dot_program()
    try:
        proc = subprocess.run(
            [exe, f"-T{fmt}"], input=source.encode("utf-8"), capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        size = f" ({nodes} nodes)" if nodes is not None else ""
        raise LensError(
            f"`dot` did not finish laying out the graph{size} within {timeout:g} s; pass a smaller "
            "max_nodes=, collapse='module' or 'fold', or a larger timeout="
        ) from None
    except OSError as exc:
        raise LensError(f"cannot run Graphviz `dot` ({exe}): {exc.strerror or exc}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = err[0] if err else f"exit status {proc.returncode}"
        raise LensError(f"Graphviz `dot -T{fmt}` failed: {detail}")
    return proc.stdout


def render(graph: Graph, fmt: str, **options: Any) -> bytes:
    """``graph`` as bytes in ``fmt``: ``svg``, ``png``, ``pdf`` (through ``dot``), ``dot``/``gv`` or ``json``."""
    fmt = fmt.lower().lstrip(".")
    if fmt == "json":
        return graph.to_json(indent=1).encode("utf-8")
    source = to_dot(graph, **options)
    if fmt in ("dot", "gv"):
        return source.encode("utf-8")
    if fmt not in ("svg", "png", "pdf"):
        raise LensError(f"cannot render format {fmt!r}; supported: svg, png, pdf, dot, gv, json")
    timeout = options.get("timeout")
    if timeout is None:
        timeout = (getattr(graph, "options", None) or {}).get("timeout", DEFAULTS["timeout"])
    return run_dot(source, fmt, timeout=float(timeout), nodes=len(graph))


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
