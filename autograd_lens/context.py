"""What checks read: the event log, the registry, and the judge's decisions so far.

A :class:`Context` is handed to every check and to :mod:`intent`. It answers questions (names,
owners, forward ranges, which optimizers a call is for) and holds no tensor, module or node; checks
never install hooks, never print, and never change the log or the registry through it. The
judge's own analysis state (decisions per call, what each backward site taught) lives in
:class:`Knowledge`, which :mod:`intent` fills as it decides.

Imports: :mod:`events`, :mod:`registry` (types), :mod:`findings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .events import BackwardCall, EventLog, OptimizerStep
    from .registry import ForwardRange, NetInfo, OptInfo, Registry

SiteKey = tuple[str, int]


@dataclass(slots=True)
class Decision:
    """Which optimizers a backward call is for, and, when its loss was split, its terms."""

    for_opts: frozenset[int] | None = None
    terms: list[Any] | None = None


@dataclass
class Knowledge:
    """The judge's analysis state: decisions per call and what each backward site taught."""

    decisions: dict[int, Decision] = field(default_factory=dict)
    analyses: dict[int, Any] = field(default_factory=dict)  # call id -> graph data, then Analysis
    site_terms: dict[SiteKey, Any] = field(default_factory=dict)  # backward site -> terms decided there
    site_leaks: dict[SiteKey, Any] = field(default_factory=dict)  # backward site -> leaks found there
    # units trained by a loss: unit -> recent (backward site, call id, the loss's target units)
    own_units: dict[str, list[tuple[SiteKey, int, frozenset[str]]]] = field(default_factory=dict)
    memo: dict[Any, Any] = field(default_factory=dict)  # decisions past the detail, by what decides them
    reached: dict[Any, Any] = field(default_factory=dict)  # reached set -> (generation, its optimizers)

    def forget_sites(self) -> None:
        self.site_terms.clear()
        self.site_leaks.clear()
        self.memo.clear()

    def forget_calls(self, keep_after: int) -> None:
        """Drop decisions and analyses of calls older than ``keep_after`` (bounded memory)."""
        for d in (self.decisions, self.analyses):
            if len(d) > 1024:
                for cid in [c for c in d if c <= keep_after]:
                    del d[cid]


class Context:
    """The read-only view of one watch that checks and intent decisions work on."""

    def __init__(self, log: EventLog, reg: Registry, knowledge: Knowledge, intent: Any = None, *, detail: int = 2) -> None:
        self.log = log
        self.reg = reg
        self.knowledge = knowledge
        self.intent = intent
        self.detail = detail

    # ----- the log ----------------------------------------------------------------------------
    def call(self, call_id: int) -> BackwardCall | None:
        return self.log.call(call_id)

    def step(self, index: int) -> OptimizerStep | None:
        return self.log.step(index)

    @property
    def excluded(self) -> set[int]:
        return self.log.excluded

    # ----- decisions --------------------------------------------------------------------------
    def decision(self, call: BackwardCall) -> Decision:
        d = self.knowledge.decisions.get(call.id)
        if d is None:
            d = self.knowledge.decisions[call.id] = Decision()
        return d

    def for_opts(self, call: BackwardCall) -> frozenset[int] | None:
        d = self.knowledge.decisions.get(call.id)
        return d.for_opts if d is not None else None

    def terms(self, call: BackwardCall) -> list[Any] | None:
        d = self.knowledge.decisions.get(call.id)
        return d.terms if d is not None else None

    # ----- the registry -----------------------------------------------------------------------
    @property
    def names(self) -> Any:
        return self.reg.names

    @property
    def trained_opts(self) -> set[int]:
        return self.reg.trained_opts

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

    def param_opt(self, pid: int) -> int | None:
        return self.reg.opt_of(pid)

    def net_of_seq(self, seq: int | None) -> int | None:
        return self.reg.net_of_seq(seq)

    def range_of_seq(self, seq: int | None) -> ForwardRange | None:
        """The network-level forward that created node ``seq`` (its call site is where fixes go)."""
        return self.reg.top_range_of_seq(seq)

    def opts(self) -> dict[int, OptInfo]:
        return self.reg.opts

    def nets(self) -> dict[int, NetInfo]:
        return self.reg.nets
