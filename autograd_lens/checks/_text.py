"""Small helpers the rule modules share to name calls, steps, tensors and parameter lists."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import source

if TYPE_CHECKING:
    from ..events import BackwardCall, OptimizerStep
    from ..context import Context


def code(text: str) -> str:
    return f"`{text}`"


def call_text(call: BackwardCall) -> str:
    """`errD.backward()` when the line holds that call (without what else is on the line), else a
    description with the line."""
    methods = ("backward", "manual_backward") if call.kind == "backward" else ("grad",)
    for m in methods:
        text = source.call_text(call.site.file, call.site.line, m)
        if text and len(text) <= 60:
            return code(text)
    line = source.call_source(call.site.file, call.site.line, ())
    if line.startswith("return ") and call.kind == "backward":
        # a framework ran the backward of the loss this line returns (Lightning's training_step)
        return f"the backward of `{line[7:].strip()}` returned at line {call.site.line}"
    roots = ", ".join(r for r in call.roots if not r.startswith("<"))  # (not `<tensor>`: an expression)
    what = "backward" if call.kind == "backward" else "autograd.grad"
    return f"the {what} of `{roots}` at line {call.site.line}" if roots else f"the {what} at line {call.site.line}"


def call_at(call: BackwardCall) -> str:
    """:func:`call_text` with the call's line: `errD.backward()` (line 56)."""
    text = call_text(call)
    return text if text.endswith(f" at line {call.site.line}") else f"{text} (line {call.site.line})"


def step_text(step: OptimizerStep) -> str:
    if step.manual:
        stmt = source.call_source(step.site.file, step.site.line, ())
        return f"the manual update {code(stmt)}" if stmt and len(stmt) <= 60 else f"`{step.optimizer}`"
    text = source.call_text(step.site.file, step.site.line, "step")
    if text and len(text) <= 60:
        return code(text)
    return f"`{step.optimizer}.step()`"


def holder(step: OptimizerStep) -> str:
    """The optimizer as the step's line holds it (`self.meta_optim` in `self.meta_optim.step()`
    for `maml.meta_optim`), else its name (`optimizer` of `scaler.step(optimizer)`)."""
    text = source.call_text(step.site.file, step.site.line, "step")
    if text and not step.manual and len(text) <= 60:
        head = text.rsplit(".step(", 1)[0]
        if head != text and head.rsplit(".", 1)[-1] == step.optimizer.rsplit(".", 1)[-1]:
            return head
    return step.optimizer


def names_text(names: Sequence[str], limit: int = 3) -> str:
    names = list(names)
    if not names:
        return "no parameter"
    shown = ", ".join(code(n) for n in names[:limit])
    more = len(names) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def opts_text(ctx: Context, keys: Any) -> str:
    names = sorted(ctx.opt_name(k) for k in keys)
    return " and ".join(code(n) for n in names) if names else "no optimizer"


def param_names(ctx: Context, pids: Sequence[int] | set[int]) -> tuple[str, ...]:
    return tuple(sorted(ctx.param_name(p) for p in pids))


def net_count_text(ctx: Context, pids: set[int]) -> str:
    """`writes .grad on 12 of 12 netG parameters` style counts per network (per part of a network,
    `4 of 4 agent.critic parameters`, when the parameters are in some of its parts only)."""
    reg = ctx.reg
    by_net: dict[int, list[int]] = {}
    loose = 0
    for p in pids:
        key = reg.net_of_param(p)
        if key is None or key not in reg.nets:
            loose += 1
        else:
            by_net.setdefault(key, []).append(p)
    per: dict[str, set[int]] = {}
    for key, ps in by_net.items():
        net = reg.nets[key]
        whole = net.name if {reg.unit_of(q) for q in ps} == {reg.unit_of(q) for q in net.pids} else None
        for p in ps:
            per.setdefault(whole or reg.unit_of(p) or net.name, set()).add(p)
    parts = []
    for name, ps in sorted(per.items()):
        total = sum(1 for q in _unit_pids(reg, name))
        parts.append(f"{len(ps)} of {total} `{name}` parameters")
    if loose:
        parts.append(f"{loose} parameter{'s' if loose != 1 else ''}")
    return ", ".join(parts)


def _unit_pids(reg: Any, name: str) -> list[int]:
    for net in reg.nets.values():
        if net.name == name:
            return list(net.pids)
    return [p for net in reg.nets.values() for p in net.pids if reg.unit_of(p) == name]


def detach_fix(call: Any, var: str | None) -> str | None:
    """`advantage = (returns - values).detach()` from the line that assigns ``var``."""
    if not var:
        return None
    at = source.assignment_line(call.site.file, call.site.line, var)
    expr = source.assigned_expr(call.site.file, at, var) if at is not None else None
    if not expr:
        return None
    return f"`{var} = {expr}.detach()`" if expr.isidentifier() else f"`{var} = ({expr}).detach()`"


def units_text(ctx: Context, pids: set[int] | frozenset[int]) -> list[str]:
    """The names of what ``pids`` belong to: a network when they cover its parameters, else the
    parts of it (``agent.critic``), else optimized tensors by name."""
    reg = ctx.reg
    by_net: dict[int | None, set[int]] = {}
    for p in pids:
        by_net.setdefault(reg.net_of_param(p), set()).add(p)
    out: set[str] = set()
    for key, ps in by_net.items():
        net = reg.nets.get(key) if key is not None else None
        if net is None:
            out.update(reg.unit_of(p) or reg.param_name(p) for p in ps)
            continue
        units = {reg.unit_of(p) for p in ps} - {None}
        whole = {reg.unit_of(p) for p in net.pids} - {None}
        out.update(units if units != whole else {net.name})
    return sorted(out)


def between(first: Any, then: Any) -> str:
    """`between line 56 and line 71`, or, when the second comes first in the file (the next
    iteration of a loop), `after line 255, before the next line 242`."""
    if first.file == then.file and then.line < first.line:
        return f"after line {first.line}, before the next line {then.line}"
    return f"between line {first.line} and line {then.line}"
