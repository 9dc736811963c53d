"""Steady cycles: a loop that repeats the same events is compared with the period it repeats, event
by event, and recorded in full only when something changes.

A training loop settles into a period of hooked events: ``zero_grad()``, backward calls, steps, in
the same order, at the same lines, reaching the same parameters. A *cycle* is the backward calls
that close a run of steps and what follows them up to the next such call; a *period* is the few
cycles that repeat (one for a classifier, two for a GAN that alternates its networks). A cycle is
*clean* when nothing was found in it and its run of steps was judged clean, with no call left
undecided. When the recorder has seen a period twice in a row, each cycle clean, and a third time
with its effects captured (the *template*: the calls and steps as made, which parameters each call
reached and whether it started their ledgers anew, the ledger before and after), the recorder goes
steady. The cycles that find the period may hold detailed calls; the template holds lean calls
only, and its runs must be known to the judge's memo (so that every later run of its shape is known
to be clean). The first clean cycle after a change is guessed to be a period of its own: the next
cycle is captured at once, and when it is the same, it is the template (a classifier goes steady
with its fourth backward call, a GAN with its fourth iteration; a guess that fails delays nothing
and does not count against the loop). Steady, each further event is compared with the template
(its kind, its object, its line, its flags; for a backward call, which parameters it reached and
the train/eval mode of the networks it reached) and, when it matches, advances the ids, counts and
iterations as the full path would. No event object is made, no ledger entry written, no run
judged: they would be the template's, shifted.

Leaving (an event that does not match, a registration, a report, the end of the watch) makes the
state the full path would have made: each parameter's ledger from the template's, shifted by the
periods that passed; the calls and steps of the last period in the log (the earlier ones in its
totals); the judge's open run; then the events of the unfinished period, one by one. The event that
did not match then takes the full path.

What steady cycles do not see and the full path does: a ``.grad`` assigned, set to None or zeroed
in place by hand, in a period whose template did not do it. A loop whose template does it never
goes steady (the ledger counts such changes: ``Ledger.by_hand``), nor does one whose ledgers do not
repeat from period to period (gradient kept across periods).

While steady, the parameters' accumulation hooks call ``list.append`` of the steady cycles (no
Python frame per accumulation); the list is emptied after each call.

Imports :mod:`events`, :mod:`ledger`, :mod:`held` (``tagged``), :mod:`sites` and torch; it is part
of the recorder, reaches the judge only through the recorder's sink, and keeps no tensor, module or
node alive (optimizers and modules by weak reference, parameters by id; the parameters a backward
call accumulated into are held until the next call or leaving).
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .events import BackwardCall, OptimizerStep
from .ledger import MAX_LEDGER
from .held import tagged
from .sites import exc_text, machinery_frame

if TYPE_CHECKING:
    from .ledger import Ledger
    from .recorder import Recorder, SiteState
    from .registry import OptInfo

#: Longest period looked for, in cycles.
MAX_PERIOD = 8

#: What the recorder's check of a backward call returns when the loop goes steady with that call.
NOT_STEADY = object()


class ZeroEvent:
    __slots__ = ("ref", "key", "set_to_none", "pids", "index", "after", "wraps")

    def __init__(self, obj: Any, set_to_none: bool, pids: list[int]) -> None:
        self.ref = weakref.ref(obj)
        self.key = id(obj)
        self.set_to_none = set_to_none
        self.pids = list(pids)


class CallEvent:
    __slots__ = ("state", "retain", "n_roots", "acc", "acc_ids", "call", "nets", "depth", "code", "lasti", "index",
                 "after", "wraps", "args")

    def __init__(self, state: SiteState, retain: bool, n_roots: int, call: BackwardCall) -> None:
        self.state = state
        self.retain = retain
        # the engine's (retain_graph, create_graph, inputs), as `backward()` passes them
        self.args = (retain, False, ())
        self.n_roots = n_roots
        self.call = call
        self.acc: tuple[tuple[int, bool], ...] = ()  # (parameter id, its ledger started anew), in order
        self.acc_ids: tuple[int, ...] = ()
        self.nets: tuple[tuple[weakref.ref, bool], ...] = ()  # networks reached, and their `training`
        # the user's frame: how far up the steady handler's caller, its code and the instruction
        # that made the call there (one instruction: one line, and no line table to read)
        self.depth = 0
        self.code: Any = None
        self.lasti = -1


class StepEvent:
    __slots__ = ("ref", "key", "site", "opt", "step", "provenance", "groups", "depth", "code", "lasti", "param_ids",
                 "probes", "index", "after", "wraps")

    def __init__(self, opt: Any, st: OptInfo, step: OptimizerStep, params: list[Any]) -> None:
        self.ref = weakref.ref(opt)
        self.key = id(opt)
        self.site = step.site
        self.opt = st
        self.step = step  # settled by the judge later: its sources and stepped parameters
        self.provenance = dict(step.provenance)  # as it was before the judge settled it
        self.groups = [(prov, list(pids)) for prov, pids in step.groups]
        self.param_ids = tuple(map(id, params))  # the optimizer's parameters, in its groups' order
        # a parameter of each group that held gradient: its `.grad` must not be gone (set to None
        # by hand) when the step comes
        by_id = {id(p): p for p in params}
        self.probes = tuple(weakref.ref(by_id[pids[0]]) for prov, pids in step.groups if prov and pids[0] in by_id)
        self.depth = 0
        self.code: Any = None
        self.lasti = -1


Event = ZeroEvent | CallEvent | StepEvent


#: Whether the user's code runs under a JIT trace, a TorchDispatchMode or torch.compile now: then
#: the full path decides (it steps aside).
_TRACING = getattr(torch._C, "_get_tracing_state", None)
_DISPATCH_DEPTH = getattr(torch._C, "_len_torch_dispatch_stack", None)
_GRAPH_TASK = getattr(torch._C, "_current_graph_task_id", None) or (lambda: -1)
if (_TRACING is None or _DISPATCH_DEPTH is None or not hasattr(torch.compiler, "_is_compiling_flag")
        or not hasattr(torch._C, "_current_graph_task_id")):  # older PyTorch
    _TRACING = lambda: object()  # noqa: E731  (never steady)
    _DISPATCH_DEPTH = lambda: 0  # noqa: E731
_get_ident = threading.get_ident
_getframe = sys._getframe
_COMPILER = torch.compiler  # `_is_compiling_flag`: what `torch.compiler.is_compiling()` answers (held while dynamo compiles)


def _find_caller(e: CallEvent | StepEvent, skip: int) -> bool:
    """Whether the user's line that made this event (the first frame that is not the lens's, torch's
    or a framework's) is the template's; if so, remember how far up the handler it is, so that the
    next events of the same kind check the frame there (``sys._getframe(depth)``: same code, same
    instruction) instead of walking."""
    f = sys._getframe(skip + 1)
    depth = 1
    while f is not None and machinery_frame(f):
        f = f.f_back
        depth += 1
    if f is None:
        return False
    code = f.f_code
    site = e.site if isinstance(e, StepEvent) else e.state.site
    if (code.co_filename, f.f_lineno, code.co_name) != (site.file, site.line, site.function):
        return False
    e.depth, e.code, e.lasti = depth, code, f.f_lasti
    return True


def _signature(e: Event) -> tuple[Any, ...]:
    if isinstance(e, CallEvent):
        c = e.call
        return ("b", id(e.state), e.retain, e.n_roots, c.reached, c.eval_nets, c.all_eval)
    if isinstance(e, StepEvent):
        return ("s", e.key, e.site, e.step.n_params)
    return ("z", e.key, e.set_to_none, len(e.pids))


def _ledger_state(ledger: Ledger) -> dict[int, tuple[Any, ...]]:
    """Each parameter's ledger, what each optimizer applied of it, whether it holds gradient and
    whether its `.grad` is the one it was last seen with."""
    holding = ledger.holding
    return {
        pid: (tuple(ps.ledger), {k: v for k, v in ps.applied.items()}, pid in holding,
              ps.grad_ref is not None and ps.grad_ref() is not None)
        for pid, ps in ledger.params.items()
    }


def _moved(before: tuple[int, ...], after: tuple[int, ...], dc: int) -> bool | None:
    """True when ``after`` is ``before`` shifted by ``dc`` call ids, False when it is the same,
    None when neither."""
    if after == before:
        return False
    if len(after) == len(before) and all(a == b + dc for a, b in zip(after, before)):
        return True
    return None


class Template:
    """A period as it was seen in full, and how its ids move from one period to the next."""

    def __init__(self, cycles: list[list[Event]], dc: int, ds: int, di: int,
                 moving: dict[int, tuple[tuple[int, ...], dict[int, tuple[int, ...]], bool]]) -> None:
        self.events = events = [e for c in cycles for e in c]
        # each event's place, and the one after it (the first again after the last, a new period)
        for i, e in enumerate(events):
            e.index, e.after, e.wraps = i, events[(i + 1) % len(events)], i == len(events) - 1
        self.dc, self.ds, self.di = dc, ds, di  # calls, steps and iterations per period
        self.moving = moving  # parameter id -> (ledger, applied, holding) at the end of the template
        occ: dict[int, int] = {}
        for e in self.events:
            if isinstance(e, CallEvent):
                occ[id(e.state)] = occ.get(id(e.state), 0) + 1
        self.occ = occ
        # the last cycle: its calls are the judge's pending calls, its steps the open run
        self.last_cycle = {id(e) for e in cycles[-1]}


class Steady:
    """Finds the period of a loop, captures its template, and runs the recorder's steady cycles."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.off = False  # never again in this watch (the loop does not settle)
        self.cycle: list[tuple[Any, ...]] = []  # signatures of the cycle being seen
        self.events: list[Event] = []  # its events, while capturing
        self.ok = False
        self.hand0 = 0
        self.added0 = 0
        self.cycles: list[tuple[tuple[Any, ...], ...]] = []  # recent clean cycles' signatures
        self.capture: dict[str, Any] | None = None
        self.captured: list[list[Event]] = []
        # while on
        self.t: Template | None = None
        self.next: Event | None = None  # the template's next event, while steady (None: not steady)
        self.root_key = ""  # the key of the recorder's root stamps in a node's metadata
        self.counts0: tuple[int, int, list[Any]] = (0, 0, [])  # see `_counts`
        self.entry = False  # the next backward call is the one the loop goes steady with
        self.installed: Callable[..., Any] = lambda *args, **kwargs: None  # the backward hook (`make_engine`)
        self.n = 0  # periods completed while steady
        self.enters = 0
        self.running: list[Any] | None = None  # the steady call running now (see `engine`)
        # the parameters each steady call accumulated into (their hooks append to it while steady)
        self.acc: list[Any] = []
        self.leaves = 0
        self.periods = 0  # periods run steady in this watch, all told (counted when leaving)
        # the recorder's full path for a step (pre-hook) and a zero_grad, when not the next event
        self.slow_step: Callable[[Any, tuple, dict], None] = lambda opt, args, kwargs: None
        self.slow_zero: Callable[[Any, bool], None] = lambda obj, set_to_none: None

    # ------------------------------------------------------------------------------------------
    # learning, on the full path
    # ------------------------------------------------------------------------------------------
    @property
    def on(self) -> bool:
        """Whether steady cycles run (there is a next event of the template to compare with)."""
        return self.next is not None

    def broken(self) -> None:
        """An event that a template cannot hold (a detailed call, a closure, a manual update, an
        error): the cycle it is in does not count."""
        self.ok = False

    def forget(self) -> None:
        """What the loop did so far no longer tells what it will do (a registration)."""
        self.ok = False
        self.cycles.clear()
        self._drop_capture()

    def noted_zero(self, obj: Any, set_to_none: bool, pids: list[int]) -> None:
        if self.capture is None:  # (the signature is all that is kept: `_signature`)
            self.cycle.append(("z", id(obj), set_to_none, len(pids)))
            return
        e = ZeroEvent(obj, set_to_none, pids)
        self.cycle.append(_signature(e))
        self.events.append(e)

    def noted_call(self, s: SiteState, retain: bool, n_roots: int, call: BackwardCall) -> None:
        if self.capture is None:
            self.cycle.append(("b", id(s), retain, n_roots, call.reached, call.eval_nets, call.all_eval))
            return
        e = CallEvent(s, retain, n_roots, call)
        ledger = self.rec.ledger
        acc = tuple(ledger.capture or ())
        ledger.capture = []
        e.acc = acc
        e.acc_ids = tuple(pid for pid, _ in acc)
        nets, _ = self.rec.reached_units(call.reached)
        e.nets = tuple((net.ref, m.training) for net in nets if (m := net.ref()) is not None)
        self.cycle.append(_signature(e))
        self.events.append(e)

    def noted_step(self, opt: Any, st: OptInfo, step: OptimizerStep, params: list[Any]) -> None:
        if self.capture is None:
            self.cycle.append(("s", id(opt), step.site, step.n_params))
            return
        e = StepEvent(opt, st, step, params)
        self.cycle.append(_signature(e))
        self.events.append(e)

    def boundary(self, clean: bool, s: SiteState, lean: bool = True) -> bool:
        """A backward call closed a run of steps (the judge just did, ``clean`` when its memo knows
        the run): the cycle before it ended. True when the recorder goes steady with this call.

        A run judged clean that the memo cannot know (a detailed call before it) counts for finding
        the period, not for the template. A detailed call (not ``lean``) ends a cycle, but no
        capture starts or ends with it: a template holds lean calls only."""
        if self.off:
            return False
        rec = self.rec
        ok = (self.ok and (clean or rec.sink.settled) and bool(self.cycle) and rec.ledger.by_hand == self.hand0
              and rec.sink.added == self.added0)
        sig = tuple(self.cycle)
        events = self.events
        self.cycle, self.events = [], []
        self.ok = True
        self.hand0, self.added0 = rec.ledger.by_hand, rec.sink.added
        if not ok:
            self.cycles.clear()
            self._drop_capture()
            return False
        self.cycles.append(sig)
        if len(self.cycles) > 3 * MAX_PERIOD:
            del self.cycles[: MAX_PERIOD]
        cap = self.capture
        if not lean:
            self._drop_capture()  # (not a failed capture: the loop is still being learnt)
            return False
        if cap is not None:
            self.captured.append(events)
            cap["known"] = cap["known"] and clean
            if len(self.captured) < cap["p"]:
                return False
            p = cap["p"]
            if self.cycles[-p:] == self.cycles[-2 * p:-p] and cap["known"]:
                entered = self._enter(cap, self.captured, s)
            else:
                entered = False
            self._drop_capture()
            if not entered and not cap["guess"]:
                self.enters += 1
                if self.enters > 8 and self.periods < 4 * (self.enters + self.leaves):
                    self.off = True  # a loop that keeps changing: not worth the captures
            return entered
        n = len(self.cycles)
        for p in range(1, MAX_PERIOD + 1):
            if n >= 2 * p and self.cycles[-p:] == self.cycles[-2 * p:-p]:
                break
        else:
            if n != 1:
                return False
            p = 0  # a first clean cycle: guess that it repeats, and capture the next one
        self.capture = {
            "p": p or 1, "guess": not p, "known": True, "calls": rec.log.n_calls, "steps": rec.log.n_steps,
            "iteration": rec.iteration, "ledger": _ledger_state(rec.ledger),
        }
        self.captured = []
        rec.ledger.capture = []
        return False

    def _drop_capture(self) -> None:
        """No period is being captured (any more)."""
        self.capture = None
        self.captured = []
        self.rec.ledger.capture = None

    def _enter(self, cap: dict[str, Any], cycles: list[list[Event]], s: SiteState) -> bool:
        rec = self.rec
        events = [e for c in cycles for e in c]
        dc = rec.log.n_calls - cap["calls"]
        ds = rec.log.n_steps - cap["steps"]
        di = rec.iteration - cap["iteration"]
        if (not events or not isinstance(events[0], CallEvent) or events[0].state is not s or dc <= 0 or ds <= 0
                or rec._module_hooks):
            return False  # (with the module hooks on, forwards and steps are recorded for detail)
        base = cap["calls"]
        for e in events:
            if isinstance(e, CallEvent):
                c = e.call
                if c.prev <= base - dc or c.create_graph or c.within is not None or c.kind != "backward":
                    return False  # the previous call of its site is not one period back
            elif isinstance(e, StepEvent):
                if e.step.repeated or any(cid <= base - dc for prov in e.provenance.values() for cid in prov):
                    return False
        before, after = cap["ledger"], _ledger_state(rec.ledger)
        if before.keys() != after.keys():
            return False
        moving: dict[int, tuple[tuple[int, ...], dict[int, tuple[int, ...]], bool]] = {}
        for pid, (led1, app1, hold1, alive1) in after.items():
            led0, app0, hold0, alive0 = before[pid]
            if hold0 != hold1 or alive0 != alive1 or app0.keys() != app1.keys():
                return False
            parts = [(led0, led1)] + [(app0[k], app1[k]) for k in app1]
            kinds = [(_moved(a, b, dc), bool(b)) for a, b in parts]
            if any(m is None for m, _ in kinds):
                return False
            if any(m for m, _ in kinds):
                if any(m is False and full for m, full in kinds):
                    return False  # part of it moves with the periods, part of it stays
                moving[pid] = (led1, app1, hold1)
        self.t = Template(cycles, dc, ds, di, moving)
        # the step counts as the period starts; the steady steps count them when leaving (`_counts`)
        per_opt: dict[int, list[Any]] = {}
        for e in self.t.events:
            if isinstance(e, StepEvent):
                per_opt.setdefault(id(e.opt), [e.opt, e.opt.steps, 0])[2] += 1
        self.counts0 = (rec.log.n_steps, rec.iteration, list(per_opt.values()))
        self.next = self.t.events[0]
        self.root_key = rec.stamp_keys[1]
        self.n = 0
        rec.steady_hooks(self.acc.append)
        return True

    # ------------------------------------------------------------------------------------------
    # steady: one comparison per event
    # ------------------------------------------------------------------------------------------
    # (the handlers below advance to the template's next event inline, `next`, wrapping to a new
    # period, `n`: a method call per event costs as much as the comparison)

    def make_zero(self, run: Callable[[Any, bool], Any]) -> Callable[..., Any]:
        """The ``zero_grad()`` hook around ``run`` (``Optimizer.zero_grad`` or ``Module.zero_grad``;
        the hooks install it in its place): counted when it is the template's next event, else the
        recorder's full path takes it (``slow_zero``); then ``run``."""
        steady = self

        def zero_grad(obj: Any, set_to_none: bool = True) -> Any:
            e = steady.next
            matched = False
            try:
                if (e.__class__ is ZeroEvent and e.ref() is obj and e.set_to_none == set_to_none  # type: ignore[union-attr]
                        and _TRACING() is None and not _DISPATCH_DEPTH() and not _COMPILER._is_compiling_flag):
                    matched = True
                    steady.next = e.after  # type: ignore[union-attr]
                    if e.wraps:  # type: ignore[union-attr]
                        steady.n += 1
            except Exception as exc:
                steady.rec._internal(exc)
            if not matched:
                steady.slow_zero(obj, set_to_none)
            return run(obj, set_to_none)  # (the user's errors pass through, once)

        return zero_grad

    def make_step(self) -> Callable[[Any, tuple, dict], None]:
        """The optimizers' step pre-hook: counted when it is the template's next event, else the
        recorder's full path takes it (``slow_step``)."""
        steady = self
        rec = self.rec

        def step(opt: Any, args: tuple, kwargs: dict) -> None:
            e = steady.next
            try:
                if (e.__class__ is StepEvent and e.ref() is opt and not kwargs and len(args) <= 1  # type: ignore[union-attr]
                        and _TRACING() is None and not _DISPATCH_DEPTH() and not _COMPILER._is_compiling_flag):
                    groups = opt.param_groups
                    ids = (tuple(map(id, groups[0]["params"])) if len(groups) == 1
                           else tuple(id(p) for g in groups for p in g["params"]))
                    if ids != e.param_ids:  # type: ignore[union-attr]
                        return steady.slow_step(opt, args, kwargs)
                    for ref in e.probes:  # type: ignore[union-attr]
                        p = ref()
                        if p is None or not p.is_leaf or p.grad is None:
                            return steady.slow_step(opt, args, kwargs)
                    depth = e.depth  # type: ignore[union-attr]
                    if depth:
                        f = _getframe(depth)
                        if f.f_code is not e.code or f.f_lasti != e.lasti:  # type: ignore[union-attr]
                            return steady.slow_step(opt, args, kwargs)
                    elif not _find_caller(e, 1):  # type: ignore[arg-type]
                        return steady.slow_step(opt, args, kwargs)
                    # (the step counts are made when leaving: `_counts`)
                    steady.next = e.after  # type: ignore[union-attr]
                    if e.wraps:  # type: ignore[union-attr]
                        steady.n += 1
                    return None
            except Exception as exc:
                rec._internal(exc)
            return steady.slow_step(opt, args, kwargs)

        return step

    def make_engine(self, run: Callable[..., Any]) -> Callable[..., Any]:
        """The backward hook around the engine's entry point ``run`` (every call goes through it;
        the hooks install it in ``run``'s place): when the call is the template's next event, run
        it, compare what it reached with the template and count it; else the recorder's full path
        takes it (``Recorder._on_engine``). It is the patched function itself, with what it reads
        often held in its closure: no frame of its own between torch and the engine."""
        steady = self
        rec = self.rec
        on_engine = rec._on_engine
        inflight = rec._inflight
        log = rec.log
        collector = self.acc

        def engine(t_outputs: Any, *args: Any, **kwargs: Any) -> Any:
            e = steady.next
            matched = False
            try:
                # (grad_tensors, retain_graph, create_graph, inputs), as `backward()` passes them;
                # other forms take the full path
                if (e.__class__ is CallEvent and args[1:] == e.args  # type: ignore[union-attr]
                        and kwargs.get("accumulate_grad", True) and steady.running is None and not inflight
                        and _GRAPH_TASK() == -1 and _TRACING() is None and not _DISPATCH_DEPTH()
                        and not _COMPILER._is_compiling_flag):
                    depth = e.depth  # type: ignore[union-attr]
                    if depth:
                        f = _getframe(depth)
                        matched = f.f_code is e.code and f.f_lasti == e.lasti  # type: ignore[union-attr]
                    elif steady.entry:  # the call the loop goes steady with: its site was just found
                        matched, steady.entry = True, False
                    else:
                        matched = _find_caller(e, 1)  # type: ignore[arg-type]
                    roots = t_outputs if t_outputs.__class__ is tuple or isinstance(t_outputs, list) else (t_outputs,)
                    root_key = steady.root_key
                    fn = meta = None
                    if matched and len(roots) == e.n_roots:  # type: ignore[union-attr]
                        for t in roots:
                            g = t.grad_fn
                            if g is not None:
                                md = g.metadata
                                if root_key in md:
                                    matched = False  # a root used before: the full path says what it is
                                    break
                                if fn is None:
                                    fn, meta = g, md
                    else:
                        matched = False
            except Exception as exc:  # a failure of the lens: the full path takes the call
                rec._internal(exc)
                matched = False
            if not matched:
                # not the next event, a call inside another one, or one the lens does not watch
                return on_engine(run, t_outputs, args, kwargs, bool(kwargs.get("accumulate_grad", True)))
            # (the call's id and iteration are the template's, shifted: while steady, only the
            # steady handlers change the counts, and a full-path event leaves first)
            s = e.state  # type: ignore[union-attr]
            retain = e.retain  # type: ignore[union-attr]
            cid = log.n_calls + 1
            log.n_calls = cid
            prev, occurrence = s.last, s.count
            s.count += 1
            s.last = cid
            collector.clear()  # (what backward calls the lens does not watch accumulated)
            # What leaving while it runs makes into a call of the full path (`leave`): [..., the
            # thread running it (None once it ran), the call made]. It is not among the recorder's
            # running calls (nor the thread's `in_backward`) unless that happens: a backward started
            # inside it is seen by the graph task running (`_GRAPH_TASK`).
            steady.running = running = [e, s, retain, roots, cid, prev, occurrence, _get_ident(), None]
            try:
                result = run(t_outputs, *args, **kwargs)
            except BaseException as exc:
                steady._ran()
                steady._off_after(exc)
                raise
            if steady.running is running and running[8] is None:
                running[7] = None  # it ran
            else:  # steady cycles were left while it ran
                steady._ran()
            try:
                same = steady.next is not None and (tuple(map(id, collector)) == e.acc_ids  # type: ignore[union-attr]
                                      or {id(p) for p in collector} == set(e.acc_ids))  # type: ignore[union-attr]
                if same:
                    for ref, training in e.nets:  # type: ignore[union-attr]
                        net = ref()
                        if net is None or net.training != training:
                            same = False
                            break
                if same:
                    collector.clear()
                    steady.running = None
                    if fn is not None:
                        if not retain:
                            meta[root_key] = cid  # type: ignore[index]
                        if not occurrence & 3 and tagged(occurrence):  # (never tagged unless a multiple of 4)
                            steady._track(fn, e, cid)  # type: ignore[arg-type]
                    steady.next = e.after  # type: ignore[union-attr]
                    if e.wraps:  # type: ignore[union-attr]
                        steady.n += 1
                    return result
            except Exception as exc:
                rec._internal(exc)
            steady._off_after(None)
            return result

        self.installed = engine
        return engine

    def engine(self, t_outputs: Any, args: tuple, kwargs: dict) -> Any:
        """The call the loop goes steady with (the full path found its site): the backward hook
        takes it as its first steady call."""
        self.entry = True
        try:
            return self.installed(t_outputs, *args, **kwargs)
        finally:
            self.entry = False

    def _ran(self) -> None:
        """The steady call's backward returned (or raised): it is no longer running (among the
        recorder's running calls, when steady cycles were left while it ran: `_make_running`)."""
        running = self.running
        if running is None:
            return
        entry, running[7] = running[7], None
        inflight = self.rec._inflight
        if entry is not None and entry in inflight:
            inflight.remove(entry)
            self.rec._tls.in_backward = False

    def _track(self, fn: Any, e: CallEvent, cid: int) -> None:
        """Tag the graph, as the full path does for some calls (graphs kept alive)."""
        c = e.call
        m = self.n + 1
        found = self.rec._graphs.tag(fn, (c.site.file, c.site.line), cid, c.iteration + m * self.t.di,  # type: ignore[union-attr]
                                     c.retain_graph)
        if found is not None:
            self.rec.sink.held(self._call(e, m), *found)

    def _off_after(self, exc: BaseException | None) -> None:
        """The steady call ran and differs from the template (or failed), or steady cycles were left
        while it ran: it becomes a call of the full path (``leave`` makes it), and what follows it
        there is done now."""
        rec = self.rec
        running = self.running
        try:
            self.leave()  # (makes the running call, when still steady)
            if running is None or running[8] is None:
                return
            s, retain, roots, call = running[1], running[2], running[3], running[8]
            walk = rec._steady_walk(s)
            tensors = [t for t in roots if hasattr(t, "grad_fn")]
            if exc is not None:
                call.error = exc_text(exc)
                if isinstance(exc, Exception) and not getattr(exc, "_autograd_lens_explained", False):
                    walk = rec.guard(rec.failed_walk)(exc, call, walk, tensors, None) or walk
                    rec.guard(rec.sink.explain_error)(exc, s.site, call=call, walk=walk, roots=tensors, names={})
            else:
                rec._after_call(call, walk, tensors, s, retain)
        except Exception as err:
            rec._internal(err)
        finally:
            self.running = None
            self.acc.clear()

    def _make_running(self) -> None:
        """Leaving while a steady call runs (or right after it ran): it becomes a call of the full
        path, in the log after the calls before it, holding what it accumulated so far; its hooks'
        later accumulations go to it (it joins the recorder's running calls)."""
        rec = self.rec
        running = self.running
        assert running is not None
        e, s, retain, roots, cid, prev, occurrence, entry, _ = running
        log, sink = rec.log, rec.sink
        log.n_calls = cid - 1  # the run before it closes as the full path closes it: before it
        if sink.open_run:
            sink.close_run()
        call = BackwardCall(cid, s.site, "backward", s.roots, retain, False, occurrence, prev, rec.iteration,
                            (), False, set(), (), None, None, None, False, s.site_key)
        log.add_call(call)
        params = rec.ledger.params
        for p in list(self.acc):
            ps = params.get(id(p))
            if ps is not None:
                rec.ledger.accumulated(ps, p, call)
        self.acc.clear()
        if entry is not None:  # still running: its hooks' accumulations go to the call made
            running[7] = made = (call, None, entry)
            rec._inflight.append(made)
            if entry == _get_ident():
                rec._tls.in_backward = True
        running[8] = call

    # ------------------------------------------------------------------------------------------
    # leaving: the state the full path would have made
    # ------------------------------------------------------------------------------------------
    def _call(self, e: CallEvent, m: int) -> BackwardCall:
        """The template's call ``e``, ``m`` periods later."""
        t = self.t
        assert t is not None
        c = e.call
        d = m * t.dc
        return BackwardCall(c.id + d, c.site, c.kind, c.roots, c.retain_graph, c.create_graph,
                            c.occurrence + m * t.occ[id(e.state)], c.prev + d if c.prev else 0,
                            c.iteration + m * t.di, c.eval_nets, c.all_eval, c.reached, c.networks, None, None,
                            c.within, False, c.site_key)

    def _step(self, e: StepEvent, m: int, settled: bool) -> OptimizerStep:
        t = self.t
        assert t is not None
        d = m * t.dc
        s = e.step
        if settled:
            step = OptimizerStep(s.index + m * t.ds, s.optimizer, s.optimizer_key, s.site, {}, {}, s.n_params,
                                 False, s.manual, [])
            step.sources, step.stepped = s.sources, s.stepped
            return step
        interned = self.rec.ledger._interned
        shifted: dict[int, tuple[int, ...]] = {}
        groups = []
        for prov, pids in e.groups:
            new = tuple(c + d for c in prov)
            new = interned.setdefault(new, new)
            groups.append((new, list(pids)))
            for pid in pids:
                shifted[pid] = new
        return OptimizerStep(s.index + m * t.ds, s.optimizer, s.optimizer_key, s.site, shifted, {}, s.n_params,
                             False, s.manual, groups)

    def _counts(self, n: int, pos: int) -> None:
        """The step counts (the log's, the iteration, each optimizer's) after ``n`` periods and the
        first ``pos`` events of the next, as the steps taken steady would have counted them."""
        t = self.t
        assert t is not None
        steps0, iteration0, per_opt = self.counts0
        done = [e for e in t.events[:pos] if isinstance(e, StepEvent)]
        rec = self.rec
        rec.log.n_steps = steps0 + n * t.ds + len(done)
        rec.iteration = iteration0 + n * t.ds + len(done)  # (a steady step is an iteration)
        for st, steps, k in per_opt:
            st.steps = steps + n * k + sum(1 for e in done if e.opt is st)

    def leave(self) -> None:
        """Make the state the full path would have made by now, and take the full path again."""
        if self.next is None:
            return
        pos = self.next.index
        self.next = None
        self.rec.steady_hooks(None)
        if self.running is None:
            self.acc.clear()  # (what backward calls the lens does not watch accumulated)
        self.leaves += 1
        self.periods += self.n
        if self.leaves > 16 and self.periods < 4 * (self.enters + self.leaves):
            # a loop that keeps changing (fewer than four steady periods per capture): not worth
            # the captures; one that changes now and then (an epoch's end) stays worth them
            self.off = True
        rec = self.rec
        t = self.t
        assert t is not None
        n = self.n
        self._counts(n, pos)
        log, ledger, sink = rec.log, rec.ledger, rec.sink
        n_calls, n_steps = log.n_calls, log.n_steps
        touched: set[int] = set()
        # the ledgers at the start of this period
        d = n * t.dc
        interned = ledger._interned
        for pid, (led, applied, holding) in t.moving.items():
            ps = ledger.params.get(pid)
            if ps is None:
                continue
            ps.ledger = [c + d for c in led]
            new_applied = {}
            for k, prov in applied.items():
                shifted = tuple(c + d for c in prov)
                new_applied[k] = interned.setdefault(shifted, shifted)
            ps.applied = new_applied
            if holding:
                ledger.holding.add(pid)
            else:
                ledger.holding.discard(pid)
            touched.add(pid)
        # the calls and steps of the last period (the earlier ones in the totals), the open run
        last = t.last_cycle
        pending: list[BackwardCall] = []
        run: list[OptimizerStep] = []
        # as many periods as the log keeps one by one are made; the earlier ones are counted
        kept = min(n, max(-(-log.window // t.dc), -(-log.window // t.ds)) + 1)
        if n > kept:
            log.repeat_totals([e.call for e in t.events if isinstance(e, CallEvent)],
                              [e.step for e in t.events if isinstance(e, StepEvent)], n - kept)
        for m in range(n - kept + 1, n + 1) if n else (0,):
            for e in t.events:
                is_last = m == n and id(e) in last
                if n == 0 and not is_last:
                    continue
                if isinstance(e, CallEvent):
                    call = self._call(e, m)
                    log.add_call(call)
                    if is_last and call.reached:
                        pending.append(call)
                elif isinstance(e, StepEvent):
                    step = self._step(e, m, settled=not is_last)
                    log.add_step(step)
                    if is_last:
                        run.append(step)
                    else:
                        log.settle_step(step)
        sink.resume(pending, run)
        # the events of this period so far
        for e in t.events[:pos]:
            if isinstance(e, ZeroEvent):
                ledger.zeroed(e.pids)
                touched.update(e.pids)
            elif isinstance(e, CallEvent):
                if sink.open_run:
                    sink.close_run()
                call = self._call(e, n + 1)
                log.add_call(call)
                for pid, fresh in e.acc:
                    ps = ledger.params.get(pid)
                    if ps is None:
                        continue
                    if fresh:
                        ps.ledger = [call.id]
                    else:
                        ps.ledger.append(call.id)
                        if len(ps.ledger) > MAX_LEDGER:
                            del ps.ledger[: -MAX_LEDGER // 2]
                    ledger.holding.add(pid)
                    touched.add(pid)
                sink.after_backward(call, rec._steady_walk(e.state))
            else:
                step = self._step(e, n + 1, settled=False)
                for pid, prov in step.provenance.items():
                    ps = ledger.params.get(pid)
                    if ps is not None:
                        ps.applied[e.key] = prov
                log.add_step(step)
                sink.on_step(step)
        log.n_calls, log.n_steps = n_calls, n_steps
        if self.running is not None and self.running[8] is None:
            self._make_running()
        # each `.grad` as the full path last saw it
        for pid in touched:
            ps = ledger.params.get(pid)
            p = ps.ref() if ps is not None else None
            g = p.grad if p is not None and p.is_leaf else None
            if g is not None and pid in ledger.holding:
                ps.grad_ref = weakref.ref(g)  # type: ignore[union-attr]
                ps.grad_version = g._version  # type: ignore[union-attr]
            elif ps is not None:
                ps.grad_ref = None
        self.t = None
        self.ok = False
        self.cycle, self.events = [], []
        self.cycles.clear()
