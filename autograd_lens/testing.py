"""Assertions about autograd for a project's own test suite.

Each assertion raises a plain :class:`AssertionError` whose message reads on its own in
``pytest -q`` output: what was expected, what the graph or the lens saw, and the fix. Bad input
(for example a non-tensor output) raises :class:`autograd_lens.LensError` instead.

- :func:`assert_reaches` / :func:`assert_does_not_reach`: answered from the graph alone; no
  backward runs and no ``.grad`` is touched.
- :func:`assert_no_findings`, :func:`expect_clean`, :func:`expect`: run code under
  :func:`autograd_lens.watch` and check what it found.
- :func:`assert_grads_only_for`: every gradient an optimizer stepped came from a backward meant
  for it (no ``stray-grad``).
- :func:`assert_gradcheck`: ``torch.autograd.gradcheck`` for custom ``autograd.Function``\\ s,
  with a failure that names the input, the element and both values.

Example::

    from autograd_lens.testing import assert_does_not_reach

    def test_discriminator_loss_stops_at_generator():
        fake = netG(noise)
        errD = criterion(netD(fake.detach()), zeros)
        assert_does_not_reach(errD, netG)
"""

from __future__ import annotations

import inspect
import math
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from .checks import RULES, get_rule
from .errors import LensError, describe
from .findings import ERROR, SEVERITIES, Finding, rel_path, severity_rank
from .graph import CUSTOM, INPUT, PARAM, Graph, capture
from .naming import ParamNames, find_in_frame, local_items, tensor_names, user_frame
from .report import Report, finding_text
from .watch import Watch, watch

__all__ = [
    "assert_does_not_reach",
    "assert_gradcheck",
    "assert_grads_only_for",
    "assert_no_findings",
    "assert_reaches",
    "expect",
    "expect_clean",
]

#: How many names a message lists before it says "and N more".
SHOWN_NAMES = 4
#: How many steps a path shows before it abbreviates the middle with "…".
PATH_STEPS = 9
ARROW = " ← "


# ----------------------------------------------------------------------------------------------
# reaching parameters: answered from the graph alone
# ----------------------------------------------------------------------------------------------


def assert_reaches(output: torch.Tensor, params: Any) -> None:
    """Assert that gradient of ``output`` would reach every parameter in ``params``.

    Answered from the autograd graph alone: no backward runs and no ``.grad`` changes.

    Args:
        output: a tensor that is part of an autograd graph (a loss, usually).
        params: a tensor, a list of tensors, a module (all its parameters), an iterable such as
            ``net.parameters()``, or a dict of names to tensors or modules.

    Example::

        errG = criterion(netD(netG(noise)), ones)
        assert_reaches(errG, netG)
    """
    __tracebackhide__ = True
    frame = user_frame()
    try:
        ctx = _GraphContext.build(output, params, frame, "assert_reaches")
    finally:
        del frame
    out = ctx.output_name
    if ctx.graph is None:
        raise AssertionError(
            f"`{out}` does not reach {ctx.of_targets(len(ctx.targets))}: "
            f"it has no `grad_fn` and does not require grad\n"
            f"  = note: {describe(output)}\n"
            "help: it was computed under `torch.no_grad()`, from detached tensors, or from inputs "
            "that do not require grad; compute it with autograd enabled"
        )
    missing = [(name, t) for name, t in ctx.targets if id(t) not in ctx.reached]
    if not missing:
        return
    lines = [
        f"`{out}` does not reach {ctx.of_targets(len(missing))}: {_names([n for n, _ in missing])}"
    ]
    frozen = [n for n, t in missing if not t.requires_grad]
    if frozen:
        lines.append(f"  = note: {_names(frozen)} {'has' if len(frozen) == 1 else 'have'} `requires_grad=False`")
    reached = ctx.reached_by_network()
    if reached:
        what = ", ".join(f"`{net}` ({_count(n, 'parameter')})" for net, n in reached.items())
        lines.append(f"  = note: `{out}` reaches {what}")
    else:
        lines.append(f"  = note: `{out}` reaches no parameter at all")
    lines.append(
        "help: look between those parameters and the output for `.detach()`, `torch.no_grad()`, "
        "`.data`, `.item()` or `requires_grad_(False)`, or for a parameter the forward never uses"
    )
    raise AssertionError("\n".join(lines))


def assert_does_not_reach(output: torch.Tensor, params: Any) -> None:
    """Assert that gradient of ``output`` would reach none of ``params``.

    Answered from the autograd graph alone: no backward runs and no ``.grad`` changes. On failure
    the message shows the path from the output to a parameter and where a ``.detach()`` cuts it.

    Args:
        output: a tensor that is part of an autograd graph (a loss, usually).
        params: a tensor, a list of tensors, a module (all its parameters), an iterable such as
            ``net.parameters()``, or a dict of names to tensors or modules.

    Example::

        fake = netG(noise)
        errD = criterion(netD(fake.detach()), zeros)
        assert_does_not_reach(errD, netG)
    """
    __tracebackhide__ = True
    frame = user_frame()
    try:
        ctx = _GraphContext.build(output, params, frame, "assert_does_not_reach")
    finally:
        del frame
    if ctx.graph is None:
        return
    hit = [(name, t) for name, t in ctx.targets if id(t) in ctx.reached]
    if not hit:
        return
    out = ctx.output_name
    nearest = min(hit, key=lambda nt: ctx.depth(ctx.reached[id(nt[1])]))
    path = ctx.path_to(ctx.reached[id(nearest[1])])
    labels, crossing = ctx.describe_path(path, {id(t) for _, t in hit}, nearest[0])
    lines = [
        f"`{out}` reaches {ctx.of_targets(len(hit))}: {_names([n for n, _ in hit])}",
        f"  path: {_abbreviate(labels, crossing.label_index if crossing else None)}",
    ]
    if crossing is not None:
        lines.append(f"  = note: {crossing.note}")
        lines.append(f"help: {crossing.help}")
    else:
        lines.append(
            "help: detach the tensor where the path enters the network it should not train, or "
            "freeze those parameters with `requires_grad_(False)`"
        )
    raise AssertionError("\n".join(lines))


class _Crossing:
    """Where a path from the output enters the network of the forbidden parameters."""

    def __init__(self, label_index: int, note: str, help: str) -> None:
        self.label_index = label_index
        self.note = note
        self.help = help


class _GraphContext:
    """The captured graph of one output, with the names the caller's frame gives its parts."""

    def __init__(self) -> None:
        self.graph: Graph | None = None
        self.output_name = "output"
        self.targets: list[tuple[str, torch.Tensor]] = []
        self.target_owner = ""
        self.reached: dict[int, int] = {}  # id(param tensor) -> graph node id
        self.leaf_ids: dict[int, int] = {}
        self.var_of_node: dict[int, str] = {}
        self.modules: dict[str, torch.nn.Module] = {}
        self.networks: list[str] = []
        self.loss_modules: list[torch.nn.Module] = []
        self._depth: dict[int, int] = {}
        self._prev: dict[int, int] = {}

    @classmethod
    def build(cls, output: Any, params: Any, frame: types.FrameType | None, who: str) -> _GraphContext:
        if not isinstance(output, torch.Tensor):
            raise LensError(
                f"{who}() takes the output tensor (a loss) as its first argument; got {describe(output)}"
            )
        self = cls()
        found = find_in_frame(frame, torch.nn.Module)
        inner = {id(sub) for m in found.values() for sub in m.modules() if sub is not m}
        for var, mod in found.items():
            if id(mod) in inner:
                continue
            if next(iter(mod.parameters()), None) is None:
                self.loss_modules.append(mod)
                continue
            self.networks.append(var)
            for qual, sub in mod.named_modules():
                self.modules.setdefault(f"{var}.{qual}" if qual else var, sub)
        self.networks.sort(key=len, reverse=True)
        names = ParamNames()
        for var in self.networks:
            names.add_module(var, self.modules[var])
        self.targets, self.target_owner = _targets(params, names, self.modules, frame, who)
        for name, t in self.targets:
            names.add(name, t)
        local = tensor_names(frame)
        self.output_name = local.get(id(output), "output")
        if output.grad_fn is None and not output.requires_grad:
            return self
        fn_names: dict[int, str] = {}
        if frame is not None:
            for var, value in local_items(frame):
                if isinstance(value, torch.Tensor) and value.grad_fn is not None and not var.startswith("_"):
                    fn_names.setdefault(id(value.grad_fn), var)
        node_index: dict[int, int] = {}
        self.graph = capture(
            [output],
            names=names,
            output_names=[self.output_name],
            input_names=local,
            saved=False,
            leaf_ids=self.leaf_ids,
            node_index=node_index,
        )
        for fn_id, nid in node_index.items():
            if fn_id in fn_names:
                self.var_of_node[nid] = fn_names[fn_id]
        wanted = {id(t) for _, t in self.targets}
        for nid, tid in self.leaf_ids.items():
            if tid in wanted:
                self.reached[tid] = nid
        self._bfs()
        return self

    def of_targets(self, n: int) -> str:
        """``4 of 12 parameters of `netG``` or ``1 of 2 given parameters``."""
        total = len(self.targets)
        if self.target_owner:
            return f"{n} of {_count(total, 'parameter')} of {self.target_owner}"
        if total == 1:
            return "the given parameter"
        return f"{n} of {total} given parameters"

    def _bfs(self) -> None:
        assert self.graph is not None
        root = self.graph.outputs[0].node
        if root is None:
            return
        self._depth = {root: 0}
        self._prev = {root: -1}
        frontier = [root]
        while frontier:
            nxt: list[int] = []
            for n in frontier:
                for m in self.graph.inputs_of(n):
                    if m not in self._depth:
                        self._depth[m] = self._depth[n] + 1
                        self._prev[m] = n
                        nxt.append(m)
            frontier = nxt

    def depth(self, node: int) -> int:
        return self._depth.get(node, 1 << 30)

    def path_to(self, node: int) -> list[int]:
        out = [node]
        while self._prev.get(out[-1], -1) != -1:
            out.append(self._prev[out[-1]])
        return out[::-1]

    def network_of(self, module: str | None) -> str | None:
        if not module:
            return None
        for net in self.networks:  # longest first
            if module == net or module.startswith(net + "."):
                return net
        return None

    def node_network(self, nid: int) -> str | None:
        assert self.graph is not None
        n = self.graph.nodes[nid]
        if n.kind == PARAM and n.name:
            return self.network_of(n.name.rsplit(".", 1)[0]) or self.network_of(n.module)
        return self.network_of(n.module)

    def reached_by_network(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.graph is None:
            return out
        for n in self.graph.nodes:
            if n.kind == PARAM:
                net = self.node_network(n.id) or "other parameters"
                out[net] = out.get(net, 0) + 1
        return out

    # ----- path text --------------------------------------------------------------------------
    def describe_path(
        self, path: list[int], forbidden: set[int], target_name: str
    ) -> tuple[list[str], _Crossing | None]:
        """Labels for the nodes of ``path`` (root first) and where it enters the forbidden network."""
        assert self.graph is not None
        g = self.graph
        forbidden_nets = {self.node_network(self.reached[t]) for t in forbidden if t in self.reached} - {None}
        labels: list[str] = [self.output_name]
        crossing: _Crossing | None = None
        for i, nid in enumerate(path):
            n = g.nodes[nid]
            var = self.var_of_node.get(nid)
            if i > 0 and var and labels[-1] != var:
                labels.append(var)
            if i > 0 and crossing is None and forbidden_nets:
                prev = path[i - 1]
                if self.node_network(nid) in forbidden_nets and self.node_network(prev) not in forbidden_nets:
                    crossing = self._crossing(prev, nid, var, len(labels) - 1)
            if n.kind in (PARAM, INPUT):
                label = target_name if i == len(path) - 1 else (n.name or f"<input {list(n.shape or ())}>")
            else:
                label = self._op_label(nid)
            if label != labels[-1]:
                labels.append(label)
        return labels, crossing

    def _crossing(self, consumer: int, producer: int, var: str | None, index: int) -> _Crossing:
        net_in = self.node_network(producer) or "the network"
        net_out = self.node_network(consumer)
        where = f"`{net_out}`" if net_out else f"`{self._op_label(consumer)}`"
        if var:
            note = f"`{var}` is produced by `{net_in}` and enters {where} without `.detach()`"
            fix = f"`{net_out}({var}.detach())`" if net_out else f"use `{var}.detach()` there"
            return _Crossing(index, note, f"detach `{var}` where it enters {where}: {fix}")
        what = f"the output of `{self._op_label(producer)}`"
        return _Crossing(
            index + 1,
            f"{what} (made by `{net_in}`) enters {where} without `.detach()`",
            f"call `.detach()` on {what} before {where} uses it",
        )

    def _op_label(self, nid: int) -> str:
        assert self.graph is not None
        n = self.graph.nodes[nid]
        op = re.sub(r"Backward\d*$", "", n.op)
        if n.module and self._is_direct(nid):
            mod = self.modules.get(n.module)
            return f"{n.module} ({type(mod).__name__})" if mod is not None else n.module
        sibling = self._sibling_for(n.module, op)
        if sibling is not None:
            return sibling
        for mod in self.loss_modules:
            if _op_matches(op, type(mod).__name__):
                return type(mod).__name__
        return op

    def _is_direct(self, nid: int) -> bool:
        """Whether the node consumes a parameter of its own module (through view ops at most)."""
        assert self.graph is not None
        g = self.graph
        module = g.nodes[nid].module
        stack = list(g.inputs_of(nid))
        seen: set[int] = set()
        while stack:
            m = stack.pop()
            if m in seen:
                continue
            seen.add(m)
            node = g.nodes[m]
            if node.kind == PARAM and node.module == module:
                return True
            if node.kind == "op" and node.module == module and len(seen) < 8 and node.op.startswith(
                ("T", "View", "Expand", "Permute", "Transpose", "Unsqueeze", "Squeeze", "Reshape", "ToCopy")
            ):
                stack.extend(g.inputs_of(m))
        return False

    def _sibling_for(self, module: str | None, op: str) -> str | None:
        """A parameterless module that runs right after ``module`` and whose type matches ``op``.

        Looks at the next siblings of ``module`` in its parent, then, when only parameterless
        siblings follow, at the siblings of the parent (``netG.main.11`` then ``netG.main.12``).
        """
        while module and "." in module:
            parent_name, child = module.rsplit(".", 1)
            parent = self.modules.get(parent_name)
            if parent is None:
                return None
            names = [name for name, _ in parent.named_children()]
            if child not in names:
                return None
            after = names[names.index(child) + 1:]
            for name in after[:3]:
                sub = getattr(parent, name)
                if _op_matches(op, type(sub).__name__):
                    return f"{parent_name}.{name} ({type(sub).__name__})"
            if any(next(iter(getattr(parent, name).parameters()), None) is not None for name in after):
                return None
            module = parent_name
        return None


_OP_ALIASES = {
    "binarycrossentropy": ("bceloss",),
    "binarycrossentropywithlogits": ("bcewithlogitsloss",),
    "mseloss": ("mseloss",),
    "nllloss": ("nllloss", "crossentropyloss"),
    "logsoftmax": ("logsoftmax", "crossentropyloss"),
    "l1loss": ("l1loss",),
    "smoothl1loss": ("smoothl1loss",),
    "relu": ("relu", "relu6"),
    "hardtanh": ("relu6", "hardtanh"),
}


def _op_matches(op: str, cls_name: str) -> bool:
    o, c = op.lower(), cls_name.lower()
    return o == c or c in _OP_ALIASES.get(o, ())


def _abbreviate(labels: list[str], keep_at: int | None) -> str:
    """``a ← b ← … ← z``: at most ``PATH_STEPS`` labels, keeping both ends and the crossing."""
    if len(labels) <= PATH_STEPS:
        return ARROW.join(labels)
    keep = set(range(3)) | {len(labels) - 2, len(labels) - 1}
    if keep_at is not None:
        keep |= {keep_at - 1, keep_at, keep_at + 1, keep_at + 2}
    out: list[str] = []
    for i, label in enumerate(labels):
        if i in keep:
            out.append(label)
        elif out and out[-1] != "…":
            out.append("…")
    return ARROW.join(out)


def _targets(
    params: Any,
    names: ParamNames,
    modules: Mapping[str, torch.nn.Module],
    frame: types.FrameType | None,
    who: str,
) -> tuple[list[tuple[str, torch.Tensor]], str]:
    """``params`` as (name, tensor) pairs, and how to call their owner in a message."""
    local = tensor_names(frame)

    def module_name(m: torch.nn.Module) -> str:
        for name, mod in modules.items():
            if mod is m:
                return name
        return type(m).__name__

    def tensor_name(t: torch.Tensor, i: int) -> str:
        return names.name_of(t) or local.get(id(t)) or f"param{i}"

    out: list[tuple[str, torch.Tensor]] = []
    owners: list[str] = []
    if isinstance(params, torch.nn.Module):
        prefix = module_name(params)
        out = [(f"{prefix}.{q}", p) for q, p in params.named_parameters()]
        owners.append(prefix)
    elif isinstance(params, torch.Tensor):
        out = [(tensor_name(params, 0), params)]
    elif isinstance(params, Mapping):
        for key, value in params.items():
            if isinstance(value, torch.nn.Module):
                out += [(f"{key}.{q}", p) for q, p in value.named_parameters()]
                owners.append(str(key))
            elif isinstance(value, torch.Tensor):
                out.append((str(key), value))
            else:
                raise LensError(f"{who}() takes a dict of names to tensors or modules; {key!r} is {describe(value)}")
    elif isinstance(params, Iterable) and not isinstance(params, (str, bytes)):
        for i, item in enumerate(params):
            if isinstance(item, torch.nn.Module):
                prefix = module_name(item)
                out += [(f"{prefix}.{q}", p) for q, p in item.named_parameters()]
                owners.append(prefix)
            elif isinstance(item, torch.Tensor):
                out.append((tensor_name(item, i), item))
            else:
                raise LensError(f"{who}() takes tensors or modules in its list of parameters; item {i} is {describe(item)}")
    else:
        raise LensError(
            f"{who}() takes the parameters as a tensor, a list of tensors, a module or a dict of "
            f"names to tensors; got {describe(params)}"
        )
    seen: set[int] = set()
    unique = []
    for name, t in out:
        if id(t) not in seen:
            seen.add(id(t))
            unique.append((name, t))
    if not unique:
        raise LensError(f"{who}() got no parameters to check (an empty module or list): {describe(params)}")
    if len(owners) == 1 and len(unique) == len(out):
        owner = f"`{owners[0]}`"
    elif owners:
        owner = ", ".join(f"`{o}`" for o in owners)
    else:
        owner = ""
    return unique, owner


def _names(names: Sequence[str]) -> str:
    shown = [f"`{n}`" for n in names[:SHOWN_NAMES]]
    if len(names) > SHOWN_NAMES:
        return ", ".join(shown) + f" and {len(names) - SHOWN_NAMES} more"
    if len(shown) > 1:
        return ", ".join(shown[:-1]) + " and " + shown[-1]
    return shown[0] if shown else ""


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ----------------------------------------------------------------------------------------------
# the runtime lens in tests
# ----------------------------------------------------------------------------------------------

#: Findings that an assertion of this module already judged, as ``(rule, file, line)``; a rule of
#: None claims every rule at that line. The pytest plugin's ``--lens`` leaves them to the test.
_claimed: set[tuple[str | None, str, int]] = set()


def claimed(f: Finding) -> bool:
    """Whether an assertion of this module already judged ``f`` (so ``--lens`` leaves it alone)."""
    if f.site is None:
        return False
    return (f.rule, f.site.file, f.site.line) in _claimed or (None, f.site.file, f.site.line) in _claimed


def reset_claims() -> None:
    """Forget what the assertions judged (the pytest plugin calls this before each test)."""
    _claimed.clear()


def _claim(w: Watch) -> None:
    for f in w.report.findings:
        if f.site is not None:
            _claimed.add((f.rule, f.site.file, f.site.line))


def _claim_caller() -> None:
    frame = user_frame()
    try:
        if frame is not None:
            _claimed.add((None, frame.f_code.co_filename, frame.f_lineno))
    finally:
        del frame


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
    return f"{_count(n_err, 'error')}, {_count(n_warn, 'warning')}"


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
        _claim(w)
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
            _claim(w)
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
                f"expected a `{rule}` finding naming {_names(wanted)}, but no such finding names "
                f"{_names(missing)} (it names {_names(named) or 'no parameters'})\n\n{findings_text(found)}"
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
        _claim(w)
    report = w.report
    names = {w.reg.opt_name(id(o)) for o in opts}
    stepped = {s.optimizer for s in report.steps}
    if names and not names & stepped:
        raise AssertionError(
            f"assert_grads_only_for(): {_names(sorted(names))} never stepped in "
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
            f"in {_count(len(f.params), 'parameter')}: {_names(list(f.params))}"
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


_WRONG_COUNT = re.compile(r"function (\w+) returned an incorrect number of gradients \(expected (\d+), got (\d+)\)")
_WRONG_SHAPE = re.compile(
    r"Function (\w+) returned an invalid gradient at index (\d+) - got \[([^\]]*)\] but expected shape "
    r"compatible with \[([^\]]*)\]"
)
_WRONG_OTHER = re.compile(r"Function (\w+) returned an invalid gradient at index (\d+) - (.*)")


def assert_gradcheck(
    fn: Callable[..., Any],
    inputs: Any,
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    allow_ctx_tensors: bool = False,
    **gradcheck_kwargs: Any,
) -> None:
    """Check the backward of ``fn`` (a custom ``autograd.Function``\\ 's ``apply``, usually)
    against finite differences, and explain a failure element by element.

    Wraps :func:`torch.autograd.gradcheck`. On failure the message names the input, the element
    (its index), the analytical and numerical values and the largest error, instead of whole
    Jacobians. It also fails when the Function keeps tensors on ``ctx`` instead of
    ``ctx.save_for_backward`` (unless ``allow_ctx_tensors``), and when ``backward`` returns the
    wrong number of gradients or gradients of the wrong shape.

    Args:
        fn: the function to check, e.g. ``Linear.apply``.
        inputs: a tensor or a tuple of arguments; those that require grad are checked and must be
            double precision.
        eps, atol, rtol: as in ``torch.autograd.gradcheck``.
        allow_ctx_tensors: do not fail on tensors kept on ``ctx``.
        gradcheck_kwargs: passed on to ``torch.autograd.gradcheck``.

    Example::

        x = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
        w = torch.randn(2, 3, dtype=torch.double, requires_grad=True)
        assert_gradcheck(Linear.apply, (x, w))
    """
    __tracebackhide__ = True
    if not callable(fn):
        raise LensError(f"assert_gradcheck() takes a function to check; got {describe(fn)}")
    _claim_caller()  # the backward calls made here are the check's own, not the test's
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs) if isinstance(inputs, (list, tuple)) else None
    if args is None:
        raise LensError(f"assert_gradcheck() takes a tensor or a tuple of inputs; got {describe(inputs)}")
    diff = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    if not diff:
        raise LensError(
            "assert_gradcheck(): none of the inputs requires grad, so there is nothing to check; "
            "create them with `requires_grad=True`, e.g. `torch.randn(3, dtype=torch.double, requires_grad=True)`"
        )
    frame = user_frame()
    try:
        local = tensor_names(frame)
    finally:
        del frame
    fn_name, arg_names = _function_names(fn)
    fallback = {i: local[id(a)] for i, a in enumerate(args) if id(a) in local}

    def input_name(i: int) -> str:
        name = arg_names[i] if i < len(arg_names) else fallback.get(i)
        return f"input {i} (`{name}`)" if name else f"input {i}"

    for i in diff:
        if args[i].dtype not in (torch.float64, torch.complex128):
            raise LensError(
                f"assert_gradcheck(): {input_name(i)} is {args[i].dtype}; finite differences need double "
                f"precision: pass `x.double()` (or create it with `dtype=torch.double`)"
            )

    outs = _outputs(fn(*args), "assert_gradcheck()")
    diff_outs = [o for o in outs if o.requires_grad]
    if not diff_outs:
        raise AssertionError(
            f"assert_gradcheck(): no output of `{fn_name}` requires grad; the inputs that require grad "
            "do not reach the outputs through autograd"
        )
    problems: list[str] = []
    graph = capture(diff_outs, saved=False)
    for n in graph.nodes:
        if n.kind == CUSTOM and n.ctx_tensors:
            name = n.op[:-8] if n.op.endswith("Backward") else n.op
            fn_name = name if fn_name == "fn" else fn_name
            attrs = ", ".join(f"`ctx.{a}`" for a in n.ctx_tensors)
            problems.append(
                f"`{name}.forward` keeps tensors on ctx: {attrs}\n"
                "  = note: tensors on ctx are never version-checked and never freed by backward\n"
                f"help: use `ctx.save_for_backward(...)` in `{name}.forward` and `ctx.saved_tensors` in "
                f"`{name}.backward`"
            )
    if allow_ctx_tensors:
        problems = []
    try:
        grads = torch.autograd.grad(
            diff_outs, [args[i] for i in diff], [torch.ones_like(o) for o in diff_outs], allow_unused=True
        )
    except RuntimeError as exc:
        raise AssertionError(_backward_error(exc, fn_name, input_name)) from None
    unused = [input_name(i) for i, g in zip(diff, grads) if g is None]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = torch.autograd.gradcheck(
            fn, args, eps=eps, atol=atol, rtol=rtol, raise_exception=False, **gradcheck_kwargs
        )
    if not ok:
        problems.insert(0, _explain_mismatch(fn, args, diff, eps, atol, rtol, fn_name, input_name, unused, gradcheck_kwargs))
    if problems:
        raise AssertionError("\n\n".join(problems))


def _function_names(fn: Callable[..., Any]) -> tuple[str, list[str]]:
    """The Function's name and the names of its forward's inputs (after ``ctx``)."""
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, torch.autograd.Function):
        try:
            params = list(inspect.signature(owner.forward).parameters)
        except (TypeError, ValueError):
            params = []
        if params and params[0] == "ctx":
            params = params[1:]
        return owner.__name__, [p for p in params if not p.startswith("*")]
    return getattr(fn, "__name__", "fn"), []


def _outputs(out: Any, who: str) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)) and all(isinstance(o, torch.Tensor) for o in out) and out:
        return list(out)
    raise LensError(f"{who}: the function must return a tensor or a tuple of tensors; it returned {describe(out)}")


def _backward_error(exc: RuntimeError, fn_name: str, input_name: Callable[[int], str]) -> str:
    text = str(exc).split("\n", 1)[0]
    m = _WRONG_COUNT.search(text)
    if m:
        name, expected, got = m.group(1), int(m.group(2)), int(m.group(3))
        name = name[:-8] if name.endswith("Backward") else name
        return (
            f"`{name}.backward` returned {_count(got, 'gradient')}, but `{name}.forward` takes "
            f"{_count(expected, 'input')} (after ctx)\n"
            f"  = note: PyTorch: {text}\n"
            f"help: return exactly one gradient per input of forward, in order, and `None` for inputs "
            f"that need no gradient"
        )
    m = _WRONG_SHAPE.search(text)
    if m:
        name, index = m.group(1), int(m.group(2))
        name = name[:-8] if name.endswith("Backward") else name
        got = f"({m.group(3)})"
        want = f"({m.group(4)})"
        return (
            f"`{name}.backward` returned a gradient of shape {got} for {input_name(index)}, whose shape "
            f"is {want}\n"
            f"  = note: PyTorch: {text}\n"
            f"help: the gradient of each input must have that input's shape (check the order of the "
            f"returned gradients and any transpose)"
        )
    m = _WRONG_OTHER.search(text)
    if m:
        name = m.group(1)[:-8] if m.group(1).endswith("Backward") else m.group(1)
        return f"`{name}.backward` returned a wrong gradient for {input_name(int(m.group(2)))}: {m.group(3)}"
    return f"backward of `{fn_name}` raised {type(exc).__name__}: {text}"


def _explain_mismatch(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    diff: list[int],
    eps: float,
    atol: float,
    rtol: float,
    fn_name: str,
    input_name: Callable[[int], str],
    unused: list[str],
    gradcheck_kwargs: Mapping[str, Any],
) -> str:
    analytical = _analytical(fn, args, diff)
    numerical = _numerical(fn, args, diff, eps)
    parts: list[str] = []
    n_outs = len({oi for oi, _ in analytical})
    for (oi, j), a in analytical.items():
        n = numerical[(oi, j)]
        if a.is_complex() or n.is_complex():
            continue
        err = (a - n).abs()
        tol = atol + rtol * n.abs()
        bad = err > tol
        if not bool(bad.any()):
            continue
        x = args[j]
        out_shape = n.shape[: n.dim() - x.dim()]
        flat_err = err.reshape(-1)
        worst = int(flat_err.argmax())
        idx = _unravel(worst, tuple(n.shape))
        out_idx, in_idx = idx[: len(out_shape)], idx[len(out_shape):]
        av, nv = float(a.reshape(-1)[worst]), float(n.reshape(-1)[worst])
        name = input_name(j)
        short = name.split("`")[1] if "`" in name else f"input{j}"
        out_name = "output" if n_outs == 1 else f"output {oi}"
        out_text = f"{out_name}[{', '.join(map(str, out_idx))}]" if out_idx else out_name
        lines = [
            f"`{fn_name}` backward disagrees with finite differences for {name}, shape {tuple(x.shape)}:",
            f"  worst at {short}[{', '.join(map(str, in_idx))}] for {out_text}: analytical {_num(av)}, "
            f"numerical {_num(nv)}, error {_num(abs(av - nv))} (allowed {_num(atol + rtol * abs(nv))})",
            f"  {int(bad.sum())} of {bad.numel()} Jacobian entries differ (atol={atol:g}, rtol={rtol:g})",
        ]
        hint = _hint(a[bad], n[bad], a)
        if name in unused:
            lines.append(f"  = note: `{fn_name}.backward` returns `None` for {name}, which requires grad")
        elif hint:
            lines.append(f"  = note: {hint}")
        parts.append("\n".join(lines))
    if not parts:
        try:
            with __import__("warnings").catch_warnings():
                __import__("warnings").simplefilter("ignore")
                torch.autograd.gradcheck(fn, args, eps=eps, atol=atol, rtol=rtol, raise_exception=True, **gradcheck_kwargs)
        except Exception as exc:  # gradcheck's own reason, first lines
            head = "\n".join(str(exc).strip().split("\n")[:6])
            return f"`{fn_name}` failed gradcheck:\n  {head}"
        return f"`{fn_name}` failed gradcheck (no Jacobian entry differs; check the gradcheck options)"
    return "\n\n".join(parts)


def _analytical(fn: Callable[..., Any], args: tuple[Any, ...], diff: list[int]) -> dict[tuple[int, int], torch.Tensor]:
    """Jacobians from backward: ``(output i, input j) -> tensor of shape out.shape + in.shape``."""
    xs = list(args)
    for j in diff:
        xs[j] = args[j].detach().clone().requires_grad_(True)
    outs = _outputs(fn(*xs), "assert_gradcheck()")
    result: dict[tuple[int, int], torch.Tensor] = {}
    for oi, o in enumerate(outs):
        rows: dict[int, list[torch.Tensor]] = {j: [] for j in diff}
        flat = o.reshape(-1)
        for k in range(flat.numel()):
            if o.requires_grad:
                gs = torch.autograd.grad(flat[k], [xs[j] for j in diff], retain_graph=True, allow_unused=True)
            else:
                gs = (None,) * len(diff)
            for j, g in zip(diff, gs):
                rows[j].append(torch.zeros_like(args[j]) if g is None else g.detach())
        for j in diff:
            stacked = torch.stack(rows[j]) if rows[j] else torch.zeros((0,) + tuple(args[j].shape), dtype=args[j].dtype)
            result[(oi, j)] = stacked.reshape(tuple(o.shape) + tuple(args[j].shape))
    return result


def _numerical(fn: Callable[..., Any], args: tuple[Any, ...], diff: list[int], eps: float) -> dict[tuple[int, int], torch.Tensor]:
    """Jacobians by central differences, same layout as :func:`_analytical`."""
    base = [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args]
    result: dict[tuple[int, int], torch.Tensor] = {}
    with torch.no_grad():
        shapes = [tuple(o.shape) for o in _outputs(fn(*base), "assert_gradcheck()")]
        for j in diff:
            x = base[j]
            flat = x.view(-1)
            cols: list[list[torch.Tensor]] = [[] for _ in shapes]
            for k in range(flat.numel()):
                orig = flat[k].item()
                flat[k] = orig + eps
                plus = [o.detach().clone() for o in _outputs(fn(*base), "assert_gradcheck()")]
                flat[k] = orig - eps
                minus = [o.detach().clone() for o in _outputs(fn(*base), "assert_gradcheck()")]
                flat[k] = orig
                for oi, (p, m) in enumerate(zip(plus, minus)):
                    cols[oi].append(((p - m) / (2 * eps)).reshape(-1))
            for oi, shape in enumerate(shapes):
                jac = torch.stack(cols[oi], dim=1) if cols[oi] else torch.zeros((math.prod(shape), 0), dtype=x.dtype)
                result[(oi, j)] = jac.reshape(shape + tuple(x.shape))
    return result


def _unravel(index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(index % size if size else 0)
        index = index // size if size else 0
    return tuple(reversed(out))


def _num(v: float) -> str:
    return f"{v:.6g}"


def _hint(a: torch.Tensor, n: torch.Tensor, whole: torch.Tensor) -> str:
    """A plain-words guess at the pattern of a mismatch (zero, sign, constant factor)."""
    if bool((whole == 0).all()):
        return "the analytical gradient is zero everywhere: `backward` does not compute it"
    mask = n.abs() > 1e-8
    if not bool(mask.any()):
        return "the numerical gradient is zero there: the output does not depend on those elements"
    ratio = a[mask] / n[mask]
    c = float(ratio.mean())
    if bool(((ratio - c).abs() <= 1e-3 * max(1.0, abs(c))).all()):
        if abs(c + 1) < 1e-3:
            return "analytical = -numerical wherever they differ: a sign is flipped in `backward`"
        return f"analytical = {c:.4g} × numerical wherever they differ: a missing or extra factor in `backward`"
    return ""


def known_rules() -> tuple[str, ...]:
    """The rule ids that ``ignore=`` accepts."""
    return tuple(RULES)
