"""`.grad` read on a tensor that is not a leaf.

## What it does
Reports reads of `.grad` on intermediate tensors, which are always `None` unless `retain_grad()`
was called (PyTorch only warns once).

## Why is this bad?
Autograd populates `.grad` only for leaves. Code that inspects or clips `.grad` of an intermediate
tensor silently sees `None`.

## Example
```python
h = layer(x)
loss = h.sum()
loss.backward()
print(h.grad)                      # None
```

## Use instead
```python
h = layer(x)
h.retain_grad()
loss = h.sum()
loss.backward()
print(h.grad)
```
"""

from __future__ import annotations

RULE = "nonleaf-grad"
SEVERITY = "warning"
SUMMARY = ".grad read on a non-leaf tensor; use retain_grad()"

from ..findings import Finding, Label, Site

MARKER = "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed"


def from_warning(message: object, filename: str, lineno: int) -> Finding | None:
    """A finding for PyTorch's non-leaf ``.grad`` warning, at the line that read ``.grad``."""
    if MARKER not in str(message):
        return None
    site = Site(filename, lineno)
    return Finding(
        RULE, SEVERITY,
        "`.grad` was read on a tensor that is not a leaf: it is always `None` there",
        site, (Label(site, "reads `.grad` of an intermediate tensor", primary=True),),
        ("autograd fills `.grad` only for leaves (parameters, inputs created by the user)",),
        "call `.retain_grad()` on the tensor before backward, or read the gradient with "
        "`torch.autograd.grad(loss, tensor)` or a tensor hook",
    )
