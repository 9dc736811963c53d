"""The gradient ledger: which backward calls' gradient each parameter's ``.grad`` holds.

Every accumulation into a watched parameter appends the backward call to that parameter's ledger; a
new ``.grad`` object (``zero_grad()`` set it to None, or it was assigned) starts a new ledger, and
a ``.grad`` zeroed in place (``p.grad.zero_()``) is seen before the next backward. When an
optimizer steps, the ledgers of its parameters are its *provenance*: the backward calls whose
gradient it applied, and those it had applied before (accumulation without ``zero_grad``).
Parameters that no optimizer steps carry a fingerprint after each backward, so that an update by
hand (``p.data.add_(p.grad, alpha=-lr)``) is seen as a change.

Parameters are held by weak reference; gradients only while they are read. Imports
:mod:`events` and :mod:`registry` (for types) and torch; nothing of the runtime.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .events import BackwardCall
    from .findings import Site
    from .registry import OptInfo, Registry

#: Ledger entries kept for a ``.grad`` that is never zeroed (the recent history is enough).
MAX_LEDGER = 64


class ParamState:
    """What the recorder knows of one parameter's ``.grad``: which backward calls it holds."""

    __slots__ = ("ref", "ledger", "grad_ref", "grad_version", "applied", "fp")

    def __init__(self, p: torch.Tensor) -> None:
        self.ref = weakref.ref(p)
        self.ledger: list[int] = []  # backward call ids whose gradient is in .grad now
        self.grad_ref: weakref.ref | None = None
        self.grad_version = -1
        self.applied: dict[int, tuple[int, ...]] = {}  # optimizer key -> call ids it applied last
        self.fp: tuple[Any, ...] | None = None  # (version, storage, sum) after its last backward


class Ledger:
    """The ledgers of the watched parameters, by parameter id."""

    def __init__(self) -> None:
        self.params: dict[int, ParamState] = {}
        self.holding: set[int] = set()  # parameters whose .grad holds gradient of known calls
        self.by_hand = 0  # ledgers started anew for a `.grad` replaced, set to None or zeroed by hand
        # while a period is captured (:mod:`steady`): (parameter id, ledger started anew) per accumulation
        self.capture: list[tuple[int, bool]] | None = None
        self._interned: dict[tuple[int, ...], tuple[int, ...]] = {}
        #: parameter id -> (the `zero_grad()` that dropped gradient of its `.grad` before any step
        #: applied it, those backward calls, the number of backward calls made before it); replaced
        #: by a later such `zero_grad()`, dropped when a step finds gradient there again
        self.discarded: dict[int, tuple[Site, tuple[int, ...], int]] = {}

    def add(self, p: torch.Tensor) -> ParamState | None:
        """Start watching ``p``; None when it was watched already (a dead parameter's id reused
        by a new one starts anew)."""
        pid = id(p)
        st = self.params.get(pid)
        if st is not None and st.ref() is p:
            return None
        st = self.params[pid] = ParamState(p)
        self.discarded.pop(pid, None)  # (a dead parameter's)
        return st

    def accumulated(self, st: ParamState, p: torch.Tensor, call: BackwardCall) -> None:
        """``call`` added its gradient to ``p.grad`` (``st`` is ``p``'s state). (Runs for every
        parameter of every backward.)"""
        g = p.grad
        ref = st.grad_ref
        fresh = False
        if ref is None or ref() is not g:
            # A new `.grad` object starts a new ledger (zero_grad set it to None, or it was
            # assigned). The same object holds the gradient of the calls in its ledger, whatever
            # was done to it in place since (clipping, unscaling, all-reduce): a change that
            # zeroed it was seen before this backward began (`settle`).
            if not (call.create_graph and ref is not None and ref() is None):
                st.ledger = []
                fresh = True
                if ref is not None:
                    self.by_hand += 1  # not zero_grad(): it forgets the `.grad` it zeroes
            st.grad_ref = weakref.ref(g) if g is not None else None
        ledger = st.ledger
        ledger.append(call.id)
        if len(ledger) > MAX_LEDGER:
            del ledger[: -MAX_LEDGER // 2]
        pid = id(p)
        if self.capture is not None:
            self.capture.append((pid, fresh))
        self.holding.add(pid)
        if g is not None:
            st.grad_version = g._version
        call.reached.add(pid)  # type: ignore[union-attr]

    def zeroed(self, pids: list[int], where: Callable[[], Site] | None = None, calls: int = 0) -> None:
        """``zero_grad()`` of the parameters with these ids. A `.grad` that holds gradient no step
        applied is noted as discarded there (``where()``: the line of the `zero_grad()`; ``calls``:
        the backward calls made so far)."""
        params = self.params
        discarded = self.discarded
        site = None
        for pid in pids:
            st = params.get(pid)
            if st is not None:
                led = st.ledger
                if led and where is not None and not _applied(led, st.applied):
                    if site is None:
                        site = where()
                    discarded[pid] = (site, tuple(led), calls)
                st.ledger = []
                st.grad_ref = None
        self.holding.difference_update(pids)

    def settle(self) -> None:
        """Before a backward: forget the ledger of each `.grad` that was zeroed since its last
        accumulation: set to None, or zeroed in place by hand (`p.grad.zero_()`).

        Only parameters whose `.grad` still holds gradient and whose version moved are looked at
        (a loop that calls `zero_grad()` leaves none); their values decide, in one pass: all zero
        means zeroed, anything else (a clipped or unscaled gradient) keeps its provenance.
        """
        holding = self.holding
        if not holding:
            return
        moved: list[tuple[ParamState, torch.Tensor]] = []
        for pid in list(holding):
            st = self.params.get(pid)
            p = st.ref() if st is not None else None
            g = p.grad if p is not None and p.is_leaf else None  # (a non-leaf's read warns)
            if g is None:
                holding.discard(pid)  # zeroed (set to None) or gone
                if st is not None:
                    st.ledger = []
                    self.by_hand += 1
                continue
            ref = st.grad_ref  # type: ignore[union-attr]
            if ref is None or ref() is not g:
                continue  # replaced: the next accumulation starts a new ledger
            if g._version != st.grad_version:  # type: ignore[union-attr]
                moved.append((st, g))  # type: ignore[arg-type]
        if not moved:
            return
        zero = all_zero([g for _, g in moved])
        for (st, g), z in zip(moved, zero):
            st.grad_version = g._version
            if z:
                st.ledger = []
                holding.discard(id(st.ref()))
                self.by_hand += 1

    def provenance(
        self, st: OptInfo, params: list[torch.Tensor], closure_from: int | None, calls: int = 0
    ) -> tuple[dict[int, tuple[int, ...]], dict[int, tuple[int, ...]], list[tuple[tuple[int, ...], list[int]]],
               dict[int, tuple[Site, tuple[int, ...]]]]:
        """What optimizer ``st`` applies now to ``params``: per parameter, the backward calls its
        gradient came from, and those of them it had applied before; the parameters grouped by the
        calls their gradient came from (a network's parameters usually share them: one question
        per group, not per parameter); and the parameters whose gradient a `zero_grad()` discarded
        after the last backward that wrote it and with no backward call since (``calls``: the backward
        calls made so far), before any step applied it (:attr:`discarded`).
        ``closure_from``: the first call id of the closure the step ran (LBFGS), whose evaluations
        each applied the ones before."""
        lost: dict[int, tuple[Site, tuple[int, ...]]] = {}
        zeros: list[tuple[int, torch.Tensor]] = []
        discarded = self.discarded
        provenance: dict[int, tuple[int, ...]] = {}
        repeated: dict[int, tuple[int, ...]] = {}
        groups: dict[int, tuple[tuple[int, ...], list[int]]] = {}
        key = st.key
        params_state = self.params
        interned = self._interned
        for p in params:
            leaf = p.is_leaf
            g = p.grad if leaf else None  # (a parameter made a non-leaf: its read warns)
            pid = id(p)
            if g is None:
                if p.requires_grad and leaf:  # (a non-leaf is nonleaf-grad's)
                    st.no_grad.add(pid)
                    d = discarded.get(pid) if discarded else None
                    if d is not None and d[2] == calls:
                        lost[pid] = d[:2]
                continue
            ps = params_state.get(pid)
            if ps is None or ps.ref() is not p:
                prov: tuple[int, ...] = ()
            else:
                ref = ps.grad_ref
                if ref is None or ref() is not g:
                    ps.ledger = []  # .grad was assigned by hand (or zeroed to zeros): unknown provenance
                    prov = ()
                    self.by_hand += 1
                    d = discarded.get(pid) if discarded else None
                    if d is not None and d[2] == calls:
                        zeros.append((pid, g))  # zeroed to zeros (else assigned by hand after it)
                else:
                    prov = tuple(ps.ledger)
                    prov = interned.setdefault(prov, prov)
                applied = ps.applied.get(key)
                again: tuple[int, ...] = ()
                if applied and prov:
                    if applied is prov:
                        again = prov  # the very same gradient, applied again
                    elif len(prov) == 1:
                        again = prov if prov[0] in applied else ()
                    else:
                        again = tuple(c for c in prov if c in applied)
                if closure_from is not None:
                    # the closure ran several times without zero_grad: each evaluation's gradient
                    # was applied by the evaluations after it too
                    inside = [c for c in prov if c >= closure_from]
                    again = tuple(dict.fromkeys(again + tuple(inside[:-1])))
                if again:
                    repeated[pid] = again
                ps.applied[key] = prov
            provenance[pid] = prov
            group = groups.get(id(prov))
            if group is None:
                groups[id(prov)] = (prov, [pid])
            else:
                group[1].append(pid)
        if len(interned) > 4096:
            interned.clear()
        if zeros:
            for (pid, _), z in zip(zeros, all_zero([g for _, g in zeros])):
                if z:
                    lost[pid] = discarded[pid][:2]
            zeros.clear()
        if discarded and provenance:
            for pid in provenance:
                if pid not in lost:
                    discarded.pop(pid, None)
        return provenance, repeated, list(groups.values()), lost

    # manual updates ----------------------------------------------------------------------------
    def _unoptimized(self, reg: Registry, pid: int) -> bool:
        return not any(not reg.opts[o].manual for o in reg.opts_of(pid))

    def fingerprint(self, reg: Registry, pids: Iterable[int]) -> None:
        """After a backward: fingerprint the parameters it reached that no optimizer steps."""
        for pid in pids:
            if not self._unoptimized(reg, pid):
                continue
            ps = self.params.get(pid)
            p = ps.ref() if ps is not None else None
            if p is not None:
                ps.fp = fingerprint(p)

    def updated_by_hand(self, reg: Registry) -> dict[int, list[int]]:
        """Parameters of no optimizer, holding gradient, changed since their fingerprint: network
        key -> their ids. Each fingerprint is consumed (the next backward takes a new one)."""
        changed: dict[int, list[int]] = {}
        for pid in list(self.holding):
            ps = self.params.get(pid)
            p = ps.ref() if ps is not None else None
            if p is None or ps.fp is None or not self._unoptimized(reg, pid):
                continue
            if fingerprint(p) != ps.fp:
                ps.fp = None
                net = reg.net_of_param(pid)
                if net is not None:
                    changed.setdefault(net, []).append(pid)
        return changed


def fingerprint(p: torch.Tensor) -> tuple[Any, ...]:
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


def _applied(ledger: list[int], applied: dict[int, tuple[int, ...]]) -> bool:
    """Whether a step applied every call of ``ledger`` (the calls a `.grad` holds)."""
    for calls in applied.values():
        if len(ledger) == 1:
            if ledger[0] in calls:
                return True
        elif set(ledger) <= set(calls):
            return True
    return False


def all_zero(grads: list[torch.Tensor]) -> list[bool]:
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
