"""What reaches ``dot``: the drawing plan of a :class:`~autograd_lens.graph.Graph`, chosen from its
size before any layout runs.

``dot``'s time depends less on the number of boxes than on the long edges between them: a weight
shared by every step of an unrolled RNN sends one edge to each step, and each edge that spans ``k``
ranks costs ``k`` hidden nodes whose crossings are minimised rank by rank (a 1000-step RNN with one
``W`` does not finish in minutes; a 3,200-box chain takes a second). So the plan

1. **folds repeated structure**: the forward order of the ops (their autograd sequence numbers)
   is searched for a block that repeats back to back: the time steps of an RNN that reuse the same
   weights, N identical layers, transformer blocks, a chain of ``tanh`` and ``mul``. One instance
   is drawn, inside a frame that says how many there are; the parameters and inputs used by one
   instance only stand for theirs in every instance, what every instance shares (``W``) enters
   once, with the count on the edge, and what one instance hands to the next is a dashed edge;
2. **nests modules as clusters** (``netD.main: Sequential``) and, when the drawing is still too
   large, collapses modules below a depth into one box each, the deepest depth that fits;
3. **cuts** what still does not fit, keeping the boxes nearest the outputs.

Each step is taken only when the one before does not fit the budget (``collapse="auto"``), and the
drawing says which were taken. The cost of a plan is estimated from its boxes, edges and the
ranks its edges span (:func:`layout_cost`); the budget was measured with Graphviz 2.43 on a 2-core
machine so that a default drawing takes a few seconds at most.

Highlighted nodes and the outputs' nodes are never folded, collapsed or cut.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..graphfile import common_module

if TYPE_CHECKING:
    from ..graph import Graph

__all__ = ["Box", "Fold", "Plan", "find_folds", "layout_cost", "plan"]

#: Default layout budget, in the units of :func:`layout_cost` (≈ boxes plus the ranks that edges
#: cross). ~2 s of ``dot`` here.
BUDGET = 3000

#: A block is folded only when it repeats at least this often ...
MIN_REPEATS = 3
#: ... and the fold takes in at least this many ops.
MIN_FOLDED = 10
#: Longest block (in ops) looked for, and how many later occurrences of an op are tried as the
#: start of the next instance.
MAX_PERIOD = 5000
TRIES = 8

#: Modules whose type name says they only hold others: their description lists the children.
CONTAINERS = ("Sequential", "ModuleList", "ModuleDict")


@dataclass(slots=True)
class Fold:
    """A block of the graph repeated ``count`` times; instance ``rep`` is drawn."""

    key: str
    instances: list[list[int]]
    rep: int = 0
    label: str = ""
    common: str | None = None  # the module that contains every instance, if any

    @property
    def count(self) -> int:
        return len(self.instances)

    @property
    def ident(self) -> str:
        """A name that stays the same across plans of one graph (for ``open=``)."""
        return f"fold:{self.instances[0][0]}"


@dataclass(slots=True)
class Box:
    """A module collapsed into one box (inside a fold: the box of its drawn instance)."""

    key: str
    module: str
    fold: str | None
    members: list[int] = field(default_factory=list)

    @property
    def ident(self) -> str:
        return f"module:{self.module}"


@dataclass
class Plan:
    """The drawing: for each graph node, the key of the box that shows it (``None``: cut).

    Keys: ``n<id>`` a node drawn as itself (or, inside a fold, the node of the drawn instance that
    stands for it), ``m<k>`` a collapsed module, ``more`` the note of what was cut.
    """

    item: list[str | None]
    folds: dict[str, Fold] = field(default_factory=dict)
    fold_of: dict[str, str] = field(default_factory=dict)  # drawn key -> fold key
    boxes: dict[str, Box] = field(default_factory=dict)
    alias: dict[int, tuple[str, int]] = field(default_factory=dict)  # drawn node -> (name, count)
    instance_of: dict[int, tuple[str, int]] = field(default_factory=dict)  # node -> (fold, instance)
    depth: int | None = None
    hidden: int = 0
    notes: list[str] = field(default_factory=list)
    cost: int = 0
    span: int = 0  # ranks crossed by long edges (see layout_cost)
    boxes_drawn: int = 0
    #: drawn edges inside a fold that stand for what one instance hands to the next
    carried: set[tuple[str, str]] = field(default_factory=set)

    def keys(self) -> list[str]:
        """The drawn keys, in node order, each once."""
        return list(dict.fromkeys(k for k in self.item if k is not None))


# ----------------------------------------------------------------------------------------------
# Folding repeated structure
# ----------------------------------------------------------------------------------------------


def _generic(module: str | None) -> str:
    """``net.12.lin`` -> ``net.#.lin``: module names that differ only in their indices match."""
    if not module:
        return ""
    return ".".join("#" if c.isdigit() else c for c in module.split("."))


def _segments(sigs: list[int]) -> list[tuple[int, int, int]]:
    """Back-to-back repeats in ``sigs``: ``(start, period, repeats)``, scanned from the left; at
    each position the repeat covering most is taken."""
    k = len(sigs)
    nxt = [-1] * k
    last: dict[int, int] = {}
    for i in range(k - 1, -1, -1):
        nxt[i] = last.get(sigs[i], -1)
        last[sigs[i]] = i
    out: list[tuple[int, int, int]] = []
    runs: dict[int, int] = {}  # period -> where its last run of matches ended (reused while inside it)
    i = 0
    while i < k:
        best_cover, best_p = 0, 0
        j = nxt[i]
        tries = 0
        while j != -1 and tries < TRIES:
            p = j - i
            if p > MAX_PERIOD or i + p * MIN_REPEATS > k:
                break
            e = runs.get(p, -1)
            if e <= j:
                e = j
                while e < k and sigs[e] == sigs[e - p]:
                    e += 1
                runs[p] = e
            cover = (e - i) // p * p
            if cover // p >= MIN_REPEATS and cover > best_cover:
                best_cover, best_p = cover, p
            j = nxt[j]
            tries += 1
        if best_p and best_cover >= MIN_FOLDED:
            out.append((i, best_p, best_cover // best_p))
            i += best_cover
        else:
            i += 1
    return out


def _block(module: str | None) -> str:
    """``encoder.layers.3.linear1`` -> ``encoder.layers.3``: the numbered block a module is in."""
    if not module:
        return ""
    parts = module.split(".")
    for k, c in enumerate(parts):
        if c.isdigit():
            return ".".join(parts[: k + 1])
    return ""


def _best_phase(graph: Graph, ids: list[int], pos: dict[int, int], lo: int, end: int, p: int) -> int:
    """Where instances of period ``p`` should start within the repeat ``ids[lo:end]``: the phase
    that splits fewest numbered blocks (``net.3``), then cuts fewest edges between instances, then
    the shortest ones (a step's state handed on at its very end), then starts where weights and
    inputs come in."""
    # per phase, the edges an instance boundary there would cut, and their lengths: each edge
    # adds to a (cyclic) run of phases, kept as differences and summed once
    count_d = [0] * (p + 1)
    dist_d = [0] * (p + 1)
    # edges ending inside the window, which holds every phase equally often
    window = range(lo + p, lo + p * ((end - lo) // p - 1))
    for b_pos in window:
        b = ids[b_pos]
        for a in graph.inputs_of(b):
            a_pos = pos.get(a)
            if a_pos is None or a_pos >= b_pos:
                continue
            d = b_pos - a_pos
            if d >= p:
                continue  # crosses a boundary whatever the phase
            # crosses where a boundary lies in (a_pos, b_pos]: phases r0 .. r0 + d - 1 (mod p)
            r0 = (a_pos + 1) % p
            for start, stop in ((r0, r0 + d),) if r0 + d <= p else ((r0, p), (0, r0 + d - p)):
                count_d[start] += 1
                count_d[stop] -= 1
                dist_d[start] += d
                dist_d[stop] -= d
    count = list(itertools.accumulate(count_d[:p]))
    dist = list(itertools.accumulate(dist_d[:p]))
    nodes = graph.nodes
    split = [0] * p
    prev = ""
    for j in range(lo, window.stop):
        blk = _block(nodes[ids[j]].module) or prev  # ops of no numbered block stay with the last
        if j in window and blk != prev:
            split[j % p] -= 1  # a block boundary that a phase at j keeps whole
        prev = blk
    phases = [lo + d for d in range(p) if (end - lo - d) // p >= MIN_REPEATS]

    def leaves_in(ph: int) -> int:  # an instance starts where weights and inputs come in
        return -sum(1 for a in graph.inputs_of(ids[ph]) if nodes[a].seq is None)

    return min(phases, key=lambda ph: (split[ph % p], count[ph % p], dist[ph % p], leaves_in(ph), ph))


def find_folds(graph: Graph, pins: set[int], opened: Iterable[str] = ()) -> list[Fold]:
    """The repeated blocks of ``graph``, in forward order. Instances that hold a pinned node stay
    unfolded (the runs between them may still fold); folds named in ``opened`` are left out."""
    nodes = graph.nodes
    order = sorted((n.seq, n.id) for n in nodes if n.seq is not None)
    ids = [i for _, i in order]
    pos = {i: j for j, i in enumerate(ids)}
    interned: dict[tuple[str, str, int], int] = {}
    sigs = []
    for i in ids:
        n = nodes[i]
        key = (n.op, _generic(n.module), len(graph.inputs_of(i)))
        sig = interned.get(key)
        if sig is None:
            sig = interned[key] = len(interned)
        sigs.append(sig)
    opened = set(opened)
    folds: list[Fold] = []
    prev_end = 0
    for start, p, reps in _segments(sigs):
        lo, end = start, start + reps * p
        while lo > prev_end and sigs[lo - 1] == sigs[lo - 1 + p]:
            lo -= 1
        start = _best_phase(graph, ids, pos, lo, end, p) if p > 1 else start
        while end < len(sigs) and sigs[end] == sigs[end - p]:
            end += 1
        reps = (end - start) // p
        prev_end = start + reps * p
        instances = [ids[start + t * p : start + (t + 1) * p] for t in range(reps)]
        runs: list[list[list[int]]] = [[]]
        for inst in instances:
            if any(i in pins for i in inst):
                runs.append([])
            else:
                runs[-1].append(inst)
        for run in runs:
            if len(run) >= MIN_REPEATS and len(run) * p >= MIN_FOLDED:
                fold = Fold(f"f{len(folds)}", run)
                if fold.ident not in opened:
                    folds.append(fold)
    return folds


def _attach_leaves(graph: Graph, folds: list[Fold], instance_of: dict[int, tuple[str, int]]) -> None:
    """Leaves (parameters, inputs) used by one instance only join that instance."""
    nodes = graph.nodes
    by_key = {f.key: f for f in folds}
    for n in nodes:
        if n.seq is not None or n.id in instance_of:
            continue
        owners = {instance_of.get(c) for c in graph.consumers_of(n.id)}
        if len(owners) == 1:
            owner = owners.pop()
            if owner is not None:
                instance_of[n.id] = owner
                by_key[owner[0]].instances[owner[1]].append(n.id)


def _rep_map(graph: Graph, fold: Fold, instance_of: dict[int, tuple[str, int]]) -> dict[int, int]:
    """Node of any instance -> the node of the drawn instance that stands for it."""
    rep = fold.instances[fold.rep]
    out: dict[int, int] = {}
    ops = [i for i in rep if graph.nodes[i].seq is not None]
    offset = {i: j for j, i in enumerate(ops)}
    rep_leaf: dict[tuple[int, int], int] = {}
    for i in rep:
        if graph.nodes[i].seq is None:
            for c in graph.consumers_of(i):
                if c in offset:
                    rep_leaf.setdefault((offset[c], graph.inputs_of(c).index(i)), i)
    for t, inst in enumerate(fold.instances):
        inst_ops = [i for i in inst if graph.nodes[i].seq is not None]
        for j, i in enumerate(inst_ops):
            out[i] = ops[j] if j < len(ops) else i
        pos = {i: j for j, i in enumerate(inst_ops)}
        for i in inst:
            if graph.nodes[i].seq is not None:
                continue
            target = i
            for c in graph.consumers_of(i):
                if c in pos:
                    target = rep_leaf.get((pos[c], graph.inputs_of(c).index(i)), i)
                    break
            out[i] = target
    return out


def describe_module(name: str, types: Mapping[str, str]) -> str:
    """``Sequential(Linear, LayerNorm, GELU)`` for containers, else the type name (``""`` if unknown)."""
    tp = types.get(name, "")
    if tp in CONTAINERS:
        depth = name.count(".") + 1
        kids = [t for m, t in types.items() if m.startswith(name + ".") and m.count(".") == depth]
        runs: list[list[Any]] = []  # [type, count], consecutive equal types together
        for t in kids:
            if runs and runs[-1][0] == t:
                runs[-1][1] += 1
            else:
                runs.append([t, 1])
        if runs:
            parts = [t if c == 1 else f"{c} × {t}" for t, c in runs]
            return f"{tp}({', '.join(parts[:6])}{', …' if len(parts) > 6 else ''})"
    return tp


def _label_fold(graph: Graph, fold: Fold) -> None:
    nodes = graph.nodes
    types = graph.module_types
    all_mods = [nodes[i].module for inst in fold.instances for i in inst if nodes[i].module]
    rep_ops = sorted((nodes[i].seq, i) for i in fold.instances[fold.rep] if nodes[i].seq is not None)
    n = fold.count
    if not all_mods or len(all_mods) < len(rep_ops) // 2:
        ops = [nodes[i].op for _, i in rep_ops]
        shown = " → ".join(ops[:4]) + (" → …" if len(ops) > 4 else "")
        fold.label = f"×{n} {shown}"
        fold.common = common_module(all_mods) if all_mods else None
        return
    common = common_module(all_mods)
    fold.common = common
    depth = common.count(".") + 1 if common else 0

    def child(m: str) -> str:
        return ".".join(m.split(".")[: depth + 1])

    def firsts(inst: list[int]) -> list[str]:
        """The modules right below ``common`` that an instance runs, in order; those with a
        small share of its ops (one taken from a neighbour by attribution) left out."""
        ops = sorted((nodes[i].seq, i) for i in inst if nodes[i].seq is not None)
        kids = [child(m) for m in (nodes[i].module for _, i in ops) if m and m != common]
        share = {k: kids.count(k) for k in set(kids)}
        big = [k for k in dict.fromkeys(kids) if share[k] * 5 >= len(kids)]
        return big or list(dict.fromkeys(kids))

    first = firsts(fold.instances[0])
    last = firsts(fold.instances[-1])
    if first == last:  # the same modules every time: steps of a loop
        text = " → ".join(first) if first else (common or "")
        fold.label = f"×{n} step: {text}"
    elif len(first) == 1 and len(last) == 1:
        desc = describe_module(first[0], types)
        fold.label = f"×{n} {first[0]} … {last[0]}" + (f": {desc}" if desc else "")
    else:
        fold.label = f"×{n} {' → '.join(first)} … {' → '.join(last)}"


def _alias_name(names: list[str]) -> str:
    """``["net.0.0.weight", "net.1.0.weight"]`` -> ``"net.#.0.weight"``."""
    split = [n.split(".") for n in names]
    if len({len(s) for s in split}) != 1:
        return names[0]
    return ".".join(parts[0] if len(set(parts)) == 1 else "#" for parts in zip(*split))


# ----------------------------------------------------------------------------------------------
# Cost
# ----------------------------------------------------------------------------------------------


def layout_cost(n_items: int, edges: Iterable[tuple[int, int]], clusters: int = 0) -> tuple[int, int]:
    """Estimated work for ``dot``: boxes, plus for each edge the ranks it crosses (each one a hidden
    node that crossing minimisation moves), plus clusters; and the span part alone (long edges
    are also what spline routing spends its time on). Ranks are longest paths from the sources,
    with each source placed just above its first consumer, as ``dot`` would."""
    succ: list[list[int]] = [[] for _ in range(n_items)]
    indeg = [0] * n_items
    elist = list(edges)
    for a, b in elist:
        succ[a].append(b)
        indeg[b] += 1
    rank = [0] * n_items
    stack = [i for i in range(n_items) if indeg[i] == 0]
    sources = list(stack)
    deg = indeg[:]
    done = [False] * n_items
    left = n_items
    while left:
        if not stack:
            # a cycle (a collapsed module that both feeds and consumes nodes drawn on their own):
            # broken at the waiting node with fewest inputs left, as dot reverses an edge
            stack.append(min((i for i in range(n_items) if not done[i]), key=deg.__getitem__))
            deg[stack[-1]] = 0
        a = stack.pop()
        if done[a]:
            continue
        done[a] = True
        left -= 1
        ra = rank[a] + 1
        for b in succ[a]:
            if done[b]:
                continue
            if rank[b] < ra:
                rank[b] = ra
            deg[b] -= 1
            if deg[b] == 0:
                stack.append(b)
    for s in sources:
        if succ[s]:
            rank[s] = min(rank[b] for b in succ[s]) - 1
    span = 0
    for a, b in elist:
        d = abs(rank[b] - rank[a])  # an edge drawn backwards spans its ranks too
        if d > 1:
            span += d - 1
    return n_items + len(elist) + span + 8 * clusters, span


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------


def pinned(graph: Graph) -> set[int]:
    """Nodes that must stay individually visible: highlighted ones and the outputs' nodes. (A
    crossing between networks is no reason: it repeats with the steps and folds with them.)"""
    pins = {o.node for o in graph.outputs if o.node is not None}
    for h in graph.highlights:
        if h.tag == "crossing":
            continue
        if h.node is not None:
            pins.add(h.node)
        if h.edge is not None:
            pins.update(h.edge)
    return {p for p in pins if 0 <= p < len(graph.nodes)}


def _with_folds(graph: Graph, folds: list[Fold]) -> Plan:
    n = len(graph.nodes)
    item: list[str | None] = [f"n{i}" for i in range(n)]
    p = Plan(item)
    instance_of: dict[int, tuple[str, int]] = {}
    for f in folds:
        for t, inst in enumerate(f.instances):
            for i in inst:
                instance_of[i] = (f.key, t)
    _attach_leaves(graph, folds, instance_of)
    p.instance_of = instance_of
    for f in folds:
        _label_fold(graph, f)
        p.folds[f.key] = f
        rmap = _rep_map(graph, f, instance_of)
        names: dict[int, list[str]] = {}
        for i, r in rmap.items():
            item[i] = f"n{r}"
            p.fold_of[f"n{r}"] = f.key
            nm = graph.nodes[i].name
            if nm and graph.nodes[r].name:
                names.setdefault(r, []).append(nm)
        for r, lst in names.items():
            if len(lst) > 1 and len(set(lst)) > 1:
                p.alias[r] = (_alias_name(lst), len(lst))
    if folds:
        total = sum(len(inst) for f in folds for inst in f.instances)
        p.notes.append(f"{len(folds)} repeated block{'s' if len(folds) != 1 else ''} folded ({total} nodes)")
    return p


def _collapse(graph: Graph, p: Plan, depth: int, pins: set[int], opened: Iterable[str] = ()) -> None:
    """Nodes of modules deeper than ``depth`` are drawn by the box of their module at ``depth``,
    except in the modules named in ``opened`` (``"module:net.5"``)."""
    nodes = graph.nodes
    boxes: dict[tuple[str | None, str], str] = {}
    for i, key in enumerate(p.item):
        if key is None or key[0] != "n":
            continue
        r = int(key[1:])
        if r in pins:
            continue
        mod = nodes[r].module
        if not mod:
            continue
        parts = mod.split(".")
        if len(parts) < depth:
            continue
        name = ".".join(parts[:depth])
        if opened and any(f"module:{'.'.join(parts[:k])}" in opened for k in range(1, depth + 1)):
            continue
        fold = p.fold_of.get(key)
        if fold is not None:
            common = p.folds[fold].common
            if common and (name == common or common.startswith(name + ".")):
                continue  # the module holds the whole fold: not a box inside it
        k = boxes.get((fold, name))
        if k is None:
            k = boxes[(fold, name)] = f"m{len(boxes)}"
            p.boxes[k] = Box(k, name, fold)
            if fold is not None:
                p.fold_of[k] = fold
        p.boxes[k].members.append(i)
        p.item[i] = k
    p.depth = depth


def _drawn_edges(graph: Graph, item: list[str | None]) -> dict[tuple[str, str], int]:
    """Drawn edge -> how many graph edges it stands for; edges from cut nodes come from ``more``."""
    out: dict[tuple[str, str], int] = {}
    for a, b in graph.edges:
        ka, kb = item[a], item[b]
        if kb is None or ka == kb:
            continue
        if ka is None:
            ka = "more"
        out[(ka, kb)] = out.get((ka, kb), 0) + 1
    return out


def clusters_of(graph: Graph, p: Plan, key: str) -> tuple[str, ...]:
    """The nested clusters a drawn item sits in, outermost first: module names, and ``f<k>`` for
    the frame of a fold (inside it, the modules below the one that holds the whole fold)."""
    if key == "more":
        return ()
    if key[0] == "m":
        box = p.boxes[key]
        mod = box.module.rsplit(".", 1)[0] if "." in box.module else ""
        fold = box.fold
    elif key[0] == "n":
        mod = graph.nodes[int(key[1:])].module or ""
        fold = p.fold_of.get(key)
    else:
        return ()
    parts = mod.split(".") if mod else []
    prefixes = [".".join(parts[: k + 1]) for k in range(len(parts))]
    if fold is None:
        return tuple(prefixes)
    common = p.folds[fold].common or ""
    outer = [m for m in prefixes if common == m or common.startswith(m + ".")]
    inner = [f"{fold}/{m}" for m in prefixes if m not in outer]
    return (*outer, fold, *inner)


def _measure(graph: Graph, p: Plan) -> None:
    keys = p.keys() + (["more"] if p.hidden else [])
    pos = {k: i for i, k in enumerate(keys)}
    edges = _drawn_edges(graph, p.item)
    clusters: set[str] = set()
    for k in keys:
        clusters.update(clusters_of(graph, p, k))
    extra = len(graph.outputs) + 1  # outputs, the legend
    pairs = []
    for a, b in edges:
        if (a, b) in p.carried:
            continue  # carried to the next instance: not a ranking constraint
        pairs.append((pos[a], pos[b]))
    p.boxes_drawn = len(keys) + extra
    cost, p.span = layout_cost(len(keys), pairs, len(clusters))
    p.cost = cost + extra


def _mark_carried(graph: Graph, p: Plan) -> None:
    p.carried = set()
    inst = p.instance_of
    for a, b in graph.edges:
        ia, ib = inst.get(a), inst.get(b)
        if ia is not None and ib is not None and ia[0] == ib[0] and ia[1] != ib[1]:
            ka, kb = p.item[a], p.item[b]
            if ka is not None and kb is not None and ka != kb:
                p.carried.add((ka, kb))


def _truncate(graph: Graph, p: Plan, keep_n: int, pins: set[int]) -> None:
    """Keep the ``keep_n`` drawn items nearest the outputs (pinned ones first); cut the rest."""
    item = p.item
    inputs: dict[str, set[str]] = {}
    for a, b in graph.edges:
        ka, kb = item[a], item[b]
        if ka is not None and kb is not None and ka != kb:
            inputs.setdefault(kb, set()).add(ka)
    keep: dict[str, None] = {}
    for i in sorted(pins):
        if item[i] is not None and len(keep) < keep_n:
            keep[item[i]] = None
    frontier = list(dict.fromkeys(item[o.node] for o in graph.outputs if o.node is not None and item[o.node] is not None))
    seen = set(frontier)
    while frontier and len(keep) < keep_n:
        nxt: list[str] = []
        for k in frontier:
            if len(keep) >= keep_n:
                break
            keep[k] = None
            for src in sorted(inputs.get(k, ())):
                if src not in seen:
                    seen.add(src)
                    nxt.append(src)
        frontier = nxt
    for k in item:
        if len(keep) >= keep_n:
            break
        if k is not None and k not in keep:
            keep[k] = None
    hidden = 0
    for i, k in enumerate(item):
        if k is not None and k not in keep:
            item[i] = None
            hidden += 1
    for k in [k for k in p.boxes if k not in keep]:
        del p.boxes[k]
    p.hidden += hidden


def plan(graph: Graph, opts: Mapping[str, Any]) -> Plan:
    """The drawing plan for ``graph`` under the render options ``opts`` (see ``render.dot``)."""
    budget = int(opts.get("budget") or BUDGET)
    max_boxes = int(opts["max_nodes"])
    mode = opts["collapse"]
    fold_opt = opts.get("fold")
    depth_opt = opts.get("depth")
    opened = set(opts.get("open") or ())
    pins = pinned(graph)
    has_modules = any(n.module for n in graph.nodes)
    deepest = max((n.module.count(".") + 1 for n in graph.nodes if n.module), default=0)

    def fits(p: Plan) -> bool:
        _mark_carried(graph, p)
        _measure(graph, p)
        return p.cost <= budget and p.boxes_drawn <= max_boxes

    folds: list[Fold] | None = None

    def folded() -> Plan:
        nonlocal folds
        if folds is None:
            folds = find_folds(graph, pins, opened)
        return _with_folds(graph, [Fold(f.key, [list(i) for i in f.instances]) for f in folds])

    def plain() -> Plan:
        return _with_folds(graph, [])

    allowed = fold_opt is not False and mode != "none"
    forced = fold_opt is True or mode == "fold"
    if depth_opt and mode == "auto":
        mode = "module"
    depths = [depth_opt] if depth_opt else list(range(deepest, 0, -1))
    candidates: list[tuple[Any, int | None]] = []  # (builder, module depth)
    if mode == "none":
        candidates = [(plain, None)]
    elif mode == "module" and has_modules:
        candidates = [(folded if forced else plain, d) for d in depths]
        if allowed and not forced:
            candidates += [(folded, d) for d in depths]
    else:
        if not forced:
            candidates.append((plain, None))
        if allowed:
            candidates.append((folded, None))
        if has_modules:
            candidates += [(folded if allowed else plain, d) for d in depths]
    last: Plan | None = None
    for builder, depth in candidates:
        p = builder()
        if depth is not None:
            _collapse(graph, p, depth, pins, opened)
        if fits(p):
            _annotate(p, graph, coarser=last is not None)
            return p
        last = p
    # nothing fits: the coarsest plan, cut to fit
    assert last is not None or not candidates
    p = last if last is not None else plain()
    keys = len(p.keys())
    lo, hi = 1, keys
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        q = _copy(p)
        _truncate(graph, q, mid, pins)
        if fits(q):
            best, lo = q, mid + 1
        else:
            hi = mid - 1
    if best is None:
        best = _copy(p)
        _truncate(graph, best, 1, pins)
        fits(best)
    _annotate(best, graph, coarser=True)
    return best


def _copy(p: Plan) -> Plan:
    boxes = {k: Box(b.key, b.module, b.fold, list(b.members)) for k, b in p.boxes.items()}
    return Plan(list(p.item), dict(p.folds), dict(p.fold_of), boxes, dict(p.alias), dict(p.instance_of), p.depth,
                p.hidden, list(p.notes))


def _annotate(p: Plan, graph: Graph, *, coarser: bool) -> None:
    if p.depth is not None:
        p.notes.append(f"modules at depth {p.depth}" + (" (collapsed to fit)" if coarser else ""))
    if p.hidden:
        p.notes.append(f"cut to fit: the {len(p.keys())} boxes nearest the outputs")
