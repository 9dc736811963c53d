"""The rules: one module per rule, whose docstring is the page ``lens explain RULE`` prints.

This package also holds the points where the runtime asks for findings (after each backward
call, at each step, when a run of steps ends, on an exception, on exit). Checks read events and
graphs and return findings; they never install hooks and never print.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any


from . import (
    ctx_tensor,
    dead_param,
    detach_leak,
    inplace_saved,
    missing_zero_grad,
    no_grad_path,
    nonleaf_grad,
    nonscalar_backward,
    retained_graph,
    second_backward,
    stray_grad,
)
from .. import intent
from ..findings import Finding, Site, rel_path
from ..naming import tensors_in

if TYPE_CHECKING:
    from ..events import BackwardCall, OptimizerStep
    from ..walk import WalkResult
    from ..watch import Watch

_MODULES: tuple[ModuleType, ...] = (
    second_backward,
    inplace_saved,
    stray_grad,
    detach_leak,
    missing_zero_grad,
    dead_param,
    retained_graph,
    nonscalar_backward,
    no_grad_path,
    nonleaf_grad,
    ctx_tensor,
)

SECTIONS = ("What it does", "Why is this bad?", "Example", "Use instead")


@dataclass(frozen=True)
class Rule:
    """A rule: stable id, severity, one line, and its page of text."""

    id: str
    severity: str
    summary: str
    doc: str

    def section(self, title: str) -> str:
        """The text of one ``## title`` section of the page."""
        m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", self.doc, re.S | re.M)
        return m.group(1).strip() if m else ""

    @property
    def title(self) -> str:
        return self.doc.strip().split("\n\n", 1)[0].replace("\n", " ")


RULES: dict[str, Rule] = {
    m.RULE: Rule(m.RULE, m.SEVERITY, m.SUMMARY, m.__doc__ or "") for m in _MODULES
}


def get_rule(rule_id: str) -> Rule:
    from ..errors import LensError

    try:
        return RULES[rule_id]
    except KeyError:
        raise LensError(f"unknown rule {rule_id!r}; known rules: {', '.join(RULES)}") from None


# ----------------------------------------------------------------------------------------------
# points where the runtime asks for findings
# ----------------------------------------------------------------------------------------------


def after_backward(w: Watch, call: BackwardCall, walk: WalkResult) -> Iterable[Finding]:
    """After a backward call returned normally."""
    f = second_backward.silent(w, call, walk)
    if f is not None:
        yield f
    f = retained_graph.finding(w, call, walk)
    if f is not None:
        yield f
    if walk.stale_saved:
        yield from inplace_saved.from_stale(w, call, walk.stale_saved, failed=False)
    _networks(w, call, walk)
    if walk.graph is not None:
        key = f"{rel_path(call.site.file)}:{call.site.line}"
        if call.occurrence == 0 and w.keep_graphs:
            w.graphs[key] = walk.graph
            call.graph_key = key
        yield from ctx_tensor.findings(call, walk.graph)
        if call.kind == "backward" and call.reached:
            # analysed when judged: by then the optimizers that step these parameters are known
            call.analysis = (walk.graph, walk.leaf_ids, walk.var_of_node)
    if call.kind == "backward" and call.reached:
        w.pending.append(call)
        if len(w.pending) > 256:
            for c in w.pending[:128]:
                c.analysis = None
            del w.pending[:128]


def _networks(w: Watch, call: BackwardCall, walk: WalkResult) -> None:
    """The call's row of the flow table: each network (and optimized tensor of no network) reached,
    stopped at a detach, or not reached."""
    reg = w.reg
    leaves = call.reached or walk.leaves
    reached = {reg.column_of(p) for p in leaves} - {None}
    detached: set[str] = set()
    if walk.graph is not None:
        for n in walk.graph.nodes:
            if n.seq is not None and n.kind != "param":
                r = w.range_of_seq(n.seq)
                if r is not None:
                    detached |= {reg.net_name(k) for k in r.detached_from}
    for name in reg.network_names():
        if name in reached:
            call.networks[name] = "reached"
        elif name in detached:
            call.networks[name] = "detached"
        else:
            call.networks[name] = "not reached"


def on_step(w: Watch, step: OptimizerStep) -> Iterable[Finding]:
    f = missing_zero_grad.finding(w, step)
    if f is not None:
        yield f


def judge_run(w: Watch, run: list[OptimizerStep]) -> Iterable[Finding]:
    """When a run of steps ends: decide intent of the calls before it, then stray-grad/detach-leak."""
    run_opts = frozenset(s.optimizer_key for s in run)
    leaks_by_call: dict[int, list[detach_leak.Leak]] = {}
    still = []
    for c in w.pending:
        if c.for_opts is None:
            reached = intent.reached_opts(w, c)
            if not (reached & run_opts) and w.intent.lookup(c) is None:
                still.append(c)
                continue
            intent.decide(w, c, run_opts)
        a = intent.analysis_of(w, c)
        if a is not None:
            found = detach_leak.leaks(w, c, a)
            leaks_by_call[c.id] = found
            yield from detach_leak.findings(w, c, found)
            if found:
                w.add_highlights(c.graph_key, *detach_leak.highlights(found))
            c.analysis = None
        elif c.occurrence >= w.detail and c.reached:
            # past the detailed occurrences of a site: the leaks found there, where this call wrote
            cached = w.site_leaks.get((c.site.file, c.site.line), [])
            yield from detach_leak.findings(w, c, [lk for lk in cached if lk.pids & c.reached])
    w.pending = still
    for s in run:
        stray: dict[int, list[int]] = {}
        for pid, prov in s.provenance.items():
            for cid in prov:
                c = w.call(cid)
                if c is None:
                    continue
                if c.for_opts is None:
                    intent.decide(w, c, run_opts)
                if not intent.is_for(w, c, pid, s.optimizer_key):
                    stray.setdefault(cid, []).append(pid)
        # one finding per backward site and step: gradient of several iterations of one site
        # (never zeroed) is one stray update, named by its latest call
        by_site: dict[tuple[str, int], tuple[int, set[int]]] = {}
        for cid, pids in sorted(stray.items()):
            c = w.call(cid)
            assert c is not None
            k = (c.site.file, c.site.line)
            prev = by_site.get(k)
            by_site[k] = (cid, (prev[1] if prev else set()) | set(pids))
        for cid, pids in by_site.values():
            c = w.call(cid)
            assert c is not None
            leak = next(iter(leaks_by_call.get(cid, []) or w.site_leaks.get((c.site.file, c.site.line), [])), None)
            yield stray_grad.finding(w, s, c, sorted(pids), leak)
    for cid, found in leaks_by_call.items():
        c = w.call(cid)
        if c is not None and found:
            w.site_leaks.setdefault((c.site.file, c.site.line), found)


_SECOND = "backward through the graph a second time"
_INPLACE = "modified by an inplace operation"
_NONSCALAR = "grad can be implicitly created only for scalar outputs"
_NOGRAD = "does not require grad and does not have a grad_fn"


def explain_exception(w: Watch, exc: BaseException, site: Site | None, ctx: Any) -> Finding | None:
    """A finding that explains an autograd error, or None if it is not one the lens knows."""
    text = str(exc)
    first = text.split("\n", 1)[0].split(". ", 1)[0].rstrip(".")  # PyTorch's first sentence
    call = roots = walk = None
    names: dict[int, str] = {}
    if isinstance(ctx, tuple):
        call, roots, walk, names = ctx
    elif isinstance(ctx, dict):
        roots = ctx.get("roots")
        names = ctx.get("names", {})
    if _SECOND in text and call is not None:
        return second_backward.explain(w, call, walk, first)
    if _SECOND in text:
        return Finding(
            second_backward.RULE, second_backward.SEVERITY,
            "saved tensors were accessed after a backward freed them", site,
            notes=(f"PyTorch: {first}",),
            fix="pass `retain_graph=True` to the earlier backward, or recompute the forward",
        )
    if _INPLACE in text and call is not None:
        if walk is not None and walk.stale_saved:
            return inplace_saved.from_stale(w, call, walk.stale_saved, failed=True, exc_text=first)[0]
        return inplace_saved.explain_plain(w, call, list(roots or []), first)
    if _NONSCALAR in text:
        return nonscalar_backward.finding(site, tensors_in(roots), names)
    if _NOGRAD in text:
        return no_grad_path.finding(w, site, tensors_in(roots), names)
    return None


def dead_params(w: Watch) -> list[Finding]:
    return dead_param.findings(w)
