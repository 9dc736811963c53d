"""``watch()``: the runtime lens.

Installs hooks (through :mod:`autograd_lens.hooks`), records events (:mod:`autograd_lens.events`),
and asks the checks (:mod:`autograd_lens.checks`) for findings at the points where they can be
decided: before and after each backward call, when a run of optimizer steps ends, and on exit.

Nothing here keeps a tensor or an autograd node alive: parameters and optimizers are held by weak
reference, graph nodes only while a backward call is being set up, and stamps live in
``node.metadata``, which dies with the node.
"""

from __future__ import annotations

import threading
import types
import warnings
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from . import checks, frameworks, source
from . import intent as intent_mod
from .errors import LensError, describe
from .events import BackwardCall, HeldGraphs, OptimizerStep
from .findings import Finding, Site, rel_path
from .graph import Graph, capture, saved_bytes
from .hooks import (
    HookSet,
    patch_zero_grad,
    register_global_module_hooks,
    register_global_optimizer_hooks,
    watch_warnings,
)
from .hooks.patches import BACKWARD_ENGINE_AVAILABLE, patch_backward
from .naming import find_in_frame, framework_frames, local_items, tensor_names, tensors_in, user_frame
from .registry import ForwardRange, NetInfo, OptInfo, Registry, is_network
from .report import BackwardSummary, Report, StepSummary, dedupe
from .walk import WalkResult

_serial = iter(range(1, 1 << 62))

#: Backward calls and steps a watch keeps one by one; older ones are folded into per-site totals.
FOLD_AT = 20_000

#: Graphs of this many earlier iterations of a backward site alive at once: something holds them.
HELD_ITERATIONS = 2

#: How many occurrences of each backward site get a full graph snapshot and leak analysis.
DETAIL_PER_SITE = 2

_active: list[Watch] = []

#: Whether a JIT trace runs, and how many TorchDispatchModes are active (feature-detected).
_TRACING = getattr(torch._C, "_get_tracing_state", None)
_DISPATCH_DEPTH = getattr(torch._C, "_len_torch_dispatch_stack", None)


def _dispatch_mode_name() -> str:
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        mode = _get_current_dispatch_mode()
        return f"a {type(mode).__name__}" if mode is not None else "a TorchDispatchMode"
    except Exception:
        return "a TorchDispatchMode"


#: Reads the number the next autograd node will get, without making a node (torch >= 2.1).
_PEEK_SEQ = getattr(getattr(torch._C, "_autograd", None), "_get_sequence_nr", None)
_active_lock = threading.Lock()


class _ParamState:
    __slots__ = ("ref", "ledger", "grad_ref", "grad_version", "ever", "applied", "fp")

    def __init__(self, p: torch.Tensor) -> None:
        self.ref = weakref.ref(p)
        self.ledger: list[int] = []  # backward call ids whose gradient is in .grad now
        self.grad_ref: weakref.ref | None = None
        self.grad_version = -1
        self.ever = False
        self.applied: dict[int, set[int]] = {}  # optimizer key -> call ids already applied
        self.fp: tuple[Any, ...] | None = None  # (version, storage, sum) after its last backward


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
        skip: Sequence[str] = (),
    ) -> None:
        self._explicit_modules = dict(modules)
        self._explicit_optimizers = dict(optimizers)
        self._intent_spec = dict(intent)
        self.detail = detail
        self.on_finding = on_finding
        self.keep_graphs = graphs
        self._skip = tuple(skip)
        self._skip_before: list[str] | None = None
        self.hooks = HookSet()
        self.reg = Registry(on_param=self.ensure_param, on_change=self._forget_sites)
        self.names = self.reg.names
        self.calls: list[BackwardCall] = []
        self.steps: list[OptimizerStep] = []
        self.findings: list[Finding] = []
        self.graphs: dict[str, Graph] = {}
        self.error: str | None = None  # the exception that ended the block, as text
        self.internal_errors: list[str] = []  # failures of the lens itself (never raised)
        self.stepped_aside: dict[str, int] = {}  # what the lens did not watch, and how often
        self.excluded: set[int] = set()  # leaves a backward left out on purpose (`inputs=`)
        self._interned: dict[Any, Any] = {}
        # events beyond FOLD_AT are folded into per-site totals (long runs stay bounded)
        self._calls_dropped = 0
        self._steps_dropped = 0
        self._folded_calls: dict[tuple[str, int], BackwardSummary] = {}
        self._folded_steps: dict[tuple[str, str, int], StepSummary] = {}
        self._finding_at: dict[Any, int] = {}  # finding key -> index in self.findings
        self._params: dict[int, _ParamState] = {}
        self._holding: set[int] = set()  # parameters whose .grad holds gradient of known calls
        # manual updates (no optimizer object): the update statements of the user's files, and
        # the unit that stands for the manual updates of each network
        self._update_stmts: dict[str, tuple[source.Update, ...]] = {}
        self._manual_on = False
        self._manual_units: dict[int, OptInfo] = {}
        # storage of recent network outputs -> (network key, weak reference to the output)
        self._net_outputs: OrderedDict[tuple[str, int], tuple[int, weakref.ref]] = OrderedDict()
        self._forwards = 0  # network forwards run so far
        # optimizers whose parameters a backward through networks in training mode reached
        self.trained_opts: set[int] = set()
        self._tls = threading.local()
        # running backward calls: the call, its leaves, the thread that started it
        self._inflight: list[tuple[BackwardCall, set[int], int]] = []
        self._site_counts: dict[tuple[str, int], int] = {}
        self._site_last: dict[tuple[str, int], int] = {}  # backward site -> id of its latest call
        # units trained by a loss: unit -> recent (backward site, call id, the loss's target units)
        self.own_units: dict[str, list[tuple[tuple[str, int], int, frozenset[str]]]] = {}
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
        # a tag in the root's metadata dies with the graph: the graphs of each site still alive
        self._tag_key = f"autograd_lens.{serial}.alive"
        self._alive: dict[tuple[str, int], deque[tuple[int, int, bool, weakref.ref]]] = {}
        self._holders: dict[tuple[str, int], HeldGraphs | None] = {}

    # ------------------------------------------------------------------------------------------
    # entering and leaving
    # ------------------------------------------------------------------------------------------
    def __enter__(self) -> Watch:
        if self._entered:
            raise LensError("a watch() can be entered only once; make a new one with lens.watch()")
        self._entered = True
        self._skip_before = frameworks.set_skipped(self._skip)
        if _PEEK_SEQ is None:
            self._probe = torch.zeros(1, requires_grad=True)
        self.reg.first_seq = self._seq_now_always()
        frame = user_frame()
        try:
            for name, mod in self._explicit_modules.items():
                self.reg.add_net(mod, name)
            for name, opt in self._explicit_optimizers.items():
                self.reg.add_opt(opt, name)
            self._guard(self.reg.scan_frame)(frame)
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
            if self._skip_before is not None:
                frameworks.restore_skipped(self._skip_before)
                self._skip_before = None
            with _active_lock:
                if self in _active:
                    _active.remove(self)

    # ------------------------------------------------------------------------------------------
    # stepping aside: a JIT trace, a dispatch mode (FakeTensorMode, a user's TorchDispatchMode)
    # ------------------------------------------------------------------------------------------
    def _aside(self) -> bool:
        """Whether the user's code runs under a JIT trace or a TorchDispatchMode now: the lens must
        run no tensor op of its own and touch no tensor's data there, so it does not watch. Said
        once per kind (a warning, and ``stepped_aside`` in the report)."""
        if _TRACING is not None and _TRACING() is not None:
            why = "torch.jit.trace"
        elif _DISPATCH_DEPTH is not None and _DISPATCH_DEPTH():
            why = _dispatch_mode_name()
        else:
            return False
        n = self.stepped_aside.get(why, 0)
        self.stepped_aside[why] = n + 1
        if n == 0:
            frame = user_frame()
            try:
                where = (frame.f_code.co_filename, frame.f_lineno) if frame is not None else ("autograd_lens", 0)
                module = frame.f_globals.get("__name__", "") if frame is not None else "autograd_lens"
            finally:
                del frame
            warnings.warn_explicit(
                f"autograd_lens: not watching while {why} runs (the lens runs no tensor op of its own there)",
                RuntimeWarning, where[0], where[1], module=module,
            )
        return True

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
                f = self._guard(self._explain_ddp)(exc, site)
                if f is None:
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
                extra={"stepped_aside": dict(self.stepped_aside)} if self.stepped_aside else {},
            )

    def network_names(self) -> list[str]:
        return self.reg.network_names()

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
        self.reg.scan_frame(frame)

    def _forget_sites(self) -> None:
        """A network or optimizer is new: what was learnt per backward site may be about dead ones.
        The steps so far are judged first, with what is known about the ones they belong to."""
        self._close_run()
        self.site_terms.clear()
        self.site_leaves.clear()
        self.site_leaks.clear()

    def _opt_for(self, opt: torch.optim.Optimizer) -> OptInfo:
        """The optimizer's state; a new one is named from the caller's variables first."""
        if not self.reg.known(self.reg.opts, opt):
            frame = user_frame()
            try:
                self.reg.scan_frame(frame)
            finally:
                del frame
        return self._opt_for_known(opt)

    def _opt_for_known(self, opt: torch.optim.Optimizer) -> OptInfo:
        """The optimizer's state, registered under a generic name if it is new: its place in the
        framework's list (`configure_optimizers()[1]`), else its type and number (`Adam#3`)."""
        if self.reg.known(self.reg.opts, opt):
            return self.reg.opts[id(opt)]
        name = None
        fw = framework_frames(None)
        try:
            name = frameworks.optimizer_place(fw, opt) if fw else None
        except Exception:
            name = None
        finally:
            del fw
        return self.reg.add_opt(opt, name or f"{type(opt).__name__}#{len(self.reg.opts) + 1}")

    # queries the checks use (the registry answers them) ----------------------------------------
    def param_name(self, pid: int) -> str:
        return self.reg.param_name(pid)

    def opt_name(self, key: int | None) -> str:
        return self.reg.opt_name(key)

    def net_name(self, key: int | None) -> str:
        return self.reg.net_name(key)

    def unit_of(self, pid: int) -> str | None:
        return self.reg.unit_of(pid)

    def net_of_param(self, pid: int) -> int | None:
        return self.reg.net_of_param(pid)

    def net_of_seq(self, seq: int | None) -> int | None:
        return self.reg.net_of_seq(seq)

    def range_of_seq(self, seq: int | None) -> ForwardRange | None:
        """The network-level forward that created node ``seq`` (its call site is where fixes go)."""
        return self.reg.top_range_of_seq(seq)

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
    def _seq_now_always(self) -> int | None:
        """The next sequence number, also while grad is off."""
        with torch.enable_grad():
            return self._seq_now()

    def _seq_now(self) -> int | None:
        """The sequence number the next autograd node will get (None while grad is off)."""
        if not torch.is_grad_enabled():
            return None
        if _PEEK_SEQ is not None:
            return _PEEK_SEQ()
        probe = self._probe  # older PyTorch: make a node and read its number
        if probe is None:
            return None
        fn = probe.view(1).grad_fn
        return fn._sequence_nr() + 1 if fn is not None else None

    def _on_forward_pre(self, module: torch.nn.Module, args: tuple) -> None:
        tls = self._tls
        stack = getattr(tls, "stack", None)
        if stack is None:
            stack = tls.stack = []
            tls.open = []
        opened: list[ForwardRange] = tls.open
        if _compiling() or not torch.is_grad_enabled() or self._aside():
            stack.append(None)
            return
        reg = self.reg
        if opened:  # a call inside a network's forward: one of its modules
            hit = reg.module_of(module)
            start = self._seq_now()
            if hit is None or start is None:
                stack.append(None)
                return
            parent = opened[-1]
            r = ForwardRange(start, hit[0], hit[1], parent.depth + 1, None, parent=parent)
            reg.open_range(r)
            opened.append(r)
            stack.append(r)
            return
        net = reg.nets.get(id(module))
        path = ""
        if net is None or net.ref() is not module:
            if module in reg.not_networks or not is_network(module):
                reg.not_networks.add(module)  # a loss or other module without parameters
                stack.append(None)
                return
            frame = user_frame(("torch.nn.modules.module",))
            try:
                reg.scan_frame(frame)
            finally:
                del frame
            net = reg.nets.get(id(module))
            if net is None or net.ref() is not module:
                hit = reg.module_of(module)
                if hit is not None:
                    # a part of a known network called on its own (`model.head(x)`) belongs to it
                    net, path = reg.nets[hit[0]], hit[1]
                elif any(reg.module_of(m) is not None for m in module.children()):
                    # a container of known networks (a LightningModule holding netG and netD): the
                    # networks it calls are the units
                    reg.not_networks.add(module)
                    stack.append(None)
                    return
                else:
                    net = reg.add_net(module, type(module).__name__)
        start = self._seq_now()
        if start is None:
            stack.append(None)
            return
        detached: set[int] = set()
        carried: list[tuple[int, int, int]] = []
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor):
                fn = a.grad_fn
                if fn is not None:
                    carried.append((i, fn._sequence_nr(), 1))
                elif not a.requires_grad:
                    try:
                        key = (str(a.device), a.untyped_storage().data_ptr())
                    except RuntimeError:
                        continue
                    hit_out = self._net_outputs.get(key)
                    # the output must still exist: a freed one's memory can hold a fresh input
                    if hit_out is not None and hit_out[0] != net.key and hit_out[1]() is not None:
                        detached.add(hit_out[0])
            elif isinstance(a, (tuple, list)) and a and len(a) <= 8:
                for t in a:
                    if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                        carried.append((i, t.grad_fn._sequence_nr(), len(a)))
        r = ForwardRange(start, net.key, path, 0, _caller_site(), frozenset(detached))
        r.carried = tuple(carried)
        reg.open_range(r)
        opened.append(r)
        stack.append(r)

    def _on_forward_post(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        stack = getattr(self._tls, "stack", None)
        if not stack:
            return
        r = stack.pop()
        if r is None:
            return
        opened = self._tls.open
        if opened and opened[-1] is r:
            opened.pop()
        end = _PEEK_SEQ() if _PEEK_SEQ is not None else self._seq_now()
        r.end = (end - 1) if end is not None else r.start - 1
        if r.depth:
            return
        self._forwards += 1
        for t in tensors_in(output):
            try:
                k = (str(t.device), t.untyped_storage().data_ptr())
            except RuntimeError:
                continue
            self._net_outputs[k] = (r.net, weakref.ref(t))
            self._net_outputs.move_to_end(k)
        while len(self._net_outputs) > 256:
            self._net_outputs.popitem(last=False)

    # ------------------------------------------------------------------------------------------
    # backward
    # ------------------------------------------------------------------------------------------
    def _on_api(self, run: Callable[..., Any], kind: str, args: tuple, kwargs: dict) -> Any:
        if self._aside():
            return run(*args, **kwargs)
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

    def _explain_ddp(self, exc: BaseException, site: Site | None) -> Finding | None:
        """DistributedDataParallel failed at a forward because parameters of the network took no
        part in the previous loss: their names, the forward that did not use them, the fixes."""
        got = frameworks.ddp_unused(exc)
        if got is None:
            return None
        ddp, unused, rank_no = got
        names = [self.reg.param_name(id(p)) for p in unused]
        net = self.reg.nets.get(id(ddp))
        forward = next((r.site for r in reversed(self.reg.ranges) if r.depth == 0 and r.net == id(ddp) and r.site), None)
        return checks.dead_param.ddp_unused(
            names, site, forward, net.name if net is not None else "model", rank_no, _exc_text(exc) or ""
        )

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
        if getattr(self._tls, "in_backward", False) or self._closed or _inside_backward() or self._aside():
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
                fw = framework_frames(frame)
                if fw:
                    # a framework ran this backward after the user's `training_step` returned its
                    # loss (Lightning's automatic optimization): that return is the user's line
                    ts = frameworks.training_step_site(fw)
                    if ts is not None and (frame is None or frame.f_code.co_name != ts[2]):
                        site, local_names = Site(*ts), {}
                del fw
            finally:
                del frame
        except Exception as exc:
            self._internal(exc)
            site, local_names = Site("<unknown>", 0), {}
        site = self._intern(site)
        inside = self._in_step()
        if inside is None:
            self._note_manual_updates(site)
            self._close_run()
        roots = tensors_in(t_outputs)
        key = (site.file, site.line)
        with self._lock:
            occurrence = self._site_counts.get(key, 0)
            self._site_counts[key] = occurrence + 1
            prev = self._site_last.get(key, 0)
            call = BackwardCall(
                id=self._calls_dropped + len(self.calls) + 1,
                site=site,
                kind="backward" if accumulate else "grad",
                roots=tuple(local_names.get(id(t), f"<{_shape(t)}>") for t in roots),
                retain_graph=retain,
                create_graph=create_graph,
                occurrence=occurrence,
                prev=prev,
                forwards=self._forwards,
                within=inside.key if inside is not None else None,
            )
            self._site_last[key] = call.id
            self.calls.append(call)
            if len(self.calls) > FOLD_AT:
                self._fold()
        detail = occurrence < self.detail
        try:
            self._settle_grads()
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
            if self._manual_on:
                self._fingerprint_reached(call)
            self._stamp_roots(roots, call)
            self._track_graphs(roots, call)
            self._note_mode(call)
            for f in list(checks.after_backward(self, call, walk)):
                self._add(f)
        except Exception as exc:
            self._internal(exc)
        return result

    def _note_mode(self, call: BackwardCall) -> None:
        """Which networks the call reached in eval mode; which optimizers it trained in train mode."""
        nets = {self.reg.param_net.get(p) for p in call.reached} - {None}
        evals = []
        for key in nets:
            net = self.reg.nets.get(key)
            m = net.ref() if net is not None else None
            if m is not None and not m.training:
                evals.append(net.name)
        call.eval_nets = tuple(sorted(evals))
        call.all_eval = bool(nets) and len(evals) == len(nets)
        if not call.all_eval:
            for p in call.reached:
                for o in self.reg.param_opts.get(p, ()):
                    self.trained_opts.add(o)

    # graphs kept alive across iterations ---------------------------------------------------------
    def _track_graphs(self, roots: Sequence[torch.Tensor], call: BackwardCall) -> None:
        """Tag this call's graph; if graphs of three or more earlier iterations of this site are
        still alive, something holds them (`epoch_loss += loss`, `history.append(loss)`)."""
        key = (call.site.file, call.site.line)
        alive = self._alive.get(key)
        if alive is None:
            alive = self._alive[key] = deque(maxlen=64)
        while alive and alive[0][3]() is None:
            alive.popleft()
        older = [e for e in alive if e[3]() is not None and e[1] < call.forwards]
        if len({e[1] for e in older}) >= HELD_ITERATIONS:
            held = self._holders.get(key, _UNSEEN)
            if held is _UNSEEN:
                held = self._find_holder(call, [e[0] for e in older])
                self._holders[key] = held
            if held is not None:
                f = checks.retained_graph.held(call, held, len(older), any(e[2] for e in older))
                if f is not None:
                    self._add(f)
        for t in roots:
            fn = t.grad_fn
            if fn is not None:
                tag = _GraphTag()
                fn.metadata[self._tag_key] = tag
                alive.append((call.id, call.forwards, call.retain_graph, weakref.ref(tag)))
                break

    def _find_holder(self, call: BackwardCall, old_ids: list[int]) -> HeldGraphs | None:
        """The variable that keeps old graphs alive, its line, and the saved bytes they hold."""
        frame = user_frame()
        try:
            frames = []
            f = frame
            while f is not None and len(frames) < 4:
                frames.append(f)
                f = f.f_back
            for f in frames:
                for name, value in [*local_items(f), *f.f_globals.items()]:
                    if name.startswith("__"):
                        continue
                    got = _holds_tags(value, self._tag_key)
                    if got is None:
                        continue
                    nodes, saved = got
                    line = source.accumulations(f.f_code.co_filename, f.f_lineno, name)
                    site = Site(f.f_code.co_filename, line, f.f_code.co_name) if line else None
                    return HeldGraphs(name, site, nodes, saved, type(value).__name__)
        finally:
            del frame
        return None

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
        # The same `.grad` object holds the gradient of the calls in the ledger, whatever was done
        # to it in place since (clipping, unscaling, all-reduce): a change that zeroed it was seen
        # before this backward began (`_settle_grads`). A new object starts a new ledger.
        if not same and not (call.create_graph and st.grad_ref is not None and st.grad_ref() is None):
            st.ledger = []
        st.ledger.append(call.id)
        self._holding.add(id(p))
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
        if self._closed or _compiling() or self._aside():
            return
        if self._manual_on:
            self._note_manual_updates(_site())
        params = obj.parameters() if isinstance(obj, torch.nn.Module) else (
            p for g in obj.param_groups for p in g["params"]
        )
        for p in params:
            st = self._params.get(id(p))
            if st is not None:
                st.ledger = []
                st.grad_ref = None
                self._holding.discard(id(p))

    def _settle_grads(self) -> None:
        """Before a backward: forget the ledger of each `.grad` that was zeroed in place by hand
        (`p.grad.zero_()`, `p.grad.data.zero_()`) since its last accumulation.

        Only parameters whose `.grad` still holds gradient and whose version moved are looked at
        (a loop that calls `zero_grad()` leaves none); their values decide, in one pass: all zero
        means zeroed, anything else (a clipped or unscaled gradient) keeps its provenance.
        """
        if not self._holding:
            return
        moved: list[tuple[_ParamState, torch.Tensor]] = []
        for pid in list(self._holding):
            st = self._params.get(pid)
            p = st.ref() if st is not None else None
            g = p.grad if p is not None else None
            if g is None or st.grad_ref is None or st.grad_ref() is not g:
                continue  # gone, or replaced: the next accumulation starts a new ledger
            if g._version != st.grad_version:
                moved.append((st, g))
        if not moved:
            return
        zero = _all_zero([g for _, g in moved])
        for (st, g), z in zip(moved, zero):
            st.grad_version = g._version
            if z:
                st.ledger = []
                self._holding.discard(id(st.ref()))

    def _on_step_pre(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._closed or _compiling() or self._aside():
            return
        st = self._opt_for(opt)
        if st.steps == 0 or len(st.pids) != sum(len(g["params"]) for g in opt.param_groups):
            self.reg.refresh_opt(st, opt)
        site = _site()
        # the hook's args are the step's, the optimizer first: `opt.step(closure)` -> (opt, closure)
        rest = args[1:] if args and args[0] is opt else args
        closure = kwargs["closure"] if "closure" in kwargs else (rest[0] if rest else None)
        if callable(closure):
            # LBFGS, SAM: the step runs the closure, and so its backward calls, before it reads the
            # gradient; the step is recorded when it returns, and those calls are for it
            running = getattr(self._tls, "steps", None)
            if running is None:
                running = self._tls.steps = []
            running.append((st, site, self._calls_dropped + len(self.calls) + 1))
            return
        self._record_step(st, _params_of(opt), site)

    def _record_step(
        self, st: OptInfo, params: Iterable[torch.Tensor], site: Site, *, closure_from: int | None = None
    ) -> OptimizerStep:
        """An optimizer (or a manual update) applies the gradient its parameters hold now."""
        st.steps += 1
        if st.first_site is None:
            st.first_site = site
        provenance: dict[int, tuple[int, ...]] = {}
        repeated: dict[int, tuple[int, ...]] = {}
        n_params = 0
        # backward calls ran inside the step (a framework passes a closure that may do nothing)
        ran_closure = closure_from is not None and self._calls_dropped + len(self.calls) >= closure_from
        for p in params:
            n_params += 1
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
            again = tuple(c for c in prov if c in applied) if applied and prov else ()
            if ran_closure:
                # the closure ran several times without zero_grad: each evaluation's gradient was
                # applied by the evaluations after it too
                inside = [c for c in prov if c >= closure_from]
                again = tuple(dict.fromkeys(again + tuple(inside[:-1])))
            if again:
                repeated[id(p)] = again
            ps.applied[st.key] = set(prov)
        step = OptimizerStep(
            index=self._steps_dropped + len(self.steps),
            optimizer=st.name,
            optimizer_key=st.key,
            site=site,
            provenance=provenance,
            repeated=repeated,
            n_params=n_params,
            closure=ran_closure,
            manual=st.manual,
        )
        with self._lock:
            self.steps.append(step)
        self._run.append(step)
        for f in checks.on_step(self, step):
            self._add(f)
        return step

    def _on_step_post(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._closed or _compiling() or self._aside():
            return
        running = getattr(self._tls, "steps", None)
        if running and running[-1][0].key == id(opt):
            st, site, first = running.pop()
            self._record_step(st, _params_of(opt), site, closure_from=first)
        if not self.steps:
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

    # manual updates ----------------------------------------------------------------------------
    def _note_manual_updates(self, site: Site | None) -> None:
        """Parameters that no optimizer steps, changed since the backward that wrote their `.grad`
        (`p.data.add_(p.grad, alpha=-lr)`, `p -= lr * p.grad` under `no_grad`): a manual update,
        recorded as a step of the network's manual-update unit. Looked for only in programs whose
        source has such a statement."""
        if site is not None and site.file not in self._update_stmts:
            found = source.manual_updates(site.file)
            self._update_stmts[site.file] = found
            self._manual_on = self._manual_on or bool(found)
        if not self._manual_on or not self._holding:
            return
        reg = self.reg
        changed: dict[int, list[int]] = {}
        for pid in list(self._holding):
            ps = self._params.get(pid)
            p = ps.ref() if ps is not None else None
            if p is None or ps.fp is None or any(not reg.opts[o].manual for o in reg.opts_of(pid)):
                continue
            if _fingerprint(p) != ps.fp:
                ps.fp = None  # consumed; the next backward takes a new one
                net = reg.net_of_param(pid)
                if net is not None:
                    changed.setdefault(net, []).append(pid)
        for key, _pids in changed.items():
            net = reg.nets[key]
            module = net.ref()
            if module is None:
                continue
            unit = self._manual_units.get(key)
            where = self._update_site(site)
            if unit is None or unit.ref() is None:
                name = f"manual update of {net.name}"
                if where is not None:
                    name += f" at {rel_path(where.file)}:{where.line}"
                unit = reg.add_manual(name, [id(p) for p in module.parameters() if p.requires_grad])
                self._manual_units[key] = unit
            self._record_step(unit, [p for p in module.parameters() if p.requires_grad], where or site or Site("<unknown>", 0))

    def _update_site(self, near: Site | None) -> Site | None:
        """The manual-update statement: in the function of ``near`` if there is one there."""
        best = None
        for file, stmts in self._update_stmts.items():
            for u in stmts:
                if near is not None and file == near.file:
                    scope = source.enclosing(file, near.line)
                    end = getattr(scope, "end_lineno", None)
                    if scope is not None and getattr(scope, "lineno", 0) <= u.line <= (end or u.line):
                        return Site(file, u.line, near.function)
                if best is None:
                    best = Site(file, u.line, "")
        return best

    def _fingerprint_reached(self, call: BackwardCall) -> None:
        reg = self.reg
        for pid in call.reached:
            if any(not reg.opts[o].manual for o in reg.opts_of(pid)):
                continue
            ps = self._params.get(pid)
            p = ps.ref() if ps is not None else None
            if p is not None:
                ps.fp = _fingerprint(p)

    def _in_step(self) -> OptInfo | None:
        """The optimizer whose `step(closure)` is running on this thread, if any."""
        running = getattr(self._tls, "steps", None)
        return running[-1][0] if running else None

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
            opt = self.reg.opts.get(step.optimizer_key)
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

    def opts(self) -> dict[int, OptInfo]:
        return self.reg.opts

    def nets(self) -> dict[int, NetInfo]:
        return self.reg.nets

    def param_states(self) -> dict[int, _ParamState]:
        return self._params

    def param_opt(self, pid: int) -> int | None:
        """The optimizer that steps parameter ``pid`` (None if it is none, or is gone)."""
        return self.reg.opt_of(pid)

    def snapshot(
        self,
        roots: Sequence[torch.Tensor],
        call: BackwardCall,
        leaf_ids: dict[int, int],
        local_names: dict[int, str],
        node_index: dict[int, int],
    ) -> Graph:
        title = f"{source.call_source(call.site.file, call.site.line, source.BACKWARD_METHODS) or 'backward'}  ({rel_path(call.site.file)}:{call.site.line})"
        return capture(
            roots,
            names=self.names,
            output_names=list(call.roots),
            input_names=local_names,
            title=title,
            leaf_ids=leaf_ids,
            node_index=node_index,
            module_of_seq=self.reg.module_name_of_seq,
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


class _GraphTag:
    """Lives in a root node's metadata; a weak reference to it says whether the graph is alive."""

    __slots__ = ("__weakref__",)


_UNSEEN = object()


def _holds_tags(value: Any, tag_key: str, limit: int = 20_000) -> tuple[int, int] | None:
    """(tagged graphs reached, bytes of saved tensors still held) when ``value`` (a tensor, or a
    list, tuple, deque or dict of tensors) reaches graphs tagged with ``tag_key``; else None."""
    if isinstance(value, torch.Tensor):
        starts = [value]
    elif isinstance(value, (list, tuple, deque)) and len(value) <= 100_000:
        starts = [v for v in value if isinstance(v, torch.Tensor)]
    elif isinstance(value, dict) and len(value) <= 10_000:
        starts = [v for v in value.values() if isinstance(v, torch.Tensor)]
    else:
        return None
    stack = [t.grad_fn for t in starts if t.grad_fn is not None]
    if not stack:
        return None
    seen: set[int] = set()
    tags = saved = 0
    while stack and len(seen) < limit:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        try:
            if tag_key in fn.metadata:
                tags += 1
        except (AttributeError, RuntimeError):
            pass
        saved += saved_bytes(fn)
        stack.extend(n for n, _ in fn.next_functions if n is not None and id(n) not in seen)
    stack.clear()
    return (tags, saved) if tags else None


def _fingerprint(p: torch.Tensor) -> tuple[Any, ...]:
    """What changes when a parameter is updated in place, `.data` updates included."""
    try:
        with torch.no_grad():
            total = float(p.detach().sum())
    except (RuntimeError, TypeError):
        total = None
    try:
        ptr = p.data_ptr()
    except RuntimeError:
        ptr = None
    return (p._version, ptr, total)


def _params_of(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def _all_zero(grads: list[torch.Tensor]) -> list[bool]:
    """Whether each gradient is all zero, with one device synchronisation at most."""
    with torch.no_grad():
        try:
            flags = torch.stack([g.any() for g in grads]).tolist()
        except RuntimeError:  # several devices, or tensors without values (fake, meta)
            flags = []
            for g in grads:
                try:
                    flags.append(bool(g.any()))
                except RuntimeError:
                    flags.append(True)
    return [not f for f in flags]


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
    skip: Sequence[str] = (),
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
        skip: packages whose frames are not your code, besides the training frameworks the lens
            knows (Lightning, accelerate): findings point at the line that called into them.

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
    return Watch(mods, opts, intent or {}, detail=detail, on_finding=on_finding, skip=skip)
