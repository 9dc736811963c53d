"""The event log of a ``watch()``: backward calls and optimizer steps, as the hooks saw them.

Events are plain data: ids, names, numbers and sites, never a tensor, a module or an autograd node.
The recorder appends them; checks and reports read them; nothing writes its conclusions back into
them (decisions about a call live with the judge).

:class:`EventLog` keeps the recent events one by one (a window of bounded size, for the checks that
look back a few iterations) and every event as per-site totals (for the report's tables), so a run
of a million steps holds the same few hundred kilobytes as one of a thousand.

Imports: :mod:`findings` (``Site``) only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .findings import Site

#: Backward calls (and steps) kept one by one; older ones live on in the per-site totals only.
WINDOW = 512


@dataclass(slots=True)
class BackwardCall:
    """One ``.backward()`` / ``torch.autograd.backward()`` / ``torch.autograd.grad()`` call."""

    id: int
    site: Site
    kind: str  # "backward" (accumulates into .grad) or "grad" (returns gradients)
    roots: tuple[str, ...]
    retain_graph: bool
    create_graph: bool = False
    occurrence: int = 0  # how many calls at this site came before
    prev: int = 0  # id of the previous call at this site (0 for the first)
    iteration: int = 0  # steps and network forwards before the call (see recorder): its iteration
    #: networks it reached that were in eval mode (``module.training`` False) when it ran, and
    #: whether every network it reached was
    eval_nets: tuple[str, ...] = ()
    all_eval: bool = False
    reached: frozenset[int] | set[int] = field(default_factory=set)  # leaves whose .grad it wrote
    #: network -> "reached" / "detached" / "not reached" (the row of the flow table)
    networks: tuple[tuple[str, str], ...] = ()
    error: str | None = None
    graph_key: str | None = None  # the snapshot of its graph, when one was taken
    within: int | None = None  # the optimizer whose `step(closure)` ran this call
    detailed: bool = False  # its graph was walked and analysed in full
    site_key: str = ""  # ``train.py:56`` (the site as the report names it)
    inputs: tuple[str, ...] = ()  # the variables given as its ``inputs`` (``autograd.grad(out, x)``)


@dataclass(slots=True)
class OptimizerStep:
    """One ``optimizer.step()`` (or manual update): which gradient it consumed, by backward call."""

    index: int
    optimizer: str
    optimizer_key: int
    site: Site
    provenance: dict[int, tuple[int, ...]]  # param id -> backward call ids in its .grad
    repeated: dict[int, tuple[int, ...]]  # param id -> call ids this optimizer had applied before
    n_params: int
    closure: bool = False  # the step ran a closure that computed its gradient (LBFGS)
    manual: bool = False  # an update by hand, without an optimizer object
    #: the parameters grouped by the backward calls their gradient came from: (call ids, param ids)
    groups: list[tuple[tuple[int, ...], list[int]]] = field(default_factory=list)
    #: once the run of steps is judged, the per-parameter detail above is dropped and these remain
    sources: frozenset[str] = frozenset()  # backward sites "file:line" it took gradient from
    stepped: frozenset[int] = frozenset()  # ids of the parameters it stepped with a gradient
    #: parameters it found without gradient because a `zero_grad()` discarded what backward calls
    #: wrote there before any step: param id -> (that zero_grad's line, those call ids)
    discarded: dict[int, tuple[Site, tuple[int, ...]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HeldGraphs:
    """A variable that keeps the graphs of earlier iterations alive (``epoch_loss += loss``)."""

    name: str
    site: Site | None  # the statement that keeps adding to it
    graphs: int  # tagged graphs it reaches
    saved_bytes: int  # bytes of saved tensors still held by those graphs
    kind: str  # "Tensor", "list", ...


# ----------------------------------------------------------------------------------------------
# the log
# ----------------------------------------------------------------------------------------------

_STRENGTH = {"reached": 2, "detached": 1, "not reached": 0}


@dataclass(slots=True)
class CallTotals:
    """Every backward call made at one site, summed."""

    site: Site
    roots: tuple[str, ...]
    kind: str
    count: int = 0
    retain_graph: bool = False
    networks: dict[str, str] = field(default_factory=dict)
    params_reached: int = 0

    def add(self, call: BackwardCall, times: int = 1) -> None:
        self.count += times
        self.retain_graph = self.retain_graph or call.retain_graph
        for n, s in call.networks:
            if _STRENGTH[s] >= _STRENGTH.get(self.networks.get(n, "not reached"), 0):
                self.networks[n] = s
        self.params_reached = max(self.params_reached, len(call.reached))


@dataclass(slots=True)
class StepTotals:
    """Every step of one optimizer at one site, summed."""

    optimizer: str
    site: Site
    n_params: int
    count: int = 0
    sources: dict[str, int] = field(default_factory=dict)  # backward site -> steps that took gradient from it
    by_hand: int = 0  # steps that applied gradient from no backward call (`.grad` set by hand: PCGrad)

    def add(self, step: OptimizerStep, times: int = 1) -> None:
        self.count += times
        for s in step.sources:  # each step counts once per backward site it took gradient from
            self.sources[s] = self.sources.get(s, 0) + times
        if step.stepped and not step.sources:
            self.by_hand += times


class EventLog:
    """Backward calls and steps: the recent ones by id, all of them as per-site totals.

    Calls enter the totals when they leave the window (by then they are complete); steps once they
    are judged (:meth:`settle_step`). ``call_totals``/``step_totals`` give totals of everything.
    """

    def __init__(self, window: int | None = None) -> None:
        self.window = WINDOW if window is None else window
        self._calls: dict[int, BackwardCall] = {}
        self._steps: dict[int, OptimizerStep] = {}
        self.n_calls = 0
        self.n_steps = 0
        self._call_totals: dict[tuple[str, int], CallTotals] = {}
        self._step_totals: dict[tuple[str, str, int], StepTotals] = {}
        self._unsettled: set[int] = set()  # steps appended and not judged yet
        self.excluded: set[int] = set()  # leaves a backward left out on purpose (`inputs=`)

    # ----- appending --------------------------------------------------------------------------
    def next_call_id(self) -> int:
        return self.n_calls + 1

    def add_call(self, call: BackwardCall) -> None:
        if call.id > self.n_calls:
            self.n_calls = call.id
        self._calls[call.id] = call
        while len(self._calls) > self.window:
            old = self._calls.pop(next(iter(self._calls)))
            self._total_call(old)

    def add_step(self, step: OptimizerStep) -> None:
        self.n_steps = step.index + 1
        self._steps[step.index] = step
        self._unsettled.add(step.index)
        while len(self._steps) > self.window:
            index = next(iter(self._steps))
            if index in self._unsettled:
                break  # still waiting for its judgement
            self._total_step(self._steps.pop(index))

    def settle_step(self, step: OptimizerStep) -> None:
        """The step was judged: its per-parameter detail can go."""
        self._unsettled.discard(step.index)
        step.provenance = {}
        step.repeated = {}
        step.groups = []
        step.discarded = {}

    # ----- reading ----------------------------------------------------------------------------
    def call(self, call_id: int) -> BackwardCall | None:
        """The backward call with this id, while it is in the window."""
        return self._calls.get(call_id)

    def step(self, index: int) -> OptimizerStep | None:
        return self._steps.get(index)

    @property
    def calls(self) -> list[BackwardCall]:
        return list(self._calls.values())

    @property
    def steps(self) -> list[OptimizerStep]:
        return list(self._steps.values())

    def recent_calls(self) -> Iterator[BackwardCall]:
        return reversed(list(self._calls.values()))

    def call_totals(self) -> list[CallTotals]:
        """Per backward site: every call so far (the window's and those before it)."""
        out: dict[tuple[str, int], CallTotals] = {}
        for key, t in self._call_totals.items():
            out[key] = CallTotals(t.site, t.roots, t.kind, t.count, t.retain_graph, dict(t.networks), t.params_reached)
        for c in self._calls.values():
            key = (c.site.file, c.site.line)
            t = out.get(key)
            if t is None:
                t = out[key] = CallTotals(c.site, c.roots, c.kind)
            t.add(c)
        return list(out.values())

    def step_totals(self) -> list[StepTotals]:
        """Per optimizer and step site: every step so far (by name: an optimizer made anew under the
        same variable is one row)."""
        out: dict[tuple[str, str, int], StepTotals] = {}
        for key, t in self._step_totals.items():
            out[key] = StepTotals(t.optimizer, t.site, t.n_params, t.count, dict(t.sources))
        for s in self._steps.values():
            key = (s.optimizer, s.site.file, s.site.line)
            t = out.get(key)
            if t is None:
                t = out[key] = StepTotals(s.optimizer, s.site, s.n_params)
            t.add(s)
        return list(out.values())

    # ----- totals -----------------------------------------------------------------------------
    def repeat_totals(self, calls: Iterable[BackwardCall], steps: Iterable[OptimizerStep], times: int) -> None:
        """``times`` more of each of these calls and (judged) steps, counted in the totals only (the
        periods a steady loop went through: :mod:`steady`)."""
        for c in calls:
            self._total_call(c, times)
        for s in steps:
            self._total_step(s, times)

    def _total_call(self, c: BackwardCall, times: int = 1) -> None:
        key = (c.site.file, c.site.line)
        t = self._call_totals.get(key)
        if t is None:
            t = self._call_totals[key] = CallTotals(c.site, c.roots, c.kind)
        t.add(c, times)

    def _total_step(self, s: OptimizerStep, times: int = 1) -> None:
        key = (s.optimizer, s.site.file, s.site.line)
        t = self._step_totals.get(key)
        if t is None:
            t = self._step_totals[key] = StepTotals(s.optimizer, s.site, s.n_params)
        t.add(s, times)

    def __iter__(self) -> Iterator[BackwardCall]:
        return iter(self._calls.values())


def calls_at(calls: Iterable[BackwardCall], site: Site) -> list[BackwardCall]:
    return [c for c in calls if c.site.file == site.file and c.site.line == site.line]
