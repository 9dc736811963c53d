"""The event log of a ``watch()``: backward calls and optimizer steps (forward ranges live in the
registry).

Events are plain data. They hold ids and names, never tensors or autograd nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .findings import Site


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
    forwards: int = 0  # network forwards that had run when the call was made
    #: networks it reached that were in eval mode (``module.training`` False) when it ran, and
    #: whether every network it reached was
    eval_nets: tuple[str, ...] = ()
    all_eval: bool = False
    reached: set[int] = field(default_factory=set)  # ids of leaves whose .grad it wrote
    networks: dict[str, str] = field(default_factory=dict)  # network -> reached/detached/not reached
    error: str | None = None
    graph_key: str | None = None
    within: int | None = None  # the optimizer whose `step(closure)` ran this call
    #: filled when the call is judged: optimizer keys it is for, and per-term decisions
    for_opts: frozenset[int] | None = None
    terms: list[Any] | None = None
    analysis: Any = None  # compact graph data kept while the call may still be judged



@dataclass(slots=True)
class OptimizerStep:
    """One ``optimizer.step()``: which gradient it consumed, by backward call."""

    index: int
    optimizer: str
    optimizer_key: int
    site: Site
    provenance: dict[int, tuple[int, ...]]  # param id -> backward call ids in its .grad
    repeated: dict[int, tuple[int, ...]]  # param id -> call ids this optimizer had applied before
    n_params: int
    closure: bool = False  # the step ran a closure that computed its gradient (LBFGS)
    manual: bool = False  # an update by hand, without an optimizer object
    #: once the run of steps is judged, the per-parameter detail above is dropped and these remain
    sources: frozenset[str] = frozenset()  # backward sites "file:line" it took gradient from
    stepped: frozenset[int] = frozenset()  # ids of the parameters it stepped with a gradient



@dataclass(frozen=True, slots=True)
class HeldGraphs:
    """A variable that keeps the graphs of earlier iterations alive (``epoch_loss += loss``)."""

    name: str
    site: Site | None  # the statement that keeps adding to it
    graphs: int  # tagged graphs it reaches
    saved_bytes: int  # bytes of saved tensors still held by those graphs
    kind: str  # "Tensor", "list", ...
