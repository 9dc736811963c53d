"""``watch()``: the runtime lens.

A :class:`Watch` composes the pieces of one direction of flow:

    hooks (recorder) -> events (EventLog) + facts (Registry) -> judge -> checks -> findings -> report

The :class:`recorder.Recorder` installs the hooks and records events; the :class:`judge.Judge`
asks the checks for findings at the points where they can be decided; the :class:`report.Report`
is a view over the findings and the log. ``watch()`` only wires them together, installs on enter,
and removes everything on exit, also when the body raises.

Imports: :mod:`recorder`, :mod:`judge`, :mod:`events`, :mod:`registry`, :mod:`report`,
:mod:`intent` (declared intent), :mod:`findings`, :mod:`naming`, :mod:`frameworks`, :mod:`errors`.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from . import frameworks
from .errors import LensError, describe
from .events import BackwardCall, EventLog, OptimizerStep
from .findings import Finding, Site
from .graph import Graph
from .intent import Intent
from .judge import Judge
from .naming import find_in_frame, user_frame
from .recorder import DETAIL_PER_SITE, Recorder
from .sites import exc_text, site_from_traceback
from .registry import Registry
from .report import BackwardSummary, Report, StepSummary, dedupe

_active: list[Watch] = []
_active_lock = threading.Lock()


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
        self._skip = tuple(skip)
        self._skip_before: list[str] | None = None
        self.detail = detail
        self.error: str | None = None  # the exception that ended the block, as text
        self.internal_errors: list[str] = []  # failures of the lens itself (never raised)
        self.log = EventLog()
        self.reg = Registry()
        self.judge = Judge(self.log, self.reg, detail=detail, keep_graphs=graphs, on_finding=on_finding,
                           internal=self._internal)
        self.recorder = Recorder(self.log, self.reg, self.judge, detail=detail, keep_graphs=graphs,
                                 internal=self._internal)
        self.reg.bind(on_param=self.recorder.ensure_param, on_change=self._registry_changed)
        self.names = self.reg.names
        self._entered = False
        self._closed = False

    # ------------------------------------------------------------------------------------------
    # entering and leaving
    # ------------------------------------------------------------------------------------------
    def __enter__(self) -> Watch:
        if self._entered:
            raise LensError("a watch() can be entered only once; make a new one with lens.watch()")
        self._entered = True
        self._skip_before = frameworks.set_skipped(self._skip)
        frame = user_frame()
        try:
            for name, mod in self._explicit_modules.items():
                self.reg.add_net(mod, name)
            for name, opt in self._explicit_optimizers.items():
                self.reg.add_opt(opt, name)
            self.recorder.guard(self.reg.scan_frame)(frame)
        finally:
            del frame
        self.judge.intent = Intent.from_spec(self._intent_spec, lambda o: self.recorder.opt_for(o, scan=False).key)
        self.recorder.install()
        with _active_lock:
            _active.append(self)
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        try:
            self.close(exc)
        finally:
            self.recorder.remove()
            if self._skip_before is not None:
                frameworks.restore_skipped(self._skip_before)
                self._skip_before = None
            with _active_lock:
                if self in _active:
                    _active.remove(self)

    def close(self, exc: BaseException | None = None) -> None:
        """Finish the analysis (hooks stay until ``__exit__``)."""
        if self._closed:
            return
        self._closed = True
        guard = self.recorder.guard
        guard(self.recorder.finish)()  # what only the end shows (a last manual update)
        self.recorder.closed = True
        if exc is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            self.error = exc_text(exc)
            if not getattr(exc, "_autograd_lens_explained", False):
                site = site_from_traceback(exc)
                ddp = guard(self.recorder.ddp_unused)(exc)
                if ddp is not None:
                    names, forward, net, rank = ddp
                    guard(self.judge.ddp_unused)(exc, site, names, forward, net, rank)
                else:
                    guard(self.judge.explain_error)(exc, site)
        guard(self.judge.close)()

    def _registry_changed(self) -> None:
        """A network or optimizer is new: the steps so far are judged with what was known, what was
        learnt per backward site is forgotten, and the next calls get detail again."""
        self.recorder.leave_steady()
        self.judge.forget_sites()
        self.recorder.registry_changed()

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

    # ------------------------------------------------------------------------------------------
    # results
    # ------------------------------------------------------------------------------------------
    @property
    def report(self) -> Report:
        """The findings so far (deduplicated) and the tables of backward calls and steps."""
        return self.build_report()

    def build_report(self, script: str | None = None) -> Report:
        self.recorder.leave_steady()  # the events of a steady loop, made
        self.judge.close_run()  # judge the steps since the last backward: the report is read now
        stepped_aside = self.recorder.stepped_aside
        return Report(
            findings=tuple(dedupe(self.judge.findings)),
            backwards=tuple(
                BackwardSummary(t.site, t.count, t.roots, t.retain_graph, t.kind, dict(t.networks), t.params_reached)
                for t in self.log.call_totals()
            ),
            steps=tuple(StepSummary(t.optimizer, t.site, t.count, dict(t.sources), t.n_params, t.by_hand) for t in self.log.step_totals()),
            graphs=tuple({"key": k, "title": g.title} for k, g in self.judge.graphs.items()),
            networks=tuple(self.reg.network_names()),
            script=script,
            status="error" if self.error is not None else "ok",
            error=self.error,
            extra={"stepped_aside": dict(stepped_aside)} if stepped_aside else {},
        )

    @property
    def findings(self) -> list[Finding]:
        return self.judge.findings

    @property
    def graphs(self) -> dict[str, Graph]:
        """Graph key (``"train.py:56"``) -> the picture of that backward site, with its highlights."""
        return self.judge.graphs

    @property
    def calls(self) -> list[BackwardCall]:
        """The recent backward calls (a bounded window; the report's tables count all of them)."""
        return self.log.calls

    @property
    def steps(self) -> list[OptimizerStep]:
        return self.log.steps

    @property
    def stepped_aside(self) -> dict[str, int]:
        return self.recorder.stepped_aside

    def graph_sites(self) -> dict[str, Site]:
        """Graph key -> the site of the backward call its graph was taken at."""
        sites: dict[str, Site] = {}
        for key in self.judge.graphs:
            for call in self.log.calls:
                if call.graph_key == key:
                    sites[key] = call.site
                    break
        for s in self.recorder.sites():
            if s.graph_key and s.graph_key not in sites:
                sites[s.graph_key] = s.site
        return sites

    def network_names(self) -> list[str]:
        return self.reg.network_names()


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
