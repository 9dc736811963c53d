"""Assertions answered from the graph alone: :func:`assert_reaches` and
:func:`assert_does_not_reach`. No backward runs and no ``.grad`` is touched.

It imports the graph capture (:mod:`autograd_lens.graph`), naming and :mod:`.common`; never the
runtime lens.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..errors import LensError, describe
from ..graph import INPUT, PARAM, Graph, capture
from ..naming import ParamNames, find_in_frame, local_items, tensor_names, user_frame
from .common import ARROW, PATH_STEPS, name_list, plural

__all__ = ["assert_does_not_reach", "assert_reaches"]



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
        f"`{out}` does not reach {ctx.of_targets(len(missing))}: {name_list([n for n, _ in missing])}"
    ]
    frozen = [n for n, t in missing if not t.requires_grad]
    if frozen:
        lines.append(f"  = note: {name_list(frozen)} {'has' if len(frozen) == 1 else 'have'} `requires_grad=False`")
    reached = ctx.reached_by_network()
    if reached:
        what = ", ".join(f"`{net}` ({plural(n, 'parameter')})" for net, n in reached.items())
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
        f"`{out}` reaches {ctx.of_targets(len(hit))}: {name_list([n for n, _ in hit])}",
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
            return f"{n} of {plural(total, 'parameter')} of {self.target_owner}"
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
