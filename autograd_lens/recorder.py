"""The recorder: what the hooks see, as events.

It installs the lens's hooks through :mod:`hooks` (the only place that touches PyTorch's global
state) and turns what they see into events in the :class:`events.EventLog` and facts in the
:class:`registry.Registry`: backward calls (site, roots, which parameters' ``.grad`` they wrote),
optimizer steps and manual updates (which backward calls' gradient each parameter held when it was
applied), forward ranges, graph walks and snapshots. It hands each event to the judge as it
happens (``sink``); it never decides what is wrong.

Cost. The first occurrences of each backward site get *detail*: the global module hooks record
forward ranges, the graph is walked (stamps, leaves, stale saved tensors) and snapshotted. Once every
known site has had its detail, the module hooks come off and a backward costs its site lookup, the
per-parameter accumulation hooks and a few dictionary operations; a step, its parameters'
provenance. A new backward site, network or optimizer turns detail on again. A loop that repeats its
period of events then goes *steady* (:mod:`steady`): each event is compared with the period and
counted, and the full path's state is made when something differs.

Nothing here keeps a tensor, a module or an autograd node alive: parameters and optimizers are
held by weak reference, graph nodes only while a backward call is being set up, and stamps and
tags live in ``node.metadata``, which dies with the node.

Imports: :mod:`hooks`, :mod:`registry`, :mod:`events`, :mod:`walk`, :mod:`graph`, :mod:`naming`,
:mod:`frameworks`, :mod:`source`, :mod:`findings`, :mod:`sites` (where the user's code is),
:mod:`held` (graphs kept alive across iterations) and :mod:`steady` (the steady cycles). Not the
checks, not the judge (it calls the ``sink`` it is given), not the watch.
"""

from __future__ import annotations

import sys
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from . import frameworks, source
from .events import BackwardCall, EventLog, HeldGraphs, OptimizerStep
from .findings import NONLEAF_GRAD_WARNING, SECOND_BACKWARD_ERROR, Finding, Site
from .graph import Graph, capture
from .held import GraphTracker, tagged
from .ledger import Ledger, ParamState
from .hooks import (
    HookSet,
    patch_optimizer_init,
    patch_zero_grad,
    register_global_module_hooks,
    register_global_optimizer_hooks,
    register_step_post_hook,
    watch_warnings,
)
from .hooks.patches import BACKWARD_ENGINE_AVAILABLE, patch_backward
from .naming import framework_frames, local_items, tensor_names, tensors_in, user_frame
from .registry import ForwardRange, OptInfo, Registry, is_network
from .steady import NOT_STEADY, Steady
from .sites import (
    call_site,
    exc_text,
    first_user_frame,
    forget_machinery,
    frame_site,
    machinery_frame,
    module_caller_site,
)
from .walk import WalkResult, after_failure, mark_below, walk_graph

#: How many occurrences of each backward site get a full graph snapshot and leak analysis.
DETAIL_PER_SITE = 2

#: Backward calls in a row with every site past its detail before the module hooks come off.
QUIET_CALLS = 1

#: Backward calls after which a site not called again no longer keeps detail on for the others.
STALE_SITE = 16

_serial = iter(range(1, 1 << 62))

#: Whether a JIT trace runs, and how many TorchDispatchModes are active (feature-detected).
_TRACING = getattr(torch._C, "_get_tracing_state", None)
_DISPATCH_DEPTH = getattr(torch._C, "_len_torch_dispatch_stack", None)
#: Reads the number the next autograd node will get, without making a node (torch >= 2.1).
_PEEK_SEQ = getattr(getattr(torch._C, "_autograd", None), "_get_sequence_nr", None)
_GRAPH_TASK = getattr(torch._C, "_current_graph_task_id", None)


class Sink(Protocol):
    """What the recorder hands its events to (the judge)."""

    def after_backward(self, call: BackwardCall, walk: WalkResult) -> None: ...
    def on_step(self, step: OptimizerStep) -> None: ...
    def close_run(self) -> bool: ...
    #: the last run closed was judged clean, also one its memo cannot know (see ``Judge.settled``)
    settled: bool
    def resume(self, pending: list[BackwardCall], run: list[OptimizerStep]) -> None: ...
    @property
    def added(self) -> int: ...
    @property
    def open_run(self) -> bool: ...
    def held(self, call: BackwardCall, held: HeldGraphs, alive: int, retained: bool) -> None: ...
    def warning(self, message: object, filename: str, lineno: int, *, optimizer: str | None = None,
                params: tuple[str, ...] = (), op: str | None = None, function: str = "") -> None: ...
    def explain_error(self, exc: BaseException, site: Site | None, **ctx: Any) -> Finding | None: ...
    def keep_graph(self, key: str, graph: Graph, *, replace: bool = True) -> None: ...
    def graph_key(self, site: Site) -> str: ...
    def wants_snapshot(self, site: Site) -> bool: ...


class SiteState:
    """What the recorder knows of one backward site."""

    __slots__ = ("site", "key", "count", "last", "detailed", "roots", "leaves", "graph_key", "graph_ranged",
                 "site_key", "steady", "snapshots")

    def __init__(self, site: Site) -> None:
        self.site = site
        self.key = (site.file, site.line)
        self.count = 0  # calls so far
        self.last = 0  # id of its latest call
        self.detailed = 0  # calls walked and snapshotted with forward ranges recorded
        self.roots: tuple[str, ...] | None = None  # names of the roots, from its first call
        self.leaves: set[int] = set()  # leaves seen when walked
        self.graph_key: str | None = None
        self.graph_ranged = False
        self.site_key = site.key
        self.steady: WalkResult | None = None  # what a call past its detail sees, without a walk
        self.snapshots = 0  # graphs taken (since the last registration)


class Recorder:
    """The hooks of one watch and what they saw; see the module docstring."""

    def __init__(
        self,
        log: EventLog,
        reg: Registry,
        sink: Sink,
        *,
        detail: int = DETAIL_PER_SITE,
        keep_graphs: bool = True,
        internal: Callable[[BaseException], None],
    ) -> None:
        self.log = log
        self.reg = reg
        self.sink = sink
        self.detail = detail
        self.keep_graphs = keep_graphs
        self._internal = internal
        self.hooks = HookSet()
        self.closed = False
        self.stepped_aside: dict[str, int] = {}  # what the lens did not watch, and how often
        # steps, manual updates and (while the module hooks are on) network forwards so far: calls of
        # one site with different values belong to different iterations
        self.iteration = 0
        self.ledger = Ledger()
        self._sites: dict[tuple[str, int], SiteState] = {}
        self._frame_sites: dict[tuple[str, int, str], SiteState] = {}  # (file, line, function) -> site
        self._tls = threading.local()
        # running backward calls: the call, its leaves, the thread that started it
        self._inflight: list[tuple[BackwardCall, set[int], int]] = []
        self._lock = threading.RLock()
        self._interned: dict[Any, Any] = {}
        self._rows: dict[Any, tuple[tuple[str, str], ...]] = {}  # reached set -> flow-table row
        self._modes: dict[Any, tuple[int, tuple[Any, ...], frozenset[int]]] = {}  # reached set -> networks
        # detail: module hooks on (forward ranges), and since which call they record whole forwards
        self._module_hooks: list[Any] = []
        self._nonleaf_opts: weakref.WeakSet[Any] = weakref.WeakSet()  # optimizers whose non-leaf parameters were told
        self._ranges_from = 1
        self._quiet = 0
        self.generation = 0  # bumped when a network or optimizer is registered
        # manual updates (no optimizer object): the update statements of the user's files, and
        # the unit that stands for the manual updates of each network
        self._update_stmts: dict[str, tuple[source.Update, ...]] = {}
        self._manual_on = False
        self._all_optimized: tuple[int, int, bool] = (-1, -1, False)  # (generation, parameters, answer)
        self._manual_units: dict[int, OptInfo] = {}
        # storage of recent network outputs -> (network key, weak reference to the output)
        self._net_outputs: OrderedDict[tuple[str, int], tuple[int, weakref.ref]] = OrderedDict()
        self._step_markers: list[tuple[int, int, frozenset[int]]] = []  # (seq, step index, params moved)
        self._probe: torch.Tensor | None = None
        serial = next(_serial)
        # node.metadata keys: (call id, retained) of the last backward through a node; call id of a
        # non-retained backward that used the node as its root. Per watch, so stamps never mix.
        self.stamp_keys = (f"autograd_lens.{serial}.call", f"autograd_lens.{serial}.root")
        # a tag in the root's metadata dies with the graph: the graphs of each site still alive
        self._graphs = GraphTracker(f"autograd_lens.{serial}.alive")
        # a loop that repeats its events is compared with its period instead of recorded in full
        self.steady = Steady(self)
        self._acc_hooks: dict[int, tuple[Any, Callable[[torch.Tensor], None]]] = {}  # param id -> (handle, hook)
        self._step_post: Callable[..., Any] = lambda opt, args, kwargs: None
        self._step_post_handle: Any = None

    # ------------------------------------------------------------------------------------------
    # installing and removing
    # ------------------------------------------------------------------------------------------
    def install(self) -> None:
        forget_machinery()  # the packages to skip may have changed
        if _PEEK_SEQ is None:
            self._probe = torch.zeros(1, requires_grad=True)
        self.reg.first_seq = self._seq_now_always()
        g = self.guard
        steady = self.steady
        self._step_post = g(self._on_step_post)
        # a steady loop's step and zero_grad: one comparison with its period (see :mod:`steady`)
        steady.slow_step, steady.slow_zero = g(self._on_step_pre), g(self._on_zero_grad)
        try:
            patch_backward(self.hooks, steady.make_engine, self._on_api, self._on_api_error)
            self._step_post_handle = register_global_optimizer_hooks(self.hooks, steady.make_step(), self._step_post)
            patch_zero_grad(self.hooks, steady.make_zero)
            patch_optimizer_init(self.hooks, g(self._on_new_optimizer))
            watch_warnings(self.hooks, g(self._on_warning))
            self._modules_on()
        except Exception:
            self.remove()
            raise

    def remove(self) -> None:
        forget_machinery()
        self.leave_steady()
        try:
            self._modules_off()
        finally:
            self.hooks.remove()
            self._probe = None

    def _modules_on(self) -> None:
        """Record forward ranges (and find networks as they run) from the next forward on."""
        self.steady.broken()
        if self._module_hooks or self.hooks.removed:
            return
        hs = HookSet()
        register_global_module_hooks(hs, self.guard(self._on_forward_pre), self.guard(self._on_forward_post))
        self._module_hooks = [hs]
        self._ranges_from = self.log.next_call_id()
        self._tls.__dict__.pop("stack", None)

    def _modules_off(self) -> None:
        for hs in self._module_hooks:
            hs.remove()
        self._module_hooks = []

    def registry_changed(self) -> None:
        """A network or optimizer was registered: what each site knew may be about others."""
        self.leave_steady()
        self.steady.forget()
        self.generation += 1
        for s in self._sites.values():
            # one more detailed call teaches the site what changed (new networks' leaves, the terms
            # its loss splits into now that another optimizer steps)
            s.detailed = min(s.detailed, self.detail - 1)
            s.snapshots = 0
            s.leaves = set()
        self._quiet = 0
        self._modules_on()

    # ------------------------------------------------------------------------------------------
    # failures of the lens, and stepping aside
    # ------------------------------------------------------------------------------------------
    def guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        internal = self._internal

        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                internal(exc)
                return None

        return guarded

    def aside(self) -> bool:
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
    # names
    # ------------------------------------------------------------------------------------------
    def opt_for(self, opt: torch.optim.Optimizer, *, scan: bool = True) -> OptInfo:
        """The optimizer's state; a new one is named from the caller's variables first, else by its
        place in the framework's list (`configure_optimizers()[1]`), else by type (`Adam#3`)."""
        reg = self.reg
        if reg.known(reg.opts, opt):
            return reg.opts[id(opt)]
        if scan:
            frame = user_frame()
            try:
                reg.scan_frame(frame)
            finally:
                del frame
            if reg.known(reg.opts, opt):
                return reg.opts[id(opt)]
        name = None
        fw = framework_frames(None)
        try:
            name = frameworks.optimizer_place(fw, opt) if fw else None
        except Exception:
            name = None
        finally:
            del fw
        return reg.add_opt(opt, name or f"{type(opt).__name__}#{len(reg.opts) + 1}")

    # ------------------------------------------------------------------------------------------
    # forward (global module hooks, while detail is on)
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
        if _compiling() or not torch.is_grad_enabled() or self.aside():
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
                reg.scan_frame(frame, calling=module)
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
        r = ForwardRange(start, net.key, path, 0, module_caller_site(), frozenset(detached))
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
        self.iteration += 1  # a network ran forward: state carried from before is an earlier iteration's
        for t in tensors_in(output):
            if t.grad_fn is None:
                continue  # made without a graph (frozen weights): a later input of it was not detached
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
        if self.aside():
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
            if not self.closed and not getattr(exc, "_autograd_lens_explained", False):
                self.guard(self._explain_api_error)(exc, args, kwargs)
            raise

    def _on_api_error(self, exc: Exception, kind: str, args: tuple, kwargs: dict) -> None:
        """`torch.autograd.backward`/`grad` failed (before the engine ran, or in it: then it is
        explained already)."""
        if not self.closed and not getattr(exc, "_autograd_lens_explained", False) and not self.aside():
            self.guard(self._explain_api_error)(exc, args, kwargs)

    def _explain_api_error(self, exc: Exception, args: tuple, kwargs: dict) -> None:
        """An error raised before the engine ran (e.g. a non-scalar root without `gradient=`)."""
        frame = user_frame()
        try:
            site, names = frame_site(frame), tensor_names(frame, grad_fns=True)
        finally:
            del frame
        roots = args[0] if args else kwargs.get("tensors", kwargs.get("outputs"))
        self.sink.explain_error(exc, site, roots=roots, names=names)

    def _on_engine(self, run: Callable[..., Any], t_outputs: Any, args: tuple, kwargs: dict, accumulate: bool) -> Any:
        """Every backward call, once the steady cycles' hook (:meth:`steady.Steady.make_engine`)
        found it is not a steady loop's next event."""
        steady = self.steady
        if getattr(self._tls, "in_backward", False) or self.closed or _inside_backward() or self.aside():
            # a backward started from inside another one (reentrant checkpointing, hooks):
            # part of the outer call
            try:
                return run(t_outputs, *args, **kwargs)
            finally:
                if steady.on and not self._inflight and steady.running is None:
                    steady.acc.clear()  # (an unwatched call, while the hooks append there)
        if steady.on:
            self.leave_steady()
        n = len(args)
        retain = bool(args[1]) if n > 1 else bool(kwargs.get("keep_graph", False))
        create_graph = bool(args[2]) if n > 2 else bool(kwargs.get("create_graph", False))
        inputs = args[3] if n > 3 else kwargs.get("inputs")
        go = lambda: run(t_outputs, *args, **kwargs)  # noqa: E731
        # a call whose cycle can count towards the loop's period (outside a step's closure)
        plain = (accumulate and not inputs and not self._manual_updates_possible()
                 and not getattr(self._tls, "steps", None))
        if plain:
            try:
                prepared = self._before_steady_backward(t_outputs, retain, create_graph)
            except Exception as exc:  # a failure of the lens: the backward runs, unwatched
                self._internal(exc)
                return go()
            if prepared is NOT_STEADY:  # the loop went steady with this call
                return steady.engine(t_outputs, args, kwargs)
            if prepared is not None:
                return self._run_backward(go, *prepared, steady=True)
        if not plain:
            steady.broken()  # (a detailed call's cycle still counts towards finding the period)
        return self._backward(go, t_outputs, retain, accumulate, create_graph=create_graph, inputs=inputs)

    def _before_steady_backward(self, t_outputs: Any, retain: bool, create_graph: bool) -> tuple[Any, ...] | None:
        """A call of a site past its detail (outside a step's closure: the caller checks): what
        :meth:`_before_backward` does for it, without the walk and the names (None for every other
        call)."""
        frame = first_user_frame(sys._getframe(2))
        s = self._known_site(frame)
        del frame
        if s is None or s.detailed < self.detail:
            return None
        sink = self.sink
        if sink.open_run:
            clean = sink.close_run()
            if self.steady.boundary(clean, s):
                return NOT_STEADY
        roots = tensors_in(t_outputs)
        call = self._new_call(s, "backward", retain, create_graph, None, False)
        self.ledger.settle()
        reused = _root_reused(roots, self.stamp_keys[1])
        walk = WalkResult(leaves=s.leaves, root_reused=reused) if reused else self._steady_walk(s)
        return call, s, walk, roots, None

    def _known_site(self, frame: Any) -> SiteState | None:
        """The state of the site whose calls are made from the user's ``frame``, once seen."""
        if frame is None:
            return None
        code = frame.f_code
        return self._frame_sites.get((code.co_filename, frame.f_lineno, code.co_name))

    def _site_state(self) -> tuple[SiteState, dict[int, str] | None]:
        """The backward site of the call being made: the user's frame (a framework's backward of
        the loss `training_step` returned is that return's line), and, the first time a site is
        seen, the names of the tensors in its frame."""
        frame = first_user_frame(sys._getframe(2))
        try:
            s = self._known_site(frame)
            if s is not None and s.detailed >= self.detail:
                return s, None  # known and past its detail: no scan of the frame's names
            site = frame_site(frame)
            names = tensor_names(frame, grad_fns=True)
            fw = framework_frames(frame)
            if fw:
                ts = frameworks.training_step_site(fw)
                if ts is not None and (frame is None or frame.f_code.co_name != ts[2]):
                    site, names = Site(*ts), {}
            del fw
            s = self._sites.get((site.file, site.line))
            if s is None:
                s = self._sites[(site.file, site.line)] = SiteState(self._intern(site))
            if frame is not None and len(self._frame_sites) < 4096:
                code = frame.f_code
                self._frame_sites[(code.co_filename, frame.f_lineno, code.co_name)] = s
            return s, names
        finally:
            del frame

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
            prepared = self._before_backward(t_outputs, retain, accumulate, create_graph, inputs)
        except Exception as exc:  # a failure of the lens: the backward runs, unwatched
            self._internal(exc)
            return go()
        return self._run_backward(go, *prepared)

    def _before_backward(
        self, t_outputs: Any, retain: bool, accumulate: bool, create_graph: bool, inputs: Any
    ) -> tuple[Any, ...]:
        """Everything the lens does before the engine runs: the site, the call, the graph walk."""
        try:
            s, local_names = self._site_state()
        except Exception as exc:
            self._internal(exc)
            s, local_names = SiteState(Site("<unknown>", 0)), {}
        site = s.site
        inside = self._in_step()
        if inside is None:
            if self._manual_on or local_names is not None:
                self._note_manual_updates(site)
            if self.sink.open_run:
                self.steady.boundary(self.sink.close_run(), s, lean=False)
        roots = tensors_in(t_outputs)
        if s.roots is None or local_names:
            s.roots = tuple((local_names or {}).get(id(t), f"<{_shape(t)}>") for t in roots)
        detail = s.detailed < self.detail
        call = self._new_call(s, "backward" if accumulate else "grad", retain, create_graph,
                              inside.key if inside is not None else None, detail)
        if inputs and local_names:
            call.inputs = tuple(n for t in tensors_in(inputs) if (n := local_names.get(id(t))) is not None)
        ranged = call.id >= self._ranges_from  # its forward ran with the module hooks on
        if detail and ranged:
            s.detailed += 1  # a forward recorded whole: this call's detail counts
        elif detail:
            self._modules_on()
        try:
            self.ledger.settle()
            if detail:
                # the first detailed call of a site is snapshotted; later ones when the judge still
                # learns from them (a loss split among several networks)
                snap = s.snapshots == 0 or self.sink.wants_snapshot(site)
                walk = walk_graph(self, roots, call, snap, local_names or {}, _inputs_of(inputs), accumulate)
                if walk.graph is not None:
                    s.snapshots += 1
                s.leaves |= walk.leaves
                # the site's picture: its first snapshot, replaced once by one with forward ranges
                if walk.graph is not None and (s.graph_key is None or (ranged and not s.graph_ranged)):
                    s.graph_key = self.sink.graph_key(site)
                    s.graph_ranged = ranged
                    call.graph_key = s.graph_key
            else:
                reused = _root_reused(roots, self.stamp_keys[1])
                if reused:
                    walk = WalkResult(leaves=s.leaves, root_reused=reused)
                else:  # nothing to read from it: one object per site, shared by its calls
                    walk = self._steady_walk(s)
            if inputs and accumulate:
                # leaves left out by `backward(inputs=...)` get no gradient on purpose
                chosen = {id(t) for t in tensors_in(inputs)}
                self.log.excluded |= walk.leaves - chosen
        except Exception as exc:
            self._internal(exc)
            walk = WalkResult()
        return call, s, walk, roots, local_names

    def _new_call(self, s: SiteState, kind: str, retain: bool, create_graph: bool, within: int | None,
                  detailed: bool) -> BackwardCall:
        """The next backward call, made at site ``s``: counted there and added to the log."""
        with self._lock:
            call = BackwardCall(self.log.next_call_id(), s.site, kind, s.roots, retain, create_graph, s.count, s.last,
                                self.iteration, (), False, set(), (), None, None, within, detailed, s.site_key)
            s.count += 1
            s.last = call.id
            self.log.add_call(call)
        return call

    def _run_backward(
        self, go: Callable[[], Any], call: BackwardCall, s: SiteState, walk: WalkResult, roots: list[Any],
        local_names: dict[int, str] | None, *, steady: bool = False,
    ) -> Any:
        site = s.site
        self._tls.in_backward = True
        running = (call, walk.leaves, threading.get_ident())
        with self._lock:
            self._inflight.append(running)
        try:
            result = go()
        except BaseException as exc:
            call.error = exc_text(exc)
            if walk.graph is not None and self.keep_graphs and call.graph_key is None:
                # the failing call's graph, as it was when the backward started (freed parts marked)
                call.graph_key = s.graph_key or self.sink.graph_key(site)
                self.sink.keep_graph(call.graph_key, walk.graph, replace=False)
            if isinstance(exc, Exception) and not getattr(exc, "_autograd_lens_explained", False):
                walk = self.guard(self.failed_walk)(exc, call, walk, roots, local_names) or walk
                self.guard(self.sink.explain_error)(exc, site, call=call, walk=walk, roots=roots, names=local_names or {})
            self.steady.broken()
            raise
        finally:
            with self._lock:
                self._inflight.remove(running)
            self._tls.in_backward = False
        self._after_call(call, walk, roots, s, call.retain_graph, steady and not walk.root_reused)
        return result

    def _after_call(self, call: BackwardCall, walk: WalkResult, roots: Sequence[torch.Tensor], s: SiteState,
                    retain: bool, steady: bool = False) -> None:
        """What follows a backward call that returned: its parameters, its graph's tags, its row."""
        try:
            call.reached = self._intern(frozenset(call.reached))
            self.reg.ever_grad |= call.reached
            if self._manual_on:
                self.ledger.fingerprint(self.reg, call.reached)
            self._track_graphs(roots, call)
            self._note_mode(call)
            call.networks = self._row(call, walk)
            self.sink.after_backward(call, walk)
            self._settle_detail()
            if steady or (call.detailed and self.steady.capture is None and not walk.root_reused
                          and call.kind == "backward"):
                self.steady.noted_call(s, retain, len(roots), call)  # (a detailed one: its signature)
            else:
                self.steady.broken()
        except Exception as exc:
            self._internal(exc)

    def failed_walk(self, exc: BaseException, call: BackwardCall, walk: WalkResult, roots: Sequence[torch.Tensor],
                    local_names: dict[int, str] | None) -> WalkResult:
        """The walk to explain a failed call with: for a call that was not walked and failed on
        freed buffers, what the graph shows now (:func:`walk.after_failure`: the freed parts and the
        earlier call that went through them); for one that was, the leaves below the parts it
        shares (:func:`walk.mark_below`)."""
        if SECOND_BACKWARD_ERROR not in str(exc):
            return walk
        if walk.prev:
            mark_below(list(roots), walk)  # (what lies below the parts it shares: the fix depends on it)
            return walk
        frame = first_user_frame(sys._getframe(1))
        try:
            names = local_names or (tensor_names(frame, grad_fns=True) if frame is not None else {})
            held = {name: value for name, value in local_items(frame) if isinstance(value, torch.Tensor)} if frame else {}
        finally:
            del frame

        def root_seq(c: BackwardCall) -> int | None:
            """The sequence number of the root of call ``c``, from the variable that still holds its loss."""
            seqs = [t.grad_fn._sequence_nr() for name in c.roots
                    if (t := held.get(name)) is not None and t.grad_fn is not None]
            return max(seqs) if seqs else None

        try:
            return after_failure(self, list(roots), call, names, root_seq) or walk
        finally:
            held.clear()

    def _steady_walk(self, s: SiteState) -> WalkResult:
        """What a call of a site past its detail sees, without a walk (one object per site)."""
        walk = s.steady
        if walk is None or walk.leaves is not s.leaves:
            walk = s.steady = WalkResult(leaves=s.leaves)
        return walk

    def leave_steady(self) -> None:
        """Leave the steady cycles: the state the full path would have made, made now."""
        steady = self.steady
        if not steady.on:
            return
        try:
            steady.leave()
        except Exception as exc:
            steady.next = None  # (not steady)
            steady.off = True
            self._internal(exc)

    def _on_new_optimizer(self, opt: torch.optim.Optimizer) -> None:
        """An optimizer was made (a new trial, a re-initialised model): its parameters are watched
        from their first backward on, and the next forwards are recorded (networks made anew are
        found there). It is named at its first step, from the variable that holds it by then."""
        if self.closed:
            return
        for group in opt.param_groups:
            for p in group["params"]:
                if isinstance(p, torch.Tensor):
                    self.ensure_param(p)
        self.registry_changed()

    def _settle_detail(self) -> None:
        """Once every site called lately has had its detail, for a few calls in a row, the module
        hooks come off (forward ranges are needed only for the graphs of detailed calls). A site
        not called in the last :data:`STALE_SITE` calls (a check run once before the loop) does not
        keep them on: if it comes back, its call turns detail on again."""
        if not self._module_hooks:
            return
        recent = self.log.n_calls - STALE_SITE
        if all(s.detailed >= self.detail or s.last < recent for s in self._sites.values()):
            self._quiet += 1
            if self._quiet >= QUIET_CALLS:
                self._modules_off()
        else:
            self._quiet = 0

    def _row(self, call: BackwardCall, walk: WalkResult) -> tuple[tuple[str, str], ...]:
        """The call's row of the flow table: each network (and optimized tensor of no network)
        reached, stopped at a detach, or not reached."""
        reg = self.reg
        leaves = call.reached or walk.leaves
        columns = reg.columns()
        if walk.graph is None:
            key = (leaves if isinstance(leaves, frozenset) else frozenset(leaves), columns, self.generation)
            row = self._rows.get(key)
            if row is not None:
                return row
        reached = {reg.column_of(p) for p in leaves} - {None}
        detached: set[str] = set()
        if walk.graph is not None:
            for n in walk.graph.nodes:
                if n.seq is not None and n.kind != "param":
                    r = reg.top_range_of_seq(n.seq)
                    if r is not None:
                        detached |= {reg.net_name(k) for k in r.detached_from}
        row = tuple(
            (name, "reached" if name in reached else "detached" if name in detached else "not reached")
            for name in columns
        )
        row = self._intern(row)
        if walk.graph is None:
            if len(self._rows) > 256:
                self._rows.clear()
            self._rows[key] = row
        return row

    def reached_units(self, reached: frozenset[int]) -> tuple[tuple[Any, ...], frozenset[int]]:
        """The networks (``NetInfo``) and the optimizers of the parameters ``reached`` (memoized
        until the next registration)."""
        reg = self.reg
        memo = self._modes.get(reached)
        if memo is None or memo[0] != reg.generation:
            nets = tuple(n for n in (reg.nets.get(k) for k in {reg.param_net.get(p) for p in reached} - {None}) if n)
            opts = frozenset(o for p in reached for o in reg.param_opts.get(p, ()))
            memo = (reg.generation, nets, opts)
            if len(self._modes) > 256:
                self._modes.clear()
            self._modes[reached] = memo
        return memo[1], memo[2]

    def _note_mode(self, call: BackwardCall) -> None:
        """Which networks the call reached in eval mode; which optimizers it trained in train mode."""
        reg = self.reg
        nets, opts = self.reached_units(call.reached)  # type: ignore[arg-type]
        evals = [n.name for n in nets if (m := n.ref()) is not None and not m.training]
        call.eval_nets = tuple(sorted(evals)) if evals else ()
        call.all_eval = bool(nets) and len(evals) == len(nets)
        if not call.all_eval and not opts <= reg.trained_opts:
            reg.trained_opts |= opts

    # graphs kept alive across iterations ---------------------------------------------------------
    def _track_graphs(self, roots: Sequence[torch.Tensor], call: BackwardCall) -> None:
        """Stamp the root (a later backward through it again is a silent double backward) and tag
        its graph (:mod:`held`); past a site's detail only some calls are (:func:`held.tagged`)."""
        fn = None
        for t in roots:
            fn = t.grad_fn
            if fn is not None:
                break
        if fn is None:
            return
        if not call.retain_graph:
            fn.metadata[self.stamp_keys[1]] = call.id
        if not call.detailed and not tagged(call.occurrence):
            return
        found = self._graphs.track(fn, call)
        if found is not None:
            self.sink.held(call, *found)

    def sites(self) -> list[SiteState]:
        return list(self._sites.values())

    # used by the graph walk -----------------------------------------------------------------------
    def step_markers(self) -> list[tuple[int, int, frozenset[int]]]:
        return self._step_markers

    def param_states(self) -> dict[int, ParamState]:
        return self.ledger.params

    def param_opt(self, pid: int) -> int | None:
        return self.reg.opt_of(pid)

    def snapshot(
        self,
        roots: Sequence[torch.Tensor],
        call: BackwardCall,
        leaf_ids: dict[int, int],
        local_names: dict[int, str],
        node_index: dict[int, int],
    ) -> Graph:
        call_text = source.call_source(call.site.file, call.site.line, source.BACKWARD_METHODS) or "backward"
        return capture(
            roots,
            names=self.reg.names,
            output_names=list(call.roots),
            input_names=local_names,
            title=f"{call_text}  ({call.site.key})",
            leaf_ids=leaf_ids,
            node_index=node_index,
            module_of_seq=self.reg.module_name_of_seq,
        )

    # ------------------------------------------------------------------------------------------
    # accumulation
    # ------------------------------------------------------------------------------------------
    def ensure_param(self, p: torch.Tensor) -> None:
        """Watch parameter ``p``'s accumulations from now on."""
        st = self.ledger.add(p)
        if st is not None and p.requires_grad and p.is_leaf:
            try:
                hook = self._accumulation_hook(st)
                handle = self.hooks.add(p.register_post_accumulate_grad_hook(hook))
            except RuntimeError:
                return
            if len(self._acc_hooks) > 4 * len(self.ledger.params) + 64:  # those of dead parameters
                self._acc_hooks = {k: v for k, v in self._acc_hooks.items() if v[0].hooks_dict_ref() is not None}
            self._acc_hooks[id(p)] = (handle, hook)

    def steady_hooks(self, accumulated: Callable[[torch.Tensor], Any] | None) -> None:
        """While a loop runs steady: each parameter's accumulation hook calls ``accumulated`` instead
        (the steady cycles' ``list.append``: no Python frame per accumulation), and the steps' post-hook
        is off (no closure runs, no detail is taken). ``None``: the hooks of the full path again. A
        parameter's hook keeps its place among its hooks, also on a parameter frozen meanwhile."""
        if accumulated is not None:
            if self._step_post_handle is not None:
                self._step_post_handle.remove()
                self._step_post_handle = None
        elif self._step_post_handle is None and not self.hooks.removed:
            self._step_post_handle = register_step_post_hook(self.hooks, self._step_post)
        target = accumulated
        for handle, hook in self._acc_hooks.values():
            hooks = handle.hooks_dict_ref()
            if hooks is not None and handle.id in hooks:
                hooks[handle.id] = hook if target is None else target

    def _accumulation_hook(self, st: ParamState) -> Callable[[torch.Tensor], None]:
        """The hook of one parameter: a backward added its gradient to ``p.grad``, one more call in
        the parameter's ledger. (Runs for every parameter of every backward: kept lean, bound to the
        parameter's state; it guards itself.)"""
        inflight = self._inflight
        accumulated = self.ledger.accumulated
        internal = self._internal

        def on_accumulated(p: torch.Tensor) -> None:
            if not inflight:
                return None
            try:
                if len(inflight) == 1:
                    call = inflight[0][0]
                else:  # backward calls running in several threads: this thread's, else one holding p
                    me, pid = threading.get_ident(), id(p)
                    call = next((c for c, _, t in reversed(inflight) if t == me), None) or next(
                        (c for c, leaves, _ in reversed(inflight) if leaves is not None and pid in leaves),
                        inflight[-1][0],
                    )
                if call.__class__ is list:  # a call of the steady cycles collects its parameters
                    call.append(p)
                    return None
                accumulated(st, p, call)
            except Exception as exc:
                internal(exc)
            return None

        return on_accumulated

    def _on_warning(self, message: object, filename: str, lineno: int) -> None:
        if self.closed:
            return
        if NONLEAF_GRAD_WARNING in str(message):
            # read inside torch or a framework (an optimizer's step): the user's line that led
            # there, and the parameters that are not leaves of the optimizer stepping
            where = self._nonleaf_read(filename, lineno)
            if where == ():
                return
            if where is not None:
                site, optimizer, names, op = where
                self.sink.warning(message, site.file, site.line, optimizer=optimizer, params=names, op=op,
                                  function=site.function)
                return
        self.sink.warning(message, filename, lineno)

    def _nonleaf_read(self, filename: str, lineno: int) -> tuple[Any, ...] | None:
        """For a non-leaf `.grad` read that the machinery made: (the user's line that called it,
        the optimizer whose step or zero_grad made it, the names of that optimizer's parameters
        that are not leaves, the operation that made the first of them); () when that optimizer's
        were told already; None for a read in the user's code."""
        f: Any = sys._getframe(2)
        try:
            while f is not None and not (f.f_code.co_filename == filename and f.f_lineno == lineno):
                f = f.f_back
            if f is None or not machinery_frame(f):
                return None
            opt = None
            while f is not None and machinery_frame(f):
                if opt is None and (f.f_code is _STEP_WRAPPER or f.f_code.co_name == "zero_grad"):
                    opt = f.f_locals.get("self")
                f = f.f_back
            if f is None:
                return None
            site = frame_site(f)
        finally:
            del f
        if not isinstance(opt, torch.optim.Optimizer):
            return site, None, (), None
        if opt in self._nonleaf_opts:
            return ()  # told once per optimizer (its zero_grad and its step read them)
        self._nonleaf_opts.add(opt)
        st = self.reg.opts.get(id(opt))
        stale = [p for p in _params_of(opt) if not p.is_leaf]
        names = tuple(sorted(self.reg.param_name(id(p)) for p in stale))
        op = type(stale[0].grad_fn).__name__ if stale and stale[0].grad_fn is not None else None
        return site, st.name if st is not None and st.ref() is opt else type(opt).__name__, names, op

    # ------------------------------------------------------------------------------------------
    # zero_grad and steps
    # ------------------------------------------------------------------------------------------
    def _on_zero_grad(self, obj: Any, set_to_none: bool) -> None:
        if self.closed or _compiling() or self.aside():
            return
        steady = self.steady
        if steady.on:
            self.leave_steady()  # (the event did not match: see `install`)
        if self._manual_on:
            self._note_manual_updates(call_site())
        if isinstance(obj, torch.nn.Module):
            pids = [id(p) for p in obj.parameters()]
        else:
            st = self.reg.opts.get(id(obj))
            groups = obj.param_groups
            if st is not None and st.ref() is obj and _unchanged(st, groups):
                pids = st.pids
            else:
                pids = [id(p) for g in groups for p in g["params"]]
        self.ledger.zeroed(pids, call_site, self.log.n_calls)
        steady.noted_zero(obj, set_to_none, pids)

    def _on_step_pre(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self.closed or _compiling() or self.aside() or _inside_another_step():
            return
        steady = self.steady
        if steady.on:
            self.leave_steady()  # (the event did not match: see `install`)
        st = self.reg.opts.get(id(opt))
        if st is None or st.ref() is not opt:
            st = self.opt_for(opt)
        groups = opt.param_groups
        if st.steps == 0 or not _unchanged(st, groups):
            self.reg.refresh_opt(st, opt)
        site = call_site()
        if kwargs or len(args) > 1 or (args and args[0] is not opt):
            # the hook's args are the step's, the optimizer first: `opt.step(closure)` -> (opt, closure)
            rest = args[1:] if args and args[0] is opt else args
            closure = kwargs["closure"] if "closure" in kwargs else (rest[0] if rest else None)
            if callable(closure):
                # LBFGS, SAM: the step runs the closure, and so its backward calls, before it reads
                # the gradient; the step is recorded when it returns, and those calls are for it
                running = getattr(self._tls, "steps", None)
                if running is None:
                    running = self._tls.steps = []
                running.append((st, site, self.log.next_call_id()))
                steady.broken()
                return
        params = groups[0]["params"] if len(groups) == 1 else _params_of(opt)
        step = self._record_step(st, params, site)
        steady.noted_step(opt, st, step, params)

    def _record_step(
        self, st: OptInfo, params: list[torch.Tensor], site: Site, *, closure_from: int | None = None
    ) -> OptimizerStep:
        """An optimizer (or a manual update) applies the gradient its parameters hold now."""
        st.steps += 1
        self.iteration += 1
        if st.first_site is None:
            st.first_site = site
        # backward calls ran inside the step (a framework passes a closure that may do nothing)
        ran_closure = closure_from is not None and self.log.n_calls >= closure_from
        provenance, repeated, groups, lost = self.ledger.provenance(st, params, closure_from if ran_closure else None,
                                                                    self.log.n_calls)
        step = OptimizerStep(
            self.log.n_steps, st.name, st.key, site, provenance, repeated, len(params), ran_closure, st.manual, groups,
            discarded=lost,
        )
        self.log.add_step(step)
        self.sink.on_step(step)
        return step

    def _on_step_post(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self.closed:
            return
        running = getattr(self._tls, "steps", None)
        if not running and not self._module_hooks:
            return  # no closure ran, and past the detail: nothing to record
        if _compiling() or self.aside():
            return
        if running and running[-1][0].key == id(opt):
            st, site, first = running.pop()
            self._record_step(st, _params_of(opt), site, closure_from=first)
        if not self._module_hooks:
            return  # past the detail: stale saved weights are looked for in detailed calls only
        seq = self._seq_now()
        if seq is not None and self.log.n_steps:
            step = self.log.step(self.log.n_steps - 1)
            if step is not None and step.optimizer_key == id(opt):
                # the parameters it moved: those it stepped with a gradient (Adam skips the others)
                self._step_markers.append((seq, step.index, self._intern(frozenset(step.provenance))))
                if len(self._step_markers) > 64:
                    del self._step_markers[:32]

    def _in_step(self) -> OptInfo | None:
        """The optimizer whose `step(closure)` is running on this thread, if any."""
        running = getattr(self._tls, "steps", None)
        return running[-1][0] if running else None

    # an error that ends the watch ----------------------------------------------------------------
    def finish(self) -> None:
        """The end of the watch: a manual update after the last backward is a step too."""
        self.leave_steady()
        if self._manual_on:
            self._note_manual_updates(None)

    def ddp_unused(self, exc: BaseException) -> tuple[list[str], Site | None, str, int | None] | None:
        """When DistributedDataParallel failed at a forward because parameters of the network took
        no part in the previous loss: their names, the forward that did not use them, the network
        and the rank."""
        got = frameworks.ddp_unused(exc)
        if got is None:
            return None
        ddp, unused, rank_no = got
        names = [self.reg.param_name(id(p)) for p in unused]
        net = self.reg.nets.get(id(ddp))
        forward = next((r.site for r in reversed(self.reg.ranges) if r.depth == 0 and r.net == id(ddp) and r.site), None)
        return names, forward, net.name if net is not None else "model", rank_no

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
        if not self._manual_on or not self.ledger.holding:
            return
        reg = self.reg
        for key in self.ledger.updated_by_hand(reg):
            net = reg.nets[key]
            module = net.ref()
            if module is None:
                continue
            unit = self._manual_units.get(key)
            # a known unit keeps its statement; a new one takes the update statement near the site
            where = unit.first_site if unit is not None and unit.first_site is not None else self._update_site(site)
            if unit is None or unit.ref() is None:
                name = f"manual update of {net.name}"
                if where is not None:
                    name += f" at {where.key}"
                unit = reg.add_manual(name, [id(p) for p in module.parameters() if p.requires_grad])
                self._manual_units[key] = unit
            self._record_step(unit, [p for p in module.parameters() if p.requires_grad], where or site or Site("<unknown>", 0))
            self.steady.broken()

    def _manual_updates_possible(self) -> bool:
        """Whether a manual update could be seen now: the program has an update statement, and a
        parameter that no optimizer steps has been given gradient."""
        if not self._manual_on:
            return False
        reg = self.reg
        reached = reg.ever_grad
        gen, n, answer = self._all_optimized
        if gen != reg.generation or n != len(reached):
            answer = all(any(not reg.opts[o].manual for o in reg.opts_of(pid)) for pid in reached)
            self._all_optimized = (reg.generation, len(reached), answer)
        return not answer

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

    def _intern(self, value: Any) -> Any:
        got = self._interned.get(value)
        if got is None:
            if len(self._interned) > 4096:
                self._interned.clear()
            got = self._interned[value] = value
        return got


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _dispatch_mode_name() -> str:
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        mode = _get_current_dispatch_mode()
        return f"a {type(mode).__name__}" if mode is not None else "a TorchDispatchMode"
    except Exception:
        return "a TorchDispatchMode"


def _root_reused(roots: Sequence[torch.Tensor], root_key: str) -> set[int]:
    """Earlier non-retained calls that used one of these roots as theirs (a silent double backward)."""
    out: set[int] = set()
    for t in roots:
        fn = t.grad_fn
        if fn is not None:
            r = fn.metadata.get(root_key)
            if r is not None:
                out.add(r)
    return out


def _inputs_of(inputs: Any) -> Sequence[Any] | None:
    """The ``inputs`` of a backward call as the engine takes them (tensors or gradient edges), None
    without any."""
    if not inputs:
        return None
    if isinstance(inputs, (torch.Tensor, torch.autograd.graph.GradientEdge)):
        return (inputs,)
    return tuple(inputs) if isinstance(inputs, (list, tuple)) else None


def _params_of(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def _unchanged(st: OptInfo, groups: list[dict[str, Any]]) -> bool:
    """Whether the optimizer's param groups hold as many groups and parameters as when last read."""
    n = len(groups)
    if n != st.n_groups:
        return False
    return st.n_listed == (len(groups[0]["params"]) if n == 1 else sum(len(g["params"]) for g in groups))


def _inside_backward() -> bool:
    """True while a graph task runs on this thread (autograd's device threads included)."""
    return _GRAPH_TASK is not None and _GRAPH_TASK() != -1


def _step_wrapper_code() -> Any:
    """The code of the wrapper every optimizer's ``step`` runs in (it calls the step hooks)."""
    try:
        return torch.optim.Optimizer.profile_hook_step(lambda *a, **k: None).__code__
    except Exception:
        return None


_STEP_WRAPPER = _step_wrapper_code()


def _inside_another_step() -> bool:
    """An optimizer's step taken inside another optimizer's step: part of that step, not one of
    its own (K-FAC preconditions the gradient and has an inner SGD apply it; Lookahead steps the
    optimizer it wraps). Called from a step pre-hook: the step's own wrapper is the first met."""
    if _STEP_WRAPPER is None:
        return False
    f: Any = sys._getframe(1)
    met = 0
    while f is not None:
        if f.f_code is _STEP_WRAPPER:
            met += 1
            if met == 2:
                return True
        f = f.f_back
    return False


_IS_COMPILING = getattr(getattr(torch, "compiler", None), "is_compiling", None)


def _compiling() -> bool:
    if _IS_COMPILING is None:
        return False
    try:
        return bool(_IS_COMPILING())
    except Exception:
        return False


def _shape(t: torch.Tensor) -> str:
    return "tensor" + (f"{list(t.shape)}" if t.dim() else "")
