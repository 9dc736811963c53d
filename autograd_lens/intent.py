"""Which optimizer a backward call (or each term of its loss) is *for*, and where its graph crosses
into other networks. See the "Intent" section of DESIGN.md.

1. What the user declared (``watch(intent={"errD": optimizerD})``).
2. By time: the optimizers of the first run of steps after the call, among those it reached.
3. Where time cannot separate them (the call reached several optimizers of that run): by
   structure. The loss is split at its root additions; each term is for the network furthest
   upstream among those it reaches; what it leaves in networks downstream is pass-through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .errors import LensError, describe
from . import graph as graph_mod
from .graph import COMPILED, CUSTOM, INPUT, PARAM, Graph

if TYPE_CHECKING:
    from .events import BackwardCall
    from .watch import Watch

# Ops that add up terms: a loss ``a + b`` or ``a - b`` has one term per input.
_ADD_OPS = frozenset({"AddBackward0", "SubBackward0"})
# Linear single-input ops the split may look through (``0.5 * (a + b)``, ``-(a + b)``, ``(a + b).mean()``).
_LINEAR_OPS = frozenset(
    {"MulBackward0", "DivBackward0", "NegBackward0", "MeanBackward0", "SumBackward0", "AddBackward1", "SubBackward1", "MulBackward1", "DivBackward1"}
)
# the view ops of module attribution, and copies that still feed one parameter unchanged
_VIEW_OPS = graph_mod._VIEW_OPS | {"AliasBackward0", "CloneBackward0"}


class Intent:
    """Declared intent: loss variable names or backward sites mapped to optimizers."""

    def __init__(self, by_name: dict[str, frozenset[int]]) -> None:
        self.by_name = by_name

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], w: Watch) -> Intent:
        by_name: dict[str, frozenset[int]] = {}
        for key, value in spec.items():
            opts = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
            keys = []
            for o in opts:
                if not isinstance(o, torch.optim.Optimizer):
                    raise LensError(
                        f"watch(intent=...) maps a loss name or site to optimizers; {key!r} maps to {describe(o)}"
                    )
                keys.append(w._opt_for_known(o).key)
            by_name[str(key)] = frozenset(keys)
        return cls(by_name)

    def lookup(self, call: BackwardCall) -> frozenset[int] | None:
        if not self.by_name:
            return None
        import os

        for root in call.roots:
            if root in self.by_name:
                return self.by_name[root]
        for key in (f"{call.site.file}:{call.site.line}", f"{os.path.basename(call.site.file)}:{call.site.line}"):
            if key in self.by_name:
                return self.by_name[key]
        return None


@dataclass
class Term:
    """One additive term of a loss: its root node and the groups/leaves it reaches."""

    root: int
    leaves: set[int]  # leaf ids (parameters) it reaches
    for_groups: frozenset[Any] = frozenset()
    name: str | None = None  # the variable that holds the term (`actor_loss`), when known
    top: int | None = None  # the node just below the addition (``root`` seen through linear ops)


@dataclass
class Crossing:
    """An edge where the graph of a backward leaves the networks it is for."""

    producer: int  # graph node id (the tensor on this edge is where .detach() belongs)
    consumer: int
    kind: str  # "leak" or "pass-through"
    groups: frozenset[Any] = frozenset()  # the groups the producer's subgraph reaches


@dataclass
class Analysis:
    """A call's graph seen through the networks: reachability per node, and its terms."""

    graph: Graph
    leaf_ids: dict[int, int]
    group_of_node: list[Any]  # for leaves: the group; else None
    reach: list[frozenset[Any]]  # groups reachable below each node
    terms: list[Term] = field(default_factory=list)


def analyse(w: Watch, graph: Graph, leaf_ids: dict[int, int]) -> Analysis:
    n = len(graph.nodes)
    group_of_node: list[Any] = [None] * n
    for nid, pid in leaf_ids.items():
        group_of_node[nid] = w.group_of(pid)
    # reachability of groups, leaves first: process nodes in an order where inputs come first
    order = _topo_leaves_first(graph)
    reach: list[frozenset[Any]] = [frozenset()] * n
    cache: dict[frozenset[Any], frozenset[Any]] = {}
    for i in order:
        g = group_of_node[i]
        acc: set[Any] = {g} if g is not None else set()
        for src in graph.inputs_of(i):
            acc.update(reach[src])
        fs = frozenset(acc)
        reach[i] = cache.setdefault(fs, fs)
    a = Analysis(graph, leaf_ids, group_of_node, reach)
    a.terms = _terms(graph, leaf_ids)
    return a


def _topo_leaves_first(graph: Graph) -> list[int]:
    n = len(graph.nodes)
    pending = [len(graph.inputs_of(i)) for i in range(n)]
    ready = [i for i in range(n) if pending[i] == 0]
    order = []
    while ready:
        i = ready.pop()
        order.append(i)
        for dst in graph.consumers_of(i):
            pending[dst] -= 1
            if pending[dst] == 0:
                ready.append(dst)
    return order


def _terms(graph: Graph, leaf_ids: dict[int, int]) -> list[Term]:
    roots = [o.node for o in graph.outputs if o.node is not None]
    term_roots: list[tuple[int, int]] = []  # (root, top): top is the node just below the addition
    stack = [(r, r) for r in roots]
    budget = 64
    while stack and budget:
        budget -= 1
        i, top = stack.pop()
        op = graph.nodes[i].op
        ins = graph.inputs_of(i)
        if op in _ADD_OPS and len(ins) > 1:
            stack.extend((j, j) for j in ins)
        elif op in _LINEAR_OPS and len(ins) == 1 and graph.nodes[ins[0]].kind not in (PARAM, INPUT):
            stack.append((ins[0], top))
        else:
            term_roots.append((i, top))
    term_roots.extend(stack)
    terms = []
    tops: dict[int, int] = {}
    for r, top in term_roots:
        tops.setdefault(r, top)
    for r, top in tops.items():
        up = graph.upstream([r])
        terms.append(Term(r, {leaf_ids[j] for j in up if j in leaf_ids}, top=top))
    return terms


def upstream_groups(a: Analysis, groups: frozenset[Any], term: Term) -> frozenset[Any]:
    """Among ``groups`` reached by ``term``, those furthest upstream (no other one upstream of them).

    Group X is upstream of Y when a node that consumes Y's parameters directly can reach X's
    parameters (Y's forward used X's output).
    """
    graph = a.graph
    reached = _term_groups(a, term)
    cand = [g for g in groups if g in reached]
    if len(cand) <= 1:
        return frozenset(cand)
    consumers: dict[Any, list[int]] = {g: [] for g in cand}
    for nid, g in enumerate(a.group_of_node):
        if g in consumers:
            for c in _direct_consumers(graph, nid):
                consumers[g].append(c)
    upstream_of: dict[Any, set[Any]] = {g: set() for g in cand}  # g -> groups upstream of g
    for g in cand:
        for c in consumers[g]:
            for other in a.reach[c]:
                if other != g and other in upstream_of:
                    upstream_of[g].add(other)
    # the furthest upstream: groups that no candidate is upstream of
    top = [g for g in cand if not upstream_of[g]]
    return frozenset(top or cand)


def _term_groups(a: Analysis, term: Term) -> set[Any]:
    return {a.group_of_node[nid] for nid, pid in a.leaf_ids.items() if pid in term.leaves}


def _direct_consumers(graph: Graph, nid: int) -> list[int]:
    """Op nodes that consume a leaf, looking through view ops (``AddmmBackward0 <- TBackward0 <- w``)."""
    out = []
    stack = list(graph.consumers_of(nid))
    while stack:
        c = stack.pop()
        if graph.nodes[c].op in _VIEW_OPS:
            stack.extend(graph.consumers_of(c))
        else:
            out.append(c)
    return out


def crossings(w: Watch, a: Analysis, for_groups: frozenset[Any], within: set[int] | None = None) -> list[Crossing]:
    """Edges from nodes that reach ``for_groups`` into nodes that do not."""
    graph = a.graph
    out = []
    cache: dict[int, frozenset[Any]] = {}
    for src, dst in graph.edges:
        if within is not None and (src not in within or dst not in within):
            continue
        if not (a.reach[dst] & for_groups) or (a.reach[src] & for_groups):
            continue
        if not a.reach[src]:
            continue  # only inputs below: not a network
        node = graph.nodes[src]
        if node.kind in (PARAM, INPUT):
            out.append(Crossing(src, dst, "pass-through", a.reach[src]))
            continue
        if _is_param_feed(graph, src):
            out.append(Crossing(src, dst, "pass-through", a.reach[src]))
            continue
        net_src = w.net_of_seq(node.seq)
        net_dst = w.net_of_seq(graph.nodes[dst].seq)
        if net_src is not None and net_src == net_dst and a.reach[src] <= _own_groups(w, net_src, cache):
            # the network's own weights, seen through ops of its forward; an op of its forward that
            # reaches another network (`img.view(...)` of a generated batch) is where data enters
            out.append(Crossing(src, dst, "pass-through", a.reach[src]))
            continue
        out.append(Crossing(src, dst, "leak", a.reach[src]))
    return out


def _own_groups(w: Watch, net_key: int, cache: dict[int, frozenset[Any]]) -> frozenset[Any]:
    """The groups (optimizers, else the network) of a network's own parameters."""
    got = cache.get(net_key)
    if got is None:
        net = w.nets().get(net_key)
        got = frozenset(g for g in (w.group_of(p) for p in (net.pids if net is not None else ())) if g is not None)
        cache[net_key] = got
    return got


def _is_param_feed(graph: Graph, nid: int) -> bool:
    """A chain of view ops ending at one parameter."""
    i = nid
    for _ in range(8):
        node = graph.nodes[i]
        if node.kind == PARAM:
            return True
        ins = graph.inputs_of(i)
        if node.op not in _VIEW_OPS or len(ins) != 1:
            return False
        i = ins[0]
    return False


def analysis_of(w: Watch, call: BackwardCall) -> Analysis | None:
    """The call's analysis, made from its graph snapshot the first time it is needed."""
    held = call.analysis
    if isinstance(held, tuple):
        graph, leaf_ids, var_of_node = held
        held = analyse(w, graph, leaf_ids)
        held.var_of_node = var_of_node  # type: ignore[attr-defined]
        call.analysis = held
    return held


def decide(w: Watch, call: BackwardCall, run_opts: frozenset[int]) -> None:
    """Fill ``call.for_opts`` (and ``call.terms`` when split by structure)."""
    declared = w.intent.lookup(call)
    if declared is not None:
        call.for_opts = declared
        return
    reached = frozenset(o for o in (w.param_opt(p) for p in call.reached) if o is not None)
    if call.all_eval:
        # every network it went through was in eval mode: an evaluation (a validation loss, a
        # saliency map), not training, for the optimizers that train those networks in train mode
        evaluated = reached & w.trained_opts
        if evaluated:
            call.for_opts = reached - evaluated
            return
    f = reached & run_opts or reached
    if len(f) <= 1:
        call.for_opts = f
        return
    a = analysis_of(w, call)
    if a is None:
        cached = w.site_terms.get((call.site.file, call.site.line))
        # cached terms serve a call only when they know every parameter it reached (the networks
        # at a site can be made anew, e.g. one per trial, and their ids then differ)
        if cached is not None and call.reached <= {p for t in cached for p in t.leaves}:
            call.terms = cached
            covered = frozenset(o for t in cached for g in t.for_groups for o in [g[1]] if g[0] == "opt")
            seen = frozenset(p for t in cached for p in t.leaves)
            hidden = frozenset(o for o in f if not any(w.param_opt(p) == o for p in seen))
            call.for_opts = covered | hidden
            return
        call.for_opts = f
        return
    groups = frozenset(("opt", o) for o in f)
    names = getattr(a, "var_of_node", {})
    for t in a.terms:
        t.for_groups = upstream_groups(a, groups, t)
        t.name = names.get(t.top) if t.top is not None and t.top in names else names.get(t.root)
    # An optimizer of the run that no term is for, yet that the loss reached, is for the terms that
    # reach it: one loss through two networks that each have an optimizer (encoder and decoder,
    # backbone and head) trains both. Only where another term is meant for that optimizer (the
    # critic's own loss next to `-critic(s, actor(s))`) is what the others leave there pass-through.
    covered = {g for t in a.terms for g in t.for_groups}
    for g in groups - covered:
        for t in a.terms:
            if g in _term_groups(a, t):
                t.for_groups = t.for_groups | {g}
    # Optimizers the backward reached through parts of the graph no walk can see (a reentrant
    # checkpoint, a compiled region) cannot be split by structure: time decides for them.
    seen = {g for t in a.terms for g in _term_groups(a, t)}
    opaque = any(n.kind in (CUSTOM, COMPILED) for n in a.graph.nodes)
    hidden = frozenset(g[1] for g in groups - seen) if opaque else frozenset()
    call.terms = a.terms
    call.for_opts = (frozenset(g[1] for t in a.terms for g in t.for_groups if g[0] == "opt") | hidden) or f
    w.site_terms[(call.site.file, call.site.line)] = a.terms


def is_for(call: BackwardCall, pid: int, opt_key: int) -> bool:
    if call.terms:
        hit = [t for t in call.terms if pid in t.leaves]
        if hit:
            return all(("opt", opt_key) in t.for_groups for t in hit)
    return call.for_opts is None or opt_key in call.for_opts
