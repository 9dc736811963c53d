"""A custom `autograd.Function` kept tensors on `ctx` instead of `save_for_backward`.

## What it does
Lists tensors stored as attributes of `ctx` in a custom `torch.autograd.Function` (`ctx.x = x`).

## Why is this bad?
Tensors on `ctx` are never version-checked (an in-place change goes unnoticed and the gradient is
silently wrong), are never freed by backward (memory stays until the graph dies), and can create
reference cycles that leak the whole graph.

## Example
```python
class Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.w = w
        return x * w
```

## Use instead
```python
class Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(w)
        return x * w
```
"""

from __future__ import annotations

RULE = "ctx-tensor"
SEVERITY = "warning"
SUMMARY = "a custom autograd.Function kept tensors on ctx instead of save_for_backward"

from typing import TYPE_CHECKING

from ..findings import Finding, Label

if TYPE_CHECKING:
    from ..events import BackwardCall
    from ..graph import Graph


def findings(call: BackwardCall, graph: Graph) -> list[Finding]:
    out = []
    for n in graph.nodes:
        if n.kind == "custom" and n.ctx_tensors:
            fn_name = n.op[:-8] if n.op.endswith("Backward") else n.op
            attrs = ", ".join(f"`ctx.{a}`" for a in n.ctx_tensors)
            out.append(Finding(
                RULE, SEVERITY,
                f"custom `autograd.Function` `{fn_name}` keeps tensors on ctx: {attrs}",
                call.site, (Label(call.site, f"backward through `{fn_name}`", primary=True),),
                ("tensors on ctx are never version-checked nor freed by backward",),
                f"in `{fn_name}.forward`, use `ctx.save_for_backward(...)` and read them back with `ctx.saved_tensors`",
                tensor=n.ctx_tensors[0], backward=call.site, extra={"function": fn_name},
            ))
    return out
