"""The judge: asks the checks for findings at the points where they can be decided.

After each backward call, at each step, when a run of optimizer steps ends (the next backward, a
report, the end of the watch), on an error and on exit. It holds the analysis state (pending calls,
decisions, what each backward site taught: :class:`context.Knowledge`), the findings (one per rule
and site, counted) and the graph snapshots with their highlights. It reads the event log and the
registry through a :class:`context.Context` and never touches PyTorch.

Imports: :mod:`checks` (the rules), :mod:`intent`, :mod:`context`, :mod:`events`, :mod:`findings`,
:mod:`graph` (types), :mod:`registry` (types). Not the recorder, not the watch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import intent
from .checks import (
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
from .context import Context, Knowledge
from .findings import SECOND_BACKWARD_ERROR, Finding, Site, finding_text, rel_path
from .naming import tensors_in

if TYPE_CHECKING:
    from .events import BackwardCall, EventLog, HeldGraphs, OptimizerStep
    from .graph import Graph
    from .registry import Registry
    from .walk import WalkResult

_INPLACE = "modified by an inplace operation"
_NONSCALAR = "grad can be implicitly created only for scalar outputs"
_NOGRAD = "does not require grad and does not have a grad_fn"


class Judge:
    """Findings from events, as they come; see the module docstring."""

    def __init__(
        self,
        log: EventLog,
        reg: Registry,
        *,
        detail: int,
        keep_graphs: bool = True,
        on_finding: Callable[[Finding], None] | None = None,
        internal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.log = log
        self.reg = reg
        self.knowledge = Knowledge()
        self.ctx = Context(log, reg, self.knowledge, detail=detail)
        self.keep_graphs = keep_graphs
        self.on_finding = on_finding
        self._internal = internal or (lambda exc: None)
        self.findings: list[Finding] = []
        self._finding_at: dict[Any, int] = {}  # finding key -> index in self.findings
        self.graphs: dict[str, Graph] = {}
        self.pending: list[BackwardCall] = []  # calls not yet judged by a run of steps
        self.run: list[OptimizerStep] = []  # steps since the last backward call
        self._lock = threading.RLock()
        self._interned: dict[Any, Any] = {}
        self._added = 0  # findings added (counted ones too): a run that added none was clean
        # the last run closed was judged clean (nothing found, no call left undecided), also one
        # that later runs cannot be known by (a call before it was detailed)
        self.settled = False
        self._clean: dict[Any, tuple[tuple[frozenset[str], frozenset[int]], ...]] = {}

    @property
    def intent(self) -> Any:
        return self.ctx.intent

    @intent.setter
    def intent(self, value: Any) -> None:
        self.ctx.intent = value

    # ------------------------------------------------------------------------------------------
    # findings
    # ------------------------------------------------------------------------------------------
    def add(self, f: Finding | None) -> None:
        """Keep one finding per rule and site, counted (a loop repeats a bug every iteration)."""
        if f is None:
            return
        self._added += 1
        with self._lock:
            at = self._finding_at.get(f.key)
            first = at is None
            if first:
                self._finding_at[f.key] = len(self.findings)
                self.findings.append(f)
            else:
                kept = self.findings[at]
                self.findings[at] = kept.counted(kept.count + f.count)
        if first and self.on_finding is not None:
            try:
                self.on_finding(f)
            except Exception:
                pass

    def add_all(self, found: Iterable[Finding]) -> None:
        for f in found:
            self.add(f)

    def add_highlights(self, key: str | None, *highlights: Any) -> None:
        if key and key in self.graphs and highlights:
            self.graphs[key] = self.graphs[key].with_highlights(*highlights)

    def keep_graph(self, key: str, graph: Graph, *, replace: bool = True) -> None:
        if not self.keep_graphs:
            return
        if replace or key not in self.graphs:
            self.graphs[key] = graph

    # ------------------------------------------------------------------------------------------
    # the points where findings are decided
    # ------------------------------------------------------------------------------------------
    def after_backward(self, call: BackwardCall, walk: WalkResult) -> None:
        """After a backward call returned normally."""
        if walk.graph is None and not walk.root_reused and not walk.prev and not walk.stale_saved:
            if call.kind == "backward" and call.reached:  # past the detail: nothing to read in a walk
                self.pending.append(call)
                if len(self.pending) > 256:
                    del self.pending[:128]
            return
        ctx = self.ctx
        self.add(second_backward.silent(ctx, call, walk))
        self.add(retained_graph.finding(ctx, call, walk))
        if walk.stale_saved:
            self.add_all(inplace_saved.from_stale(ctx, call, walk.stale_saved, failed=False))
        if walk.graph is not None:
            if call.graph_key is not None:
                self.keep_graph(call.graph_key, walk.graph, replace=False)
            self.add_all(ctx_tensor.findings(call, walk.graph))
            if call.kind == "backward" and call.reached:
                # analysed when judged: by then the optimizers that step these parameters are known
                self.knowledge.analyses[call.id] = (walk.graph, walk.leaf_ids, walk.var_of_node)
        if call.kind == "backward" and call.reached:
            self.pending.append(call)
            if len(self.pending) > 256:
                for c in self.pending[:128]:
                    self.knowledge.analyses.pop(c.id, None)
                del self.pending[:128]

    def held(self, call: BackwardCall, held: HeldGraphs, alive: int, retained: bool) -> None:
        self.add(retained_graph.held(call, held, alive, retained))

    def on_step(self, step: OptimizerStep) -> None:
        self.run.append(step)
        self.add(missing_zero_grad.finding(self.ctx, step))
        self.add(dead_param.discarded(self.ctx, step))

    def warning(self, message: object, filename: str, lineno: int, *, optimizer: str | None = None,
                params: tuple[str, ...] = (), op: str | None = None, function: str = "") -> None:
        self.add(nonleaf_grad.from_warning(message, filename, lineno, optimizer=optimizer, params=params, op=op,
                                           function=function))

    def close_run(self) -> bool:
        """A run of steps ended: decide the intent of the calls before it, then stray-grad and
        detach-leak; then the steps keep only what the report needs. True when the run had the
        shape of a run judged clean before (and so is clean), or was judged clean now and has a shape
        that later runs are known by.

        Past the detailed occurrences of its sites, a run usually has the shape of one judged before
        (the same optimizers, the same backward sites before it, each parameter's gradient from the
        same sites at the same distance): when that one was clean, so is this one, and what the
        report keeps of it is the same."""
        self.settled = False
        if not self.run:
            return False
        run, self.run = self.run, []
        shape = self._shape(run)
        clean = self._clean.get(shape) if shape is not None else None
        if clean is not None:
            self.settled = True
            for step, (sources, stepped) in zip(run, clean):
                step.sources, step.stepped = sources, stepped
                opt = self.reg.opts.get(step.optimizer_key)
                if opt is not None and not stepped <= opt.with_grad:
                    opt.with_grad |= stepped
                self.log.settle_step(step)
            self.pending = []
            return True
        added = self._added
        try:
            self.add_all(list(self._judge_run(run)))
        except Exception as exc:
            self._internal(exc)
        for step in run:
            cids = {cid for prov, _ in step.groups for cid in prov}
            step.sources = self._intern(frozenset(
                c.site_key for c in (self.log.call(cid) for cid in cids) if c is not None
            ))
            step.stepped = self._intern(frozenset(step.provenance))
            opt = self.reg.opts.get(step.optimizer_key)
            if opt is not None:
                opt.with_grad |= step.stepped
            self.log.settle_step(step)
        self.knowledge.forget_calls(self.log.n_calls - self.log.window)
        self.settled = self._added == added and not self.pending
        if shape is not None and self.settled:
            if len(self._clean) > 256:
                self._clean.clear()
            self._clean[shape] = tuple((s.sources, s.stepped) for s in run)
            return True  # judged now, clean, and known from now on
        return False

    @property
    def added(self) -> int:
        """Findings added so far, counted ones too (unchanged over a stretch: nothing was found)."""
        return self._added

    @property
    def open_run(self) -> bool:
        """Whether steps were taken since the last backward call (the next one closes their run)."""
        return bool(self.run)

    def resume(self, pending: list[BackwardCall], run: list[OptimizerStep]) -> None:
        """Take up the calls and the open run of steps as the steady cycles left them (the events
        were made by the recorder when it left them: :mod:`steady`)."""
        self.pending = list(pending)
        self.run = list(run)

    def _shape(self, run: list[OptimizerStep]) -> tuple[Any, ...] | None:
        """What decides a run's verdict, with call ids made relative; None while a call before it
        is detailed (its graph analysis is still to come)."""
        log = self.log
        for c in self.pending:
            if c.detailed or not isinstance(c.reached, frozenset):
                return None
        base = log.n_calls
        pending = tuple((c.site_key, c.reached, c.all_eval, c.within, base - c.id) for c in self.pending)
        steps = []
        for s in run:
            groups = []
            for prov, pids in s.groups:
                calls = []
                for cid in prov:
                    c = log.call(cid)
                    if c is None:
                        return None
                    if c.detailed or not isinstance(c.reached, frozenset):
                        return None
                    calls.append((c.site_key, c.reached, c.all_eval, c.within, base - cid))
                groups.append((tuple(calls), len(pids)))
            steps.append((s.optimizer_key, s.site, tuple(groups)))
        return (pending, tuple(steps), self.reg.generation, len(self.reg.trained_opts))

    def _judge_run(self, run: list[OptimizerStep]) -> Iterable[Finding]:
        ctx = self.ctx
        run_opts = frozenset(s.optimizer_key for s in run)
        leaks_by_call: dict[int, list[detach_leak.Leak]] = {}
        still = []
        for c in self.pending:
            if ctx.for_opts(c) is None:
                reached = intent.reached_opts(ctx, c)
                if not (reached & run_opts) and ctx.intent.lookup(c) is None:
                    still.append(c)
                    continue
                intent.decide(ctx, c, run_opts)
            a = intent.analysis_of(ctx, c)
            if a is not None:
                found = detach_leak.leaks(ctx, c, a)
                leaks_by_call[c.id] = found
                yield from detach_leak.findings(ctx, c, found)
                if found:
                    self.add_highlights(c.graph_key, *detach_leak.highlights(found))
                self.knowledge.analyses.pop(c.id, None)
            elif c.reached:
                # a call without a graph of its own: the leaks found at its site, where this call wrote
                cached = self.knowledge.site_leaks.get((c.site.file, c.site.line))
                if cached:
                    yield from detach_leak.findings(ctx, c, [lk for lk in cached if lk.pids & c.reached])
        self.pending = still
        for s in run:
            stray: dict[int, list[int]] = {}
            for prov, pids in s.groups:
                for cid in prov:
                    c = ctx.call(cid)
                    if c is None:
                        continue
                    if ctx.for_opts(c) is None:
                        intent.decide(ctx, c, run_opts)
                    d = ctx.decision(c)
                    if not d.terms:  # one answer for every parameter that holds this gradient
                        if d.for_opts is not None and s.optimizer_key not in d.for_opts:
                            stray.setdefault(cid, []).extend(pids)
                        continue
                    for pid in pids:
                        if not intent.is_for(ctx, c, pid, s.optimizer_key):
                            stray.setdefault(cid, []).append(pid)
            # one finding per backward site and step: gradient of several iterations of one site
            # (never zeroed) is one stray update, named by its latest call
            by_site: dict[tuple[str, int], tuple[int, set[int]]] = {}
            for cid, pids in sorted(stray.items()):
                c = ctx.call(cid)
                assert c is not None
                k = (c.site.file, c.site.line)
                prev = by_site.get(k)
                by_site[k] = (cid, (prev[1] if prev else set()) | set(pids))
            for cid, pids in by_site.values():
                c = ctx.call(cid)
                assert c is not None
                leak = next(iter(leaks_by_call.get(cid, []) or self.knowledge.site_leaks.get((c.site.file, c.site.line), [])), None)
                yield stray_grad.finding(ctx, s, c, sorted(pids), leak)
        for cid, found in leaks_by_call.items():
            c = ctx.call(cid)
            if c is not None and found:
                self.knowledge.site_leaks.setdefault((c.site.file, c.site.line), found)

    def forget_sites(self) -> None:
        """A network or optimizer is new: what was learnt per backward site may be about dead ones.
        The steps so far are judged first, with what is known about the ones they belong to."""
        self.close_run()
        self.knowledge.forget_sites()
        self._clean.clear()

    # ------------------------------------------------------------------------------------------
    # errors and the end
    # ------------------------------------------------------------------------------------------
    def explain(
        self,
        exc: BaseException,
        site: Site | None,
        *,
        call: BackwardCall | None = None,
        walk: WalkResult | None = None,
        roots: Any = None,
        names: dict[int, str] | None = None,
    ) -> Finding | None:
        """A finding that explains an autograd error, or None if it is not one the lens knows."""
        ctx = self.ctx
        text = str(exc)
        first = text.split("\n", 1)[0].split(". ", 1)[0].rstrip(".")  # PyTorch's first sentence
        names = names or {}
        if SECOND_BACKWARD_ERROR in text and call is not None and walk is not None:
            return second_backward.explain(ctx, call, walk, first)
        if SECOND_BACKWARD_ERROR in text:
            return second_backward.unknown(site, first)
        if _INPLACE in text and call is not None:
            if walk is not None and walk.stale_saved:
                return inplace_saved.from_stale(ctx, call, walk.stale_saved, failed=True, exc_text=first)[0]
            return inplace_saved.explain_plain(ctx, call, list(roots or []), first)
        if _NONSCALAR in text:
            return nonscalar_backward.finding(site, tensors_in(roots), names)
        if _NOGRAD in text:
            return no_grad_path.finding(ctx, site, tensors_in(roots), names)
        return None

    def explain_error(self, exc: BaseException, site: Site | None, **ctx: Any) -> Finding | None:
        """Explain an error, keep the finding, and add its text to the exception as a note (shown
        in the traceback); the exception is the user's and goes on unchanged."""
        f = self.explain(exc, site, **ctx)
        if f is not None:
            self.add(f)
            attach_note(exc, f)
        return f

    def ddp_unused(
        self, exc: BaseException, site: Site | None, names: list[str], forward: Site | None, net: str, rank: int | None
    ) -> Finding:
        """DistributedDataParallel's failure for parameters that took no part in the loss, named."""
        f = dead_param.ddp_unused(names, site, forward, net, rank, exc_first_line(exc))
        self.add(f)
        attach_note(exc, f)
        return f

    def close(self) -> None:
        """The end of the watch: the last run of steps, then the parameters never given gradient."""
        self.close_run()
        self.add_all(dead_param.findings(self.ctx))

    def _intern(self, value: Any) -> Any:
        """One shared object for equal values (a loop repeats the same sets every iteration)."""
        return self._interned.setdefault(value, value)

    def wants_snapshot(self, site: Site) -> bool:
        """Whether another graph of this backward site would teach something: its loss split among
        several networks, whose own losses may have shown since."""
        terms = self.knowledge.site_terms.get((site.file, site.line))
        return bool(terms) and len({u for t in terms for u in t.units}) > 1

    def graph_key(self, site: Site) -> str:
        return f"{rel_path(site.file)}:{site.line}"


def attach_note(exc: BaseException, f: Finding) -> None:
    """Add the finding's text to the exception (``exc.__notes__``, shown in the traceback)."""
    try:
        exc.add_note("\n[autograd_lens] " + finding_text(f))
        exc._autograd_lens_explained = True  # type: ignore[attr-defined]
        exc._autograd_lens_finding = f  # type: ignore[attr-defined]
    except Exception:
        pass


def exc_first_line(exc: BaseException) -> str:
    first = str(exc).split("\n", 1)[0]
    return f"{type(exc).__name__}: {first}"
