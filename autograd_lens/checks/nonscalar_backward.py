"""Backward on a tensor that is not a scalar, without `gradient=`.

## What it does
Explains "grad can be implicitly created only for scalar outputs": says the shape of the tensor
and the fix.

## Why is this bad?
A vector has no single gradient direction: autograd needs the vector to multiply the Jacobian with.
Usually the reduction of the loss was forgotten (`reduction="none"`, a per-sample loss).

## Example
```python
loss = F.mse_loss(pred, target, reduction="none")
loss.backward()
```

## Use instead
```python
loss = F.mse_loss(pred, target, reduction="none")
loss.mean().backward()             # or loss.backward(gradient=torch.ones_like(loss))
```
"""

from __future__ import annotations

RULE = "nonscalar-backward"
SEVERITY = "error"
SUMMARY = "backward on a non-scalar tensor without gradient="

from collections.abc import Sequence

import torch

from ..findings import Finding, Site


def finding(site: Site | None, roots: Sequence[torch.Tensor], names: dict[int, str]) -> Finding:
    nonscalar = [t for t in roots if isinstance(t, torch.Tensor) and t.numel() != 1]
    t = nonscalar[0] if nonscalar else None
    name = names.get(id(t)) if t is not None else None
    what = f"`{name}`" if name else "a tensor"
    shape = f" of shape {list(t.shape)}" if t is not None else ""
    call = f"{name}" if name else "loss"
    return Finding(
        RULE, SEVERITY,
        f"backward on {what}{shape}, which is not a scalar, without `gradient=`",
        site, (), ("autograd needs one number to differentiate, or the vector to multiply the Jacobian with",),
        f"reduce it first (`{call}.mean().backward()` or `{call}.sum().backward()`), or pass "
        f"`gradient=torch.ones_like({call})`",
        tensor=name,
    )
