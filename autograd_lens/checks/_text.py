"""Small helpers the rule modules share to name calls, steps, tensors and parameter lists."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..events import BackwardCall, OptimizerStep
    from ..watch import Watch


def code(text: str) -> str:
    return f"`{text}`"


def call_text(call: BackwardCall) -> str:
    """`errD.backward()` when the source line is that call, else a description with the line."""
    src = call.site.source
    if src and len(src) <= 60 and ("backward" in src or "grad(" in src):
        return code(src)
    roots = ", ".join(call.roots)
    what = "backward" if call.kind == "backward" else "autograd.grad"
    return f"the {what} of `{roots}` at line {call.site.line}" if roots else f"the {what} at line {call.site.line}"


def step_text(step: OptimizerStep) -> str:
    src = step.site.source
    if src and len(src) <= 60 and "step" in src:
        return code(src)
    return f"`{step.optimizer}.step()`"


def names_text(names: Sequence[str], limit: int = 3) -> str:
    names = list(names)
    if not names:
        return "no parameter"
    shown = ", ".join(code(n) for n in names[:limit])
    more = len(names) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def opts_text(w: Watch, keys: Any) -> str:
    names = sorted(w.opt_name(k) for k in keys)
    return " and ".join(code(n) for n in names) if names else "no optimizer"


def param_names(w: Watch, pids: Sequence[int] | set[int]) -> tuple[str, ...]:
    return tuple(sorted(w.param_name(p) for p in pids))


def net_count_text(w: Watch, pids: set[int]) -> str:
    """`writes .grad on 12 of 12 netG parameters` style counts per network."""
    per: dict[int | None, int] = {}
    for p in pids:
        per[w.net_of_param(p)] = per.get(w.net_of_param(p), 0) + 1
    parts = []
    for key, n in per.items():
        net = w.nets().get(key) if key is not None else None
        if net is not None:
            parts.append(f"{n} of {len(net.pids)} `{net.name}` parameters")
        else:
            parts.append(f"{n} parameter{'s' if n != 1 else ''}")
    return ", ".join(parts)
