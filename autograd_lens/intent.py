"""Which optimizer a backward call (or each term of its loss) is *for*, and where its graph crosses
into networks it is not for. See the "Intent" section of DESIGN.md.

1. What the user declared (``watch(intent={"errD": optimizerD})``).
2. By time: the optimizers of the first run of steps after the call, among those whose parameters
   it reached (a parameter may belong to several optimizers).
3. Where time cannot separate them, by structure, over *units*: a unit is a network, or one child
   of a network when every optimizer over that network covers it alone (``agent.actor`` and
   ``agent.critic`` under one Adam). The loss is split at its root additions; each term is for the
   unit furthest upstream that it reaches, and for the units downstream of it that have no
   objective of their own. A downstream unit with an objective of its own (a discriminator trained
   on its own loss) is only passed through. A unit whose output a term regresses towards a target
   (a critic's value loss) and that enters another unit's term as a factor (``logp * (returns -
   values)``) is a baseline there, not what that term trains.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from . import graph as graph_mod
from .errors import LensError, describe
from .graph import COMPILED, CUSTOM, INPUT, PARAM, Graph

if TYPE_CHECKING:
    from .context import Context, Decision
    from .events import BackwardCall

# Ops that add up terms: a loss ``a + b`` or ``a - b`` has one term per input.
_ADD_OPS = frozenset({"AddBackward0", "SubBackward0"})
# Linear single-input ops the split may look through (``0.5 * (a + b)``, ``-(a + b)``, ``(a + b).mean()``).
_LINEAR_OPS = frozenset(
    {"MulBackward0", "DivBackward0", "NegBackward0", "MeanBackward0", "SumBackward0", "AddBackward1", "SubBackward1", "MulBackward1", "DivBackward1"}
)
# the view ops of module attribution, and copies that still feed one parameter unchanged
_VIEW_OPS = graph_mod._VIEW_OPS | {"AliasBackward0", "CloneBackward0"}
# Losses that pull an output towards a target: a critic's value loss.
_REGRESSION_OPS = frozenset({"MseLossBackward0", "SmoothL1LossBackward0", "L1LossBackward0", "HuberLossBackward0"})
_DIFFERENCE_OPS = frozenset({"SubBackward0", "RsubBackward0", "RsubBackward1", "SubBackward1", "AddBackward0"})
# Ops through which a quantity enters a product unchanged in kind (a weight, not a transform of it).
_LINEAR_PATH_OPS = _VIEW_OPS | _DIFFERENCE_OPS | frozenset({
    "NegBackward0", "MulBackward0", "MulBackward1", "DivBackward0", "DivBackward1", "AddBackward1",
    "MeanBackward0", "MeanBackward1", "SumBackward0", "SumBackward1", "IndexBackward0", "GatherBackward0",
    "SelectBackward0", "SliceBackward0", "CatBackward0", "StackBackward0", "SqueezeBackward0",
    "SqueezeBackward1", "SqueezeBackward2", "UnsqueezeBackward0", "ExpandBackward0", "ReshapeAliasBackward0",
    "UnbindBackward0", "SplitBackward0", "UnsafeSplitBackward0",
})
_PRODUCT_OPS = frozenset({"MulBackward0", "DivBackward0"})


class Intent:
    """Declared intent: loss variable names or backward sites mapped to optimizers."""

    def __init__(self, by_name: dict[str, frozenset[int]]) -> None:
        self.by_name = by_name

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], key_of: Callable[[torch.optim.Optimizer], int]) -> Intent:
        by_name: dict[str, frozenset[int]] = {}
        for key, value in spec.items():
            opts = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
            keys = []
            for o in opts:
                if not isinstance(o, torch.optim.Optimizer):
                    raise LensError(
                        f"watch(intent=...) maps a loss name or site to optimizers; {key!r} maps to {describe(o)}"
                    )
                keys.append(key_of(o))
            by_name[str(key)] = frozenset(keys)
        return cls(by_name)

    def lookup(self, call: BackwardCall) -> frozenset[int] | None:
        if not self.by_name:
            return None
        for root in call.roots:
            if root in self.by_name:
                return self.by_name[root]
        for key in (f"{call.site.file}:{call.site.line}", f"{os.path.basename(call.site.file)}:{call.site.line}"):
            if key in self.by_name:
                return self.by_name[key]
        return None


@dataclass
class Term:
    """One additive term of a loss: its root node and the units/leaves it reaches."""

    root: int
    leaves: set[int]  # leaf ids (parameters) it reaches
    for_units: frozenset[str] = frozenset()
    name: str | None = None  # the variable that holds the term (`actor_loss`), when known
    top: int | None = None  # the node just below the addition (``root`` seen through linear ops)
    units: frozenset[str] = frozenset()  # units it reaches
    #: units it reaches only as a baseline: (unit, graph node of the factor that carries it)
    baselines: tuple[tuple[str, int, int], ...] = ()


@dataclass
class Crossing:
    """An edge where the graph of a backward leaves the units it is for."""

    producer: int  # graph node id (the tensor on this edge is where .detach() belongs)
    consumer: int
    kind: str  # "leak" or "pass-through"
    groups: frozenset[Any] = frozenset()  # the units the producer's subgraph reaches


@dataclass
class Analysis:
    """A call's graph seen through the units: reachability per node, and its terms."""

    graph: Graph
    leaf_ids: dict[int, int]
    group_of_node: list[Any]  # for leaves: the unit; else None
    reach: list[frozenset[Any]]  # units reachable below each node
    terms: list[Term] = field(default_factory=list)
    var_of_node: dict[int, str] = field(default_factory=dict)


def analyse(ctx: Context, graph: Graph, leaf_ids: dict[int, int]) -> Analysis:
    n = len(graph.nodes)
    group_of_node: list[Any] = [None] * n
    for nid, pid in leaf_ids.items():
        group_of_node[nid] = ctx.reg.unit_of(pid)
    # reachability of units, leaves first: process nodes in an order where inputs come first
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
    for t in a.terms:
        t.units = _term_units(a, t)
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


def _term_units(a: Analysis, term: Term) -> frozenset[str]:
    return frozenset(a.group_of_node[nid] for nid, pid in a.leaf_ids.items() if pid in term.leaves) - {None}


def upstream_units(a: Analysis, units: Iterable[str], term: Term) -> frozenset[str]:
    """Among ``units`` reached by ``term``, those furthest upstream (no other one upstream of them).

    Unit X is upstream of Y when a node that consumes Y's parameters directly can reach X's
    parameters (Y's forward used X's output).
    """
    cand = [u for u in units if u in term.units]
    if len(cand) <= 1:
        return frozenset(cand)
    upstream_of = _upstream_relation(a, cand)
    top = [u for u in cand if not upstream_of[u]]
    return frozenset(top or cand)


def _upstream_relation(a: Analysis, cand: list[str]) -> dict[str, set[str]]:
    """unit -> the units (among ``cand``) upstream of it."""
    graph = a.graph
    consumers: dict[str, list[int]] = {u: [] for u in cand}
    for nid, u in enumerate(a.group_of_node):
        if u in consumers:
            consumers[u].extend(_direct_consumers(graph, nid))
    upstream_of: dict[str, set[str]] = {u: set() for u in cand}
    for u in cand:
        for c in consumers[u]:
            for other in a.reach[c]:
                if other != u and other in upstream_of:
                    upstream_of[u].add(other)
    return upstream_of


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


def crossings(ctx: Context, a: Analysis, for_units: frozenset[Any], within: set[int] | None = None) -> list[Crossing]:
    """Edges from nodes that reach none of ``for_units`` into nodes that do."""
    graph = a.graph
    out = []
    cache: dict[int, frozenset[Any]] = {}
    for src, dst in graph.edges:
        if within is not None and (src not in within or dst not in within):
            continue
        if not (a.reach[dst] & for_units) or (a.reach[src] & for_units):
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
        net_src = ctx.net_of_seq(node.seq)
        if net_src is not None and net_src == ctx.net_of_seq(graph.nodes[dst].seq):
            # the network's own weights, seen through ops of its forward; an op of its forward that
            # reaches another network (`img.view(...)` of a generated batch) is where data enters.
            # Of a network whose parts are units called on their own, the same within one part.
            unit_src = range_unit(ctx, node.seq)
            own = frozenset({unit_src}) if unit_src is not None else _own_units(ctx, net_src, cache)
            if a.reach[src] <= own and unit_src == range_unit(ctx, graph.nodes[dst].seq):
                out.append(Crossing(src, dst, "pass-through", a.reach[src]))
                continue
        out.append(Crossing(src, dst, "leak", a.reach[src]))
    return out


def range_unit(ctx: Context, seq: int | None, *, inner: bool = False) -> str | None:
    """The unit that made node ``seq`` where a network's parts are units called on their own
    (`model.generator(z)` into `model.discriminator(...)`, parts of one module, each with its
    optimizer); None where it is the network's forward as a whole that made it. With ``inner``,
    also a part that ran inside the network's forward (for naming: `self(z)` running
    `self.generator`)."""
    r = ctx.reg.range_of_seq(seq)
    if not inner:
        while r is not None and r.parent is not None:
            r = r.parent
    while r is not None and not r.path:
        r = r.parent
    if r is None:
        return None
    net = ctx.reg.nets.get(r.net)
    part = r.path.split(".", 1)[0]
    if net is None or part not in net.children or not ctx.reg.is_split(net):
        return None
    return net.qualified(part)


def _own_units(ctx: Context, net_key: int, cache: dict[int, frozenset[Any]]) -> frozenset[Any]:
    """The units of a network's own parameters."""
    got = cache.get(net_key)
    if got is None:
        net = ctx.reg.nets.get(net_key)
        got = frozenset(u for u in (ctx.reg.unit_of(p) for p in (net.pids if net is not None else ())) if u is not None)
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


def analysis_of(ctx: Context, call: BackwardCall) -> Analysis | None:
    """The call's analysis, made from its graph snapshot the first time it is needed."""
    analyses = ctx.knowledge.analyses
    held = analyses.get(call.id)
    if isinstance(held, tuple):
        graph, leaf_ids, var_of_node = held
        held = analyse(ctx, graph, leaf_ids)
        held.var_of_node = var_of_node
        analyses[call.id] = held
    return held


# ----------------------------------------------------------------------------------------------
# deciding
# ----------------------------------------------------------------------------------------------


def reached_opts(ctx: Context, call: BackwardCall) -> frozenset[int]:
    """Every optimizer holding a parameter the call wrote `.grad` of."""
    memo = ctx.knowledge.reached
    key = call.reached
    got = memo.get(key)
    if got is not None and got[0] == ctx.reg.generation:
        return got[1]
    out: set[int] = set()
    for p in call.reached:
        out.update(ctx.reg.opts_of(p))
    result = frozenset(out)
    if len(memo) > 256:
        memo.clear()
    memo[key] = (ctx.reg.generation, result)
    return result


def units_of_opts(ctx: Context, pids: Iterable[int], opts: frozenset[int]) -> frozenset[str]:
    """The units of the parameters ``pids`` that one of ``opts`` steps."""
    reg = ctx.reg
    out = set()
    for p in pids:
        if opts.intersection(reg.opts_of(p)):
            u = reg.unit_of(p)
            if u is not None:
                out.add(u)
    return frozenset(out)


def decide(ctx: Context, call: BackwardCall, run_opts: frozenset[int]) -> None:
    """Decide which optimizers ``call`` is for (and its terms when split by structure): the call's
    :class:`context.Decision`."""
    d = ctx.decision(call)
    memo = None
    if call.id not in ctx.knowledge.analyses:
        # past a site's detailed occurrences the same question comes every iteration: the same site,
        # the same parameters reached, the same optimizers stepping, nothing new registered
        site = (call.site.file, call.site.line)
        terms = ctx.knowledge.site_terms.get(site)
        memo = (site, call.reached, run_opts, call.all_eval, call.within, ctx.reg.generation, len(ctx.trained_opts),
                id(terms))
        got = ctx.knowledge.memo.get(memo)
        if got is not None:
            d.for_opts, d.terms, _ = got
            return
    _decide(ctx, call, run_opts, d)
    if memo is not None:
        if len(ctx.knowledge.memo) > 1024:
            ctx.knowledge.memo.clear()
        # the entry holds the site's terms: their id in its key cannot be another list's while it lives
        ctx.knowledge.memo[memo] = (d.for_opts, d.terms, terms)


def _decide(ctx: Context, call: BackwardCall, run_opts: frozenset[int], d: Decision) -> None:
    declared = ctx.intent.lookup(call)
    if declared is not None:
        d.for_opts = declared
        return
    if call.within is not None:  # run by `optimizer.step(closure)`: for that optimizer
        d.for_opts = frozenset({call.within})
        return
    reached = reached_opts(ctx, call)
    if call.all_eval:
        # every network it went through was in eval mode: an evaluation (a validation loss, a
        # saliency map), not training, for the optimizers that train those networks in train mode
        evaluated = reached & ctx.trained_opts
        if evaluated:
            d.for_opts = reached - evaluated
            return
    f = reached & run_opts or reached
    units = units_of_opts(ctx, call.reached, f)
    if len(units) <= 1 or any(ctx.reg.is_joint(o) for o in f):
        d.for_opts = f
        if len(units) == 1:  # the one unit this loss trains has an objective of its own
            _note_own(ctx, next(iter(units)), call, units)
        return
    a = analysis_of(ctx, call)
    if a is None:
        cached = ctx.knowledge.site_terms.get((call.site.file, call.site.line))
        # cached terms serve a call only when they know every parameter it reached (the networks
        # at a site can be made anew, e.g. one per trial, and their ids then differ)
        if cached is not None and call.reached <= {p for t in cached for p in t.leaves}:
            d.terms = cached if _relevant(cached) else None
            covered = _opts_of_units(ctx, call.reached, cached, f)
            seen = frozenset(p for t in cached for p in t.leaves)
            hidden = frozenset(o for o in f if not any(o in ctx.reg.opts_of(p) for p in seen))
            d.for_opts = (covered | hidden) or f
            return
        d.for_opts = f
        return
    _split(ctx, a, units, call)
    # Optimizers the backward reached through parts of the graph no walk can see (a reentrant
    # checkpoint, a compiled region) cannot be split by structure: time decides for them.
    seen_units = {u for t in a.terms for u in t.units}
    opaque = any(n.kind in (CUSTOM, COMPILED) for n in a.graph.nodes)
    hidden = frozenset(
        o for o in f if opaque and not (units_of_opts(ctx, call.reached, frozenset({o})) & seen_units)
    )
    d.terms = a.terms if _relevant(a.terms) else None
    d.for_opts = (_opts_of_units(ctx, call.reached, a.terms, f) | hidden) or f
    ctx.knowledge.site_terms[(call.site.file, call.site.line)] = a.terms


def _relevant(terms: list[Term]) -> bool:
    """Whether the split changes a verdict: some term reaches a unit it is not for (pass-through, a
    baseline). When every term trains all it reaches, the optimizers decide alone."""
    return any(t.units - t.for_units for t in terms)


def _split(ctx: Context, a: Analysis, units: frozenset[str], call: BackwardCall) -> None:
    """Decide, per term, the units it trains.

    A term trains the units furthest upstream it reaches (its target) and the units downstream of
    them, except those with an objective of their own: units that another term of this loss, or
    another loss since this site's previous call, trains with a different target (a discriminator
    trained on its own loss, under the generator's loss). A head trained alone in an earlier stage
    (backbone frozen) is not one; heads that every term reaches through the same trunk are not.
    """
    names = a.var_of_node
    tops: list[frozenset[str]] = []
    first: list[frozenset[str]] = []  # what each term would train without the own-objective gate
    for t in a.terms:
        top = upstream_units(a, units, t)
        tops.append(top)
        first.append(frozenset(t.units & units) | top)
        t.name = names.get(t.top) if t.top is not None and t.top in names else names.get(t.root)
    prior = _own_since(ctx, call)
    for i, t in enumerate(a.terms):
        own = {u for j, f in enumerate(first) if tops[j] != tops[i] for u in f}
        own |= {u for u, top in prior if top != tops[i]}
        cands = t.units & units
        trained = set(tops[i]) | {u for u in cands - tops[i] if u not in own}
        baselines = _baselines(ctx, a, t, trained, i) if len(trained) > 1 else []
        for u, _producer, _consumer in baselines:
            trained.discard(u)
        t.baselines = tuple(baselines)
        t.for_units = frozenset(trained)
    for i, t in enumerate(a.terms):
        for u in first[i]:
            _note_own(ctx, u, call, tops[i])


def _note_own(ctx: Context, unit: str, call: BackwardCall, top: frozenset[str]) -> None:
    recs = ctx.knowledge.own_units.setdefault(unit, [])
    recs.append(((call.site.file, call.site.line), call.id, top))
    if len(recs) > 16:
        del recs[:8]


def _own_since(ctx: Context, call: BackwardCall) -> set[tuple[str, frozenset[str]]]:
    """(unit, target) that another backward site trained since this site's previous call."""
    if not call.prev:
        return set()
    site = (call.site.file, call.site.line)
    return {
        (u, top) for u, recs in ctx.knowledge.own_units.items()
        for s, cid, top in recs if s != site and call.prev < cid < call.id
    }


def _opts_of_units(ctx: Context, pids: Iterable[int], terms: list[Term], f: frozenset[int]) -> frozenset[int]:
    reg = ctx.reg
    out: set[int] = set()
    wanted = {u for t in terms for u in t.for_units}
    for p in pids:
        if reg.unit_of(p) in wanted:
            out.update(o for o in reg.opts_of(p) if o in f)
    return frozenset(out)


def _baselines(ctx: Context, a: Analysis, term: Term, trained: set[str], index: int) -> list[tuple[str, int, int]]:
    """Units that enter ``term`` only as a factor they should not be trained through.

    A product (or quotient) in the term whose two sides reach different units in parallel (neither
    upstream of the other), where one side carries a unit's output through linear ops only
    (``returns - values``) and another term regresses that output towards a target (the value
    loss): that side is a baseline (an advantage), and its gradient into the unit is a leak.
    Returns (unit, factor node, product node) for each.
    """
    graph = a.graph
    found: dict[str, tuple[str, int, int]] = {}
    region = graph.upstream([term.root])
    regressions = None
    for m in region:
        node = graph.nodes[m]
        if node.op not in _PRODUCT_OPS or ctx.net_of_seq(node.seq) is not None:
            continue  # only the loss's own arithmetic, outside every network's forward
        ins = list(dict.fromkeys(graph.inputs_of(m)))
        if len(ins) != 2:
            continue
        r1, r2 = a.reach[ins[0]] & trained, a.reach[ins[1]] & trained
        common = r1 & r2
        s1, s2 = r1 - common, r2 - common
        if not s1 or not s2:
            continue
        for side, units_side, other in ((ins[0], s1, s2), (ins[1], s2, s1)):
            if len(units_side) != 1:
                continue
            (u,) = units_side
            if u in found and (found[u][1] in a.var_of_node or side not in a.var_of_node):
                continue  # keep one factor per unit; a named one (`advantage`) when there is one
            if regressions is None:
                regressions = _regressions(ctx, a, index)
            # regressed elsewhere, on its own (a shared trunk below it may be reached too)
            if any(u in r and not (r & other) for r in regressions) and _linear_path(a, side, u):
                found[u] = (u, side, m)
    return list(found.values())


def _regressions(ctx: Context, a: Analysis, skip: int) -> list[frozenset[str]]:
    """The units below each regression (an output pulled towards a target) in the other terms."""
    graph = a.graph
    out: list[frozenset[str]] = []
    for i, t in enumerate(a.terms):
        if i == skip:
            continue
        for nid in graph.upstream([t.root]):
            node = graph.nodes[nid]
            if ctx.net_of_seq(node.seq) is not None:
                continue
            if node.op in _REGRESSION_OPS or (node.op == "PowBackward0" and _is_difference(a, nid)):
                out.append(a.reach[nid])
    return out


def _is_difference(a: Analysis, nid: int) -> bool:
    ins = a.graph.inputs_of(nid)
    return len(ins) == 1 and a.graph.nodes[ins[0]].op in _DIFFERENCE_OPS


def _linear_path(a: Analysis, start: int, unit: str) -> bool:
    """Whether ``start`` carries ``unit``'s output through linear ops only."""
    graph = a.graph
    stack = [start]
    seen: set[int] = set()
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        node = graph.nodes[i]
        if node.module and (node.module == unit or node.module.startswith(unit + ".")):
            return True  # reached the unit's own forward
        if node.op not in _LINEAR_PATH_OPS:
            continue
        stack.extend(j for j in graph.inputs_of(i) if unit in a.reach[j])
    return False


def is_for(ctx: Context, call: BackwardCall, pid: int, opt_key: int) -> bool:
    """Whether gradient of ``call`` in parameter ``pid`` is meant for a step of ``opt_key``."""
    d = ctx.decision(call)
    if d.terms:
        hit = [t for t in d.terms if pid in t.leaves]
        if hit:
            unit = ctx.reg.unit_of(pid)
            return opt_key in (d.for_opts or ()) and all(unit in t.for_units for t in hit)
    return d.for_opts is None or opt_key in d.for_opts
