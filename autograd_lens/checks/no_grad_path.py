"""Backward on a loss that does not require grad.

## What it does
Explains "element 0 of tensors does not require grad and does not have a grad_fn": the loss has no
graph. Says where the graph was most likely cut.

## Why is this bad?
Nothing can be learned from this loss. The graph was cut by `torch.no_grad()` /
`torch.inference_mode()`, by `.detach()`, `.data`, `.item()` or `.numpy()` on the way, or all the
parameters involved have `requires_grad=False`.

## Example
```python
with torch.no_grad():
    pred = model(x)
loss = criterion(pred, y)
loss.backward()
```

## Use instead
```python
pred = model(x)
loss = criterion(pred, y)
loss.backward()
```
"""

from __future__ import annotations

RULE = "no-grad-path"
SEVERITY = "error"
SUMMARY = "the loss does not require grad; the graph was cut"

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..findings import Finding, Site

if TYPE_CHECKING:
    from ..context import Context


def finding(ctx: Context, site: Site | None, roots: Sequence[torch.Tensor], names: dict[int, str]) -> Finding:
    cut = [t for t in roots if isinstance(t, torch.Tensor) and t.grad_fn is None and not t.requires_grad]
    t = cut[0] if cut else None
    name = names.get(id(t)) if t is not None else None
    what = f"`{name}`" if name else "the loss"
    notes = []
    frozen = []
    for net in ctx.nets().values():
        m = net.ref()
        if m is not None:
            ps = list(m.parameters())
            if ps and not any(p.requires_grad for p in ps):
                frozen.append(net.name)
    if frozen:
        notes.append("all parameters of " + ", ".join(f"`{n}`" for n in frozen) + " have `requires_grad=False`")
    if not torch.is_grad_enabled():
        notes.append("gradient mode is off here (`torch.no_grad()` or `torch.inference_mode()` is active)")
    return Finding(
        RULE, SEVERITY,
        f"backward on {what}, which does not require grad and has no `grad_fn`: nothing connects it to a parameter",
        site, (), tuple(notes),
        "compute the loss from the model's output outside `torch.no_grad()` / `torch.inference_mode()`, "
        "without `.detach()`, `.data`, `.item()` or `.numpy()` on the way, and with trainable parameters",
        tensor=name,
    )
