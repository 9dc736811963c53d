"""The pass over a graph that runs before the detailed backward calls (the first occurrences of
each site; see :mod:`recorder`).

One iterative walk of ``next_functions`` that
- stamps every node the call runs with the call (``node.metadata``), and reads the stamps of
  earlier calls: which earlier backward already went through (and freed) part of this graph (a
  call given ``inputs`` runs only the part above them);
- registers the post-accumulate-grad hook on every leaf it meets (once per leaf);
- finds nodes it runs, created before an ``optimizer.step()``, that saved a parameter the step
  then modified (a stale saved tensor; fused optimizers do not bump versions, so PyTorch is silent);
- takes a full :class:`Graph` snapshot for the analysis and the drawings.

Nodes are held only during the walk; the result keeps ids, names and numbers.

Imports: :mod:`graph`, and the recorder's type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .graph import Graph, _released, _saved_attrs

if TYPE_CHECKING:
    from .events import BackwardCall
    from .recorder import Recorder



#: Nodes the walk visits at most. Once Python has touched ~50,000 nodes of a long chain, freeing it
#: overflows the C stack in PyTorch's destructors (torch 2.13), so very large graphs are
#: only walked in part; the stamps and checks then cover the part nearest the loss.
WALK_LIMIT = 20_000


@dataclass
class SharedTop:
    """The top of a part of this graph that an earlier backward went through."""

    op: str
    seq: int
    var: str | None
    node_id: int = 0  # id() of the node (alive while this graph is)
    consumer_seq: int | None = None  # the node of this graph that consumes it
    net: int | None = None  # the network whose parameters lie below it (found after a failure)
    below: frozenset[int] = frozenset()  # ids of the leaves below it (found after a failure)


@dataclass
class StaleSaved:
    """A saved parameter modified by a step after the node saved it."""

    pid: int
    saved: str
    op: str
    step_index: int
    node_seq: int


@dataclass
class WalkResult:
    prev: dict[int, int] = field(default_factory=dict)  # earlier call id -> nodes it stamped here
    tops: dict[int, list[SharedTop]] = field(default_factory=dict)  # earlier call id -> shared tops
    root_reused: set[int] = field(default_factory=set)  # earlier non-retained calls whose root is here
    leaves: set[int] = field(default_factory=set)
    stale_saved: list[StaleSaved] = field(default_factory=list)
    graph: Graph | None = None
    leaf_ids: dict[int, int] = field(default_factory=dict)  # graph node id -> leaf id
    var_of_node: dict[int, str] = field(default_factory=dict)  # graph node id -> variable name
    nodes: int = 0
    truncated: bool = False


def _root_nodes(roots: list[torch.Tensor]) -> list[Any]:
    out = []
    for t in roots:
        fn = t.grad_fn
        if fn is None and t.requires_grad:
            fn = torch.autograd.graph.get_gradient_edge(t).node
        if fn is not None:
            out.append(fn)
    return out


def _executed(roots: list[Any], inputs: Sequence[Any], accumulate: bool) -> tuple[set[int], list[Any]] | None:
    """The nodes the engine runs for a call given ``inputs`` (``autograd.grad(loss, inputs)``,
    ``backward(inputs=...)``): those with an input's node below them, and, when the call accumulates,
    the inputs' nodes themselves (``autograd.grad`` only captures the gradient flowing into them).
    The rest of the graph is neither run nor freed, and its saved tensors are not checked. Returns
    the nodes' ids and the nodes (held while the ids are used); None for a graph too large to tell."""
    targets: set[int] = set()
    held: list[Any] = []
    for t in inputs:
        try:  # a tensor, or a `GradientEdge`
            node = (torch.autograd.graph.get_gradient_edge(t) if isinstance(t, torch.Tensor) else t).node
        except Exception:
            return None  # (one PyTorch refuses, and says so itself)
        if node is not None:
            targets.add(id(node))
            held.append(node)
    parents: dict[int, list[int]] = {}
    stack = list(roots)
    seen: set[int] = set()
    while stack:
        fn = stack.pop()
        k = id(fn)
        if k in seen:
            continue
        if len(seen) >= WALK_LIMIT:
            return None
        seen.add(k)
        held.append(fn)
        for nxt, _ in fn.next_functions:
            if nxt is not None:
                parents.setdefault(id(nxt), []).append(k)
                if id(nxt) not in seen:
                    stack.append(nxt)
    out = set(targets) if accumulate else set()
    todo = [p for t in targets for p in parents.get(t, ())]
    while todo:
        k = todo.pop()
        if k not in out:
            out.add(k)
            todo.extend(parents.get(k, ()))
    return out, held


def walk_graph(
    w: Recorder,
    roots: list[torch.Tensor],
    call: BackwardCall,
    detail: bool,
    local_names: dict[int, str],
    inputs: Sequence[Any] | None = None,
    accumulate: bool = True,
) -> WalkResult:
    """Walk the graph of ``roots`` for ``call`` (see the module's docstring). With ``inputs``, only
    the nodes the engine runs are stamped, read for earlier stamps and checked for stale saved
    tensors (:func:`_executed`); leaves are collected from the whole graph."""
    res = WalkResult()
    runs = _executed(_root_nodes(roots), inputs, accumulate) if inputs else None
    ran, held = runs if runs is not None else (None, None)
    markers = w.step_markers()
    last_marker = markers[-1][0] if markers else -1
    stamp_value = (call.id, call.retain_graph)
    STAMP, ROOT = w.stamp_keys
    parameter = torch.nn.Parameter
    stack: list[tuple[Any, int, int | None]] = [(fn, 0, None) for fn in _root_nodes(roots)]
    seen: set[int] = set()
    old_nodes: list[Any] = []
    prev = res.prev
    tops = res.tops
    while stack:
        fn, parent_prev, parent_seq = stack.pop()
        k = id(fn)
        if k in seen:
            continue
        if len(seen) >= WALK_LIMIT:
            res.truncated = True
            break
        seen.add(k)
        nxt_fns = fn.next_functions
        if not nxt_fns and type(fn).__name__ == "AccumulateGrad":
            # leaves are shared by every graph and never freed: no stamps
            var = fn.variable
            res.leaves.add(id(var))
            if isinstance(var, parameter) or w.param_opt(id(var)) is not None:
                w.ensure_param(var)  # not for per-step inputs that require grad
            continue
        if ran is not None and k not in ran:
            for nxt, _ in nxt_fns:  # (for the leaves below)
                if nxt is not None and id(nxt) not in seen:
                    stack.append((nxt, 0, None))
            continue
        md = fn.metadata
        seq = fn._sequence_nr()
        st = md.get(STAMP)
        mine = 0
        if st is not None:
            mine = st[0]
            prev[mine] = prev.get(mine, 0) + 1
            if mine != parent_prev:
                lst = tops.setdefault(mine, [])
                if len(lst) < 4:
                    lst.append(SharedTop(type(fn).__name__, seq, local_names.get(k), k, parent_seq))
            r = md.get(ROOT)
            if r is not None:
                res.root_reused.add(r)
        md[STAMP] = stamp_value
        if last_marker >= 0 and seq < last_marker:
            old_nodes.append(fn)
        for nxt, _ in nxt_fns:
            if nxt is not None and id(nxt) not in seen:
                stack.append((nxt, mine, seq))
    stack.clear()
    fn = None
    del held  # (the nodes of `ran`, held while their ids were compared)
    res.nodes = len(seen)
    if old_nodes:
        res.stale_saved = _stale_saved(w, old_nodes, markers)
    old_nodes.clear()
    if detail and not res.truncated:
        index: dict[int, int] = {}
        res.graph = w.snapshot(roots, call, res.leaf_ids, local_names, index)
        for fid, nid in index.items():
            name = local_names.get(fid)
            if name is not None:
                res.var_of_node[nid] = name
    return res


def _stale_saved(w: Recorder, nodes: list[Any], markers: list[tuple[int, int, frozenset[int]]]) -> list[StaleSaved]:
    """Saved parameters that a step modified after the node was created."""
    ptr_to_pid: dict[tuple[str, int], int] = {}
    for pid, st in w.param_states().items():
        p = st.ref()
        if p is not None:
            try:
                ptr_to_pid[(str(p.device), p.data_ptr())] = pid
            except RuntimeError:
                pass
    out: list[StaleSaved] = []
    for fn in nodes:
        seq = fn._sequence_nr()
        for attr in _saved_attrs(type(fn)):
            raw = getattr(fn, attr)
            for sv in raw if isinstance(raw, (list, tuple)) else (raw,):
                data = sv.data
                if not isinstance(data, torch.Tensor):
                    continue
                try:
                    pid = ptr_to_pid.get((str(data.device), data.data_ptr()))
                except RuntimeError:
                    continue
                if pid is None:
                    continue
                for mseq, step_index, pids in markers:
                    if mseq > seq and pid in pids:
                        out.append(StaleSaved(pid, attr[11:], type(fn).__name__, step_index, seq))
                        break
    return out


def _below(tops: list[Any]) -> set[int]:
    """Ids of the leaves below the nodes ``tops``."""
    out: set[int] = set()
    todo, done = list(tops), set()
    while todo and len(done) < WALK_LIMIT:
        f = todo.pop()
        if id(f) in done:
            continue
        done.add(id(f))
        nf = f.next_functions
        if not nf and type(f).__name__ == "AccumulateGrad":
            out.add(id(f.variable))
        todo.extend(n for n, _ in nf if n is not None)
    return out


def mark_below(roots: list[torch.Tensor], walk: WalkResult) -> None:
    """After a failure on freed buffers, for the shared tops the walk before it found: the leaves
    below each (found again by operation and sequence number)."""
    wanted = {(t.op, t.seq): t for tops in walk.tops.values() for t in tops}
    if not wanted:
        return
    stack = _root_nodes(roots)
    seen: set[int] = set()
    while stack and wanted and len(seen) < WALK_LIMIT:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        nxt = fn.next_functions
        if not nxt:
            continue
        top = wanted.pop((type(fn).__name__, fn._sequence_nr()), None)
        if top is not None:
            top.below = frozenset(_below([fn]))
        stack.extend(n for n, _ in nxt if n is not None and id(n) not in seen)


def after_failure(w: Recorder, roots: list[torch.Tensor], call: BackwardCall, names: dict[int, str],
                  root_seq: Callable[[BackwardCall], int | None]) -> WalkResult | None:
    """A call that was not walked failed on freed buffers: the parts of its graph that an earlier
    call freed (their tops, named by the variables that hold them), and that call, inferred from the
    graph as it is now: the latest call before it, not retained, that reached parameters below
    released buffers. ``root_seq(c)``: the sequence number of ``c``'s root, where its loss is still
    held; nodes made after it can only have been freed by the failing call itself (as far as it ran).
    None when it cannot be told."""
    stack: list[tuple[Any, Any]] = [(fn, None) for fn in _root_nodes(roots)]
    seen: set[int] = set()
    freed: list[tuple[Any, int, int | None]] = []  # (node, its sequence number, its consumer's)
    consumer: dict[int, Any] = {}  # node id -> the node that consumes it (the first one met)
    leaves: set[int] = set()
    while stack and len(seen) < WALK_LIMIT:
        fn, parent = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        consumer[id(fn)] = parent
        parent_seq = parent._sequence_nr() if parent is not None else None
        nxt = fn.next_functions
        if not nxt and type(fn).__name__ == "AccumulateGrad":
            leaves.add(id(fn.variable))
            continue
        seq = fn._sequence_nr()
        attrs = _saved_attrs(type(fn))
        if attrs and any(_released(fn, a) for a in attrs):
            freed.append((fn, seq, parent_seq))
        for n, _ in nxt:
            if n is not None and id(n) not in seen:
                stack.append((n, fn))
    stack.clear()
    if not freed:
        consumer.clear()
        return None

    def name_of(fn: Any) -> str | None:
        """The variable holding ``fn``'s output, or a view of it (`img.view(...)`, which saves nothing)."""
        while fn is not None:
            name = names.get(id(fn))
            if name is not None:
                return name
            fn = consumer.get(id(fn))
            if fn is None or _saved_attrs(type(fn)):
                return None
        return None

    def tops_until(cutoff: int | None) -> list[tuple[Any, int, int | None]]:
        kept = [x for x in freed if cutoff is None or x[1] <= cutoff]
        ids = {x[1] for x in kept}
        return [x for x in kept if x[2] is None or x[2] not in ids]

    earlier = None
    tops: list[tuple[Any, int, int | None]] = []
    for c in w.log.recent_calls():
        if (c.id >= call.id or c.retain_graph or c.kind != "backward"
                or not isinstance(c.reached, (set, frozenset))):
            continue
        cutoff = root_seq(c)
        cand = tops_until(cutoff)
        if cand and c.reached & _below([x[0] for x in cand]):
            earlier, tops = c, cand
            break
    if earlier is None:
        return None
    shared = []
    for fn, seq, parent_seq in tops[:4]:
        under = _below([fn])
        nets = {w.reg.net_of_param(p) for p in under} - {None}
        shared.append(SharedTop(type(fn).__name__, seq, name_of(fn), id(fn), parent_seq,
                                nets.pop() if len(nets) == 1 else None, frozenset(under)))
    n_freed = len([x for x in freed if x[1] <= max(t.seq for t in shared)])
    freed.clear()
    tops.clear()
    consumer.clear()
    return WalkResult(prev={earlier.id: n_freed}, tops={earlier.id: shared}, leaves=leaves)
