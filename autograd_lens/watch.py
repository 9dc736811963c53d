"""``watch()``: the runtime lens.

Installs hooks (through :mod:`autograd_lens.hooks`), records events (:mod:`autograd_lens.events`),
and asks the checks (:mod:`autograd_lens.checks`) for findings at the points where they can be
decided: before and after each backward call, when a run of optimizer steps ends, and on exit.

Nothing here keeps a tensor or an autograd node alive: parameters and optimizers are held by weak
reference, graph nodes only while a backward call is being set up, and stamps live in
``node.metadata``, which dies with the node.
"""

from __future__ import annotations

import bisect
import threading
import types
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from . import checks
from . import intent as intent_mod
from .errors import LensError, describe
from .events import BackwardCall, ForwardRange, OptimizerStep
from .findings import Finding, Site, rel_path
from .graph import Graph, capture
from .hooks import (
    HookSet,
    patch_zero_grad,
    register_global_module_hooks,
    register_global_optimizer_hooks,
    watch_warnings,
)
from .hooks.patches import BACKWARD_ENGINE_AVAILABLE, patch_backward
from .naming import ParamNames, find_in_frame, local_items, tensor_names, tensors_in, user_frame
from .report import BackwardSummary, Report, StepSummary, dedupe
from .walk import WalkResult

_serial = iter(range(1, 1 << 62))

#: Backward calls and steps a watch keeps one by one; older ones are folded into per-site totals.
FOLD_AT = 20_000

#: How many occurrences of each backward site get a full graph snapshot and leak analysis.
DETAIL_PER_SITE = 2

_active: list[Watch] = []
_active_lock = threading.Lock()


class _ParamState:
    __slots__ = ("ref", "ledger", "grad_ref", "grad_version", "ever", "applied")

    def __init__(self, p: torch.Tensor) -> None:
        self.ref = weakref.ref(p)
        self.ledger: list[int] = []  # backward call ids whose gradient is in .grad now
        self.grad_ref: weakref.ref | None = None
        self.grad_version = -1
        self.ever = False
        self.applied: dict[int, set[int]] = {}  # optimizer key -> call ids already applied


class _OptState:
    __slots__ = ("key", "ref", "name", "pids", "pidset", "steps", "first_site", "no_grad", "with_grad")

    def __init__(self, opt: torch.optim.Optimizer, name: str) -> None:
        self.key = id(opt)
        self.ref = weakref.ref(opt)
        self.name = name
        self.pids: list[int] = []
        self.pidset: set[int] = set()
        self.steps = 0
        self.first_site: Site | None = None
        # parameters that require grad and were stepped with `.grad` None (the optimizer may be
        # gone by the time dead parameters are judged, on exit)
        self.no_grad: set[int] = set()
        self.with_grad: set[int] = set()  # parameters it stepped with a gradient, at any time


class _NetState:
    __slots__ = ("key", "ref", "name", "pids")

    def __init__(self, module: torch.nn.Module, name: str) -> None:
        self.key = id(module)
        self.ref = weakref.ref(module)
        self.name = name
        self.pids: set[int] = {id(p) for p in module.parameters()}


class Watch:
    """The state of one ``watch()``; use :func:`watch` to make one."""

    def __init__(
        self,
        modules: Mapping[str, torch.nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        intent: Mapping[str, Any],
        *,
        detail: int = DETAIL_PER_SITE,
        on_finding: Callable[[Finding], None] | None = None,
        graphs: bool = True,
    ) -> None:
        self._explicit_modules = dict(modules)
        self._explicit_optimizers = dict(optimizers)
        self._intent_spec = dict(intent)
        self.detail = detail
        self.on_finding = on_finding
        self.keep_graphs = graphs
        self.hooks = HookSet()
        self.names = ParamNames()
        self.calls: list[BackwardCall] = []
        self.steps: list[OptimizerStep] = []
        self.findings: list[Finding] = []
        self.graphs: dict[str, Graph] = {}
        self.error: str | None = None  # the exception that ended the block, as text
        self.internal_errors: list[str] = []  # failures of the lens itself (never raised)
        self.excluded: set[int] = set()  # leaves a backward left out on purpose (`inputs=`)
        self._interned: dict[Any, Any] = {}
        self._not_networks: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # no parameters
        # events beyond FOLD_AT are folded into per-site totals (long runs stay bounded)
        self._calls_dropped = 0
        self._steps_dropped = 0
        self._folded_calls: dict[tuple[str, int], BackwardSummary] = {}
        self._folded_steps: dict[tuple[str, str, int], StepSummary] = {}
        self._finding_at: dict[Any, int] = {}  # finding key -> index in self.findings
        self._params: dict[int, _ParamState] = {}
        self._param_opt: dict[int, int] = {}  # pid -> optimizer key
        self._param_net: dict[int, int] = {}  # pid -> network key
        self._opts: dict[int, _OptState] = {}
        self._nets: dict[int, _NetState] = {}
        self._ranges: list[ForwardRange] = []  # ordered by start seq
        self._range_starts: list[int] = []
        # storage of recent network outputs -> (network key, weak reference to the output)
        self._net_outputs: OrderedDict[tuple[str, int], tuple[int, weakref.ref]] = OrderedDict()
        self._forwards = 0  # network forwards run so far
        # optimizers whose parameters a backward through networks in training mode reached
        self.trained_opts: set[int] = set()
        self._tls = threading.local()
        # running backward calls: the call, its leaves, the thread that started it
        self._inflight: list[tuple[BackwardCall, set[int], int]] = []
        self._site_counts: dict[tuple[str, int], int] = {}
        self.site_terms: dict[tuple[str, int], Any] = {}  # backward site -> terms decided there
        self.site_leaves: dict[tuple[str, int], set[int]] = {}  # leaves seen in detail, per site
        self.site_leaks: dict[tuple[str, int], Any] = {}  # backward site -> leaks found there
        self.pending: list[BackwardCall] = []  # calls not yet judged by a run of steps
        self._run: list[OptimizerStep] = []  # steps since the last backward call
        self._step_markers: list[tuple[int, int, frozenset[int]]] = []  # (seq, step index, pids)
        self._probe: torch.Tensor | None = None
        self._entered = False
        self._closed = False
        self._lock = threading.RLock()
        serial = next(_serial)
        # node.metadata keys: (call id, retained) of the last backward through a node; call id of a
        # non-retained backward that used the node as its root. Per watch, so stamps never mix.
        self.stamp_keys = (f"autograd_lens.{serial}.call", f"autograd_lens.{serial}.root")

    # ------------------------------------------------------------------------------------------
    # entering and leaving
    # ------------------------------------------------------------------------------------------
    def __enter__(self) -> Watch:
        if self._entered:
            raise LensError("a watch() can be entered only once; make a new one with lens.watch()")
        self._entered = True
        self._probe = torch.zeros(1, requires_grad=True)
        frame = user_frame()
        try:
            for name, mod in self._explicit_modules.items():
                self._add_net(mod, name)
            for name, opt in self._explicit_optimizers.items():
                self._add_opt(opt, name)
            self._guard(self._scan_frame)(frame)
        finally:
            del frame
        self.intent = intent_mod.Intent.from_spec(self._intent_spec, self)
        try:
            patch_backward(self.hooks, self._on_engine, self._on_api)
            g = self._guard
            register_global_module_hooks(self.hooks, g(self._on_forward_pre), g(self._on_forward_post))
            register_global_optimizer_hooks(self.hooks, g(self._on_step_pre), g(self._on_step_post))
            patch_zero_grad(self.hooks, g(self._on_zero_grad))
            watch_warnings(self.hooks, g(self._on_warning))
        except Exception:
            self.hooks.remove()
            raise
        with _active_lock:
            _active.append(self)
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        try:
            self.close(exc)
        finally:
            self.hooks.remove()
            with _active_lock:
                if self in _active:
                    _active.remove(self)

    # ------------------------------------------------------------------------------------------
    # failures of the lens itself: recorded, reported once, never raised into the user's code
    # ------------------------------------------------------------------------------------------
    def _internal(self, exc: BaseException) -> None:
        self.internal_errors.append(f"{type(exc).__name__}: {exc}")
        if len(self.internal_errors) == 1:
            warnings.warn(
                f"autograd_lens: internal error, the analysis may be incomplete: {type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )

    def _guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                self._internal(exc)
                return None

        return guarded

    def close(self, exc: BaseException | None = None) -> None:
        """Finish the analysis (hooks stay until ``__exit__``)."""
        if self._closed:
            return
        self._closed = True
        self._guard(self._close_run)()
        if exc is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            self.error = _exc_text(exc)
            if not getattr(exc, "_autograd_lens_explained", False):
                site = _site_from_traceback(exc)
                f = self._guard(checks.explain_exception)(self, exc, site, None)
                if f is not None:
                    self._add(f)
                    _attach_note(exc, f)
        for f in self._guard(checks.dead_params)(self) or ():
            self._add(f)
        self._probe = None

    # ------------------------------------------------------------------------------------------
    # results
    # ------------------------------------------------------------------------------------------
    @property
    def report(self) -> Report:
        """The findings so far (deduplicated) and the tables of backward calls and steps."""
        return self.build_report()

    def build_report(self, script: str | None = None) -> Report:
        self._close_run()  # judge the steps since the last backward: the report is read now
        with self._lock:
            findings = tuple(dedupe(self.findings))
            return Report(
                findings=findings,
                backwards=tuple(self._backward_summaries()),
                steps=tuple(self._step_summaries()),
                graphs=tuple({"key": k, "title": g.title} for k, g in self.graphs.items()),
                networks=tuple(self.network_names()),
                script=script,
                status="error" if self.error is not None else "ok",
                error=self.error,
            )

    def network_names(self) -> list[str]:
        # a network made anew under the same variable (one per trial) keeps its name: one column
        names = list(dict.fromkeys(n.name for n in self._nets.values()))
        for o in self._opts.values():
            # parameters in an optimizer but in no known network form a network of their own
            if any(p not in self._param_net for p in o.pids) and o.name not in names:
                names.append(o.name)
        return names

    def _backward_summaries(self) -> Iterable[BackwardSummary]:
        out = dict(self._folded_calls)
        for key, summary in _summarise_calls(self.calls, self.network_names()).items():
            out[key] = _merge_backward(out.get(key), summary)
        return out.values()

    def _step_summaries(self) -> Iterable[StepSummary]:
        out = dict(self._folded_steps)
        for key, summary in _summarise_steps(self.steps).items():
            out[key] = _merge_steps(out.get(key), summary)
        return out.values()

    def _fold(self) -> None:
        """Keep the event lists bounded: the oldest half becomes per-site totals."""
        if len(self.calls) > FOLD_AT:
            old, self.calls = self.calls[: FOLD_AT // 2], self.calls[FOLD_AT // 2 :]
            self._calls_dropped += len(old)
            for key, summary in _summarise_calls(old, self.network_names()).items():
                self._folded_calls[key] = _merge_backward(self._folded_calls.get(key), summary)
        judged = len(self.steps) - len(self._run)
        if judged > FOLD_AT:
            old, self.steps = self.steps[: FOLD_AT // 2], self.steps[FOLD_AT // 2 :]
            self._steps_dropped += len(old)
            for key, summary in _summarise_steps(old).items():
                self._folded_steps[key] = _merge_steps(self._folded_steps.get(key), summary)

    # ------------------------------------------------------------------------------------------
    # names
    # ------------------------------------------------------------------------------------------
    def _scan_frame(self, frame: types.FrameType | None) -> None:
        """Name networks and optimizers from the variables of ``frame`` (and its callers)."""
        depth = 0
        while frame is not None and depth < 4:
            found = find_in_frame(frame, torch.nn.Module)
            inner = {id(sub) for m in found.values() for sub in m.modules() if sub is not m}
            for name, mod in found.items():
                if not self._known(self._nets, mod) and id(mod) not in inner and _is_network(mod):
                    self._add_net(mod, name)
            for name, opt in find_in_frame(frame, torch.optim.Optimizer).items():
                if not self._known(self._opts, opt):
                    self._add_opt(opt, name)
            # a parameter of no network kept in a variable (`log_alpha` of SAC): named by it
            for name, value in local_items(frame):
                if isinstance(value, torch.Tensor) and not name.startswith("_") and id(value) in self._param_opt:
                    key = id(value)
                    if key not in self.names.by_id or key in self.names.weak:
                        self.names.add(name, value, name)
            frame = frame.f_back
            depth += 1

    @staticmethod
    def _known(states: Mapping[int, Any], obj: Any) -> bool:
        """Whether ``obj`` itself (not a dead object that had its id) is registered."""
        st = states.get(id(obj))
        return st is not None and st.ref() is obj

    def _add_net(self, mod: torch.nn.Module, name: str) -> _NetState:
        # the names of live networks are taken; a dead one's name can be given again
        used = {n.name for n in self._nets.values() if n.ref() is not None}
        base, i = name, 2
        while name in used:
            name, i = f"{base}#{i}", i + 1
        net = _NetState(mod, name)
        self._nets[net.key] = net
        self.names.add_module(name, mod, force=True)
        for pid in net.pids:
            if not self._owns(self._nets, self._param_net.get(pid), pid):
                self._param_net[pid] = net.key
        self._forget_sites()
        for p in mod.parameters():
            self.ensure_param(p)  # also for leaves a walk cannot see (reentrant checkpointing)
        return net

    def _add_opt(self, opt: torch.optim.Optimizer, name: str) -> _OptState:
        st = _OptState(opt, name)
        self._opts[st.key] = st
        self._refresh_opt(st, opt)
        self._forget_sites()
        return st

    def _refresh_opt(self, st: _OptState, opt: torch.optim.Optimizer) -> None:
        pids = []
        for g, group in enumerate(opt.param_groups):
            for i, p in enumerate(group["params"]):
                pid = id(p)
                pids.append(pid)
                if not self._owns(self._opts, self._param_opt.get(pid), pid, st):
                    self._param_opt[pid] = st.key
                self.names.add(f"{st.name}.param_groups[{g}].params[{i}]", p, st.name, weak=True)
                self.ensure_param(p)
        st.pids = pids
        st.pidset = set(pids)

    @staticmethod
    def _owns(owners: Mapping[int, Any], key: int | None, pid: int, asking: Any = None, *, alive: bool = True) -> bool:
        """Whether network/optimizer ``key`` holds parameter ``pid`` (and, with ``alive``, still
        exists). Ids are reused once objects die: a new parameter can have a dead one's id, a new
        optimizer a dead one's; a registration is only replaced by a live owner that holds it."""
        owner = owners.get(key) if key is not None else None
        if owner is None or owner is asking or (alive and owner.ref() is None):
            return False
        held = owner.pidset if isinstance(owner, _OptState) else owner.pids
        return pid in held

    def _forget_sites(self) -> None:
        """A network or optimizer is new: what was learnt per backward site may be about dead ones.
        The steps so far are judged first, with what is known about the ones they belong to."""
        self._close_run()
        self.site_terms.clear()
        self.site_leaves.clear()
        self.site_leaks.clear()

    def _opt_for(self, opt: torch.optim.Optimizer) -> _OptState:
        """The optimizer's state; a new one is named from the caller's variables first."""
        if not self._known(self._opts, opt):
            frame = user_frame()
            try:
                self._scan_frame(frame)
            finally:
                del frame
        return self._opt_for_known(opt)

    def _opt_for_known(self, opt: torch.optim.Optimizer) -> _OptState:
        """The optimizer's state, registered under a generic name if it is new."""
        if self._known(self._opts, opt):
            return self._opts[id(opt)]
        return self._add_opt(opt, f"{type(opt).__name__}#{len(self._opts) + 1}")

    def param_name(self, pid: int) -> str:
        return self.names.by_id.get(pid) or f"param@{pid:x}"

    def opt_name(self, key: int | None) -> str:
        st = self._opts.get(key) if key is not None else None
        return st.name if st else "(no optimizer)"

    def net_name(self, key: int | None) -> str:
        n = self._nets.get(key) if key is not None else None
        return n.name if n else "(unknown)"

    def group_of(self, pid: int) -> tuple[str, int] | None:
        """The owner a parameter's gradient is for: its optimizer, else its network."""
        o = self.param_opt(pid)
        if o is not None:
            return ("opt", o)
        n = self.net_of_param(pid)
        if n is not None:
            return ("net", n)
        return None

    def net_of_param(self, pid: int) -> int | None:
        """The network holding parameter ``pid`` (None if it is none, or is gone)."""
        key = self._param_net.get(pid)
        return key if self._owns(self._nets, key, pid, alive=False) else None

    def net_of_seq(self, seq: int | None) -> int | None:
        """The network whose forward created the node with sequence number ``seq``."""
        if seq is None or not self._ranges:
            return None
        i = bisect.bisect_right(self._range_starts, seq) - 1
        # the innermost range containing seq: scan back over the few ranges that may contain it
        best = None
        j = i
        while j >= 0 and i - j < 8:
            r = self._ranges[j]
            if r.start <= seq <= r.end:
                if best is None or r.depth > best.depth:
                    best = r
            j -= 1
        return best.net if best else None

    def range_of_seq(self, seq: int | None) -> ForwardRange | None:
        if seq is None or not self._ranges:
            return None
        i = bisect.bisect_right(self._range_starts, seq) - 1
        while i >= 0:
            r = self._ranges[i]
            if r.start <= seq <= r.end:
                return r
            if r.end < seq and r.depth == 0:
                return None
            i -= 1
        return None

    # ------------------------------------------------------------------------------------------
    # findings
    # ------------------------------------------------------------------------------------------
    def _add(self, f: Finding) -> None:
        """Keep one finding per rule and site, counted (a loop repeats a bug every iteration)."""
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

    def add_highlights(self, key: str | None, *highlights: Any) -> None:
        if key and key in self.graphs and highlights:
            self.graphs[key] = self.graphs[key].with_highlights(*highlights)

    # ------------------------------------------------------------------------------------------
    # forward (global module hooks)
    # ------------------------------------------------------------------------------------------
    def _seq_now(self) -> int | None:
        probe = self._probe
        if probe is None or not torch.is_grad_enabled():
            return None
        fn = probe.view(1).grad_fn
        return fn._sequence_nr() if fn is not None else None

    def _on_forward_pre(self, module: torch.nn.Module, args: tuple) -> None:
        tls = self._tls
        depth = getattr(tls, "depth", 0)
        tls.depth = depth + 1
        stack = getattr(tls, "stack", None)
        if stack is None:
            stack = tls.stack = []
        if depth > 0 or _compiling():
            stack.append(None)
            return
        net = self._nets.get(id(module))
        if net is None or net.ref() is not module:
            if module in self._not_networks or not _is_network(module):
                self._not_networks.add(module)  # a loss or other module without parameters
                stack.append(None)
                return
            frame = user_frame(("torch.nn.modules.module",))
            try:
                self._scan_frame(frame)
            finally:
                del frame
            net = self._nets.get(id(module))
            if net is None or net.ref() is not module:
                # a part of a known network called on its own (`model.head(x)`) belongs to it
                owner = self._nets.get(self.net_of_param(id(next(module.parameters()))))
                if owner is not None and owner.ref() is not None:
                    net = owner
                else:
                    net = self._add_net(module, type(module).__name__)
        detached: set[int] = set()
        for a in args:
            if isinstance(a, torch.Tensor) and a.grad_fn is None and not a.requires_grad:
                try:
                    key = (str(a.device), a.untyped_storage().data_ptr())
                except RuntimeError:
                    continue
                hit = self._net_outputs.get(key)
                # the output must still exist: a freed one's memory can hold a fresh input
                if hit is not None and hit[0] != net.key and hit[1]() is not None:
                    detached.add(hit[0])
        stack.append((net.key, depth, self._seq_now(), _caller_site(), detached))

    def _on_forward_post(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        tls = self._tls
        tls.depth = max(0, getattr(tls, "depth", 1) - 1)
        stack = getattr(tls, "stack", None)
        if not stack:
            return
        entry = stack.pop()
        if entry is None:
            return
        key, depth, start, site, detached = entry
        if depth == 0:
            self._forwards += 1
        end = self._seq_now()
        if start is None or end is None:
            return
        r = ForwardRange(start, end, key, depth, site, frozenset(detached))
        i = bisect.bisect_right(self._range_starts, start)
        self._ranges.insert(i, r)
        self._range_starts.insert(i, start)
        if len(self._ranges) > 8192:
            del self._ranges[:4096]
            del self._range_starts[:4096]
        if depth == 0:
            for t in tensors_in(output):
                try:
                    k = (str(t.device), t.untyped_storage().data_ptr())
                except RuntimeError:
                    continue
                self._net_outputs[k] = (key, weakref.ref(t))
                self._net_outputs.move_to_end(k)
            while len(self._net_outputs) > 256:
                self._net_outputs.popitem(last=False)

    # ------------------------------------------------------------------------------------------
    # backward
    # ------------------------------------------------------------------------------------------
    def _on_api(self, run: Callable[..., Any], kind: str, args: tuple, kwargs: dict) -> Any:
        if not BACKWARD_ENGINE_AVAILABLE:
            tensors = args[0] if args else kwargs.get("tensors", kwargs.get("outputs"))
            retain = kwargs.get("retain_graph")
            if retain is None:
                retain = args[2] if kind == "backward" and len(args) > 2 else kwargs.get("create_graph", False)
            return self._backward(lambda: run(*args, **kwargs), tensors, bool(retain), kind == "backward")
        try:
            return run(*args, **kwargs)
        except Exception as exc:
            if not self._closed and not getattr(exc, "_autograd_lens_explained", False):
                self._guard(self._explain_api_error)(exc, args, kwargs)
            raise

    def _explain_api_error(self, exc: Exception, args: tuple, kwargs: dict) -> None:
        """An error raised before the engine ran (e.g. a non-scalar root without `gradient=`)."""
        frame = user_frame()
        try:
            site, names = _frame_site(frame), tensor_names(frame, grad_fns=True)
        finally:
            del frame
        roots = args[0] if args else kwargs.get("tensors", kwargs.get("outputs"))
        f = checks.explain_exception(self, exc, site, {"roots": roots, "names": names})
        if f is not None:
            self._add(f)
            _attach_note(exc, f)

    def _on_engine(self, run: Callable[..., Any], t_outputs: Any, args: tuple, kwargs: dict, accumulate: bool) -> Any:
        if getattr(self._tls, "in_backward", False) or self._closed or _inside_backward():
            # a backward started from inside another one (reentrant checkpointing, hooks):
            # part of the outer call
            return run(t_outputs, *args, **kwargs)
        retain = bool(args[1]) if len(args) > 1 else bool(kwargs.get("keep_graph", False))
        return self._backward(
            lambda: run(t_outputs, *args, **kwargs),
            t_outputs,
            retain,
            accumulate,
            create_graph=bool(args[2]) if len(args) > 2 else bool(kwargs.get("create_graph", False)),
            inputs=args[3] if len(args) > 3 else kwargs.get("inputs"),
        )

    def _backward(
        self,
        go: Callable[[], Any],
        t_outputs: Any,
        retain: bool,
        accumulate: bool,
        *,
        create_graph: bool = False,
        inputs: Any = None,
    ) -> Any:
        try:
            frame = user_frame()
            try:
                site = _frame_site(frame)
                local_names = tensor_names(frame, grad_fns=True)
            finally:
                del frame
        except Exception as exc:
            self._internal(exc)
            site, local_names = Site("<unknown>", 0), {}
        site = self._intern(site)
        self._close_run()
        roots = tensors_in(t_outputs)
        key = (site.file, site.line)
        with self._lock:
            occurrence = self._site_counts.get(key, 0)
            self._site_counts[key] = occurrence + 1
            call = BackwardCall(
                id=self._calls_dropped + len(self.calls) + 1,
                site=site,
                kind="backward" if accumulate else "grad",
                roots=tuple(local_names.get(id(t), f"<{_shape(t)}>") for t in roots),
                retain_graph=retain,
                create_graph=create_graph,
                occurrence=occurrence,
                forwards=self._forwards,
            )
            self.calls.append(call)
            if len(self.calls) > FOLD_AT:
                self._fold()
        detail = occurrence < self.detail
        try:
            walk = self._walk(roots, call, detail, local_names)
            if inputs and accumulate:
                # leaves left out by `backward(inputs=...)` get no gradient on purpose
                chosen = {id(t) for t in tensors_in(inputs)}
                self.excluded |= walk.leaves - chosen
        except Exception as exc:
            self._internal(exc)
            walk = WalkResult()
        self._tls.in_backward = True
        running = (call, walk.leaves, threading.get_ident())
        with self._lock:
            self._inflight.append(running)
        try:
            result = go()
        except BaseException as exc:
            call.error = _exc_text(exc)
            if walk.graph is not None and occurrence == 0 and self.keep_graphs:
                # the failing call's graph, as it was when the backward started (freed parts marked)
                call.graph_key = f"{rel_path(site.file)}:{site.line}"
                self.graphs.setdefault(call.graph_key, walk.graph)
            if isinstance(exc, Exception) and not getattr(exc, "_autograd_lens_explained", False):
                f = self._guard(checks.explain_exception)(self, exc, site, (call, roots, walk, local_names))
                if f is not None:
                    self._add(f)
                    _attach_note(exc, f)
            raise
        finally:
            with self._lock:
                self._inflight.remove(running)
            self._tls.in_backward = False
        try:
            call.reached = self._intern(frozenset(call.reached))
            self._stamp_roots(roots, call)
            self._note_mode(call)
            for f in list(checks.after_backward(self, call, walk)):
                self._add(f)
        except Exception as exc:
            self._internal(exc)
        return result

    def _note_mode(self, call: BackwardCall) -> None:
        """Which networks the call reached in eval mode; which optimizers it trained in train mode."""
        nets = {self._param_net.get(p) for p in call.reached} - {None}
        evals = []
        for key in nets:
            net = self._nets.get(key)
            m = net.ref() if net is not None else None
            if m is not None and not m.training:
                evals.append(net.name)
        call.eval_nets = tuple(sorted(evals))
        call.all_eval = bool(nets) and len(evals) == len(nets)
        if not call.all_eval:
            for p in call.reached:
                o = self._param_opt.get(p)
                if o is not None:
                    self.trained_opts.add(o)

    def _stamp_roots(self, roots: Sequence[torch.Tensor], call: BackwardCall) -> None:
        if call.retain_graph:
            return
        for t in roots:
            fn = t.grad_fn
            if fn is not None:
                fn.metadata[self.stamp_keys[1]] = call.id

    def _walk(self, roots: Sequence[torch.Tensor], call: BackwardCall, detail: bool, local_names: dict[int, str]) -> Any:
        """One pass over the graph before the engine runs: stamps, leaves, stale nodes."""
        from .walk import walk_graph

        return walk_graph(self, roots, call, detail, local_names)

    def ensure_param(self, p: torch.Tensor) -> _ParamState:
        pid = id(p)
        st = self._params.get(pid)
        if st is not None and st.ref() is p:
            return st
        st = _ParamState(p)
        self._params[pid] = st
        if p.requires_grad and p.is_leaf:
            try:
                self.hooks.add(p.register_post_accumulate_grad_hook(self._guard(self._on_accumulated)))
            except RuntimeError:
                pass
        return st

    def _on_accumulated(self, p: torch.Tensor) -> None:
        st = self._params.get(id(p))
        inflight = self._inflight
        if st is None or not inflight:
            return None
        if len(inflight) == 1:
            call = inflight[0][0]
        else:  # backward calls running in several threads: this thread's, else one holding p
            me = threading.get_ident()
            pid = id(p)
            call = next((c for c, _, t in reversed(inflight) if t == me), None) or next(
                (c for c, leaves, _ in reversed(inflight) if pid in leaves), inflight[-1][0]
            )
        g = p.grad
        same = st.grad_ref is not None and st.grad_ref() is g
        if not same or (g is not None and g._version != st.grad_version + 1):
            if not (same is False and call.create_graph and st.grad_ref is not None and st.grad_ref() is None):
                st.ledger = []
        st.ledger.append(call.id)
        if len(st.ledger) > 64:  # a .grad never zeroed: keep the recent history only
            del st.ledger[:-32]
        st.ever = True
        if g is not None:
            st.grad_ref = weakref.ref(g)
            st.grad_version = g._version
        call.reached.add(id(p))
        return None

    def _on_warning(self, message: object, filename: str, lineno: int) -> None:
        if self._closed:
            return
        f = checks.nonleaf_grad.from_warning(message, filename, lineno)
        if f is not None:
            self._add(f)

    # ------------------------------------------------------------------------------------------
    # zero_grad and steps
    # ------------------------------------------------------------------------------------------
    def _on_zero_grad(self, obj: Any, set_to_none: bool) -> None:
        if self._closed or _compiling():
            return
        params = obj.parameters() if isinstance(obj, torch.nn.Module) else (
            p for g in obj.param_groups for p in g["params"]
        )
        for p in params:
            st = self._params.get(id(p))
            if st is not None:
                st.ledger = []
                st.grad_ref = None

    def _on_step_pre(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._closed or _compiling():
            return
        st = self._opt_for(opt)
        if st.steps == 0 or len(st.pids) != sum(len(g["params"]) for g in opt.param_groups):
            self._refresh_opt(st, opt)
        st.steps += 1
        site = _site()
        if st.first_site is None:
            st.first_site = site
        provenance: dict[int, tuple[int, ...]] = {}
        repeated: dict[int, tuple[int, ...]] = {}
        for group in opt.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    if p.requires_grad:
                        st.no_grad.add(id(p))
                    continue
                ps = self._params.get(id(p))
                if ps is None or ps.ref() is not p:
                    provenance[id(p)] = ()
                    continue
                if ps.grad_ref is None or ps.grad_ref() is not g:
                    ps.ledger = []  # .grad was assigned by hand: unknown provenance
                prov = tuple(ps.ledger)
                provenance[id(p)] = prov
                applied = ps.applied.get(st.key)
                if applied and prov:
                    again = tuple(c for c in prov if c in applied)
                    if again:
                        repeated[id(p)] = again
                ps.applied[st.key] = set(prov)
        n_params = sum(len(g["params"]) for g in opt.param_groups)
        step = OptimizerStep(
            index=self._steps_dropped + len(self.steps),
            optimizer=st.name,
            optimizer_key=st.key,
            site=site,
            provenance=provenance,
            repeated=repeated,
            n_params=n_params,
        )
        with self._lock:
            self.steps.append(step)
        self._run.append(step)
        for f in checks.on_step(self, step):
            self._add(f)

    def _on_step_post(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._closed or not self.steps or _compiling():
            return
        step = self.steps[-1]
        if step.optimizer_key != id(opt):
            return
        seq = self._seq_now()
        if seq is not None:
            pids = frozenset(pid for pid in step.provenance)
            self._step_markers.append((seq, step.index, pids))
            if len(self._step_markers) > 64:
                del self._step_markers[:32]

    def _close_run(self) -> None:
        if not self._run:
            return
        run, self._run = self._run, []
        try:
            for f in list(checks.judge_run(self, run)):
                self._add(f)
        except Exception as exc:
            self._internal(exc)
        for step in run:  # judged: keep what the report needs, drop the per-parameter detail
            cids = {cid for prov in step.provenance.values() for cid in prov}
            step.sources = self._intern(frozenset(
                f"{rel_path(c.site.file)}:{c.site.line}"
                for c in (self.call(cid) for cid in cids)
                if c is not None
            ))
            step.stepped = self._intern(frozenset(step.provenance))
            opt = self._opts.get(step.optimizer_key)
            if opt is not None:
                opt.with_grad |= step.stepped
            step.provenance = {}
            step.repeated = {}
        if len(self.steps) - len(self._run) > FOLD_AT:
            self._fold()

    def _intern(self, value: Any) -> Any:
        """One shared object for equal values (a loop repeats the same sets every iteration)."""
        return self._interned.setdefault(value, value)

    # used by checks -------------------------------------------------------------------------
    def call(self, call_id: int) -> BackwardCall | None:
        """The backward call with this id, while it is kept (None once folded into totals)."""
        i = call_id - 1 - self._calls_dropped
        if 0 <= i < len(self.calls) and self.calls[i].id == call_id:
            return self.calls[i]
        return None

    def step(self, index: int) -> OptimizerStep | None:
        """The optimizer step with this index, while it is kept."""
        i = index - self._steps_dropped
        if 0 <= i < len(self.steps) and self.steps[i].index == index:
            return self.steps[i]
        return None

    def step_markers(self) -> list[tuple[int, int, frozenset[int]]]:
        return self._step_markers

    def opts(self) -> dict[int, _OptState]:
        return self._opts

    def nets(self) -> dict[int, _NetState]:
        return self._nets

    def param_states(self) -> dict[int, _ParamState]:
        return self._params

    def param_opt(self, pid: int) -> int | None:
        """The optimizer that steps parameter ``pid`` (None if it is none, or is gone)."""
        key = self._param_opt.get(pid)
        return key if self._owns(self._opts, key, pid, alive=False) else None

    def snapshot(
        self,
        roots: Sequence[torch.Tensor],
        call: BackwardCall,
        leaf_ids: dict[int, int],
        local_names: dict[int, str],
        node_index: dict[int, int],
    ) -> Graph:
        title = f"{call.site.source or 'backward'}  ({rel_path(call.site.file)}:{call.site.line})"
        return capture(
            roots,
            names=self.names,
            output_names=list(call.roots),
            input_names=local_names,
            title=title,
            leaf_ids=leaf_ids,
            node_index=node_index,
        )


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


_STRENGTH = {"reached": 2, "detached": 1, "not reached": 0}


def _summarise_calls(calls: Sequence[BackwardCall], nets: Sequence[str]) -> dict[tuple[str, int], BackwardSummary]:
    by_site: dict[tuple[str, int], list[BackwardCall]] = {}
    for c in calls:
        by_site.setdefault((c.site.file, c.site.line), []).append(c)
    out = {}
    for key, group in by_site.items():
        first = group[0]
        state: dict[str, str] = {}
        for c in group:
            for n in nets:
                s = c.networks.get(n, "not reached")
                if _STRENGTH[s] >= _STRENGTH.get(state.get(n, "not reached"), 0):
                    state[n] = s
        out[key] = BackwardSummary(
            site=first.site,
            count=len(group),
            roots=first.roots,
            retain_graph=any(c.retain_graph for c in group),
            kind=first.kind,
            networks=state,
            params_reached=max(len(c.reached) for c in group),
        )
    return out


def _merge_backward(a: BackwardSummary | None, b: BackwardSummary) -> BackwardSummary:
    if a is None:
        return b
    state = dict(a.networks)
    for n, s in b.networks.items():
        if _STRENGTH[s] >= _STRENGTH.get(state.get(n, "not reached"), 0):
            state[n] = s
    return BackwardSummary(
        a.site, a.count + b.count, a.roots, a.retain_graph or b.retain_graph, a.kind, state,
        max(a.params_reached, b.params_reached),
    )


def _summarise_steps(steps: Sequence[OptimizerStep]) -> dict[tuple[str, str, int], StepSummary]:
    by: dict[tuple[str, str, int], list[OptimizerStep]] = {}
    for s in steps:  # by name: an optimizer made anew under the same variable is one row
        by.setdefault((s.optimizer, s.site.file, s.site.line), []).append(s)
    out = {}
    for key, group in by.items():
        sources: dict[str, int] = {}
        for s in group:
            for site in s.sources:  # each step counts once per backward site it took gradient from
                sources[site] = sources.get(site, 0) + 1
        out[key] = StepSummary(group[0].optimizer, group[0].site, len(group), sources, group[0].n_params)
    return out


def _merge_steps(a: StepSummary | None, b: StepSummary) -> StepSummary:
    if a is None:
        return b
    sources = dict(a.sources)
    for k, v in b.sources.items():
        sources[k] = sources.get(k, 0) + v
    return StepSummary(a.optimizer, a.site, a.count + b.count, sources, a.params)


def _inside_backward() -> bool:
    """True while a graph task runs on this thread (autograd's device threads included)."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current is not None and current() != -1


def _compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except Exception:
        return False


def _is_network(mod: torch.nn.Module) -> bool:
    # containers of no parameters (e.g. a loss module) are not networks
    return next(iter(mod.parameters()), None) is not None


def _shape(t: torch.Tensor) -> str:
    return "tensor" + (f"{list(t.shape)}" if t.dim() else "")


def _frame_site(frame: types.FrameType | None) -> Site:
    if frame is None:
        return Site("<unknown>", 0, "")
    return Site(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)


def _site() -> Site:
    frame = user_frame()
    try:
        return _frame_site(frame)
    finally:
        del frame


def _caller_site() -> Site:
    frame = user_frame(("torch.nn.modules.module",))
    try:
        return _frame_site(frame)
    finally:
        del frame


def _site_from_traceback(exc: BaseException) -> Site | None:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        mod = tb.tb_frame.f_globals.get("__name__", "")
        if not (mod.startswith("torch") or mod.startswith("autograd_lens")):
            last = Site(tb.tb_frame.f_code.co_filename, tb.tb_lineno, tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return last


def _attach_note(exc: BaseException, f: Finding) -> None:
    try:
        exc.add_note("\n[autograd_lens] " + f.text())
        exc._autograd_lens_explained = True  # type: ignore[attr-defined]
        exc._autograd_lens_finding = f  # type: ignore[attr-defined]
    except Exception:
        pass


def _exc_text(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    first = str(exc).split("\n", 1)[0]
    return f"{type(exc).__name__}: {first}"


def watch(
    *modules: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer] | Mapping[str, torch.optim.Optimizer] | None = None,
    names: Mapping[str, torch.nn.Module] | None = None,
    intent: Mapping[str, Any] | None = None,
    detail: int = DETAIL_PER_SITE,
    on_finding: Callable[[Finding], None] | None = None,
) -> Watch:
    """Watch autograd while the ``with`` block runs; ``w.report`` holds what was found.

    Args:
        modules: networks to watch (optional: networks are discovered from the variables that hold
            them, e.g. ``netG``, and from the global module hooks).
        optimizers: optimizers, as a list or a dict of names (optional: discovered at ``step()``).
        names: networks by name, e.g. ``{"generator": netG}`` (for networks held in odd places).
        intent: which optimizer each loss is for, when time and structure cannot tell:
            ``{"errD": optimizerD}`` (keys are the variable names of the losses, or backward sites
            ``"train.py:56"``).
        detail: how many occurrences of each backward site get a graph snapshot and full analysis.
        on_finding: called once with each new finding (first occurrence of a rule at a site).

    Example::

        with lens.watch() as w:
            train_step()
        print(w.report)
    """
    mods: dict[str, torch.nn.Module] = {}
    frame = user_frame()
    try:
        for m in modules:
            if not isinstance(m, torch.nn.Module):
                raise LensError(f"watch() takes modules as positional arguments; got {describe(m)}")
            var = next((k for k, v in find_in_frame(frame, torch.nn.Module).items() if v is m), None)
            mods[var or type(m).__name__] = m
        for k, m in (names or {}).items():
            if not isinstance(m, torch.nn.Module):
                raise LensError(f"watch(names=...) maps names to modules; {k!r} is {describe(m)}")
            mods[str(k)] = m
        opts: dict[str, torch.optim.Optimizer] = {}
        if isinstance(optimizers, Mapping):
            opts = {str(k): v for k, v in optimizers.items()}
        elif optimizers is not None:
            found = find_in_frame(frame, torch.optim.Optimizer)
            for i, o in enumerate(optimizers):
                var = next((k for k, v in found.items() if v is o), None)
                opts[var or f"{type(o).__name__}#{i + 1}"] = o
        for k, o in opts.items():
            if not isinstance(o, torch.optim.Optimizer):
                raise LensError(f"watch(optimizers=...) takes torch.optim optimizers; {k!r} is {describe(o)}")
    finally:
        del frame
    return Watch(mods, opts, intent or {}, detail=detail, on_finding=on_finding)
