"""The pass over a graph that runs before the detailed backward calls (the first occurrences of
each site; see :mod:`recorder`).

One iterative walk of ``next_functions`` that
- stamps every node with the call (``node.metadata``), and reads the stamps of earlier calls: which
  earlier backward already went through (and freed) part of this graph;
- registers the post-accumulate-grad hook on every leaf it meets (once per leaf);
- finds nodes created before an ``optimizer.step()`` that saved a parameter the step then
  modified (a stale saved tensor; fused optimizers do not bump versions, so PyTorch is silent);
- takes a full :class:`Graph` snapshot for the analysis and the drawings.

Nodes are held only during the walk; the result keeps ids, names and numbers.

Imports: :mod:`graph`, and the recorder's type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .graph import Graph, _saved_attrs

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


def walk_graph(
    w: Recorder,
    roots: list[torch.Tensor],
    call: BackwardCall,
    detail: bool,
    local_names: dict[int, str],
) -> WalkResult:
    res = WalkResult()
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
