"""The runtime lens in tests: :func:`assert_no_findings`, :func:`expect_clean`, :func:`expect`
(a ``with`` block run under :func:`autograd_lens.watch` and judged when it ends) and
:func:`assert_grads_only_for`; :func:`failing` and :func:`findings_text` for the pytest plugin.

It imports the watch, the rule catalog, findings and the report's text; the graph assertions
(:mod:`.graphs`) are for graphs alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from ..checks import RULES, get_rule
from ..errors import LensError, describe
from ..findings import ERROR, SEVERITIES, Finding, finding_text, rel_path, severity_rank
from ..report import Report
from ..watch import Watch, watch
from .common import claim_findings, name_list, plural

__all__ = ["assert_grads_only_for", "assert_no_findings", "expect", "expect_clean", "failing", "findings_text"]


def _check_rules(rules: Iterable[str], who: str) -> tuple[str, ...]:
    if isinstance(rules, str):
        rules = (rules,)
    out = []
    for r in rules:
        try:
            get_rule(r)
        except LensError as exc:
            raise LensError(f"{who}: {exc}") from None
        out.append(r)
    return tuple(out)


def _check_level(level: str, who: str) -> str:
    if level not in SEVERITIES:
        raise LensError(f"{who}: fail_on must be one of {', '.join(map(repr, SEVERITIES))}; got {level!r}")
    return level


def failing(report: Report, *, ignore: Iterable[str] = (), fail_on: str = "warning") -> list[Finding]:
    """The findings of ``report`` at or above ``fail_on``, less the rules in ``ignore``.

    Example::

        bad = failing(w.report, ignore=["dead-param"], fail_on="error")
    """
    skip = set(ignore)
    limit = severity_rank(fail_on)
    return [f for f in report.findings if f.rule not in skip and severity_rank(f.severity) <= limit]


def findings_text(findings: Sequence[Finding]) -> str:
    """The findings as rustc-style text, separated by blank lines."""
    return "\n\n".join(finding_text(f) for f in findings)


def _summary(findings: Sequence[Finding]) -> str:
    n_err = sum(1 for f in findings if f.severity == ERROR)
    n_warn = len(findings) - n_err
    return f"{plural(n_err, 'error')}, {plural(n_warn, 'warning')}"


def assert_no_findings(
    fn: Callable[..., Any],
    *args: Any,
    ignore: Iterable[str] = (),
    fail_on: str = "warning",
    **kwargs: Any,
) -> Any:
    """Run ``fn(*args, **kwargs)`` under :func:`autograd_lens.watch` and assert the lens found nothing.

    Args:
        fn: the code to run, e.g. one training step.
        ignore: rule ids to leave out (``["dead-param"]``).
        fail_on: ``"warning"`` (any finding fails, the default) or ``"error"``.

    Returns:
        what ``fn`` returned.

    Example::

        assert_no_findings(train_step, netG, netD, ignore=["dead-param"])
    """
    __tracebackhide__ = True
    if not callable(fn):
        raise LensError(f"assert_no_findings() takes a function to run; got {describe(fn)}")
    skip = _check_rules(ignore, "assert_no_findings()")
    level = _check_level(fail_on, "assert_no_findings()")
    w = watch()
    try:
        with w:
            result = fn(*args, **kwargs)
    finally:
        claim_findings(w)
    _fail_if(w.report, skip, level, f"`{getattr(fn, '__name__', 'fn')}()`")
    return result


def _fail_if(report: Report, ignore: Sequence[str], fail_on: str, what: str) -> None:
    __tracebackhide__ = True
    bad = failing(report, ignore=ignore, fail_on=fail_on)
    if bad:
        raise AssertionError(
            f"autograd_lens found {_summary(bad)} in {what}:\n\n{findings_text(bad)}"
        )


class LensBlock:
    """A ``with`` block run under :func:`autograd_lens.watch` and judged when it ends.

    Made by :func:`expect_clean` and :func:`expect`; ``with`` gives the ``Watch``. When the block
    raises, the exception goes on unchanged (the lens adds its explanation as a note).
    """

    def __init__(self, check: Callable[[Watch], None]) -> None:
        self._check = check
        self._watch: Watch | None = None

    def __enter__(self) -> Watch:
        self._watch = watch()
        return self._watch.__enter__()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        __tracebackhide__ = True
        w = self._watch
        assert w is not None
        try:
            w.__exit__(exc_type, exc, tb)
        finally:
            claim_findings(w)
        if exc_type is None:
            self._check(w)


def expect_clean(ignore: Iterable[str] = (), *, fail_on: str = "warning") -> LensBlock:
    """Run the ``with`` block under :func:`autograd_lens.watch`; fail if the lens finds anything.

    Args:
        ignore: rule ids to leave out (``["dead-param"]``).
        fail_on: ``"warning"`` (any finding fails, the default) or ``"error"``.

    The block gives the :class:`~autograd_lens.Watch`, so ``w.report`` is at hand afterwards.

    Example::

        with lens.expect_clean(ignore=["dead-param"]):
            train_step()
    """
    skip = _check_rules(ignore, "expect_clean()")
    level = _check_level(fail_on, "expect_clean()")

    def check(w: Watch) -> None:
        __tracebackhide__ = True
        _fail_if(w.report, skip, level, "the `expect_clean()` block")

    return LensBlock(check)


def expect(
    rule: str,
    *,
    optimizer: torch.optim.Optimizer | str | None = None,
    params: Any = None,
) -> LensBlock:
    """Run the ``with`` block under :func:`autograd_lens.watch`; fail unless ``rule`` is found.

    Args:
        rule: the rule id that must fire, e.g. ``"stray-grad"``.
        optimizer: only count findings about this optimizer (the object or its name).
        params: only count findings that name all of these parameters (names, tensors, a module).

    Example::

        with lens.expect("stray-grad", optimizer=optimizerG, params=netG):
            buggy_train_step()
    """
    _check_rules((rule,), "expect()")
    if optimizer is not None and not isinstance(optimizer, (str, torch.optim.Optimizer)):
        raise LensError(f"expect(optimizer=...) takes an optimizer or its name; got {describe(optimizer)}")

    def check(w: Watch) -> None:
        __tracebackhide__ = True
        _check_expected(w, rule, optimizer, params)

    return LensBlock(check)


def _check_expected(w: Watch, rule: str, optimizer: torch.optim.Optimizer | str | None, params: Any) -> None:
    __tracebackhide__ = True
    report = w.report
    found = report.by_rule(rule)
    if not found:
        seen = ", ".join(sorted(report.rules())) or "none"
        raise AssertionError(
            f"expected a `{rule}` finding in the `expect()` block, but the lens found none "
            f"(rules found: {seen})" + (f"\n\n{findings_text(report.findings)}" if report.findings else "")
        )
    if optimizer is not None:
        opt_name = optimizer if isinstance(optimizer, str) else w.reg.opt_name(id(optimizer))
        found = [f for f in found if f.optimizer == opt_name]
        if not found:
            others = ", ".join(sorted({f"`{f.optimizer}`" for f in report.by_rule(rule)}))
            raise AssertionError(
                f"expected a `{rule}` finding about `{opt_name}`, but the `{rule}` findings are about "
                f"{others}\n\n{findings_text(report.by_rule(rule))}"
            )
    if params is not None:
        wanted = _param_names_for(w, params)
        match = [f for f in found if set(wanted) <= set(f.params)]
        if not match:
            named = sorted({p for f in found for p in f.params})
            missing = [p for p in wanted if p not in named]
            raise AssertionError(
                f"expected a `{rule}` finding naming {name_list(wanted)}, but no such finding names "
                f"{name_list(missing)} (it names {name_list(named) or 'no parameters'})\n\n{findings_text(found)}"
            )


def _param_names_for(w: Watch, params: Any) -> list[str]:
    if isinstance(params, str):
        return [params]
    if isinstance(params, torch.nn.Module):
        return [w.reg.param_name(id(p)) for p in params.parameters()]
    if isinstance(params, torch.Tensor):
        return [w.reg.param_name(id(params))]
    if isinstance(params, Iterable):
        out: list[str] = []
        for item in params:
            out += _param_names_for(w, item)
        return out
    raise LensError(f"expect(params=...) takes names, tensors or modules; got {describe(params)}")


def assert_grads_only_for(*args: Any, optimizers: Any = None, **kwargs: Any) -> Any:
    """Run one training step and assert each optimizer stepped only gradient meant for it.

    Call it as ``assert_grads_only_for(step_fn, *args, optimizers=[...], **kwargs)`` or as
    ``assert_grads_only_for(optimizer_or_list, step_fn, *args, **kwargs)``. Every ``step()``
    of the given optimizers (of all optimizers when none are given) must apply only gradient
    from the backward calls meant for it: no ``stray-grad`` finding.

    Returns:
        what ``step_fn`` returned.

    Example::

        assert_grads_only_for(train_step, optimizers=[optimizerD, optimizerG])
    """
    __tracebackhide__ = True
    if args and (_is_optimizer_spec(args[0])) and optimizers is None:
        optimizers, args = args[0], args[1:]
    if not args or not callable(args[0]):
        got = describe(args[0]) if args else "nothing"
        raise LensError(f"assert_grads_only_for() takes the training step to run; got {got}")
    step_fn, args = args[0], args[1:]
    opts: list[torch.optim.Optimizer] = []
    if optimizers is not None:
        opts = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
        for o in opts:
            if not isinstance(o, torch.optim.Optimizer):
                raise LensError(f"assert_grads_only_for(optimizers=...) takes torch.optim optimizers; got {describe(o)}")
    w = watch()
    try:
        with w:
            result = step_fn(*args, **kwargs)
    finally:
        claim_findings(w)
    report = w.report
    names = {w.reg.opt_name(id(o)) for o in opts}
    stepped = {s.optimizer for s in report.steps}
    if names and not names & stepped:
        raise AssertionError(
            f"assert_grads_only_for(): {name_list(sorted(names))} never stepped in "
            f"`{getattr(step_fn, '__name__', 'step_fn')}()`; nothing was checked"
        )
    if not stepped:
        raise AssertionError(
            f"assert_grads_only_for(): no optimizer stepped in `{getattr(step_fn, '__name__', 'step_fn')}()`; "
            "nothing was checked"
        )
    stray = [f for f in report.by_rule("stray-grad") if not names or f.optimizer in names]
    if not stray:
        return result
    lines = []
    for f in stray:
        meant = ", ".join(f"`{o}`" for o in f.extra.get("for", ())) or "another optimizer"
        src = f"{rel_path(f.backward.file)}:{f.backward.line}" if f.backward else "an unknown site"
        code = f.backward.source if f.backward else ""
        lines.append(
            f"`{f.optimizer}.step()` at {rel_path(f.site.file) if f.site else '?'}:{f.site.line if f.site else '?'} "
            f"applied gradient from `{code or 'backward'}` ({src}), which is meant for {meant}, "
            f"in {plural(len(f.params), 'parameter')}: {name_list(list(f.params))}"
        )
    raise AssertionError(
        "gradient reached an optimizer from a backward meant for another one:\n"
        + "\n".join(f"  - {line}" for line in lines)
        + "\n\n"
        + findings_text(stray)
    )


def _is_optimizer_spec(x: Any) -> bool:
    if isinstance(x, torch.optim.Optimizer):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(o, torch.optim.Optimizer) for o in x)


def known_rules() -> tuple[str, ...]:
    """The rule ids that ``ignore=`` accepts."""
    return tuple(RULES)
